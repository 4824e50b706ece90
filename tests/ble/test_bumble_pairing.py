"""Pairing on the Bumble stack (issue 12 part 1): the runtime's pairing policy answers through
the Bumble host's pairing delegate, with a virtual glucose meter that has a fixed passkey."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from bumble.pairing import PairingDelegate

from gateway.clock import SystemClock
from gateway.config import BleSection
from gateway.drivers.base import DriverContext, StoredReading
from gateway.drivers.ble.bumble.adapter import HubPairingDelegate
from gateway.drivers.ble.glucose import GlucoseDriver, GlucoseOptions
from gateway.drivers.ble.pairing import PairingPolicy
from gateway.drivers.ble.runtime import BleRuntime
from gateway.reading import Reading
from gateway.sim.ble.profiles import GlucoseMeter
from gateway.windows import CommandWindow
from tests.ble.conftest import Air
from tests.ble.test_bumble_backend import WHEN

PASSKEY = 271828
STEP_S = 10.0


class OneVisitGlucose(GlucoseDriver):
    def finished(self) -> bool:
        return True


class Cursors:
    """The store's per-device cursors, in memory (the store itself is tested elsewhere)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}

    async def get_cursor(self, device_id: str, name: str) -> int | None:
        return self.values.get((device_id, name))

    async def set_cursor(self, device_id: str, name: str, value: int) -> None:
        self.values[(device_id, name)] = value


class Hub:
    """One driver's view of the hub: readings, reports, needs_pairing flags."""

    def __init__(self, air: Air, tmp_path: Path, pairing: CommandWindow) -> None:
        self.runtime = BleRuntime(
            BleSection(stack="bumble", transport=air.transport, connect_timeout_s=5.0),
            tmp_path / "ble-bonds.json",
        )
        self.pairing = pairing
        self.readings: list[Reading] = []
        self.reports: list[str | None] = []
        self.needs: list[bool] = []
        self.needs_changed = asyncio.Event()

    async def emit(self, reading: Reading) -> StoredReading:
        self.readings.append(reading)
        return StoredReading(id=f"r{len(self.readings)}", seq=len(self.readings), duplicate=False)

    def needs_pairing(self, needed: bool) -> None:
        self.needs.append(needed)
        self.needs_changed.set()

    def driver(self, meter: GlucoseMeter, passkey: int | None) -> OneVisitGlucose:
        options = GlucoseOptions(
            id="glu", driver="ble.glucose", address=meter.address, passkey=passkey
        )
        context = DriverContext(
            device_id="glu",
            clock=SystemClock(),
            logger=logging.getLogger("gateway.device.glu"),
            emit=self.emit,
            pairing=self.pairing,
            report=self.reports.append,
            needs_pairing=self.needs_pairing,
            cursors=Cursors(),
            services={BleRuntime: self.runtime},
        )
        return OneVisitGlucose(options, context)


async def meter_with_passkey(air: Air, address: str) -> GlucoseMeter:
    meter = GlucoseMeter(air.air, address, "Glucose-sim")
    meter.passkey = PASSKEY
    await meter.start()
    await meter.measure(WHEN, 104.0)
    return meter


async def test_the_configured_passkey_pairs_inside_the_window(
    air: Air, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    meter = await meter_with_passkey(air, "C0:22:33:44:66:01")
    pairing = CommandWindow("pairing", 30)
    hub = Hub(air, tmp_path, pairing)
    caplog.set_level(logging.DEBUG)
    task = asyncio.create_task(hub.driver(meter, PASSKEY).run())
    try:
        async with asyncio.timeout(STEP_S):
            await hub.needs_changed.wait()
        assert hub.needs == [True] and len(hub.reports) == 1
        assert meter.connections == 0  # never connected outside the window
        pairing.open()
        async with asyncio.timeout(STEP_S):
            await task
    finally:
        task.cancel()
        await hub.runtime.close()
    assert [r.values[0].value for r in hub.readings] == [104.0]
    assert meter.pairings == 1
    assert hub.needs == [True, False] and hub.reports[-1] is None
    # Never the passkey in the hub's own log, nor at INFO or above (Bumble's DEBUG has it).
    leaks = [
        r
        for r in caplog.records
        if str(PASSKEY) in r.getMessage()
        and (r.name.startswith("gateway") or r.levelno >= logging.INFO)
    ]
    assert leaks == []
    assert meter.address in (tmp_path / "ble-bonds.json").read_text()


async def test_a_wrong_passkey_never_pairs(air: Air, tmp_path: Path) -> None:
    meter = await meter_with_passkey(air, "C0:22:33:44:66:02")
    pairing = CommandWindow("pairing", 30)
    pairing.open()
    hub = Hub(air, tmp_path, pairing)
    driver = hub.driver(meter, PASSKEY + 1)
    task = asyncio.create_task(driver.run())
    try:
        # Each connection attempt is refused by the meter; the driver keeps trying.
        async with asyncio.timeout(STEP_S):
            while meter.connections < 2:
                await meter.disconnected.wait()
                meter.disconnected.clear()
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await hub.runtime.close()
    assert hub.readings == [] and meter.pairings == 0


async def test_the_delegate_answers_only_inside_the_window() -> None:
    """Bumble's pairing delegate asks the same policy as the BlueZ agent: nothing outside the
    window (a passkey request gets none: Bumble aborts the pairing), nothing for a stranger."""
    pairing = CommandWindow("pairing", 30)
    policy = PairingPolicy(pairing)
    policy.expect("c0:22:33:44:66:03", PASSKEY)
    delegate = HubPairingDelegate(policy, "C0:22:33:44:66:03")
    assert delegate.io_capability == PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY
    assert await delegate.get_number() is None
    assert not await delegate.accept()
    assert not await delegate.confirm()
    assert not await delegate.compare_numbers(123456, 6)
    pairing.open()
    assert await delegate.get_number() == PASSKEY
    assert await delegate.accept() and await delegate.confirm()
    stranger = HubPairingDelegate(policy, "C0:22:33:44:66:99")
    assert stranger.io_capability == PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT
    assert not await stranger.accept()  # not a configured device
    assert await stranger.get_number() is None
    pairing.close()


async def test_a_lost_bond_is_paired_again_inside_the_window(air: Air, tmp_path: Path) -> None:
    """The meter forgot the hub (a reset): inside the installer's window the hub removes its
    stale bond and pairs again, once; the records then arrive."""
    meter = GlucoseMeter(air.air, "C0:22:33:44:66:04", "Glucose-sim")
    await meter.start()
    await meter.measure(WHEN, 104.0)
    pairing = CommandWindow("pairing", 30)
    pairing.open()
    hub = Hub(air, tmp_path, pairing)
    try:
        async with asyncio.timeout(STEP_S):
            await hub.driver(meter, None).run()
        assert meter.pairings == 1
        assert meter.device.keystore is not None
        for name, _keys in await meter.device.keystore.get_all():
            await meter.device.keystore.delete(name)
        await meter.measure(WHEN.replace(hour=10), 131.0)
        async with asyncio.timeout(STEP_S):
            await hub.driver(meter, None).run()
    finally:
        await hub.runtime.close()
    assert meter.pairings == 2
    assert [r.values[0].value for r in hub.readings][-1] == 131.0
