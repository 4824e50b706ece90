"""The BlueZ adapter on the system D-Bus: find it, power-cycle it (issue 12 part 4), and
whether a device is bonded (part 1; the pairing agent is in `agent.py`).

Through dbus-fast, which bleak already brings, on a connection of our own (bleak's
is private to it). bluetoothd answers `Properties.Set(Adapter1, Powered)` only once
the kernel has powered the controller off or on, and Linux sends HCI_Reset when it
powers a controller on: a power cycle is the strongest reset BlueZ offers over
D-Bus. The hub's user needs bluetoothd's D-Bus policy (the `bluetooth` group), as
bleak itself does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from gateway.drivers.ble.recovery import AdapterError

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
#: bound on each D-Bus call (bluetoothd answers Powered once the kernel has acted)
CALL_S = 10.0


def describe(exc: BaseException) -> str:
    """A stack error as an installer can act on it, without a traceback (no addresses)."""
    from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError

    if isinstance(exc, AdapterError):
        return str(exc)
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        where = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "/run/dbus/system_bus_socket")
        return f"cannot reach the system D-Bus at {where} ({type(exc).__name__}): is dbus running?"
    if (
        isinstance(exc, BleakDBusError)
        and exc.dbus_error == "org.freedesktop.DBus.Error.ServiceUnknown"
    ):
        return "bluetoothd is not running (org.bluez is not on the system D-Bus)"
    if isinstance(exc, BleakBluetoothNotAvailableError):
        return f"no usable Bluetooth adapter: {exc}"
    if isinstance(exc, TimeoutError):
        return "the Bluetooth stack did not answer in time"
    return f"{type(exc).__name__}: {exc}"


class BluezError(AdapterError):
    """bluetoothd answered a call with an error; `name` is the D-Bus error's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


async def _connect() -> Any:
    from bleak.backends.bluezdbus.utils import get_dbus_authenticator
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    bus = MessageBus(bus_type=BusType.SYSTEM, auth=get_dbus_authenticator())
    try:
        await bus.connect()
    except Exception as exc:
        bus.disconnect()
        raise AdapterError(describe(exc)) from exc
    return bus


async def _call(
    bus: Any, path: str, interface: str, member: str, signature: str, *body: Any
) -> Any:
    from dbus_fast import Message, MessageType

    message = Message(
        destination=BLUEZ,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=list(body),
    )
    async with asyncio.timeout(CALL_S):
        reply = await bus.call(message)
    if reply.message_type == MessageType.ERROR:
        if reply.error_name == "org.freedesktop.DBus.Error.ServiceUnknown":
            raise AdapterError("bluetoothd is not running (org.bluez is not on the system D-Bus)")
        detail = reply.body[0] if reply.body else ""
        raise BluezError(
            reply.error_name or "",
            f"{interface}.{member} on {path}: {reply.error_name} {detail}".strip(),
        )
    return reply.body


async def find_adapter(bus: Any) -> str:
    """The adapter bleak scans on: the first (by path) with the LE central role."""
    (objects,) = await _call(
        bus, "/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", ""
    )
    adapters = sorted(
        path
        for path, interfaces in objects.items()
        if "central" in _roles(interfaces.get(ADAPTER_IFACE))
    )
    if not adapters:
        raise AdapterError(
            "the Bluetooth adapter is gone (no BlueZ adapter with the LE central role)"
        )
    return str(adapters[0])


def _roles(adapter: dict[str, Any] | None) -> list[str]:
    roles = None if adapter is None else adapter.get("Roles")
    return [] if roles is None else list(roles.value)


async def powered(bus: Any, adapter: str) -> bool:
    (value,) = await _call(bus, adapter, PROPERTIES_IFACE, "Get", "ss", ADAPTER_IFACE, "Powered")
    return bool(value.value)


async def set_powered(bus: Any, adapter: str, on: bool) -> None:
    from dbus_fast import Variant

    await _call(
        bus, adapter, PROPERTIES_IFACE, "Set", "ssv", ADAPTER_IFACE, "Powered", Variant("b", on)
    )


async def power_cycle(pause_s: float) -> str:
    """Power the adapter off, wait `pause_s`, power it on; its path. AdapterError when it
    vanished or does not power on again."""
    bus = await _connect()
    try:
        adapter = await find_adapter(bus)
        await set_powered(bus, adapter, False)
        await asyncio.sleep(pause_s)  # the controller's own time to settle, not a poll
        try:
            await set_powered(bus, adapter, True)
        except AdapterError as exc:
            raise AdapterError(f"the Bluetooth adapter did not power on again: {exc}") from exc
        if not await powered(bus, adapter):
            raise AdapterError("the Bluetooth adapter did not power on again (Powered is false)")
        log.debug("ble: %s power-cycled", adapter)
        return adapter
    finally:
        bus.disconnect()


async def is_paired(path: str) -> bool:
    """Whether BlueZ holds a bond for the device at `path` (Device1.Paired, asked now: bleak's
    copy of the property is private to it). A device BlueZ does not know is not paired."""
    bus = await _connect()
    try:
        (value,) = await _call(bus, path, PROPERTIES_IFACE, "Get", "ss", DEVICE_IFACE, "Paired")
    except BluezError as exc:
        if exc.name in ("org.freedesktop.DBus.Error.UnknownObject", "org.bluez.Error.DoesNotExist"):
            return False
        raise
    finally:
        bus.disconnect()
    return bool(value.value)


async def remove_device(path: str) -> None:
    """Adapter1.RemoveDevice: BlueZ forgets the device and its bond (found again by the
    next discovery, unpaired)."""
    bus = await _connect()
    try:
        adapter = path.rsplit("/", 1)[0]
        await _call(bus, adapter, ADAPTER_IFACE, "RemoveDevice", "o", path)
    finally:
        bus.disconnect()
