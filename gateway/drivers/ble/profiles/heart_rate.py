"""Heart Rate Measurement 0x2A37.

GSS org.bluetooth.characteristic.heart_rate_measurement (HRS 1.0 §3.1): Flags
(uint8: bit 0 value format, 0 = uint8, 1 = uint16; bits 1-2 sensor contact
status, bit 2 = supported, bit 1 = detected; bit 3 Energy Expended present;
bit 4 RR-Interval present), Heart Rate Measurement Value (beats/min), Energy
Expended (uint16, kJ), then zero or more RR-Intervals (uint16 each, resolution
1/1024 s: a raw 1024 is one second, not 1024 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from gateway.drivers.ble.profiles._codec import Reader

SERVICE_UUID = "0000180d-0000-1000-8000-00805f9b34fb"
MEASUREMENT_UUID = "00002a37-0000-1000-8000-00805f9b34fb"

FLAG_UINT16 = 0x01
FLAG_CONTACT_DETECTED = 0x02
FLAG_CONTACT_SUPPORTED = 0x04
FLAG_ENERGY = 0x08
FLAG_RR = 0x10


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    heart_rate: int
    contact: bool | None  # None when the sensor does not support contact detection
    energy_kj: int | None
    rr_intervals_ms: tuple[float, ...]


def decode_measurement(data: bytes | bytearray) -> HeartRateMeasurement:
    reader = Reader(data, "heart rate measurement")
    flags = reader.u8()
    rate = reader.u16() if flags & FLAG_UINT16 else reader.u8()
    energy = reader.u16() if flags & FLAG_ENERGY else None
    rr: list[float] = []
    if flags & FLAG_RR:
        # GSS: the flag announces one or more RR-Intervals; none at all is a broken frame.
        if reader.remaining == 0:
            raise reader.fail("RR-interval flag set but no RR-interval sent")
        if reader.remaining % 2:
            raise reader.fail("RR-interval field has an odd length")
        while reader.remaining:
            # 1/1024 s -> ms, rounded to 0.001 ms: exact enough, never read as raw ms.
            rr.append(float(round(Decimal(reader.u16()) * 1000 / 1024, 3)))
    contact = bool(flags & FLAG_CONTACT_DETECTED) if flags & FLAG_CONTACT_SUPPORTED else None
    return HeartRateMeasurement(rate, contact, energy, tuple(rr))
