"""Weight Measurement 0x2A9D (Weight Scale Service).

GSS org.bluetooth.characteristic.weight_measurement (WSS 1.0 §3.2): Flags
(uint8: bit 0 units, 0 = SI, 1 = imperial; bit 1 Time Stamp present; bit 2
User ID present; bit 3 BMI and Height present), Weight (uint16; resolution
0.005 kg in SI, 0.01 lb in imperial; 0xFFFF = "measurement unsuccessful"),
Time Stamp (Date Time), User ID (uint8, 255 = unknown user), BMI (uint16,
0.1 kg/m2), Height (uint16; 0.001 m in SI, 0.1 inch in imperial).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from gateway.drivers.ble.profiles._codec import Reader

SERVICE_UUID = "0000181d-0000-1000-8000-00805f9b34fb"
MEASUREMENT_UUID = "00002a9d-0000-1000-8000-00805f9b34fb"
FEATURE_UUID = "00002a9e-0000-1000-8000-00805f9b34fb"

FLAG_IMPERIAL = 0x01
FLAG_TIMESTAMP = 0x02
FLAG_USER_ID = 0x04
FLAG_BMI_HEIGHT = 0x08
UNSUCCESSFUL = 0xFFFF
USER_UNKNOWN = 0xFF

_WEIGHT_STEP = {False: Decimal("0.005"), True: Decimal("0.01")}  # kg, lb
_HEIGHT_STEP = {False: Decimal("0.001"), True: Decimal("0.1")}  # m, in
_BMI_STEP = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class WeightMeasurement:
    system: Literal["si", "imperial"]  # si: kg and m; imperial: lb and in
    weight: float | None  # None when the scale reports "measurement unsuccessful"
    timestamp: datetime | None
    user_id: int | None
    bmi: float | None  # kg/m2 in both systems
    height: float | None


def decode_measurement(data: bytes | bytearray) -> WeightMeasurement:
    reader = Reader(data, "weight measurement")
    flags = reader.u8()
    imperial = bool(flags & FLAG_IMPERIAL)
    raw_weight = reader.u16()
    timestamp = reader.date_time() if flags & FLAG_TIMESTAMP else None
    user = reader.u8() if flags & FLAG_USER_ID else None
    bmi = height = None
    if flags & FLAG_BMI_HEIGHT:
        bmi = float(reader.u16() * _BMI_STEP)
        height = float(reader.u16() * _HEIGHT_STEP[imperial])
    return WeightMeasurement(
        system="imperial" if imperial else "si",
        weight=None if raw_weight == UNSUCCESSFUL else float(raw_weight * _WEIGHT_STEP[imperial]),
        timestamp=timestamp,
        user_id=None if user in (None, USER_UNKNOWN) else user,
        bmi=bmi,
        height=height,
    )
