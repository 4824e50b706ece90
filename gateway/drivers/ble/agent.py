"""The hub's BlueZ pairing agent (`org.bluez.Agent1`), issue 12 part 1.

bleak's `pair()` registers no agent, so BlueZ has nobody to answer a device that asks
for a passkey or a confirmation, and such cuffs (Omron among them) fail with
`AuthenticationFailed`. This agent is registered with `AgentManager1.RegisterAgent`
and made the default agent (`RequestDefaultAgent`): bleak calls `Device1.Pair` on its
own D-Bus connection, which has no agent, so BlueZ asks the default one.

What it answers is decided by `pairing.PairingPolicy` (pure, shared with the Bumble
stack): only devices in the hub's config, and only while the installer's pairing window
(the long press) is open; anything else is `org.bluez.Error.Rejected`. The capability
is `NoInputNoOutput` (Just Works) unless a device has a fixed `passkey` in its config:
then `KeyboardDisplay`, and `RequestPasskey` answers that device's passkey.

Nothing here logs a passkey or a device address above DEBUG.

No `from __future__ import annotations` here: dbus-fast reads the D-Bus signatures from
the methods' annotations, and would read a postponed `-> None` as a signature.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from dbus_fast import DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from gateway.drivers.ble import bluez
from gateway.drivers.ble.pairing import PairingPolicy, Refused
from gateway.drivers.ble.recovery import AdapterError

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


def capability(policy: PairingPolicy) -> str:
    return WITH_PASSKEY if policy.uses_passkeys else JUST_WORKS


@contextlib.contextmanager
def _rejected() -> Iterator[None]:
    """The policy's refusal as BlueZ's org.bluez.Error.Rejected."""
    try:
        yield
    except Refused as exc:
        raise DBusError(REJECTED, str(exc)) from None


class Agent(ServiceInterface):
    """org.bluez.Agent1 as BlueZ's doc/org.bluez.Agent.rst describes it."""

    def __init__(self, policy: PairingPolicy) -> None:
        super().__init__(AGENT_IFACE)
        self.policy = policy

    def _allow(self, device: str, what: str) -> None:
        with _rejected():
            self.policy.allow(address_of(device), what)

    @dbus_method(name="Release")
    def release(self) -> None:
        log.debug("agent: released by bluetoothd")

    @dbus_method(name="RequestPinCode")
    def request_pin_code(self, device: DBusObjectPath) -> DBusStr:
        # Legacy (BR/EDR) pairing; a fixed passkey is the device's PIN as well.
        with _rejected():
            return f"{self.policy.passkey(address_of(device)):06d}"

    @dbus_method(name="DisplayPinCode")
    def display_pin_code(self, device: DBusObjectPath, pincode: DBusStr) -> None:
        # The hub has no display; accepting inside the window lets the device go on.
        self._allow(device, "DisplayPinCode")

    @dbus_method(name="RequestPasskey")
    def request_passkey(self, device: DBusObjectPath) -> DBusUInt32:
        with _rejected():
            return self.policy.passkey(address_of(device))

    @dbus_method(name="DisplayPasskey")
    def display_passkey(
        self, device: DBusObjectPath, passkey: DBusUInt32, entered: DBusUInt16
    ) -> None:
        # Nothing to show it on; bluetoothd ignores this method's errors.
        log.debug("agent: DisplayPasskey (%d digits entered)", entered)

    @dbus_method(name="RequestConfirmation")
    def request_confirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> None:
        # Numeric comparison: nobody can compare, the window is the installer's consent.
        self._allow(device, "RequestConfirmation")

    @dbus_method(name="RequestAuthorization")
    def request_authorization(self, device: DBusObjectPath) -> None:
        self._allow(device, "RequestAuthorization")

    @dbus_method(name="AuthorizeService")
    def authorize_service(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        self._allow(device, "AuthorizeService")

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
            wanted = capability(self.policy)
            if self._registered not in (None, wanted):
                await self._unregister(bus)
            try:
                await bluez._call(
                    bus,
                    AGENT_MANAGER_PATH,
                    AGENT_MANAGER_IFACE,
                    "RegisterAgent",
                    "os",
                    AGENT_PATH,
                    wanted,
                )
            except bluez.BluezError as exc:
                # Ours is still registered (this connection registered it): fine.
                if exc.name != "org.bluez.Error.AlreadyExists":
                    raise
            await bluez._call(
                bus, AGENT_MANAGER_PATH, AGENT_MANAGER_IFACE, "RequestDefaultAgent", "o", AGENT_PATH
            )
            if self._registered != wanted:
                log.info("ble: pairing agent registered (%s)", wanted)
            self._registered = wanted

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
