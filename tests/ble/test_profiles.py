"""Byte vectors for every health-profile decoder, and random bytes thrown at all of them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.drivers.ble.profiles import (
    blood_pressure,
    date_time,
    glucose,
    heart_rate,
    nonin,
    plx,
    racp,
    temperature,
    weight,
)
from gateway.errors import DecodeError

TS = "ea070b16090e03"  # 2026-11-22 09:14:03, Date Time
WHEN = datetime(2026, 11, 22, 9, 14, 3)


def h(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts).replace(" ", ""))


# -- blood pressure -------------------------------------------------------------------


def test_bp_mmhg_with_every_optional_field() -> None:
    m = blood_pressure.decode_measurement(h("1e", "7800 5000 5d00", TS, "4800", "01", "0400"))
    assert (m.unit, m.systolic, m.diastolic, m.mean_arterial) == ("mmHg", 120.0, 80.0, 93.0)
    assert (m.timestamp, m.pulse_rate, m.user_id) == (WHEN, 72.0, 1)
    assert m.status == ("irregular_pulse",)


def test_bp_kpa_without_optional_fields() -> None:
    m = blood_pressure.decode_measurement(h("01", "a0f0 6af0 7ff0"))
    assert (m.unit, m.systolic, m.diastolic, m.mean_arterial) == ("kPa", 16.0, 10.6, 12.7)
    assert (m.timestamp, m.pulse_rate, m.user_id, m.status) == (None, None, None, ())


def test_bp_nan_mean_arterial_pressure_is_not_a_number() -> None:
    m = blood_pressure.decode_measurement(h("00", "7800 5000 ff07"))
    assert m.mean_arterial is None
    assert m.systolic == 120.0


@pytest.mark.parametrize(
    ("status", "names"),
    [
        ("0000", ()),
        ("2700", ("body_movement", "cuff_too_loose", "irregular_pulse", "improper_position")),
        ("0800", ("pulse_rate_above_range",)),
        ("1000", ("pulse_rate_below_range",)),
        ("1800", ()),  # pulse-rate range 3 is reserved
    ],
)
def test_bp_measurement_status(status: str, names: tuple[str, ...]) -> None:
    assert blood_pressure.decode_measurement(h("10", "7800 5000 5d00", status)).status == names


def test_bp_unknown_user_is_none() -> None:
    assert blood_pressure.decode_measurement(h("08", "7800 5000 5d00 ff")).user_id is None


@pytest.mark.parametrize(
    "data", ["", "1e", "1e7800", "1e 7800 5000 5d00", "1e 7800 5000 5d00" + TS + "4800 01"]
)
def test_bp_truncated(data: str) -> None:
    with pytest.raises(DecodeError, match="truncated"):
        blood_pressure.decode_measurement(h(data))


def test_intermediate_cuff_pressure_is_progress() -> None:
    cuff = blood_pressure.decode_intermediate_cuff_pressure(h("00", "9600 ff07 ff07"))
    assert (cuff.unit, cuff.current) == ("mmHg", 150.0)


# -- temperature ----------------------------------------------------------------------


def test_temperature_celsius_with_time_and_type() -> None:
    m = temperature.decode_measurement(h("06", "6c0100ff", TS, "03"))
    assert (m.unit, m.value, m.timestamp, m.site) == ("Cel", 36.4, WHEN, "ear")


def test_temperature_fahrenheit() -> None:
    m = temperature.decode_measurement(h("01", "d90300ff"))
    assert (m.unit, m.value, m.timestamp, m.site) == ("degF", 98.5, None, None)


def test_temperature_nan_and_reserved_type() -> None:
    m = temperature.decode_measurement(h("04", "ffff7f00", "00"))
    assert (m.value, m.site) == (None, None)


def test_temperature_truncated() -> None:
    with pytest.raises(DecodeError):
        temperature.decode_measurement(h("02", "6c0100ff", "ea07"))


# -- weight ---------------------------------------------------------------------------


def test_weight_si_with_everything() -> None:
    m = weight.decode_measurement(h("0e", "1040", TS, "01", "f500", "2607"))
    assert (m.system, m.weight, m.timestamp, m.user_id) == ("si", 82.0, WHEN, 1)
    assert (m.bmi, m.height) == (24.5, 1.83)


def test_weight_imperial_resolutions() -> None:
    m = weight.decode_measurement(h("09", "a046", "f500", "d002"))
    assert (m.system, m.weight, m.bmi, m.height) == ("imperial", 180.8, 24.5, 72.0)


def test_weight_unsuccessful_is_none() -> None:
    assert weight.decode_measurement(h("00", "ffff")).weight is None


# -- glucose --------------------------------------------------------------------------


def test_glucose_kg_per_l_negative_offset_and_status() -> None:
    m = glucose.decode_measurement(h("0b", "0500", TS, "e2ff", "5fb0", "11", "0100"))
    assert m.sequence == 5
    assert m.time == datetime(2026, 11, 22, 8, 44, 3)  # base time minus 30 minutes
    assert (m.unit, m.concentration) == ("mg/dL", 95.0)
    assert (m.sample_type, m.sample_location) == ("capillary_whole_blood", "finger")
    assert m.sensor_status == ("battery_low",)
    assert not m.control_solution and not m.context_follows


def test_glucose_mol_per_l() -> None:
    m = glucose.decode_measurement(h("16", "0600", TS, "35c0", "12"))
    assert (m.unit, m.concentration, m.time) == ("mmol/L", 5.3, WHEN)
    assert m.sample_type == "capillary_plasma"
    assert m.context_follows


def test_glucose_control_solution_is_flagged() -> None:
    m = glucose.decode_measurement(h("06", "0700", TS, "35c0", "4a"))
    assert m.control_solution


def test_glucose_without_concentration_and_unknown_time() -> None:
    m = glucose.decode_measurement(h("00", "0800", "00000000000000"))
    assert (m.sequence, m.time, m.concentration) == (8, None, None)


def test_glucose_truncated() -> None:
    with pytest.raises(DecodeError):
        glucose.decode_measurement(h("02", "0500", TS, "5fb0"))


def test_glucose_context() -> None:
    c = glucose.decode_context(h("42", "0500", "01", "41f0"))
    assert (c.sequence, c.meal, c.hba1c_pct) == (5, "preprandial", 6.5)
    c = glucose.decode_context(h("31", "0500", "01", "32d0", "02", "0ad0"))
    # carbohydrate 0.050 kg = 50 g; medication 10 mL (litre unit, bit 5).
    assert (c.carbohydrate_id, c.carbohydrate_g) == (1, 50.0)
    assert (c.medication_id, c.medication, c.medication_unit) == (2, 10.0, "mL")


# -- RACP -----------------------------------------------------------------------------


def test_racp_requests() -> None:
    assert racp.report_records_from(6) == h("01 03 01 0600")
    assert racp.report_all_records() == h("0101")
    assert racp.report_number_from(300) == h("04 03 01 2c01")
    assert racp.abort() == h("0300")
    assert racp.report_last_record() == h("0106")
    request = racp.decode_request(h("01 03 01 0600"))
    assert (request.op_code, request.operator, request.operand) == (1, 3, h("01 0600"))


def test_racp_responses() -> None:
    assert racp.decode_response(h("05 00 0a00")) == racp.NumberOfRecords(10)
    ok = racp.decode_response(h("06 00 01 01"))
    assert isinstance(ok, racp.Response) and ok.ok
    none = racp.decode_response(h("06 00 01 06"))
    assert isinstance(none, racp.Response) and none.describe() == "no_records_found"
    assert racp.decode_response(racp.encode_response(1, 8)) == racp.Response(1, 8)
    with pytest.raises(DecodeError):
        racp.decode_response(h("01 03"))
    with pytest.raises(DecodeError):
        racp.decode_response(h("06 00 01"))


# -- PLX ------------------------------------------------------------------------------


def test_plx_spot_check() -> None:
    m = plx.decode_spot_check(h("03", "6100 4800", TS, "8000"))
    assert (m.spo2, m.pulse_rate, m.timestamp, m.status) == (97.0, 72.0, WHEN, ("validated",))
    m = plx.decode_spot_check(h("1e", "ff07 4800", "8000", "200000", "64f0"))
    assert (m.spo2, m.timestamp, m.clock_not_set) == (None, None, True)
    assert m.status == ("validated", "low_perfusion")
    assert m.pulse_amplitude_index == 10.0


def test_plx_continuous() -> None:
    m = plx.decode_continuous(h("01", "6200 4600", "6100 4700"))
    assert (m.spo2, m.pulse_rate, m.spo2_fast, m.pulse_rate_fast) == (98.0, 70.0, 97.0, 71.0)
    assert m.spo2_slow is None


def test_plx_features() -> None:
    f = plx.decode_features(h("0300", "8000", "010000"))
    assert f.supported == ("measurement_status", "device_sensor_status")
    assert f.measurement_status_support == ("validated",)
    assert f.device_sensor_status_support == ("extended_display_update",)


# -- heart rate -----------------------------------------------------------------------


def test_heart_rate_uint8_without_contact_support() -> None:
    assert heart_rate.decode_measurement(h("0048")) == heart_rate.HeartRateMeasurement(
        72, None, None, ()
    )


def test_heart_rate_rr_intervals_are_1_1024_s() -> None:
    m = heart_rate.decode_measurement(h("16", "48", "0004", "0002", "3303"))
    assert m.contact is True
    assert m.rr_intervals_ms == (1000.0, 500.0, 799.805)


def test_heart_rate_uint16_with_energy() -> None:
    m = heart_rate.decode_measurement(h("09", "2c01", "e803"))
    assert (m.heart_rate, m.energy_kj) == (300, 1000)


def test_heart_rate_odd_rr_field() -> None:
    with pytest.raises(DecodeError, match="odd"):
        heart_rate.decode_measurement(h("10", "48", "000400"))


# -- Nonin ----------------------------------------------------------------------------


def test_nonin_big_endian_fields() -> None:
    m = nonin.decode_oximetry(h("0a 14 1e 0064 0001 61 0048"))
    assert (m.counter, m.spo2, m.pulse_rate) == (1, 97, 72)
    assert (m.pulse_amplitude_index, m.battery_v) == (1.0, 3.0)
    assert m.status == ("smartpoint", "sensor_attached") and m.smartpoint


def test_nonin_missing_values() -> None:
    m = nonin.decode_oximetry(h("0a 08 1e 0000 0102 7f 01ff"))
    assert (m.spo2, m.pulse_rate, m.status) == (None, None, ("searching",))


@pytest.mark.parametrize(
    "data", ["0a1e", "0b 14 1e 0064 0001 61 0048", "0a 14 1e 0064 0001 65 0048"]
)
def test_nonin_invalid(data: str) -> None:
    with pytest.raises(DecodeError):
        nonin.decode_oximetry(h(data))


# -- random bytes at every decoder ----------------------------------------------------

DECODERS: list[Callable[[bytes], Any]] = [
    blood_pressure.decode_measurement,
    blood_pressure.decode_intermediate_cuff_pressure,
    temperature.decode_measurement,
    weight.decode_measurement,
    glucose.decode_measurement,
    glucose.decode_context,
    racp.decode_response,
    racp.decode_request,
    plx.decode_spot_check,
    plx.decode_continuous,
    plx.decode_features,
    heart_rate.decode_measurement,
    nonin.decode_oximetry,
    date_time.decode_date_time,
    date_time.decode_current_time,
]


def _check_numbers(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _check_numbers(getattr(value, f.name))
    elif isinstance(value, tuple):
        for item in value:
            _check_numbers(item)


@pytest.mark.parametrize(
    "decode", DECODERS, ids=lambda d: f"{d.__module__.rsplit('.', 1)[-1]}.{d.__name__}"
)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=48))
def test_random_bytes_decode_or_raise_decode_error(
    decode: Callable[[bytes], Any], data: bytes
) -> None:
    try:
        result = decode(data)
    except DecodeError as exc:
        assert str(exc)  # a clear message, never a crash of another type
        return
    _check_numbers(result)
