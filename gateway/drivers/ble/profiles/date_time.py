"""Date Time 0x2A08 and Current Time 0x2A2B: decode what a device says, encode what we set.

GSS org.bluetooth.characteristic.date_time (7 bytes: year uint16, month, day,
hours, minutes, seconds; year/month/day 0 = not known) and
org.bluetooth.characteristic.current_time (Exact Time 256 = Day Date Time +
Fractions256, then Adjust Reason). Both carry local time without a zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.drivers.ble.profiles._codec import Reader, flags_set

DATE_TIME_UUID = "00002a08-0000-1000-8000-00805f9b34fb"
CURRENT_TIME_UUID = "00002a2b-0000-1000-8000-00805f9b34fb"
CURRENT_TIME_SERVICE_UUID = "00001805-0000-1000-8000-00805f9b34fb"

# GSS current_time: Adjust Reason bits.
ADJUST_MANUAL = 0x01
ADJUST_EXTERNAL_REFERENCE = 0x02
ADJUST_TIME_ZONE = 0x04
ADJUST_DST = 0x08
_ADJUST_NAMES = {0: "manual", 1: "external_reference", 2: "time_zone", 3: "dst"}


@dataclass(frozen=True, slots=True)
class CurrentTime:
    time: datetime | None  # naive local time; None when the device does not know it
    day_of_week: int | None  # 1 = Monday .. 7 = Sunday
    fractions256: int
    adjust_reasons: tuple[str, ...]


def decode_date_time(data: bytes | bytearray) -> datetime | None:
    return Reader(data, "date time").date_time()


def decode_current_time(data: bytes | bytearray) -> CurrentTime:
    reader = Reader(data, "current time")
    moment = reader.date_time()
    day_of_week = reader.u8()
    fractions = reader.u8()
    adjust = reader.u8()
    # GSS day_of_week: 0 = not known, 1..7 = Monday..Sunday, 8..255 reserved.
    if day_of_week > 7:
        raise reader.fail("day of week out of range")
    if moment is not None and day_of_week and moment.isoweekday() != day_of_week:
        raise reader.fail("day of week does not match the date")
    return CurrentTime(moment, day_of_week or None, fractions, flags_set(adjust, _ADJUST_NAMES))


def encode_date_time(moment: datetime) -> bytes:
    """Local wall time as the 7-byte Date Time (seconds truncated)."""
    return moment.year.to_bytes(2, "little") + bytes(
        [moment.month, moment.day, moment.hour, moment.minute, moment.second]
    )


def encode_current_time(moment: datetime, adjust_reason: int = ADJUST_MANUAL) -> bytes:
    """Local wall time as the 10-byte Current Time (Fractions256 from microseconds)."""
    fractions = moment.microsecond * 256 // 1_000_000
    return encode_date_time(moment) + bytes([moment.isoweekday(), fractions, adjust_reason])
