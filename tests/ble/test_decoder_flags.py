"""Every decoder rejects a frame whose flags announce a field that is not there (issue 12).

For each characteristic, the field layout is written here from the GATT Specification
Supplement (GSS, org.bluetooth.characteristic.*), independently of the decoders: for
every value of the flags field, the frame with every announced field present decodes,
and every shorter frame (an announced field missing, whole or in part) raises
DecodeError. Exhaustive over all 256 flag values rather than sampled: it is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.drivers.ble.profiles import (
    blood_pressure,
    glucose,
    heart_rate,
    plx,
    temperature,
    weight,
)
from gateway.errors import DecodeError

TS = bytes.fromhex("ea070b16090e03")  # 2026-11-22 09:14:03 (GSS date_time)


@dataclass(frozen=True)
class Layout:
    """The fields of one characteristic: always-present ones, then one per flag bit."""

    decode: Callable[[bytes], Any]
    #: bytes that always follow the flags (for this flag value)
    base: Callable[[int], bytes]
    #: flag bit -> the bytes it announces, in the order GSS puts them
    fields: tuple[tuple[int, bytes], ...]
    flag_size: int = 1


SFLOAT_0 = b"\x00\x00"
LAYOUTS: dict[str, Layout] = {
    # GSS blood_pressure_measurement: compound value 3 x SFLOAT, then Time Stamp (bit 1),
    # Pulse Rate (bit 2), User ID (bit 3), Measurement Status (bit 4); bit 0 is the unit.
    "0x2A35 blood pressure": Layout(
        blood_pressure.decode_measurement,
        lambda _f: SFLOAT_0 * 3,
        ((0x02, TS), (0x04, SFLOAT_0), (0x08, b"\x01"), (0x10, b"\x00\x00")),
    ),
    # GSS intermediate_cuff_pressure: the same format as 0x2A35.
    "0x2A36 intermediate cuff pressure": Layout(
        blood_pressure.decode_intermediate_cuff_pressure,
        lambda _f: SFLOAT_0 * 3,
        ((0x02, TS), (0x04, SFLOAT_0), (0x08, b"\x01"), (0x10, b"\x00\x00")),
    ),
    # GSS temperature_measurement: FLOAT, Time Stamp (bit 1), Temperature Type (bit 2).
    "0x2A1C temperature": Layout(
        temperature.decode_measurement,
        lambda _f: b"\x00" * 4,
        ((0x02, TS), (0x04, b"\x02")),
    ),
    # GSS weight_measurement: uint16 weight, Time Stamp (bit 1), User ID (bit 2),
    # BMI and Height (bit 3, uint16 each).
    "0x2A9D weight": Layout(
        weight.decode_measurement,
        lambda _f: b"\x00\x00",
        ((0x02, TS), (0x04, b"\x01"), (0x08, b"\x00" * 4)),
    ),
    # GSS glucose_measurement: Sequence Number, Base Time, then Time Offset (bit 0),
    # Concentration + Type-Sample Location (bit 1), Sensor Status (bit 3); bits 2 and 4
    # announce no field (unit, context follows).
    "0x2A18 glucose": Layout(
        glucose.decode_measurement,
        lambda _f: b"\x01\x00" + TS,
        ((0x01, b"\x00\x00"), (0x02, SFLOAT_0 + b"\x11"), (0x08, b"\x00\x00")),
    ),
    # GSS glucose_measurement_context: Sequence Number, Extended Flags (bit 7) first,
    # then Carbohydrate ID + SFLOAT (bit 0), Meal (bit 1), Tester-Health (bit 2),
    # Exercise Duration uint16 + Intensity uint8 (bit 3), Medication ID + SFLOAT (bit 4),
    # HbA1c SFLOAT (bit 6); bit 5 is the medication unit.
    "0x2A34 glucose context": Layout(
        glucose.decode_context,
        lambda _f: b"\x01\x00",
        (
            (0x80, b"\x00"),
            (0x01, b"\x01" + SFLOAT_0),
            (0x02, b"\x01"),
            (0x04, b"\x11"),
            (0x08, b"\x00\x00\x00"),
            (0x10, b"\x01" + SFLOAT_0),
            (0x40, SFLOAT_0),
        ),
    ),
    # GSS plx_spot-check_measurement: SpO2 + PR, Timestamp (bit 0), Measurement Status
    # (bit 1, uint16), Device and Sensor Status (bit 2, uint24), PAI (bit 3); bit 4 no field.
    "0x2A5E PLX spot-check": Layout(
        plx.decode_spot_check,
        lambda _f: SFLOAT_0 * 2,
        ((0x01, TS), (0x02, b"\x00\x00"), (0x04, b"\x00" * 3), (0x08, SFLOAT_0)),
    ),
    # GSS plx_continuous_measurement: SpO2PR-Normal, SpO2PR-Fast (bit 0), SpO2PR-Slow
    # (bit 1), Measurement Status (bit 2), Device and Sensor Status (bit 3), PAI (bit 4).
    "0x2A5F PLX continuous": Layout(
        plx.decode_continuous,
        lambda _f: SFLOAT_0 * 2,
        (
            (0x01, SFLOAT_0 * 2),
            (0x02, SFLOAT_0 * 2),
            (0x04, b"\x00\x00"),
            (0x08, b"\x00" * 3),
            (0x10, SFLOAT_0),
        ),
    ),
    # GSS plx_features: Supported Features (uint16, the "flags"), Measurement Status
    # Support (bit 0, uint16), Device and Sensor Status Support (bit 1, uint24).
    "0x2A60 PLX features": Layout(
        plx.decode_features,
        lambda _f: b"",
        ((0x01, b"\x00\x00"), (0x02, b"\x00" * 3)),
        flag_size=2,
    ),
    # GSS heart_rate_measurement: value uint8 (uint16 with bit 0), Energy Expended
    # (bit 3, uint16), RR-Intervals (bit 4, one or more uint16); bits 1-2 contact.
    "0x2A37 heart rate": Layout(
        heart_rate.decode_measurement,
        lambda f: b"\x48\x00" if f & 0x01 else b"\x48",
        ((0x08, b"\x00\x00"), (0x10, b"\x00\x04")),
    ),
}


def frame(layout: Layout, flags: int) -> bytes:
    out = flags.to_bytes(layout.flag_size, "little") + layout.base(flags)
    for bit, field in layout.fields:
        if flags & bit:
            out += field
    return out


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_announced_field_is_required(name: str) -> None:
    layout = LAYOUTS[name]
    # The low byte carries every defined flag bit (0x2A60's features too).
    for flags in range(256):
        full = frame(layout, flags)
        layout.decode(full)  # every announced field present: decodes
        for cut in range(len(full)):
            with pytest.raises(DecodeError):
                layout.decode(full[:cut])


def test_heart_rate_rr_flag_without_rr_bytes_is_refused() -> None:
    """The field bug of issue 12: RR flag set, no RR bytes, still a published reading."""
    with pytest.raises(DecodeError, match="RR-interval"):
        heart_rate.decode_measurement(bytes([0x16, 72]))
