"""Glucose Measurement 0x2A18 and Glucose Measurement Context 0x2A34.

GSS org.bluetooth.characteristic.glucose_measurement (and GLS 1.0): Flags
(uint8: bit 0 Time Offset present; bit 1 Concentration, Type and
Sample Location present; bit 2 concentration unit, 0 = kg/L, 1 = mol/L; bit 3
Sensor Status Annunciation present; bit 4 Context Information follows),
Sequence Number (uint16), Base Time (Date Time), Time Offset (sint16 minutes,
added to Base Time), Glucose Concentration (SFLOAT), Type-Sample Location
(uint8: type in the low nibble, location in the high nibble), Sensor Status
Annunciation (uint16).

GSS org.bluetooth.characteristic.glucose_measurement_context: Flags (uint8),
Sequence Number (uint16), then each if flagged: Extended Flags (bit 7, uint8),
Carbohydrate ID + Carbohydrate (bit 0, uint8 + SFLOAT kg), Meal (bit 1, uint8),
Tester-Health (bit 2, uint8 nibbles), Exercise Duration + Intensity (bit 3,
uint16 s + uint8 %), Medication ID + Medication (bit 4, uint8 + SFLOAT; bit 5
unit, 0 = kg, 1 = litre), HbA1c (bit 6, SFLOAT %).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from gateway.drivers.ble.profiles._codec import Reader, flags_set, to_float

SERVICE_UUID = "00001808-0000-1000-8000-00805f9b34fb"
MEASUREMENT_UUID = "00002a18-0000-1000-8000-00805f9b34fb"
CONTEXT_UUID = "00002a34-0000-1000-8000-00805f9b34fb"
FEATURE_UUID = "00002a51-0000-1000-8000-00805f9b34fb"

FLAG_TIME_OFFSET = 0x01
FLAG_CONCENTRATION = 0x02
FLAG_MOL_PER_L = 0x04
FLAG_SENSOR_STATUS = 0x08
FLAG_CONTEXT_FOLLOWS = 0x10

# GSS glucose_measurement, Type field (low nibble).
SAMPLE_TYPES = {
    1: "capillary_whole_blood",
    2: "capillary_plasma",
    3: "venous_whole_blood",
    4: "venous_plasma",
    5: "arterial_whole_blood",
    6: "arterial_plasma",
    7: "undetermined_whole_blood",
    8: "undetermined_plasma",
    9: "interstitial_fluid",
    10: "control_solution",
}
# Sample Location field (high nibble); 15 = "not available".
SAMPLE_LOCATIONS = {1: "finger", 2: "alternate_site", 3: "earlobe", 4: "control_solution"}
# Sensor Status Annunciation bits (GSS glucose_measurement).
SENSOR_STATUS = {
    0: "battery_low",
    1: "sensor_malfunction",
    2: "sample_size_insufficient",
    3: "strip_insertion_error",
    4: "strip_type_incorrect",
    5: "result_too_high",
    6: "result_too_low",
    7: "temperature_too_high",
    8: "temperature_too_low",
    9: "strip_pulled_too_soon",
    10: "device_fault",
    11: "time_fault",
}
MEALS = {1: "preprandial", 2: "postprandial", 3: "fasting", 4: "casual", 5: "bedtime"}


@dataclass(frozen=True, slots=True)
class GlucoseMeasurement:
    sequence: int
    time: datetime | None  # base time + offset, naive device local time
    unit: Literal["mg/dL", "mmol/L"]  # converted from the spec's kg/L and mol/L
    concentration: float | None
    sample_type: str | None
    sample_location: str | None
    sensor_status: tuple[str, ...]
    context_follows: bool

    @property
    def control_solution(self) -> bool:
        return self.sample_type == "control_solution" or self.sample_location == "control_solution"


@dataclass(frozen=True, slots=True)
class GlucoseContext:
    sequence: int
    meal: str | None
    carbohydrate_id: int | None
    carbohydrate_g: float | None
    tester: int | None
    health: int | None
    exercise_duration_s: int | None
    exercise_intensity_pct: int | None
    medication_id: int | None
    medication: float | None
    medication_unit: Literal["mg", "mL"] | None
    hba1c_pct: float | None


def decode_measurement(data: bytes | bytearray) -> GlucoseMeasurement:
    reader = Reader(data, "glucose measurement")
    flags = reader.u8()
    sequence = reader.u16()
    base = reader.date_time()
    offset = reader.s16() if flags & FLAG_TIME_OFFSET else 0
    try:
        moment = None if base is None else base + timedelta(minutes=offset)
    except OverflowError:
        raise reader.fail("time offset leaves the calendar") from None
    concentration: Decimal | None = None
    sample_type = sample_location = None
    unit: Literal["mg/dL", "mmol/L"] = "mmol/L" if flags & FLAG_MOL_PER_L else "mg/dL"
    if flags & FLAG_CONCENTRATION:
        raw = reader.sfloat()
        type_location = reader.u8()
        sample_type = SAMPLE_TYPES.get(type_location & 0x0F)
        sample_location = SAMPLE_LOCATIONS.get(type_location >> 4)
        if raw is not None:
            # kg/L -> mg/dL is * 10**5; mol/L -> mmol/L is * 10**3 (exact, in decimal).
            concentration = raw.scaleb(3 if flags & FLAG_MOL_PER_L else 5)
    status = flags_set(reader.u16(), SENSOR_STATUS) if flags & FLAG_SENSOR_STATUS else ()
    return GlucoseMeasurement(
        sequence=sequence,
        time=moment,
        unit=unit,
        concentration=to_float(concentration),
        sample_type=sample_type,
        sample_location=sample_location,
        sensor_status=status,
        context_follows=bool(flags & FLAG_CONTEXT_FOLLOWS),
    )


def decode_context(data: bytes | bytearray) -> GlucoseContext:
    reader = Reader(data, "glucose measurement context")
    flags = reader.u8()
    sequence = reader.u16()
    if flags & 0x80:
        reader.u8()  # Extended Flags: all bits RFU
    carb_id = carb = None
    if flags & 0x01:
        carb_id = reader.u8()
        grams = reader.sfloat()
        carb = None if grams is None else float(grams.scaleb(3))  # kg -> g
    meal = MEALS.get(reader.u8()) if flags & 0x02 else None
    tester = health = None
    if flags & 0x04:
        nibbles = reader.u8()
        tester, health = nibbles & 0x0F, nibbles >> 4
    duration = intensity = None
    if flags & 0x08:
        duration, intensity = reader.u16(), reader.u8()
        if duration == 0xFFFF:  # GSS: "overrun"
            duration = None
    med_id = med = None
    med_unit: Literal["mg", "mL"] | None = None
    if flags & 0x10:
        med_id = reader.u8()
        amount = reader.sfloat()
        med_unit = "mL" if flags & 0x20 else "mg"
        # kg -> mg is * 10**6; litre -> mL is * 10**3.
        med = None if amount is None else float(amount.scaleb(3 if flags & 0x20 else 6))
    hba1c = to_float(reader.sfloat()) if flags & 0x40 else None
    return GlucoseContext(
        sequence=sequence,
        meal=meal,
        carbohydrate_id=carb_id,
        carbohydrate_g=carb,
        tester=tester,
        health=health,
        exercise_duration_s=duration,
        exercise_intensity_pct=intensity,
        medication_id=med_id,
        medication=med,
        medication_unit=med_unit,
        hba1c_pct=hba1c,
    )
