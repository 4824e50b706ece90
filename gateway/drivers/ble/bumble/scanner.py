"""bleak's BaseBleakScanner over a shared BumbleAdapter."""

from __future__ import annotations

from typing import Any, Literal

from bleak.backends.scanner import (
    AdvertisementData,
    AdvertisementDataCallback,
    BaseBleakScanner,
)
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement

from gateway.drivers.ble.bumble.adapter import BumbleAdapter, bleak_uuid

_UUID_LISTS = (
    AdvertisingData.Type.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
)
_SERVICE_DATA = (
    AdvertisingData.Type.SERVICE_DATA_16_BIT_UUID,
    AdvertisingData.Type.SERVICE_DATA_32_BIT_UUID,
    AdvertisingData.Type.SERVICE_DATA_128_BIT_UUID,
)


def advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    data = advertisement.data
    name = data.get(AdvertisingData.Type.COMPLETE_LOCAL_NAME) or data.get(
        AdvertisingData.Type.SHORTENED_LOCAL_NAME
    )
    uuids: list[str] = []
    for kind in _UUID_LISTS:
        for group in data.get_all(kind):
            for item in group if isinstance(group, list) else ():
                if isinstance(item, UUID) and (text := bleak_uuid(item)) not in uuids:
                    uuids.append(text)
    service_data: dict[str, bytes] = {}
    for kind in _SERVICE_DATA:
        for entry in data.get_all(kind):
            if isinstance(entry, tuple) and isinstance(entry[0], UUID):
                service_data[bleak_uuid(entry[0])] = bytes(entry[1])
    manufacturer = {
        company: bytes(payload)
        for company, payload in data.get_all(AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA)
    }
    tx_power = data.get(AdvertisingData.Type.TX_POWER_LEVEL)
    return AdvertisementData(
        local_name=name if isinstance(name, str) else None,
        manufacturer_data=manufacturer,
        service_data=service_data,
        service_uuids=uuids,
        tx_power=tx_power if isinstance(tx_power, int) else None,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


class BumbleScanner(BaseBleakScanner):
    """Scans through the hub's Bumble host; several scanners share its one scan."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bumble: BumbleAdapter,
        **kwargs: Any,  # bleak passes bluez= and cb= to every backend
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._adapter = bumble
        self._active = scanning_mode == "active"

    async def start(self) -> None:
        self.seen_devices = {}
        await self._adapter.add_scan_listener(self._on_advertisement, self._active)

    async def stop(self) -> None:
        await self._adapter.remove_scan_listener(self._on_advertisement)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adv = advertisement_data(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = advertisement.address.to_string(False)
        device = self.create_or_update_device(
            address, address, adv.local_name, advertisement.address, adv
        )
        self.call_detection_callbacks(device, adv)
