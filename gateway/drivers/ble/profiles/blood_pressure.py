"""Blood Pressure Measurement 0x2A35 and Intermediate Cuff Pressure 0x2A36.

GSS org.bluetooth.characteristic.blood_pressure_measurement (BLS 1.1.1 §3.1):
Flags (uint8), Compound Value (3 x SFLOAT: systolic, diastolic, mean arterial
pressure, in mmHg if flags bit 0 is 0, kPa if 1), then, each present if its
flag bit is set: Time Stamp (bit 1, Date Time), Pulse Rate (bit 2, SFLOAT,
beats/min), User ID (bit 3, uint8, 255 = unknown user), Measurement Status
(bit 4, uint16). Intermediate Cuff Pressure has the same format; only the
first compound value (current cuff pressure) is meaningful (GSS
org.bluetooth.characteristic.intermediate_cuff_pressure).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.drivers.ble.profiles._codec import Reader, flags_set, to_float

SERVICE_UUID = "00001810-0000-1000-8000-00805f9b34fb"
MEASUREMENT_UUID = "00002a35-0000-1000-8000-00805f9b34fb"
INTERMEDIATE_CUFF_PRESSURE_UUID = "00002a36-0000-1000-8000-00805f9b34fb"
FEATURE_UUID = "00002a49-0000-1000-8000-00805f9b34fb"

FLAG_KPA = 0x01
FLAG_TIMESTAMP = 0x02
FLAG_PULSE_RATE = 0x04
FLAG_USER_ID = 0x08
FLAG_STATUS = 0x10

# GSS blood_pressure_measurement, Measurement Status field.
_STATUS_BITS = {
    0: "body_movement",
    1: "cuff_too_loose",
    2: "irregular_pulse",
    5: "improper_position",
}
# Bits 3-4: pulse rate range (0 within range, 1 above upper limit, 2 below lower limit, 3 RFU).
_PULSE_RANGE = {1: "pulse_rate_above_range", 2: "pulse_rate_below_range"}
USER_UNKNOWN = 0xFF


@dataclass(frozen=True, slots=True)
class BloodPressureMeasurement:
    unit: Literal["mmHg", "kPa"]
    systolic: float | None
    diastolic: float | None
    mean_arterial: float | None
    timestamp: datetime | None
    pulse_rate: float | None
    user_id: int | None  # None when absent or 255 ("unknown user")
    status: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CuffPressure:
    """Progress only: the pressure while the cuff inflates. Never a reading."""

    unit: Literal["mmHg", "kPa"]
    current: float | None


def _status(raw: int) -> tuple[str, ...]:
    names = flags_set(raw, _STATUS_BITS)
    pulse_range = _PULSE_RANGE.get((raw >> 3) & 0x3)
    return names + ((pulse_range,) if pulse_range else ())


def decode_measurement(data: bytes | bytearray) -> BloodPressureMeasurement:
    reader = Reader(data, "blood pressure measurement")
    flags = reader.u8()
    systolic, diastolic, mean = reader.sfloat(), reader.sfloat(), reader.sfloat()
    timestamp = reader.date_time() if flags & FLAG_TIMESTAMP else None
    pulse = reader.sfloat() if flags & FLAG_PULSE_RATE else None
    user = reader.u8() if flags & FLAG_USER_ID else None
    status = _status(reader.u16()) if flags & FLAG_STATUS else ()
    return BloodPressureMeasurement(
        unit="kPa" if flags & FLAG_KPA else "mmHg",
        systolic=to_float(systolic),
        diastolic=to_float(diastolic),
        mean_arterial=to_float(mean),
        timestamp=timestamp,
        pulse_rate=to_float(pulse),
        user_id=None if user in (None, USER_UNKNOWN) else user,
        status=status,
    )


def decode_intermediate_cuff_pressure(data: bytes | bytearray) -> CuffPressure:
    reader = Reader(data, "intermediate cuff pressure")
    flags = reader.u8()
    current = reader.sfloat()
    reader.take(4)  # diastolic and MAP sub-fields: unused (GSS), still required
    # The flagged fields are unused too, but a frame that announces one and lacks
    # it is broken (issue 12): read past each so truncation is noticed.
    if flags & FLAG_TIMESTAMP:
        reader.date_time()
    for flag, size in ((FLAG_PULSE_RATE, 2), (FLAG_USER_ID, 1), (FLAG_STATUS, 2)):
        if flags & flag:
            reader.take(size)
    return CuffPressure(unit="kPa" if flags & FLAG_KPA else "mmHg", current=to_float(current))
