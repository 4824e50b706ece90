"""bleak's BaseBleakClient over a shared BumbleAdapter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bumble.core import UUID, BaseBumbleError
from bumble.device import Connection, Peer
from bumble.gatt_client import CharacteristicProxy, DescriptorProxy
from bumble.hci import Address

from gateway.drivers.ble.bumble.adapter import BumbleAdapter, bleak_uuid

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _as_bleak_error(what: str) -> Iterator[None]:
    """Bumble's errors as BleakError, so drivers handle one family of exceptions."""
    try:
        yield
    except BleakError:
        raise
    except (BaseBumbleError, ConnectionError) as exc:
        raise BleakError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _properties(bits: int) -> list[CharacteristicPropertyName]:
    return [name for bit, name in CHARACTERISTIC_PROPERTIES.items() if bits & bit]


class BumbleClient(BaseBleakClient):
    """A GATT client on the hub's Bumble host."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        services: set[str] | None = None,
        *,
        bumble: BumbleAdapter,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, **kwargs)
        self._adapter = bumble
        self._peer_address: Address | None = None
        if isinstance(address_or_ble_device, BLEDevice) and isinstance(
            address_or_ble_device.details, Address
        ):
            self._peer_address = address_or_ble_device.details
        self._service_filter = services
        self._connection: Connection | None = None
        self._subscriptions: dict[int, Callable[[bytes], None]] = {}
        self._closing = False

    # -- connection ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.address

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    def _resolve(self) -> Address:
        if self._peer_address is not None:
            return self._peer_address
        seen = self._adapter.seen.get(self.address.upper())
        if seen is None:
            raise BleakDeviceNotFoundError(self.address, "device not seen by the Bumble host")
        return seen

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        device = await self._adapter.open()
        address = self._resolve()
        with _as_bleak_error("connect"):
            try:
                connection = await device.connect(address, timeout=self._timeout)
            except TimeoutError:
                raise BleakError("connect: timed out") from None
        self._connection = connection
        self._closing = False
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            if pair:
                await self._secure(connection, address)
            async with asyncio.timeout(self._timeout):
                await self._discover(connection)
        except BaseException:
            await self.disconnect()
            raise

    def _on_disconnection(self, _reason: int) -> None:
        self._connection = None
        self._subscriptions.clear()
        if not self._closing and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection, self._closing = self._connection, True
        if connection is None:
            return
        with contextlib.suppress(BaseBumbleError, asyncio.TimeoutError, ConnectionError):
            async with asyncio.timeout(2.0):
                await connection.disconnect()
        self._connection = None

    async def _secure(self, connection: Connection, address: Address) -> None:
        """Encrypt the link: with the stored bond when there is one, else pair (and bond).

        Issue 12: a bonded device is not paired again on every visit (that needs the
        installer's window, and some devices refuse a second pairing); the stored key
        re-encrypts the link, as BlueZ does for a paired device.
        """
        if await self._adapter.bonded(address):
            with _as_bleak_error("encrypt with the stored bond"):
                async with asyncio.timeout(self._timeout):
                    await connection.encrypt()
            log.debug("bumble: link encrypted with the stored bond")
            return
        await self.pair()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        with _as_bleak_error("pair"):
            await self._require().pair()

    async def unpair(self) -> None:
        keystore = self._adapter.device.keystore
        if keystore is not None:
            with contextlib.suppress(KeyError):
                await keystore.delete(self._resolve().to_string(False))

    def _require(self) -> Connection:
        if self._connection is None:
            raise BleakError("not connected")
        return self._connection

    # -- discovery ---------------------------------------------------------------------------

    async def _discover(self, connection: Connection) -> None:
        peer = Peer(connection)
        wanted = [UUID(u) for u in self._service_filter or ()]
        collection = BleakGATTServiceCollection()
        with _as_bleak_error("discover"):
            for service in await peer.discover_services(wanted):
                bleak_service = BleakGATTService(service, service.handle, bleak_uuid(service.uuid))
                collection.add_service(bleak_service)
                for char in await service.discover_characteristics():
                    bleak_char = BleakGATTCharacteristic(
                        char,
                        char.handle,
                        bleak_uuid(char.uuid),
                        _properties(int(char.properties)),
                        lambda: self.mtu_size - 3,
                        bleak_service,
                    )
                    collection.add_characteristic(bleak_char)
                    for descriptor in await char.discover_descriptors():
                        collection.add_descriptor(
                            BleakGATTDescriptor(
                                descriptor,
                                descriptor.handle,
                                bleak_uuid(descriptor.type),
                                bleak_char,
                            )
                        )
        self.services = collection

    # -- I/O -------------------------------------------------------------------------------------

    @staticmethod
    def _proxy(characteristic: BleakGATTCharacteristic) -> CharacteristicProxy[bytes]:
        proxy = characteristic.obj
        assert isinstance(proxy, CharacteristicProxy)
        return proxy

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        self._require()
        with _as_bleak_error("read"):
            return bytearray(await self._proxy(characteristic).read_value())

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        self._require()
        proxy = descriptor.obj
        assert isinstance(proxy, DescriptorProxy)
        with _as_bleak_error("read descriptor"):
            return bytearray(await proxy.read_value())

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        self._require()
        with _as_bleak_error("write"):
            await self._proxy(characteristic).write_value(bytes(data), with_response=response)

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        self._require()
        proxy = descriptor.obj
        assert isinstance(proxy, DescriptorProxy)
        with _as_bleak_error("write descriptor"):
            await proxy.write_value(bytes(data), with_response=True)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        self._require()

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        self._subscriptions[characteristic.handle] = deliver
        with _as_bleak_error("subscribe"):
            await self._proxy(characteristic).subscribe(deliver, prefer_notify=True)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        deliver = self._subscriptions.pop(characteristic.handle, None)
        if self._connection is None:
            return
        with _as_bleak_error("unsubscribe"):
            await self._proxy(characteristic).unsubscribe(deliver)
