"""Measurement bytes as real devices send them: the inverse of the profile decoders."""

from __future__ import annotations

import struct
from datetime import datetime
from decimal import Decimal

from gateway.drivers.ble.profiles._codec import encode_float, encode_sfloat
from gateway.drivers.ble.profiles.date_time import encode_date_time


def _sf(value: float | None, exponent: int = 0) -> bytes:
    encoded = encode_sfloat(None if value is None else Decimal(str(value)), exponent)
    return struct.pack("<H", encoded)


def blood_pressure(
    systolic: float,
    diastolic: float,
    mean: float | None,
    *,
    pulse: float | None = None,
    when: datetime | None = None,
    status: int | None = None,
    kpa: bool = False,
    user: int | None = None,
) -> bytes:
    exp = -1 if kpa else 0
    flags = (0x01 if kpa else 0) | (0x02 if when else 0) | (0x04 if pulse is not None else 0)
    flags |= (0x08 if user is not None else 0) | (0x10 if status is not None else 0)
    out = bytes([flags]) + _sf(systolic, exp) + _sf(diastolic, exp) + _sf(mean, exp)
    if when:
        out += encode_date_time(when)
    if pulse is not None:
        out += _sf(pulse)
    if user is not None:
        out += bytes([user])
    if status is not None:
        out += struct.pack("<H", status)
    return out


def temperature(
    value: float, *, when: datetime | None = None, site: int | None = None, fahrenheit: bool = False
) -> bytes:
    flags = (0x01 if fahrenheit else 0) | (0x02 if when else 0) | (0x04 if site is not None else 0)
    out = bytes([flags]) + struct.pack("<I", encode_float(Decimal(str(value)), -2))
    if when:
        out += encode_date_time(when)
    if site is not None:
        out += bytes([site])
    return out


def weight(
    kg: float,
    *,
    when: datetime | None = None,
    bmi: float | None = None,
    height_m: float | None = None,
    user: int | None = None,
) -> bytes:
    flags = (0x02 if when else 0) | (0x08 if bmi is not None and height_m is not None else 0)
    flags |= 0x04 if user is not None else 0
    out = bytes([flags]) + struct.pack("<H", round(Decimal(str(kg)) / Decimal("0.005")))
    if when:
        out += encode_date_time(when)
    if user is not None:
        out += bytes([user])
    if flags & 0x08:
        assert bmi is not None and height_m is not None
        out += struct.pack("<HH", round(bmi * 10), round(height_m * 1000))
    return out


def glucose(
    sequence: int,
    when: datetime,
    mg_dl: float,
    *,
    offset_min: int = 0,
    sample: int = 0x11,
    status: int | None = None,
) -> bytes:
    flags = 0x02 | (0x01 if offset_min else 0) | (0x08 if status is not None else 0)
    out = bytes([flags]) + struct.pack("<H", sequence) + encode_date_time(when)
    if offset_min:
        out += struct.pack("<h", offset_min)
    # mg/dL -> kg/L: * 10**-5.
    out += _sf_kg_per_l(mg_dl) + bytes([sample])
    if status is not None:
        out += struct.pack("<H", status)
    return out


def _sf_kg_per_l(mg_dl: float) -> bytes:
    return struct.pack("<H", encode_sfloat(Decimal(str(mg_dl)).scaleb(-5), -5))


def plx_spot_check(spo2: float, pulse: float, *, when: datetime | None = None) -> bytes:
    flags = 0x01 if when else 0
    out = bytes([flags]) + _sf(spo2) + _sf(pulse)
    if when:
        out += encode_date_time(when)
    return out


def heart_rate(bpm: int, rr_1024: tuple[int, ...] = ()) -> bytes:
    flags = 0x06 | (0x10 if rr_1024 else 0)  # contact supported and detected
    return bytes([flags, bpm]) + b"".join(struct.pack("<H", rr) for rr in rr_1024)


def nonin(counter: int, spo2: int | None, pulse: int | None, *, smartpoint: bool) -> bytes:
    status = 0x10 | (0x04 if smartpoint else 0x08)  # sensor attached; smartpoint or searching
    return bytes([10, status, 30]) + struct.pack(
        ">HHBH",
        150,
        counter & 0xFFFF,
        127 if spo2 is None else spo2,
        511 if pulse is None else pulse,
    )
