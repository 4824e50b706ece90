"""IEEE 11073-20601 SFLOAT/FLOAT and Date Time: vectors from the specifications."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.drivers.ble.profiles import _codec
from gateway.drivers.ble.profiles._codec import (
    encode_float,
    encode_sfloat,
    float_decimal,
    sfloat_decimal,
)
from gateway.drivers.ble.profiles.date_time import (
    decode_current_time,
    decode_date_time,
    encode_current_time,
    encode_date_time,
)
from gateway.errors import DecodeError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0x0078, Decimal(120)),  # 120 mmHg, exponent 0
        (0xF16D, Decimal("36.5")),  # exponent -1: two's complement, not 15
        (0xF0A0, Decimal("16.0")),  # 16.0 kPa; an unsigned exponent would say 1.6e17
        (0x0FFF, Decimal(-1)),  # negative mantissa
        (0x2002, Decimal(200)),  # positive exponent
        (0xE064, Decimal("1.00")),
        (0x8001, Decimal("1E-8")),  # smallest exponent
        (0x07FD, Decimal(2045)),  # largest ordinary mantissa
        (0x0803, Decimal(-2045)),
    ],
)
def test_sfloat_numbers(raw: int, expected: Decimal) -> None:
    assert sfloat_decimal(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        0x07FF,  # NaN
        0x0800,  # NRes
        0x07FE,  # +INF
        0x0802,  # -INF
        0x0801,  # reserved
        0xF7FF,  # NaN mantissa with a non-zero exponent: still not a number
        0x2800,
    ],
)
def test_sfloat_special_values_are_not_numbers(raw: int) -> None:
    assert sfloat_decimal(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0xFF00016C, Decimal("36.4")),
        (0xFE0005E7, Decimal("15.11")),
        (0x00FFFFFF, Decimal(-1)),
        (0x02000001, Decimal(100)),
    ],
)
def test_float_numbers(raw: int, expected: Decimal) -> None:
    assert float_decimal(raw) == expected


@pytest.mark.parametrize("raw", [0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001])
def test_float_special_values_are_not_numbers(raw: int) -> None:
    assert float_decimal(raw) is None


@given(st.integers(-2045, 2045), st.integers(-8, 7))
def test_sfloat_round_trip(mantissa: int, exponent: int) -> None:
    value = Decimal(mantissa).scaleb(exponent)
    assert sfloat_decimal(encode_sfloat(value, exponent)) == value


@given(st.integers(-(2**23) + 3, 2**23 - 3), st.integers(-128, 127))
def test_float_round_trip(mantissa: int, exponent: int) -> None:
    value = Decimal(mantissa).scaleb(exponent)
    assert float_decimal(encode_float(value, exponent)) == value


@given(st.integers(0, 0xFFFF))
def test_any_sfloat_is_none_or_finite(raw: int) -> None:
    value = _codec.to_float(sfloat_decimal(raw))
    assert value is None or abs(value) <= 2048 * 10**7


def test_date_time_vector() -> None:
    # GSS date_time: 2026-11-22 09:14:03 -> EA 07 0B 16 09 0E 03
    assert decode_date_time(bytes.fromhex("ea070b16090e03")) == datetime(2026, 11, 22, 9, 14, 3)
    assert encode_date_time(datetime(2026, 11, 22, 9, 14, 3)) == bytes.fromhex("ea070b16090e03")


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("00000b16090e03"),  # year not known
        bytes.fromhex("ea070016090e03"),  # month not known
        bytes.fromhex("ea070b00090e03"),  # day not known
    ],
)
def test_date_time_not_known(data: bytes) -> None:
    assert decode_date_time(data) is None


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("ea070d16090e03"),  # month 13
        bytes.fromhex("ea070b1f090e03"),  # 31 November
        bytes.fromhex("ea070b16180e03"),  # hour 24
        bytes.fromhex("ea070b16093c03"),  # minute 60
        bytes.fromhex("0100010100 0000".replace(" ", "")),  # year 1 < 1582
        bytes.fromhex("ea070b16090e"),  # truncated
    ],
)
def test_date_time_invalid(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_date_time(data)


def test_current_time_vector_and_round_trip() -> None:
    moment = datetime(2026, 11, 22, 9, 14, 3, 500_000)  # a Sunday
    data = encode_current_time(moment)
    assert data == bytes.fromhex("ea070b16090e03078001")
    decoded = decode_current_time(data)
    assert decoded.time == moment.replace(microsecond=0)
    assert decoded.day_of_week == 7
    assert decoded.fractions256 == 128
    assert decoded.adjust_reasons == ("manual",)


def test_current_time_rejects_a_wrong_weekday_and_truncation() -> None:
    with pytest.raises(DecodeError, match="day of week"):
        decode_current_time(bytes.fromhex("ea070b16090e03010000"))
    with pytest.raises(DecodeError, match="truncated"):
        decode_current_time(bytes.fromhex("ea070b16090e030700"))
