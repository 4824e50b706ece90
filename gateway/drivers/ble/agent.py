"""The hub's BlueZ pairing agent (`org.bluez.Agent1`), issue 12 part 1.

bleak's `pair()` registers no agent, so BlueZ has nobody to answer a device that asks
for a passkey or a confirmation, and such cuffs (Omron among them) fail with
`AuthenticationFailed`. This agent is registered with `AgentManager1.RegisterAgent`
and made the default agent (`RequestDefaultAgent`): bleak calls `Device1.Pair` on its
own D-Bus connection, which has no agent, so BlueZ asks the default one.

What it answers is decided by `PairingPolicy` (pure): only devices in the hub's
config, and only while the installer's pairing window (the long press) is open;
anything else is `org.bluez.Error.Rejected`. The capability is `NoInputNoOutput`
(Just Works) unless a device has a fixed `passkey` in its config: then
`KeyboardDisplay`, and `RequestPasskey` answers that device's passkey.

Nothing here logs a passkey or a device address above DEBUG.

No `from __future__ import annotations` here: dbus-fast reads the D-Bus signatures from
the methods' annotations, and would read a postponed `-> None` as a signature.
"""

import asyncio
import logging
from dataclasses import dataclass, field

from dbus_fast import DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from gateway.drivers.ble import bluez
from gateway.drivers.ble.recovery import AdapterError
from gateway.windows import CommandWindow

log = logging.getLogger(__name__)

AGENT_IFACE = "org.bluez.Agent1"
AGENT_MANAGER_IFACE = "org.bluez.AgentManager1"
AGENT_MANAGER_PATH = "/org/bluez"
#: where the hub's agent lives on its own D-Bus connection
AGENT_PATH = "/org/homehub/agent"
REJECTED = "org.bluez.Error.Rejected"
JUST_WORKS = "NoInputNoOutput"
WITH_PASSKEY = "KeyboardDisplay"


def address_of(device_path: str) -> str:
    """The address in a BlueZ device path: /org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF."""
    return device_path.rsplit("/", 1)[-1].removeprefix("dev_").replace("_", ":").upper()


@dataclass(slots=True)
class PairingPolicy:
    """What the agent may answer, and to whom: configured devices, inside the window."""

    window: CommandWindow
    #: configured devices that pair, by upper-case address: their fixed passkey, or None
    passkeys: dict[str, int | None] = field(default_factory=dict)

    def expect(self, address: str, passkey: int | None) -> None:
        self.passkeys[address.upper()] = passkey

    @property
    def capability(self) -> str:
        if any(passkey is not None for passkey in self.passkeys.values()):
            return WITH_PASSKEY
        return JUST_WORKS

    def allow(self, device_path: str, what: str) -> str:
        """The device's address if it may pair now; else raise Rejected (and say why at DEBUG)."""
        address = address_of(device_path)
        if address not in self.passkeys:
            log.debug("agent: %s from %s rejected: not a configured device", what, address)
            raise DBusError(REJECTED, "not a device of this hub")
        if not self.window.is_open:
            log.warning("agent: a pairing request (%s) outside the pairing window, rejected", what)
            raise DBusError(REJECTED, "the hub's pairing window is closed (long-press its button)")
        log.debug("agent: %s from %s accepted", what, address)
        return address

    def passkey(self, device_path: str) -> int:
        address = self.allow(device_path, "RequestPasskey")
        passkey = self.passkeys[address]
        if passkey is None:
            log.warning("agent: the device asks for a passkey and none is configured, rejected")
            raise DBusError(REJECTED, "no passkey configured for this device")
        return passkey


class Agent(ServiceInterface):
    """org.bluez.Agent1 as BlueZ's doc/org.bluez.Agent.rst describes it."""

    def __init__(self, policy: PairingPolicy) -> None:
        super().__init__(AGENT_IFACE)
        self.policy = policy

    @dbus_method(name="Release")
    def release(self) -> None:
        log.debug("agent: released by bluetoothd")

    @dbus_method(name="RequestPinCode")
    def request_pin_code(self, device: DBusObjectPath) -> DBusStr:
        # Legacy (BR/EDR) pairing; a fixed passkey is the device's PIN as well.
        return f"{self.policy.passkey(device):06d}"

    @dbus_method(name="DisplayPinCode")
    def display_pin_code(self, device: DBusObjectPath, pincode: DBusStr) -> None:
        # The hub has no display; accepting inside the window lets the device go on.
        self.policy.allow(device, "DisplayPinCode")

    @dbus_method(name="RequestPasskey")
    def request_passkey(self, device: DBusObjectPath) -> DBusUInt32:
        return self.policy.passkey(device)

    @dbus_method(name="DisplayPasskey")
    def display_passkey(
        self, device: DBusObjectPath, passkey: DBusUInt32, entered: DBusUInt16
    ) -> None:
        # Nothing to show it on; bluetoothd ignores this method's errors.
        log.debug("agent: DisplayPasskey (%d digits entered)", entered)

    @dbus_method(name="RequestConfirmation")
    def request_confirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> None:
        # Numeric comparison: nobody can compare, the window is the installer's consent.
        self.policy.allow(device, "RequestConfirmation")

    @dbus_method(name="RequestAuthorization")
    def request_authorization(self, device: DBusObjectPath) -> None:
        self.policy.allow(device, "RequestAuthorization")

    @dbus_method(name="AuthorizeService")
    def authorize_service(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        self.policy.allow(device, "AuthorizeService")

    @dbus_method(name="Cancel")
    def cancel(self) -> None:
        log.debug("agent: request cancelled by bluetoothd")


class PairingAgent:
    """The agent on a D-Bus connection of its own, registered (again) on demand.

    `register()` is cheap to call before every pairing: bluetoothd forgets agents when it
    restarts, and a capability that changed (a device with a passkey configured later)
    needs a new registration.
    """

    def __init__(self, policy: PairingPolicy) -> None:
        self.policy = policy
        self._bus: MessageBus | None = None
        self._registered: str | None = None  # the capability registered with
        self._lock = asyncio.Lock()

    @property
    def unique_name(self) -> str | None:
        """The agent's connection's unique bus name (tests call the agent there)."""
        return None if self._bus is None else self._bus.unique_name

    async def register(self) -> None:
        """Registered as the default agent with the current capability; AdapterError if not."""
        async with self._lock:
            bus = self._bus
            if bus is None or not bus.connected:
                self._registered = None
                bus = await bluez._connect()
                bus.export(AGENT_PATH, Agent(self.policy))
                self._bus = bus
            capability = self.policy.capability
            if self._registered not in (None, capability):
                await self._unregister(bus)
            try:
                await bluez._call(
                    bus,
                    AGENT_MANAGER_PATH,
                    AGENT_MANAGER_IFACE,
                    "RegisterAgent",
                    "os",
                    AGENT_PATH,
                    capability,
                )
            except bluez.BluezError as exc:
                # Ours is still registered (this connection registered it): fine.
                if exc.name != "org.bluez.Error.AlreadyExists":
                    raise
            await bluez._call(
                bus, AGENT_MANAGER_PATH, AGENT_MANAGER_IFACE, "RequestDefaultAgent", "o", AGENT_PATH
            )
            if self._registered != capability:
                log.info("ble: pairing agent registered (%s)", capability)
            self._registered = capability

    async def _unregister(self, bus: MessageBus) -> None:
        try:
            await bluez._call(
                bus, AGENT_MANAGER_PATH, AGENT_MANAGER_IFACE, "UnregisterAgent", "o", AGENT_PATH
            )
        except bluez.BluezError as exc:
            log.debug("ble: unregistering the agent: %s", exc)
        self._registered = None

    async def close(self) -> None:
        async with self._lock:
            bus, self._bus = self._bus, None
            if bus is None:
                return
            if self._registered is not None and bus.connected:
                try:
                    async with asyncio.timeout(bluez.CALL_S):
                        await self._unregister(bus)
                except (TimeoutError, AdapterError):
                    pass
            bus.disconnect()
