"""`homehub simulate --ble TRANSPORT`: one virtual device per BLE driver, measuring now and then.

The hub's controller is exposed on TRANSPORT (e.g. tcp-server:127.0.0.1:9000),
so a separate `homehub run` with `[ble] stack = "bumble"` and
`transport = "tcp-client:127.0.0.1:9000"` reads these devices.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.sim.ble import encode
from gateway.sim.ble.air import VirtualAir, tcp_port
from gateway.sim.ble.device import VirtualPeripheral
from gateway.sim.ble.profiles import (
    BloodPressureMonitor,
    GlucoseMeter,
    HeartRateSensor,
    Nonin3230,
    PulseOximeter,
    Thermometer,
    WeightScale,
)


@dataclass(frozen=True, slots=True)
class FleetEntry:
    device_id: str
    driver: str
    address: str
    name: str


FLEET: tuple[FleetEntry, ...] = (
    FleetEntry("bp-1", "ble.blood_pressure", "C0:48:48:00:00:01", "BP-Sim"),
    FleetEntry("thermo-1", "ble.thermometer", "C0:48:48:00:00:02", "Thermo-Sim"),
    FleetEntry("scale-1", "ble.weight_scale", "C0:48:48:00:00:03", "Scale-Sim"),
    FleetEntry("glucose-1", "ble.glucose", "C0:48:48:00:00:04", "Glucose-Sim"),
    FleetEntry("plx-1", "ble.pulse_oximeter", "C0:48:48:00:00:05", "PLX-Sim"),
    FleetEntry("hr-1", "ble.heart_rate", "C0:48:48:00:00:06", "HR-Sim"),
    FleetEntry("oxi-1", "ble.nonin_3230", "C0:48:48:00:00:07", "Nonin3230_Sim"),
)


def devices_toml(entries: Sequence[FleetEntry] = FLEET) -> str:
    """[[devices]] tables for the fleet, to paste into a hub's config."""
    tables = []
    for entry in entries:
        extra = "\ninterval_s = 10.0" if entry.driver == "ble.heart_rate" else ""
        tables.append(
            f'[[devices]]\nid = "{entry.device_id}"\ndriver = "{entry.driver}"\n'
            f'address = "{entry.address}"{extra}\n'
        )
    return "\n".join(tables)


class Fleet:
    def __init__(self, air: VirtualAir, seed: int | None = None) -> None:
        self.air = air
        self.rng = random.Random(seed)  # noqa: S311 - plausible values, not secrets
        self.devices: dict[str, VirtualPeripheral] = {}
        kinds: dict[str, Callable[[VirtualAir, str, str], VirtualPeripheral]] = {
            "ble.blood_pressure": BloodPressureMonitor,
            "ble.thermometer": Thermometer,
            "ble.weight_scale": WeightScale,
            "ble.glucose": GlucoseMeter,
            "ble.pulse_oximeter": PulseOximeter,
            "ble.heart_rate": HeartRateSensor,
            "ble.nonin_3230": Nonin3230,
        }
        for entry in FLEET:
            self.devices[entry.driver] = kinds[entry.driver](air, entry.address, entry.name)

    async def start(self) -> None:
        for device in self.devices.values():
            await device.start()

    async def measure_all(self) -> None:
        """One measurement on every device, as a patient's morning round."""
        # Naive local time, as a device clock keeps it.
        rng, now = self.rng, datetime.now().replace(microsecond=0)
        for device in self.devices.values():
            if isinstance(device, BloodPressureMonitor):
                sys_, dia = round(rng.gauss(128, 8)), round(rng.gauss(82, 5))
                mean = round(dia + (sys_ - dia) / 3)
                pulse = round(rng.gauss(72, 6))
                await device.measure(encode.blood_pressure(sys_, dia, mean, pulse=pulse, when=now))
            elif isinstance(device, Thermometer):
                value = round(rng.gauss(36.9, 0.25), 1)
                await device.measure(encode.temperature(value, when=now, site=3))
            elif isinstance(device, WeightScale):
                kg = round(rng.gauss(82.0, 0.4) / 0.005) * 0.005
                await device.measure(encode.weight(round(kg, 3), when=now, bmi=24.5, height_m=1.83))
            elif isinstance(device, GlucoseMeter):
                await device.measure(now, float(round(rng.gauss(120, 15))))
            elif isinstance(device, PulseOximeter):
                spo2 = min(100, round(rng.gauss(95, 1.5)))
                await device.measure(encode.plx_spot_check(spo2, round(rng.gauss(76, 6)), when=now))
            elif isinstance(device, Nonin3230):
                await device.measure(min(100, round(rng.gauss(95, 1.5))), round(rng.gauss(76, 6)))
            elif isinstance(device, HeartRateSensor):
                device.bpm = round(rng.gauss(66, 4))

    async def close(self) -> None:
        for device in self.devices.values():
            await device.close()


async def run_fleet(
    transport_spec: str,
    *,
    interval_s: float,
    seconds: float = 0.0,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the fleet on `transport_spec`; measure every `interval_s` until stopped."""
    air = VirtualAir()
    transport = await air.expose(transport_spec)
    spec = transport_spec
    if transport_spec.startswith("tcp-server:"):
        host = transport_spec.split(":")[1]
        spec = f"tcp-client:{host}:{tcp_port(transport)}"
    fleet = Fleet(air)
    stop = stop or asyncio.Event()
    try:
        await fleet.start()
        if ready is not None:
            ready(spec)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds if seconds > 0 else None
        while not stop.is_set():
            await fleet.measure_all()
            wait = interval_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return
            try:
                async with asyncio.timeout(wait):
                    await stop.wait()
            except TimeoutError:
                continue
    finally:
        await fleet.close()
        await air.close()
