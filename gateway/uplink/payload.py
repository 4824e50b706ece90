"""Payload encodings for the backend contract (ARCHITECTURE.md, "MQTT contract").

`homehub.reading/1` and `homehub.status/1` are versioned; fields may be added,
never removed or changed in meaning. JSON Schemas for both, their names and
their topics live in the shared contract package `homehub_contract` (`contract/`); the tests
check these encoders against those schemas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from homehub_contract import READING_SCHEMA, STATUS_SCHEMA

from gateway.reading import Reading, utc_iso_ms


def iso_with_offset(moment: datetime) -> str:
    """ISO 8601 to the second, keeping the UTC offset the moment was taken in.

    RFC 3339 offsets have whole minutes; an offset with seconds (historic local
    mean time, a hand-made tzinfo) is given in UTC instead, the same instant.
    """
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("measured_at must carry its UTC offset")
    if offset % timedelta(minutes=1):
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="seconds")


def encode_reading(
    reading: Reading,
    *,
    reading_id: str,
    gateway_id: str,
    received_at: datetime,
    flags: Sequence[str] = (),
) -> bytes:
    """The `homehub.reading/1` JSON for one stored reading (compact UTF-8)."""
    doc: dict[str, Any] = {
        "schema": READING_SCHEMA,
        "id": reading_id,
        "gateway": gateway_id,
        "device": {"id": reading.device_id, "driver": reading.driver},
        "kind": reading.kind.value,
        "measured_at": iso_with_offset(reading.measured_at),
        "measured_at_source": reading.measured_at_source,
        "received_at": utc_iso_ms(received_at),
        "values": [
            {"mdc": v.mdc, "code": v.code, "value": v.value, "unit": v.unit} for v in reading.values
        ],
        "status": list(reading.status),
    }
    if reading.measured_at_quality is not None:
        doc["measured_at_quality"] = reading.measured_at_quality
    if reading.device_clock_offset_s is not None:
        doc["device_clock_offset_s"] = reading.device_clock_offset_s
    if flags:
        # Issue 10: outside the care plan's thresholds ("above:150021", "weight_gain").
        doc["flags"] = list(flags)
    # allow_nan=False: a non-finite number must never reach the backend (the
    # Value model already turns them into None; this is the last guard).
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def encode_status(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def offline_status(gateway_id: str, version: str) -> bytes:
    """The Last Will and the clean-shutdown status: the hub is offline."""
    return encode_status(
        {"schema": STATUS_SCHEMA, "gateway": gateway_id, "state": "offline", "version": version}
    )


def short_status(full: bytes) -> bytes:
    """The status with its top-level scalars only (state, counts, ages, clock_ok).

    Sent instead of the full document when a broker drops the connection for the full
    one (MqttUplink._status_lost): the care team still sees the hub online, its backlog
    and its clock, without the per-device, BLE, TLS and care-plan details.
    """
    doc = json.loads(full)
    return encode_status({k: v for k, v in doc.items() if not isinstance(v, dict | list)})
