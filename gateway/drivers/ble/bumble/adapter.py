"""One Bumble host on one HCI transport, shared by every scanner and client of the hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

from bumble.core import UUID
from bumble.device import Advertisement, Connection, Device
from bumble.hci import Address
from bumble.keys import JsonKeyStore
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from bumble.transport.common import Transport

from gateway.drivers.ble.pairing import PairingPolicy, Refused

log = logging.getLogger(__name__)

AdvertisementListener = Callable[[Advertisement], None]

#: The hub's own random static address (the two top bits set, Core Vol 6 Part B §1.3.2.1).
DEFAULT_HUB_ADDRESS = "F0:48:55:42:00:01"


class HubPairingDelegate(PairingDelegate):
    """Bumble's side of the hub's pairing policy (issue 12): what the BlueZ agent answers,
    for one peer: only inside the pairing window, the configured passkey or none."""

    def __init__(self, policy: PairingPolicy, address: str) -> None:
        passkey = policy.passkeys.get(address) is not None
        super().__init__(
            io_capability=(
                PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY
                if passkey
                else PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT
            )
        )
        self.policy = policy
        self.address = address

    def _may(self, what: str) -> bool:
        try:
            self.policy.allow(self.address, what)
        except Refused:
            return False
        return True

    async def accept(self) -> bool:
        return self._may("pairing request")

    async def confirm(self, auto: bool = False) -> bool:
        return self._may("confirmation")

    async def compare_numbers(self, number: int, digits: int) -> bool:
        return self._may("numeric comparison")

    async def get_number(self) -> int | None:
        try:
            return self.policy.passkey(self.address)
        except Refused:
            return None  # Bumble aborts the pairing

    async def display_number(self, number: int, digits: int) -> None:
        """Nothing to show it on."""


def bleak_uuid(value: UUID) -> str:
    """A Bumble UUID as bleak writes it: 128-bit, lower case, dashed."""
    return str(uuid.UUID(bytes=bytes(reversed(value.to_bytes(force_128=True)))))


class BumbleAdapter:
    """Opens the transport and powers the host on at first use; fans advertisements out."""

    def __init__(
        self,
        transport: str,
        address: str = DEFAULT_HUB_ADDRESS,
        keystore_path: Path | None = None,
    ) -> None:
        self.transport_spec = transport
        self._address = address
        #: bonds (pairing keys) survive restarts here; None: kept in memory only
        self._keystore_path = keystore_path
        self._lock = asyncio.Lock()
        self._transport: Transport | None = None
        self._device: Device | None = None
        self._listeners: dict[AdvertisementListener, bool] = {}
        self._scanning_active: bool | None = None
        #: address string (no type suffix) -> the typed Bumble address last seen
        self.seen: dict[str, Address] = {}
        #: who may pair and when (the BLE runtime's); None: Bumble's defaults (Just Works)
        self.pairing: PairingPolicy | None = None

    @property
    def device(self) -> Device:
        if self._device is None:
            raise RuntimeError("Bumble adapter is not open")
        return self._device

    async def open(self) -> Device:
        async with self._lock:
            if self._device is not None:
                return self._device
            transport = await open_transport(self.transport_spec)
            try:
                device = Device.with_hci(
                    "homehub", Address(self._address), transport.source, transport.sink
                )
                device.on(device.EVENT_ADVERTISEMENT, self._on_advertisement)
                device.pairing_config_factory = self._pairing_config
                if self._keystore_path is not None:
                    self._keystore_path.parent.mkdir(parents=True, exist_ok=True)
                    device.keystore = JsonKeyStore(None, str(self._keystore_path))
                await device.power_on()
            except BaseException:
                await transport.close()
                raise
            self._transport, self._device = transport, device
            log.debug("bumble: host up on %s", self.transport_spec)
            return device

    def _pairing_config(self, connection: Connection) -> PairingConfig:
        policy = self.pairing
        if policy is None:
            return PairingConfig()  # Bumble's defaults: Just Works, bonding
        address = connection.peer_address.to_string(False)
        delegate = HubPairingDelegate(policy, address)
        # MITM protection only with a passkey: Just Works cannot give it.
        return PairingConfig(
            sc=True, mitm=policy.passkeys.get(address) is not None, delegate=delegate
        )

    async def close(self) -> None:
        async with self._lock:
            device, transport = self._device, self._transport
            self._device = self._transport = None
            self._listeners.clear()
            self._scanning_active = None
            if device is not None:
                try:
                    async with asyncio.timeout(2.0):
                        await device.power_off()
                except Exception:
                    log.debug("bumble: power off failed", exc_info=True)
            if transport is not None:
                await transport.close()

    async def bonded(self, address: object) -> bool:
        """Whether the keystore holds a bond for this peer (a Bumble Address, as scanned)."""
        device = await self.open()
        if not isinstance(address, Address) or device.keystore is None:
            return False
        return await device.keystore.get(str(address)) is not None

    async def forget(self, address: object) -> None:
        """Delete this peer's bond from the keystore (it pairs anew on the next visit)."""
        device = await self.open()
        if isinstance(address, Address) and device.keystore is not None:
            with contextlib.suppress(KeyError):
                await device.keystore.delete(str(address))

    async def reset(self) -> None:
        """Close and let the next use reopen: the adapter-reset recovery stage."""
        await self.close()

    # -- scanning, shared by every BleakScanner on this adapter ----------------------------

    async def add_scan_listener(self, listener: AdvertisementListener, active: bool) -> None:
        device = await self.open()
        self._listeners[listener] = active
        await self._update_scanning(device)

    async def remove_scan_listener(self, listener: AdvertisementListener) -> None:
        self._listeners.pop(listener, None)
        if self._device is not None:
            await self._update_scanning(self._device)

    async def _update_scanning(self, device: Device) -> None:
        async with self._lock:
            wanted = any(self._listeners.values()) if self._listeners else None
            if wanted == self._scanning_active:
                return
            if self._scanning_active is not None:
                await device.stop_scanning()
            if wanted is not None:
                await device.start_scanning(active=wanted, filter_duplicates=False)
            self._scanning_active = wanted

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        self.seen[advertisement.address.to_string(False)] = advertisement.address
        for listener in list(self._listeners):
            listener(advertisement)
