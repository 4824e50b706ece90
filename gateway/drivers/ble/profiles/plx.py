"""Pulse Oximeter Service: PLX Spot-check 0x2A5E, PLX Continuous 0x2A5F, PLX Features 0x2A60.

GSS org.bluetooth.characteristic.plx_spot-check_measurement: Flags (uint8:
bit 0 Timestamp, bit 1 Measurement Status, bit 2 Device and Sensor Status,
bit 3 Pulse Amplitude Index present; bit 4 device clock not set), SpO2 and PR
(SFLOAT each, % and beats/min), Timestamp (Date Time), Measurement Status
(uint16), Device and Sensor Status (uint24), Pulse Amplitude Index (SFLOAT %).

GSS org.bluetooth.characteristic.plx_continuous_measurement: Flags (uint8:
bit 0 SpO2PR-Fast, bit 1 SpO2PR-Slow, bit 2 Measurement Status, bit 3 Device
and Sensor Status, bit 4 Pulse Amplitude Index present), SpO2PR-Normal (2 x
SFLOAT), then the flagged fields in that order.

GSS org.bluetooth.characteristic.plx_features: Supported Features (uint16),
then Measurement Status Support (uint16, if bit 0) and Device and Sensor Status
Support (uint24, if bit 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.drivers.ble.profiles._codec import Reader, flags_set, to_float

SERVICE_UUID = "00001822-0000-1000-8000-00805f9b34fb"
SPOT_CHECK_UUID = "00002a5e-0000-1000-8000-00805f9b34fb"
CONTINUOUS_UUID = "00002a5f-0000-1000-8000-00805f9b34fb"
FEATURES_UUID = "00002a60-0000-1000-8000-00805f9b34fb"

# Measurement Status (uint16); bits 0-4 RFU.
MEASUREMENT_STATUS = {
    5: "measurement_ongoing",
    6: "early_estimate",
    7: "validated",
    8: "fully_qualified",
    9: "from_storage",
    10: "demonstration_data",
    11: "testing_data",
    12: "calibration_ongoing",
    13: "measurement_unavailable",
    14: "questionable_measurement",
    15: "invalid_measurement",
}
# Device and Sensor Status (uint24); bits 16-23 RFU.
DEVICE_SENSOR_STATUS = {
    0: "extended_display_update",
    1: "equipment_malfunction",
    2: "signal_processing_irregularity",
    3: "inadequate_signal",
    4: "poor_signal",
    5: "low_perfusion",
    6: "erratic_signal",
    7: "nonpulsatile_signal",
    8: "questionable_pulse",
    9: "signal_analysis_ongoing",
    10: "sensor_interference",
    11: "sensor_unconnected",
    12: "unknown_sensor",
    13: "sensor_displaced",
    14: "sensor_malfunction",
    15: "sensor_disconnected",
}
FEATURES = {
    0: "measurement_status",
    1: "device_sensor_status",
    2: "spot_check_storage",
    3: "spot_check_timestamp",
    4: "spo2pr_fast",
    5: "spo2pr_slow",
    6: "pulse_amplitude_index",
    7: "multiple_bonds",
}


@dataclass(frozen=True, slots=True)
class SpotCheck:
    spo2: float | None
    pulse_rate: float | None
    timestamp: datetime | None
    clock_not_set: bool
    status: tuple[str, ...]  # measurement status + device and sensor status names
    pulse_amplitude_index: float | None


@dataclass(frozen=True, slots=True)
class Continuous:
    spo2: float | None
    pulse_rate: float | None
    spo2_fast: float | None
    pulse_rate_fast: float | None
    spo2_slow: float | None
    pulse_rate_slow: float | None
    status: tuple[str, ...]
    pulse_amplitude_index: float | None


@dataclass(frozen=True, slots=True)
class Features:
    supported: tuple[str, ...]
    measurement_status_support: tuple[str, ...]
    device_sensor_status_support: tuple[str, ...]


def decode_spot_check(data: bytes | bytearray) -> SpotCheck:
    reader = Reader(data, "PLX spot-check measurement")
    flags = reader.u8()
    spo2, pulse = reader.sfloat(), reader.sfloat()
    timestamp = reader.date_time() if flags & 0x01 else None
    status: tuple[str, ...] = ()
    if flags & 0x02:
        status += flags_set(reader.u16(), MEASUREMENT_STATUS)
    if flags & 0x04:
        status += flags_set(reader.u24(), DEVICE_SENSOR_STATUS)
    pai = reader.sfloat() if flags & 0x08 else None
    clock_not_set = bool(flags & 0x10)
    return SpotCheck(
        spo2=to_float(spo2),
        pulse_rate=to_float(pulse),
        # GSS: with "device clock is not set" the timestamp is not a real time.
        timestamp=None if clock_not_set else timestamp,
        clock_not_set=clock_not_set,
        status=status,
        pulse_amplitude_index=to_float(pai),
    )


def decode_continuous(data: bytes | bytearray) -> Continuous:
    reader = Reader(data, "PLX continuous measurement")
    flags = reader.u8()
    spo2, pulse = reader.sfloat(), reader.sfloat()
    fast = (reader.sfloat(), reader.sfloat()) if flags & 0x01 else (None, None)
    slow = (reader.sfloat(), reader.sfloat()) if flags & 0x02 else (None, None)
    status: tuple[str, ...] = ()
    if flags & 0x04:
        status += flags_set(reader.u16(), MEASUREMENT_STATUS)
    if flags & 0x08:
        status += flags_set(reader.u24(), DEVICE_SENSOR_STATUS)
    pai = reader.sfloat() if flags & 0x10 else None
    return Continuous(
        spo2=to_float(spo2),
        pulse_rate=to_float(pulse),
        spo2_fast=to_float(fast[0]),
        pulse_rate_fast=to_float(fast[1]),
        spo2_slow=to_float(slow[0]),
        pulse_rate_slow=to_float(slow[1]),
        status=status,
        pulse_amplitude_index=to_float(pai),
    )


def decode_features(data: bytes | bytearray) -> Features:
    reader = Reader(data, "PLX features")
    supported = reader.u16()
    measurement = flags_set(reader.u16(), MEASUREMENT_STATUS) if supported & 0x01 else ()
    device = flags_set(reader.u24(), DEVICE_SENSOR_STATUS) if supported & 0x02 else ()
    return Features(flags_set(supported, FEATURES), measurement, device)
