"""A virtual peripheral: a Bumble device on the virtual air that behaves like a real one.

Like real home-monitoring devices it advertises only when it has something to
send (after a measurement), sends its stored records once a client subscribes,
removes a record only when the client confirmed it (indications), accepts a
Current Time write, and drops the link when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address
from bumble.host import Host
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport.common import AsyncPipeSink

from gateway.drivers.ble.profiles.date_time import (
    CURRENT_TIME_SERVICE_UUID,
    CURRENT_TIME_UUID,
    CurrentTime,
    decode_current_time,
    encode_current_time,
)
from gateway.errors import DecodeError
from gateway.sim.ble.air import VirtualAir

if TYPE_CHECKING:
    from gateway.sim.ble.uds import VirtualUds

log = logging.getLogger(__name__)

ADVERTISING_INTERVAL_MS = 20.0


def short_uuid(full: str) -> str:
    """'00002a35-0000-1000-8000-00805f9b34fb' -> '2A35'; 128-bit UUIDs unchanged."""
    if full.endswith("-0000-1000-8000-00805f9b34fb") and full.startswith("0000"):
        return full[4:8].upper()
    return full


class FixedPasskey(PairingDelegate):
    """A device that shows no passkey and has a fixed one (printed on it, in its manual)."""

    def __init__(self, passkey: int) -> None:
        super().__init__(io_capability=PairingDelegate.IoCapability.DISPLAY_OUTPUT_ONLY)
        self.passkey = passkey

    async def generate_passkey(self) -> int:
        return self.passkey


class VirtualPeripheral:
    """Base class: subclasses add their services and decide what to send."""

    service_uuid: str = ""

    def __init__(self, air: VirtualAir, address: str, name: str) -> None:
        self.address = address
        self.name = name
        self.controller = Controller(name, link=air.link)
        self.device = Device(
            name=name,
            address=Address(address),
            host=Host(self.controller, AsyncPipeSink(self.controller)),
        )
        self.connection: Connection | None = None
        self.connections = 0
        #: pairings completed, and links encrypted (a stored bond encrypts without pairing)
        self.pairings = 0
        self.encryptions = 0
        self.time_written: CurrentTime | None = None
        #: issue 13: the device's clock against the real local time (None: it does not
        #: know the time, Current Time reads as zeros); a write sets it right (0)
        self.clock_offset: timedelta | None = None
        self.time_set = asyncio.Event()
        self.disconnected = asyncio.Event()
        self._advertising = False
        #: False: the device stays quiet (out of range, switched off) until set again
        self.advertising_enabled = True
        self._tasks: set[asyncio.Task[None]] = set()
        #: a fixed passkey the device pairs with (passkey entry, MITM); None: Just Works
        self.passkey: int | None = None
        self.device.pairing_config_factory = self._pairing_config
        self.device.on(self.device.EVENT_CONNECTION, self._on_connection)
        self.device.add_services([*self.services(), self._time_service()])

    # -- to override -------------------------------------------------------------------------

    def services(self) -> Sequence[Service]:
        raise NotImplementedError

    def has_data(self) -> bool:
        """Whether the device has something to send (and so advertises)."""
        return False

    async def on_subscribed(
        self, connection: Connection, characteristic: Characteristic[Any]
    ) -> None:
        """A client enabled notifications or indications on `characteristic`."""

    # -- behaviour ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.device.power_on()
        if self.has_data():
            await self.advertise()

    async def advertise(self) -> None:
        if self._advertising or self.connection is not None or not self.advertising_enabled:
            return
        data = AdvertisingData(
            [
                (AdvertisingData.Type.FLAGS, bytes([0x06])),
                (AdvertisingData.Type.COMPLETE_LOCAL_NAME, self.name.encode()),
                self._uuid_field(),
            ]
        )
        await self.device.start_advertising(
            advertising_data=bytes(data),
            advertising_interval_min=ADVERTISING_INTERVAL_MS,
            advertising_interval_max=ADVERTISING_INTERVAL_MS,
        )
        self._advertising = True

    def _uuid_field(self) -> tuple[int, bytes]:
        uuid = UUID(short_uuid(self.service_uuid))
        if len(uuid.to_bytes()) == 2:
            return (
                AdvertisingData.Type.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                uuid.to_bytes(),
            )
        return (
            AdvertisingData.Type.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            uuid.to_bytes(),
        )

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection(self, connection: Connection) -> None:
        self._advertising = False  # a legacy advertiser stops when connected
        self.connection = connection
        self.connections += 1
        self.disconnected.clear()
        connection.on(connection.EVENT_DISCONNECTION, lambda _reason: self._on_disconnection())
        connection.on(connection.EVENT_PAIRING, self._on_pairing)
        connection.on(connection.EVENT_CONNECTION_ENCRYPTION_CHANGE, self._on_encrypted)

    def _pairing_config(self, _connection: Connection) -> PairingConfig:
        if self.passkey is None:
            return PairingConfig()
        return PairingConfig(sc=True, mitm=True, delegate=FixedPasskey(self.passkey))

    def _on_pairing(self, _keys: object) -> None:
        self.pairings += 1

    def _on_encrypted(self) -> None:
        self.encryptions += 1

    def _on_disconnection(self) -> None:
        self.connection = None
        self.disconnected.set()
        if self.has_data():
            self.spawn(self.advertise())

    async def drop_link(self) -> None:
        """Disconnect, as devices do when done or when the radio fails."""
        connection = self.connection
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    def _time_service(self) -> Service:
        def write(_connection: Connection, value: bytes) -> None:
            try:
                self.time_written = decode_current_time(value)
                if self.time_written.time is not None:
                    self.clock_offset = self.time_written.time - datetime.now()
            except DecodeError:
                log.warning("virtual %s: bad Current Time write", self.name)
                return
            self.time_set.set()

        def read(_connection: Connection) -> bytes:
            if self.clock_offset is None:
                return bytes(10)
            return encode_current_time(datetime.now() + self.clock_offset)

        char: Characteristic[bytes] = Characteristic(
            short_uuid(CURRENT_TIME_UUID),
            Characteristic.Properties.READ
            | Characteristic.Properties.WRITE
            | Characteristic.Properties.NOTIFY,
            Characteristic.READABLE | Characteristic.WRITEABLE,
            CharacteristicValue(read=read, write=write),
        )
        return Service(short_uuid(CURRENT_TIME_SERVICE_UUID), [char])

    def watch_subscription(self, characteristic: Characteristic[Any]) -> None:
        def on_subscription(connection: Connection, notify: bool, indicate: bool) -> None:
            if notify or indicate:
                self.spawn(self.on_subscribed(connection, characteristic))

        characteristic.on(characteristic.EVENT_SUBSCRIPTION, on_subscription)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.device.power_off()


class StoredRecordsPeripheral(VirtualPeripheral):
    """Blood pressure cuffs, thermometers, scales, spot-check oximeters: indicate, then leave.

    Each queued record is indicated once the client subscribes; it leaves the
    queue only when the client confirmed the indication. Then the device waits
    `linger_s` and drops the link, like the real ones.

    `uds`: a multi-user device's User Data Service; when it requires consent,
    records are sent only on a connection where the client gave it.
    """

    measurement_uuid: str = ""
    linger_s = 0.05

    def __init__(
        self, air: VirtualAir, address: str, name: str, *, uds: VirtualUds | None = None
    ) -> None:
        self.uds = uds
        self.pending: list[bytes] = []
        self.delivered: list[bytes] = []
        self.measurement = Characteristic(
            short_uuid(self.measurement_uuid),
            Characteristic.Properties.INDICATE,
            Characteristic.READABLE,
            b"",
        )
        super().__init__(air, address, name)
        self.watch_subscription(self.measurement)

    def extra_characteristics(self) -> list[Characteristic[Any]]:
        return []

    def services(self) -> Sequence[Service]:
        services = [
            Service(
                short_uuid(self.service_uuid), [self.measurement, *self.extra_characteristics()]
            )
        ]
        if self.uds is not None:
            services.append(self.uds.service(self))
        return services

    def _on_disconnection(self) -> None:
        if self.uds is not None and self.connection is not None:
            self.uds.forget(self.connection)
        super()._on_disconnection()

    def has_data(self) -> bool:
        return bool(self.pending)

    async def measure(self, record: bytes) -> None:
        """A new measurement: keep it and advertise."""
        self.pending.append(record)
        await self.advertise()

    async def on_subscribed(
        self, connection: Connection, characteristic: Characteristic[Any]
    ) -> None:
        if characteristic is not self.measurement:
            return
        allowed = self.uds is None or self.uds.may_send(connection)
        while allowed and self.pending and self.connection is connection:
            record = self.pending[0]
            await self.device.indicate_subscriber(connection, self.measurement, record)
            self.pending.pop(0)
            self.delivered.append(record)
        await asyncio.sleep(self.linger_s)  # a real device's idle time before it leaves
        if self.connection is connection:
            await self.drop_link()
