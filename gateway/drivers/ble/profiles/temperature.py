"""Temperature Measurement 0x2A1C (Health Thermometer Service).

GSS org.bluetooth.characteristic.temperature_measurement (HTS 1.0 §3.1):
Flags (uint8: bit 0 unit, 0 = Celsius, 1 = Fahrenheit; bit 1 Time Stamp
present; bit 2 Temperature Type present), Temperature (FLOAT), Time Stamp
(Date Time), Temperature Type (uint8, GSS org.bluetooth.characteristic.temperature_type).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.drivers.ble.profiles._codec import Reader, to_float

SERVICE_UUID = "00001809-0000-1000-8000-00805f9b34fb"
MEASUREMENT_UUID = "00002a1c-0000-1000-8000-00805f9b34fb"
INTERMEDIATE_TEMPERATURE_UUID = "00002a1e-0000-1000-8000-00805f9b34fb"

FLAG_FAHRENHEIT = 0x01
FLAG_TIMESTAMP = 0x02
FLAG_TYPE = 0x04

# GSS temperature_type: 0 and 10..255 are reserved.
TEMPERATURE_TYPES = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gastro_intestinal",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}


@dataclass(frozen=True, slots=True)
class TemperatureMeasurement:
    unit: Literal["Cel", "degF"]
    value: float | None
    timestamp: datetime | None
    site: str | None  # a TEMPERATURE_TYPES name, None when absent or reserved


def decode_measurement(data: bytes | bytearray) -> TemperatureMeasurement:
    reader = Reader(data, "temperature measurement")
    flags = reader.u8()
    value = reader.float32()
    timestamp = reader.date_time() if flags & FLAG_TIMESTAMP else None
    site = TEMPERATURE_TYPES.get(reader.u8()) if flags & FLAG_TYPE else None
    return TemperatureMeasurement(
        unit="degF" if flags & FLAG_FAHRENHEIT else "Cel",
        value=to_float(value),
        timestamp=timestamp,
        site=site,
    )
