"""Bytes -> fields: a bounds-checked little-endian reader and IEEE 11073-20601 floats.

SFLOAT and FLOAT (IEEE 11073-20601 §F.8 and GSS §2.2 "medfloat16"/"medfloat32")
are decimal numbers: mantissa * 10**exponent, both two's complement. A set of
mantissa values is reserved for "special values" (NaN, NRes, +INF, -INF and one
reserved code); all of them mean "no number here" and decode to None. We treat a
special mantissa as special whatever the exponent: a value of 2047 * 10**e is
never a plausible reading, and a wrong number is worse than no number.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from gateway.errors import DecodeError

# IEEE 11073-20601 §F.8: special values (mantissa field).
SFLOAT_NAN = 0x07FF
SFLOAT_NRES = 0x0800
SFLOAT_POS_INF = 0x07FE
SFLOAT_NEG_INF = 0x0802
SFLOAT_RESERVED = 0x0801
_SFLOAT_SPECIALS = frozenset(
    {SFLOAT_NAN, SFLOAT_NRES, SFLOAT_POS_INF, SFLOAT_NEG_INF, SFLOAT_RESERVED}
)
FLOAT_NAN = 0x007FFFFF
FLOAT_NRES = 0x00800000
FLOAT_POS_INF = 0x007FFFFE
FLOAT_NEG_INF = 0x00800002
FLOAT_RESERVED = 0x00800001
_FLOAT_SPECIALS = frozenset({FLOAT_NAN, FLOAT_NRES, FLOAT_POS_INF, FLOAT_NEG_INF, FLOAT_RESERVED})


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def sfloat_decimal(raw: int) -> Decimal | None:
    """A 16-bit SFLOAT as an exact Decimal, or None for a special value."""
    mantissa = raw & 0x0FFF
    if mantissa in _SFLOAT_SPECIALS:
        return None
    exponent = _signed(raw >> 12, 4)
    return Decimal(_signed(mantissa, 12)).scaleb(exponent)


def float_decimal(raw: int) -> Decimal | None:
    """A 32-bit FLOAT as an exact Decimal, or None for a special value."""
    mantissa = raw & 0x00FFFFFF
    if mantissa in _FLOAT_SPECIALS:
        return None
    exponent = _signed(raw >> 24, 8)
    return Decimal(_signed(mantissa, 24)).scaleb(exponent)


def to_float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def encode_sfloat(value: Decimal | int | str | None, exponent: int) -> int:
    """Encode mantissa * 10**exponent (None -> NaN); for virtual devices and tests."""
    if value is None:
        return SFLOAT_NAN
    mantissa = int(Decimal(value).scaleb(-exponent).to_integral_value())
    if not -2046 <= mantissa <= 2045 or not -8 <= exponent <= 7:
        raise ValueError("value does not fit an SFLOAT with this exponent")
    return ((exponent & 0xF) << 12) | (mantissa & 0x0FFF)


def encode_float(value: Decimal | int | str | None, exponent: int) -> int:
    if value is None:
        return FLOAT_NAN
    mantissa = int(Decimal(value).scaleb(-exponent).to_integral_value())
    if not -(2**23) + 2 <= mantissa <= 2**23 - 3 or not -128 <= exponent <= 127:
        raise ValueError("value does not fit a FLOAT with this exponent")
    return ((exponent & 0xFF) << 24) | (mantissa & 0x00FFFFFF)


class Reader:
    """Reads little-endian fields from a characteristic value; DecodeError when short."""

    def __init__(self, data: bytes | bytearray | memoryview, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def fail(self, reason: str) -> DecodeError:
        # Never put field values into the message: it is logged.
        return DecodeError(f"{self.what}: {reason}")

    def take(self, size: int) -> bytes:
        if self.remaining < size:
            raise self.fail(
                f"truncated: {len(self._data)} byte(s), field at offset {self._pos} needs {size}"
            )
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def s16(self) -> int:
        return _signed(self.uint(2), 16)

    def u24(self) -> int:
        return self.uint(3)

    def u32(self) -> int:
        return self.uint(4)

    def sfloat(self) -> Decimal | None:
        return sfloat_decimal(self.u16())

    def float32(self) -> Decimal | None:
        return float_decimal(self.u32())

    def date_time(self) -> datetime | None:
        """GSS org.bluetooth.characteristic.date_time: 7 bytes; None if "not known"."""
        year, month, day = self.u16(), self.u8(), self.u8()
        hours, minutes, seconds = self.u8(), self.u8(), self.u8()
        # GSS: year 0, month 0 and day 0 mean "not known".
        if year == 0 or month == 0 or day == 0:
            return None
        # GSS: year 1582..9999, hours 0..23, minutes and seconds 0..59.
        if not 1582 <= year <= 9999:
            raise self.fail("date time: year out of range")
        try:
            return datetime(year, month, day, hours, minutes, seconds)
        except ValueError:
            raise self.fail("date time: invalid date or time of day") from None


def flags_set(flags: int, names: dict[int, str]) -> tuple[str, ...]:
    """Names of the set bits of `flags`, in bit order."""
    return tuple(name for bit, name in sorted(names.items()) if flags & (1 << bit))
