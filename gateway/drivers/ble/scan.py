"""`homehub scan`: nearby BLE devices, the profiles they advertise, a [[devices]] table each."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

from gateway.drivers.ble.profiles import (
    blood_pressure,
    glucose,
    heart_rate,
    nonin,
    plx,
    temperature,
    weight,
)
from gateway.drivers.ble.runtime import BleRuntime

#: advertised service UUID -> the driver that reads it
PROFILE_DRIVERS: dict[str, str] = {
    blood_pressure.SERVICE_UUID: "ble.blood_pressure",
    temperature.SERVICE_UUID: "ble.thermometer",
    weight.SERVICE_UUID: "ble.weight_scale",
    glucose.SERVICE_UUID: "ble.glucose",
    plx.SERVICE_UUID: "ble.pulse_oximeter",
    heart_rate.SERVICE_UUID: "ble.heart_rate",
    nonin.SERVICE_UUID: "ble.nonin_3230",
}


@dataclass
class Seen:
    address: str
    name: str | None
    rssi: int
    drivers: list[str] = field(default_factory=list)


async def scan(runtime: BleRuntime, seconds: float) -> list[Seen]:
    seen: dict[str, Seen] = {}

    def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
        entry = seen.setdefault(device.address, Seen(device.address, None, adv.rssi))
        entry.name = adv.local_name or device.name or entry.name
        entry.rssi = adv.rssi
        for uuid in adv.service_uuids:
            driver = PROFILE_DRIVERS.get(uuid.lower())
            if driver and driver not in entry.drivers:
                entry.drivers.append(driver)

    scanner = runtime.scanner(on_advertisement)
    await scanner.start()
    try:
        await asyncio.sleep(seconds)  # scanning is the point: listen this long
    finally:
        await scanner.stop()
        await runtime.close()
    return sorted(seen.values(), key=lambda s: (not s.drivers, -s.rssi))


def report(found: list[Seen]) -> str:
    lines = [f"{len(found)} device(s) seen"]
    for n, entry in enumerate(found, 1):
        profiles = ", ".join(entry.drivers) or "no supported profile"
        lines.append(
            f"{entry.address}  {entry.rssi:>4} dBm  {entry.name or '(no name)'}  {profiles}"
        )
        for driver in entry.drivers:
            lines += [
                "",
                "[[devices]]",
                f'id = "{driver.removeprefix("ble.").replace("_", "-")}-{n}"',
                f'driver = "{driver}"',
                f'address = "{entry.address}"',
            ]
        if entry.drivers:
            lines.append("")
    return "\n".join(lines)
