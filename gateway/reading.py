"""The Reading model: what a driver hands to the store.

A reading is immutable. It gets its stable id once, when the store commits it
(see `reading_id`), and keeps it through every resend so the backend can drop
duplicates.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from gateway.mdc import MdcCode

# Namespace for deterministic reading ids (uuid5). Never change it: a changed
# namespace would give a re-read record a new id and the backend a duplicate.
READING_ID_NAMESPACE = uuid.UUID("6c1d0f3e-8b7a-5d2e-9f41-2a7c3b9e0d15")

# Same as gateway.drivers.base.ID_PATTERN (which imports this module): the device
# id goes into MQTT topics and the payload schema requires this form.
_DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class Kind(StrEnum):
    """What a reading measures; one per device class."""

    BLOOD_PRESSURE = "blood_pressure"
    PULSE_OXIMETER = "pulse_oximeter"
    WEIGHT = "weight"
    GLUCOSE = "glucose"
    TEMPERATURE = "temperature"
    HEART_RATE = "heart_rate"


class Value(BaseModel):
    """One coded value. `value` is None when the device says "not available"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mdc: int = Field(ge=0, le=0xFFFFFFFF)
    code: str = Field(pattern=r"^MDC_[A-Z0-9_]+$")
    value: float | None
    unit: str = Field(min_length=1)

    @field_validator("value")
    @classmethod
    def _finite_or_none(cls, v: float | None) -> float | None:
        # ARCHITECTURE.md: NaN, NRes and ±INF are "not available" -> null, never a number.
        if v is not None and not math.isfinite(v):
            return None
        return v

    @classmethod
    def of(cls, code: MdcCode, value: float | None, unit: str) -> Value:
        return cls(mdc=code.number, code=code.name, value=value, unit=unit)


class Reading(BaseModel):
    """A measurement as a driver produced it, before the store gives it an id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str = Field(pattern=_DEVICE_ID_PATTERN)
    driver: str = Field(min_length=1)
    kind: Kind
    measured_at: AwareDatetime
    # "device" when the device's own clock stamped it, "hub" when the hub did.
    measured_at_source: Literal["device", "hub"]
    values: tuple[Value, ...] = Field(min_length=1)
    status: tuple[str, ...] = ()
    # The device's own identity for this record (address + sequence number or
    # device timestamp). When present the id is derived from it, so the same
    # record read twice is stored once and published under one id.
    source_key: str | None = None
    # Issue 13: whether the hub's clock was synchronised (NTP) when it stored this
    # reading; set by the hub, not by drivers. "unsynced" with measured_at_source
    # "hub" means measured_at may be hours or days off (a Pi boots with the time it
    # saved at shutdown). "corrected": stamped unsynchronised, then corrected from
    # CLOCK_BOOTTIME once the clock was synchronised (gateway/clockfix.py).
    measured_at_quality: Literal["synced", "unsynced", "unknown", "corrected"] | None = None
    # Issue 13: the device's clock minus the hub's (seconds), read from its Current
    # Time at this connection while the hub's clock was synchronised (the PHD IG's
    # coincident timestamp); None when not measured.
    device_clock_offset_s: float | None = None

    @field_validator("status")
    @classmethod
    def _unique_status(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        # The payload schema says status items are unique; keep the first of each.
        return tuple(dict.fromkeys(v))


def reading_id(gateway_id: str, reading: Reading) -> str:
    """The reading's stable id: deterministic from the device's identity when it has one."""
    if reading.source_key is None:
        return str(uuid.uuid4())
    name = f"{gateway_id}/{reading.device_id}/{reading.driver}/{reading.source_key}"
    return str(uuid.uuid5(READING_ID_NAMESPACE, name))


def utc_iso_ms(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as `received_at` is specified."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
