"""Pairing on the BlueZ path (issue 12 part 1): the hub's `org.bluez.Agent1`, registered with
dbusmock's bluez5 `AgentManager1`, and pairing only inside the installer's pairing window
(fixture and helpers in test_bluez_dbusmock.py).

What the template lacks is added here through dbusmock's API: a `Device1.Pair` that does what
bluetoothd does for a cuff with a fixed passkey (asks the default agent's RequestPasskey, fails
with AuthenticationFailed on a wrong one, else bonds, connects and resolves services).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant

from gateway.clock import SystemClock
from gateway.config import BleSection
from gateway.drivers.base import DriverContext, StoredReading
from gateway.drivers.ble.agent import AGENT_PATH
from gateway.drivers.ble.runtime import BleRuntime
from gateway.drivers.ble.stored import StoredOptions
from gateway.reading import Reading
from gateway.sim.ble import encode
from gateway.windows import CommandWindow
from tests.ble.test_bluez_dbusmock import (
    ADDRESS,
    BP_MEASUREMENT,
    CUFF_IFACE,
    DEVICE,
    IN_CI,
    MISSING,
    STEP_S,
    MockBluez,
    OneVisitBloodPressure,
    bluez,
)

pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=MISSING or "")
__all__ = ["bluez"]  # the fixture, used by name

PASSKEY = 314159
MANAGER = "/org/bluez"
AGENT_IFACE = "org.bluez.Agent1"
#: bluetoothd's Pair for a cuff with a fixed passkey: it asks the default agent
PAIR = """
agent = dbus.Interface(
    self.connection.get_object({name!r}, {path!r}, introspect=False), 'org.bluez.Agent1'
)
passkey = int(agent.RequestPasskey(dbus.ObjectPath(self.path), timeout=5))
if passkey != {passkey}:
    raise dbus.exceptions.DBusException(
        'wrong passkey', name='org.bluez.Error.AuthenticationFailed'
    )
self.paired = True
self.UpdateProperties('org.bluez.Device1', {{'Paired': dbus.Boolean(True)}})
self.UpdateProperties('org.bluez.Device1', {{'Connected': dbus.Boolean(True)}})
self.UpdateProperties('org.bluez.Device1', {{'ServicesResolved': dbus.Boolean(True)}})
"""


async def agent_manager(bluez: MockBluez) -> None:
    """The template's AgentManager1 as bluetoothd behaves: a second RegisterAgent from the same
    agent is AlreadyExists (the template's error message reads an attribute it never sets)."""
    await bluez.add_method(MANAGER, "org.homehub.MockFix", "Fix", "", "", "self.agent_path = ''")
    await bluez.call(MANAGER, "org.homehub.MockFix", "Fix")


class Recorder:
    """What the driver tells the hub: reports, needs_pairing flags, readings."""

    def __init__(self, bluez: MockBluez) -> None:
        self.bluez = bluez
        self.reports: list[str | None] = []
        self.needs: list[bool] = []
        self.needs_changed = asyncio.Event()
        self.readings: list[Reading] = []

    def needs_pairing(self, needed: bool) -> None:
        self.needs.append(needed)
        self.needs_changed.set()

    async def emit(self, reading: Reading) -> StoredReading:
        self.readings.append(reading)
        # Everything sent: the cuff drops the link, as real ones do.
        await self.bluez.update(
            DEVICE,
            "org.bluez.Device1",
            {"ServicesResolved": Variant("b", False), "Connected": Variant("b", False)},
        )
        return StoredReading(id=f"r{len(self.readings)}", seq=len(self.readings), duplicate=False)

    def context(self, pairing: CommandWindow, runtime: BleRuntime) -> DriverContext:
        return DriverContext(
            device_id="bp-1",
            clock=SystemClock(),
            logger=logging.getLogger("gateway.device.bp-1"),
            emit=self.emit,
            pairing=pairing,
            report=self.reports.append,
            needs_pairing=self.needs_pairing,
            clock_synced=lambda: True,
            services={BleRuntime: runtime},
        )


def cuff_options(**extra: Any) -> StoredOptions:
    return StoredOptions(
        id="bp-1", driver="ble.blood_pressure", address=ADDRESS, idle_s=STEP_S, **extra
    )


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) for a condition the mock reaches on its own, checked between its calls."""
    async with asyncio.timeout(STEP_S):
        while not await condition():
            await asyncio.sleep(0.02)


async def call_agent(
    bluez: MockBluez, name: str, member: str, signature: str, *body: Any
) -> Message:
    """bluetoothd calling the hub's agent."""
    reply = await bluez.bus.call(
        Message(
            destination=name,
            path=AGENT_PATH,
            interface=AGENT_IFACE,
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    assert reply is not None
    return reply


def runtime() -> BleRuntime:
    return BleRuntime(BleSection(stack="bluez", connect_timeout_s=STEP_S))


async def test_pair_only_inside_the_window_with_the_configured_passkey(
    bluez: MockBluez, caplog: pytest.LogCaptureFixture
) -> None:
    await agent_manager(bluez)
    await bluez.call(BP_MEASUREMENT, CUFF_IFACE, "Store", "ay", encode.blood_pressure(128, 82, 97))
    pairing = CommandWindow("pairing", 30)
    hub = runtime()
    seen = Recorder(bluez)
    driver = OneVisitBloodPressure(
        cuff_options(pair=True, passkey=PASSKEY), seen.context(pairing, hub)
    )
    caplog.set_level(logging.DEBUG)
    task = asyncio.create_task(driver.run())
    try:
        # The cuff advertises all the time; the hub sees it is not bonded and says so once.
        async with asyncio.timeout(STEP_S):
            await seen.needs_changed.wait()
        assert seen.needs == [True]
        (message,) = seen.reports
        assert message is not None and "bp-1" in message and "long-press" in message
        # The agent registered (with the capability a passkey needs) and is the default one.
        assert await bluez.calls(MANAGER, "RegisterAgent") == [[AGENT_PATH, "KeyboardDisplay"]]
        assert await bluez.calls(MANAGER, "RequestDefaultAgent") == [[AGENT_PATH]]
        # Outside the window: no Pair, no Connect; the driver waits, it does not retry.
        assert not task.done()
        assert await bluez.calls(DEVICE, "Pair") == []
        assert await bluez.calls(DEVICE, "Connect") == []
        assert hub.agent is not None and hub.agent.unique_name is not None
        await bluez.add_method(
            DEVICE,
            "org.bluez.Device1",
            "Pair",
            "",
            "",
            PAIR.format(name=hub.agent.unique_name, path=AGENT_PATH, passkey=PASSKEY),
        )
        # The installer's long press: the next advertisement pairs.
        pairing.open()
        async with asyncio.timeout(STEP_S):
            await task
    finally:
        task.cancel()
        await hub.close()
    assert len(await bluez.calls(DEVICE, "Pair")) == 1
    assert await bluez.calls(DEVICE, "Connect") == []  # BlueZ's Pair connects
    (reading,) = seen.readings
    assert {v.code: v.value for v in reading.values}["MDC_PRESS_BLD_NONINV_SYS"] == 128.0
    assert seen.needs == [True, False]
    assert seen.reports == [message, None]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings if "not paired" in r.getMessage()] == [message]
    # Never a passkey in the log, never an address at INFO or above.
    assert str(PASSKEY) not in caplog.text
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [m for m in info if ADDRESS in m or ADDRESS.replace(":", "_") in m]
    # The agent is unregistered when the hub stops.
    assert await bluez.calls(MANAGER, "UnregisterAgent") == [[AGENT_PATH]]


async def test_a_bond_survives_a_hub_restart(bluez: MockBluez) -> None:
    """BlueZ keeps the bond: a new hub reads a paired cuff with the window closed, no Pair."""
    await agent_manager(bluez)
    await bluez.call("/", "org.bluez.Mock", "PairDevice", "ssi", "hci0", ADDRESS, 0)
    await bluez.call(BP_MEASUREMENT, CUFF_IFACE, "Store", "ay", encode.blood_pressure(119, 77, 91))
    pairing = CommandWindow("pairing", 30)
    hub = runtime()
    seen = Recorder(bluez)
    driver = OneVisitBloodPressure(cuff_options(pair=True), seen.context(pairing, hub))
    try:
        async with asyncio.timeout(STEP_S):
            await driver.run()
    finally:
        await hub.close()
    assert not pairing.is_open
    assert len(seen.readings) == 1
    assert await bluez.calls(DEVICE, "Pair") == []
    assert len(await bluez.calls(DEVICE, "Connect")) == 1
    assert seen.needs == [] and seen.reports == []
    # Just Works for a device without a passkey.
    assert await bluez.calls(MANAGER, "RegisterAgent") == [[AGENT_PATH, "NoInputNoOutput"]]


async def test_the_agent_answers_only_inside_the_window(bluez: MockBluez) -> None:
    pairing = CommandWindow("pairing", 30)
    hub = runtime()
    try:
        await hub.expect_pairing(ADDRESS, None, pairing)
        assert hub.agent is not None
        name = hub.agent.unique_name
        assert name is not None
        other = DEVICE.replace("21", "99")  # a device that is not the hub's

        async def error(member: str, signature: str, *body: Any) -> str | None:
            reply = await call_agent(bluez, name, member, signature, *body)
            return reply.error_name if reply.message_type == MessageType.ERROR else None

        rejected = "org.bluez.Error.Rejected"
        # Outside the window every request is rejected.
        assert await error("RequestConfirmation", "ou", DEVICE, 123456) == rejected
        assert await error("RequestAuthorization", "o", DEVICE) == rejected
        assert await error("AuthorizeService", "os", DEVICE, "1810") == rejected
        assert await error("RequestPasskey", "o", DEVICE) == rejected
        assert await error("RequestPinCode", "o", DEVICE) == rejected
        assert await error("DisplayPinCode", "os", DEVICE, "0000") == rejected
        pairing.open()
        assert await error("RequestConfirmation", "ou", DEVICE, 123456) is None
        assert await error("RequestAuthorization", "o", DEVICE) is None
        assert await error("AuthorizeService", "os", DEVICE, "1810") is None
        assert await error("DisplayPasskey", "ouq", DEVICE, 123456, 0) is None
        assert await error("Cancel", "") is None
        # No passkey configured: a passkey request is refused, even in the window.
        assert await error("RequestPasskey", "o", DEVICE) == rejected
        # A device not in the config: refused in the window too.
        assert await error("RequestConfirmation", "ou", other, 123456) == rejected
        pairing.close()
        assert await error("RequestConfirmation", "ou", DEVICE, 123456) == rejected
    finally:
        await hub.close()


async def test_a_passkey_request_gets_the_configured_passkey(bluez: MockBluez) -> None:
    pairing = CommandWindow("pairing", 30)
    hub = runtime()
    try:
        await hub.expect_pairing(ADDRESS, 7, pairing)
        assert hub.agent is not None and hub.agent.unique_name is not None
        pairing.open()
        reply = await call_agent(bluez, hub.agent.unique_name, "RequestPasskey", "o", DEVICE)
        assert reply.message_type == MessageType.METHOD_RETURN
        assert reply.signature == "u" and reply.body == [7]
        pin = await call_agent(bluez, hub.agent.unique_name, "RequestPinCode", "o", DEVICE)
        assert pin.body == ["000007"]
    finally:
        await hub.close()


async def test_a_wrong_passkey_fails_inside_the_window(bluez: MockBluez) -> None:
    """The device refuses the passkey: a connection failure (retried), never a reading."""
    await agent_manager(bluez)
    pairing = CommandWindow("pairing", 30)
    hub = runtime()
    seen = Recorder(bluez)
    driver = OneVisitBloodPressure(cuff_options(pair=True, passkey=1), seen.context(pairing, hub))
    await hub.expect_pairing(ADDRESS, 1, pairing)
    assert hub.agent is not None
    await bluez.add_method(
        DEVICE,
        "org.bluez.Device1",
        "Pair",
        "",
        "",
        PAIR.format(name=hub.agent.unique_name, path=AGENT_PATH, passkey=PASSKEY),
    )
    pairing.open()
    task = asyncio.create_task(driver.run())
    try:
        await until(lambda: _pairs(bluez, 2), "two pairing attempts")
        assert not task.done()
        assert seen.readings == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await hub.close()


async def _pairs(bluez: MockBluez, n: int) -> bool:
    return len(await bluez.calls(DEVICE, "Pair")) >= n


#: bluetoothd when the device lost its bond: the encryption fails
BOND_REFUSED = """
if self.paired:
    raise dbus.exceptions.DBusException(
        'Authentication Failed', name='org.bluez.Error.AuthenticationFailed'
    )
"""
#: Adapter1.RemoveDevice, simplified: BlueZ forgets the bond (the device is found again)
REMOVE_DEVICE = """
device = objects[args[0]]
device.paired = False
device.UpdateProperties('org.bluez.Device1', {'Paired': dbus.Boolean(False)})
"""


async def test_a_lost_bond_is_removed_and_paired_again_inside_the_window(
    bluez: MockBluez,
) -> None:
    await agent_manager(bluez)
    await bluez.call("/", "org.bluez.Mock", "PairDevice", "ssi", "hci0", ADDRESS, 0)
    await bluez.add_method(DEVICE, "org.bluez.Device1", "Connect", "", "", BOND_REFUSED)
    await bluez.add_method(
        "/org/bluez/hci0", "org.bluez.Adapter1", "RemoveDevice", "o", "", REMOVE_DEVICE
    )
    await bluez.call(BP_MEASUREMENT, CUFF_IFACE, "Store", "ay", encode.blood_pressure(140, 90, 107))
    pairing = CommandWindow("pairing", 30)
    hub = runtime()
    await hub.expect_pairing(ADDRESS, PASSKEY, pairing)
    assert hub.agent is not None
    await bluez.add_method(
        DEVICE,
        "org.bluez.Device1",
        "Pair",
        "",
        "",
        PAIR.format(name=hub.agent.unique_name, path=AGENT_PATH, passkey=PASSKEY),
    )
    pairing.open()
    seen = Recorder(bluez)
    driver = OneVisitBloodPressure(
        cuff_options(pair=True, passkey=PASSKEY), seen.context(pairing, hub)
    )
    try:
        async with asyncio.timeout(STEP_S):
            await driver.run()
    finally:
        await hub.close()
    assert await bluez.calls("/org/bluez/hci0", "RemoveDevice") == [[DEVICE]]
    assert len(await bluez.calls(DEVICE, "Pair")) == 1
    assert len(seen.readings) == 1
