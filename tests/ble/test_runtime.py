"""The shared BLE runtime: one scan for all drivers, and staged recovery from a stalled scanner."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from gateway.config import BleSection
from gateway.drivers.ble.runtime import BleRuntime
from gateway.events import BleAdapterFailing, BleRecoveryStep, Event
from gateway.sim.ble import encode
from gateway.sim.ble.profiles import BloodPressureMonitor, Thermometer
from tests.ble.conftest import Air


async def test_one_scan_serves_several_waiting_drivers(air: Air) -> None:
    runtime = BleRuntime(BleSection(stack="bumble", transport=air.transport))
    bp = BloodPressureMonitor(air.air, "C0:00:00:00:01:01", "BP")
    thermo = Thermometer(air.air, "C0:00:00:00:01:02", "T")
    for device in (bp, thermo):
        await device.start()
    try:
        waits = [
            asyncio.create_task(runtime.wait_for_advertisement(d.address.lower()))
            for d in (bp, thermo)
        ]
        await bp.measure(encode.blood_pressure(120, 80, 93))
        await thermo.measure(encode.temperature(36.6))
        found = await asyncio.wait_for(asyncio.gather(*waits), 5)
        assert [d.address for d in found] == [bp.address, thermo.address]
    finally:
        await runtime.close()


async def next_of(queue: asyncio.Queue[Event], kind: type[Event], timeout_s: float = 5) -> Event:
    """The next event of `kind` (others are skipped), within a bound."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await queue.get()
            if isinstance(event, kind):
                return event


def fast_recovery(runtime: BleRuntime) -> BleRuntime:
    runtime.power_off_s = runtime.reset_off_s = 0.01
    runtime.retry_s = 0.05
    return runtime


async def test_silence_takes_recovery_steps_and_never_asks_for_help(air: Air) -> None:
    """A quiet home (nothing advertises): steps in turn, the waiting driver keeps waiting,
    no "needs help"; after the reset the adapter still finds a device that measures."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    section = BleSection(stack="bumble", transport=air.transport, scan_stall_s=0.1)
    runtime = fast_recovery(BleRuntime(section, publish=events.put_nowait))
    bp = BloodPressureMonitor(air.air, "C0:00:00:00:01:03", "BP")
    await bp.start()
    try:
        wait = asyncio.create_task(runtime.wait_for_advertisement(bp.address))
        steps = [(await next_of(events, BleRecoveryStep)) for _ in range(4)]
        assert [s.step for s in steps if isinstance(s, BleRecoveryStep)] == [
            "restart_scan",
            "power_cycle",
            "reset",
            "restart_scan",
        ]
        assert not wait.done()
        await bp.measure(encode.blood_pressure(120, 80, 93))
        found = await asyncio.wait_for(wait, 5)
        assert found.address == bp.address
        seen = [events.get_nowait() for _ in range(events.qsize())]
        assert not any(isinstance(e, BleAdapterFailing) for e in seen)
        assert not runtime.health.failing
        assert runtime.health.steps["power_cycle"] >= 1 and runtime.health.steps["reset"] >= 1
    finally:
        await runtime.close()


async def test_an_adapter_that_cannot_start_asks_for_help_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No controller behind the transport: discovery cannot start, retried with backoff;
    "needs help" once, a clear error and no traceback at ERROR, the driver keeps waiting."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens
    section = BleSection(stack="bumble", transport=f"tcp-client:127.0.0.1:{port}")
    runtime = fast_recovery(BleRuntime(section, publish=events.put_nowait))
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.drivers.ble.runtime"):
            wait = asyncio.create_task(runtime.wait_for_advertisement("C0:00:00:00:09:09"))
            failing = await next_of(events, BleAdapterFailing)
            assert isinstance(failing, BleAdapterFailing)
            assert failing.error.startswith("discovery cannot start")
            # More failed retries, no second report.
            async with asyncio.timeout(5):
                while runtime.health.failures < 5:
                    await asyncio.sleep(0.05)
        assert not wait.done()
        assert not any(
            isinstance(events.get_nowait(), BleAdapterFailing) for _ in range(events.qsize())
        )
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "needs help" in errors[0].getMessage()
        assert errors[0].exc_info is None
    finally:
        await runtime.close()
