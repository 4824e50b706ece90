"""Adapter recovery and scan duty on the BlueZ path (issue 12 parts 3 and 4): the runtime with
`stack = "bluez"` (bleak's real BlueZ backend, our dbus-fast power cycle) against dbusmock's
bluez5 on a private bus (fixture and helpers in test_bluez_dbusmock.py).

What the template lacks is added here through dbusmock's API: a discovery during which
nothing advertises (a quiet home), a Properties.Set that refuses to power the adapter on, and
the re-added adapter's Roles (announced with PropertiesChanged, as bleak already listens).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from dbus_fast import Message, Variant

from gateway.config import BleSection
from gateway.drivers.ble.runtime import BleRuntime
from gateway.events import BleAdapterFailing, BleAdapterOk, BleRecoveryStep, Event
from gateway.windows import CommandWindow
from tests.ble.test_bluez_dbusmock import (
    ADAPTER,
    ADDRESS,
    IN_CI,
    MISSING,
    MOCK_IFACE,
    START_DISCOVERY,
    STEP_S,
    MockBluez,
    bluez,
)

pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=MISSING or "")
__all__ = ["bluez"]  # the fixture, used by name

ADAPTER_IFACE = "org.bluez.Adapter1"
#: discovery on, nothing advertising: a quiet home
QUIET_DISCOVERY = "self.UpdateProperties('org.bluez.Adapter1', {'Discovering': dbus.Boolean(True)})"
#: bluetoothd when the controller will not power on again (org.bluez.Error.Failed)
REFUSE_POWER_ON = """
interface, name, value = args
if name == 'Powered' and value:
    raise dbus.exceptions.DBusException('Failed', name='org.bluez.Error.Failed')
self.UpdateProperties(interface, {name: value})
"""


class AdapterSignals:
    """The adapter's PropertiesChanged, as (property, value), on the test's own bus."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_message(self, msg: Message) -> None:
        if msg.member == "PropertiesChanged" and msg.path == ADAPTER:
            interface, changed, _ = msg.body
            if interface == ADAPTER_IFACE:
                for name, value in changed.items():
                    self.queue.put_nowait((name, value.value))

    async def next(self, name: str, timeout_s: float = STEP_S) -> Any:
        async with asyncio.timeout(timeout_s):
            while True:
                changed, value = await self.queue.get()
                if changed == name:
                    return value


async def watch_adapter(bluez: MockBluez) -> AdapterSignals:
    signals = AdapterSignals()
    bluez.bus.add_message_handler(signals.on_message)
    rule = f"type='signal',interface='org.freedesktop.DBus.Properties',path='{ADAPTER}'"
    await bluez.bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )
    return signals


async def quiet(bluez: MockBluez) -> None:
    await bluez.add_method(ADAPTER, ADAPTER_IFACE, "StartDiscovery", "", "", QUIET_DISCOVERY)


def runtime_for(events: asyncio.Queue[Event], **ble: Any) -> BleRuntime:
    section = BleSection(stack="bluez", connect_timeout_s=STEP_S, **ble)
    runtime = BleRuntime(section, publish=events.put_nowait, measure=CommandWindow("measure", 60))
    runtime.power_off_s = runtime.reset_off_s = 0.05
    runtime.retry_s = 0.05
    return runtime


async def next_of(queue: asyncio.Queue[Event], kind: type[Event], timeout_s: float = STEP_S) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await queue.get()
            if isinstance(event, kind):
                return event


def drained(queue: asyncio.Queue[Event]) -> Iterator[Event]:
    while not queue.empty():
        yield queue.get_nowait()


async def test_silence_power_cycles_the_adapter_and_never_asks_for_help(bluez: MockBluez) -> None:
    await quiet(bluez)
    signals = await watch_adapter(bluez)
    events: asyncio.Queue[Event] = asyncio.Queue()
    runtime = runtime_for(events, scan_stall_s=0.3, idle_scan_s=5, idle_period_s=5)
    wait = asyncio.create_task(runtime.wait_for_advertisement(ADDRESS))
    try:
        assert (await next_of(events, BleRecoveryStep)).step == "restart_scan"
        assert (await next_of(events, BleRecoveryStep)).step == "power_cycle"
        # Adapter1.Powered off, then on again, seen on the bus as BlueZ announces it.
        assert await signals.next("Powered") is False
        assert await signals.next("Powered") is True
        assert (await next_of(events, BleRecoveryStep)).step == "reset"
        assert (await next_of(events, BleRecoveryStep)).step == "restart_scan"
        assert not wait.done()
        assert not any(isinstance(e, BleAdapterFailing) for e in drained(events))
        assert not runtime.health.failing
        # Discovery runs again after every step.
        assert len(await bluez.calls(ADAPTER, "StartDiscovery")) >= 4
    finally:
        wait.cancel()
        await runtime.close()


async def test_an_adapter_that_cannot_power_on_asks_for_help_once(
    bluez: MockBluez, caplog: pytest.LogCaptureFixture
) -> None:
    await quiet(bluez)
    await bluez.add_method(
        ADAPTER, "org.freedesktop.DBus.Properties", "Set", "ssv", "", REFUSE_POWER_ON
    )
    events: asyncio.Queue[Event] = asyncio.Queue()
    runtime = runtime_for(events, scan_stall_s=0.2, idle_scan_s=5, idle_period_s=5)
    wait = asyncio.create_task(runtime.wait_for_advertisement(ADDRESS))
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.drivers.ble.runtime"):
            failing = await next_of(events, BleAdapterFailing)
            assert "power" in failing.error
            async with asyncio.timeout(STEP_S):
                while runtime.health.failures < 4:  # it keeps trying, with backoff
                    await asyncio.sleep(0.05)
        assert not any(isinstance(e, BleAdapterFailing) for e in drained(events))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "needs help" in errors[0].getMessage()
        assert errors[0].exc_info is None
        assert not wait.done()
    finally:
        wait.cancel()
        await runtime.close()


async def test_a_removed_and_re_added_adapter_is_used_again(bluez: MockBluez) -> None:
    events: asyncio.Queue[Event] = asyncio.Queue()
    await quiet(bluez)
    runtime = runtime_for(events, scan_stall_s=0.2, idle_scan_s=5, idle_period_s=5)
    wait = asyncio.create_task(runtime.wait_for_advertisement(ADDRESS))
    try:
        await next_of(events, BleRecoveryStep)  # scanning, quiet
        await bluez.call("/", "org.bluez.Mock", "RemoveAdapter", "s", "hci0")
        failing = await next_of(events, BleAdapterFailing)
        assert "adapter" in failing.error.lower()
        # Plugged back in: bluetoothd announces it again; this time the cuff advertises.
        await bluez.call("/", "org.bluez.Mock", "AddAdapter", "ss", "hci0", "homehub")
        roles = Variant("as", ["central", "peripheral"])
        await bluez.call(ADAPTER, MOCK_IFACE, "AddProperty", "ssv", ADAPTER_IFACE, "Roles", roles)
        await bluez.update(ADAPTER, ADAPTER_IFACE, {"Roles": roles})
        await bluez.add_method(ADAPTER, ADAPTER_IFACE, "StartDiscovery", "", "", START_DISCOVERY)
        await next_of(events, BleAdapterOk)
        found = await asyncio.wait_for(wait, STEP_S)
        assert found.address == ADDRESS
        assert not runtime.health.failing
    finally:
        wait.cancel()
        await runtime.close()


async def test_the_measure_window_changes_the_scan_duty(bluez: MockBluez) -> None:
    """Outside the window: 0.3 s scans every 0.8 s (Discovering on and off on the bus);
    inside it discovery stays on; closing it brings the low duty back."""
    await quiet(bluez)
    signals = await watch_adapter(bluez)
    events: asyncio.Queue[Event] = asyncio.Queue()
    runtime = runtime_for(events, scan_stall_s=0, idle_scan_s=0.3, idle_period_s=0.8)
    loop = asyncio.get_running_loop()
    wait = asyncio.create_task(runtime.wait_for_advertisement(ADDRESS))
    try:
        transitions = []
        for _ in range(4):
            transitions.append((await signals.next("Discovering"), loop.time()))
        assert [on for on, _ in transitions] == [True, False, True, False]
        (_, on1), (_, off1), (_, on2), _ = transitions
        assert 0.2 < off1 - on1 < 0.6  # a burst of idle_scan_s
        assert 0.6 < on2 - on1 < 1.2  # one per idle_period_s
        runtime.measure.open(3.0)
        assert await signals.next("Discovering") is True
        # Full duty: no stop for well over an idle period.
        with pytest.raises(TimeoutError):
            await signals.next("Discovering", timeout_s=2.0)
        assert runtime.scanning
        runtime.measure.close()
        assert await signals.next("Discovering") is False
        assert await signals.next("Discovering") is True  # the low duty again
        assert not wait.done()
    finally:
        wait.cancel()
        await runtime.close()


async def test_no_system_bus_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-socket")
    events: asyncio.Queue[Event] = asyncio.Queue()
    runtime = runtime_for(events)
    wait = asyncio.create_task(runtime.wait_for_advertisement(ADDRESS))
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.drivers.ble.runtime"):
            failing = await next_of(events, BleAdapterFailing)
        assert "cannot reach the system D-Bus" in failing.error
        assert f"{tmp_path}/no-such-socket" in failing.error
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None
        assert "Traceback" not in caplog.text
        assert not wait.done()
    finally:
        wait.cancel()
        await runtime.close()
