"""From an MQTT message to a row: a reading, a hub status, or a rejection with its reason.

The schemas are the contract's own files (`homehub_contract.load_schema`). On the hot path
they are compiled to Python by fastjsonschema (`homehub_contract.compiled_validator`):
20 µs per reading instead of 360 µs for jsonschema's interpreter
(`homehub_contract.validator`), which would cap one worker at ~2,700 readings/s. The
contract's schemas use only keywords that mean the same in draft-07 (which fastjsonschema
implements) and in 2020-12 (tests/backend/test_validate.py checks that and compares both
validators' verdicts). fastjsonschema also checks `format: date-time`, which jsonschema
skips without its optional rfc3339 package; the backend needs real timestamps for its
typed columns anyway.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fastjsonschema
from homehub_contract import READING_SCHEMA, STATUS_SCHEMA, compiled_validator

from homehub_backend import fhir
from homehub_backend.db import ReadingRow, RejectedRow, StatusRow


@dataclass(frozen=True, slots=True)
class Topics:
    """How the worker reads a topic: `{prefix}/{gateway}/readings/{device}`, `.../status`."""

    prefix: str

    def parse(self, topic: str) -> tuple[str, str, str | None] | None:
        """(kind, gateway, device) with kind "readings" or "status", or None."""
        if not topic.startswith(self.prefix + "/"):
            return None
        rest = topic[len(self.prefix) + 1 :].split("/")
        if len(rest) == 2 and rest[1] == "status":
            return ("status", rest[0], None)
        if len(rest) >= 3 and rest[1] == "readings":
            # More levels than one device id can only be a wrong topic: the device check
            # below rejects it (readings/# matches them).
            return ("readings", rest[0], "/".join(rest[2:]))
        return None


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # the schema's pattern requires an offset; belt and braces
        raise ValueError("no UTC offset")
    return moment


def _schema_reason(exc: fastjsonschema.JsonSchemaValueException) -> str:
    # fastjsonschema names the path and the rule ("data.values[0].value must be number or
    # null"), never the value: reasons are logged, and patient values never are.
    return f"schema: {exc.message}"


Row = ReadingRow | RejectedRow | StatusRow


#: MQTT 5 Content Types (§3.3.2.3.9) taken as the native homehub.reading/1 document; the
#: hub sends it without one.
NATIVE_CONTENT_TYPES = (None, "", "application/json")


def _media_type(content_type: str | None) -> str | None:
    # "application/fhir+json; fhirVersion=4.0" names the same media type (RFC 6838).
    return None if content_type is None else content_type.split(";")[0].strip().lower()


def classify(  # noqa: PLR0911 - one return per kind of rejection
    topics: Topics,
    topic: str,
    payload: bytes,
    max_payload_bytes: int,
    now: datetime,
    *,
    content_type: str | None = None,
) -> Row:
    """One message → the row it becomes. Never raises for bad input: it is a RejectedRow.

    `content_type` is the PUBLISH's MQTT 5 Content Type: `application/fhir+json` is a FHIR
    Bundle (fhir.py), none (or application/json) the native document.
    """

    def reject(reason: str, raw: bytes = payload) -> RejectedRow:
        return RejectedRow(topic=topic, reason=reason, raw=raw)

    where = topics.parse(topic)
    if where is None:
        return reject("topic: not a readings or status topic")
    kind, gateway, device = where
    if len(payload) > max_payload_bytes:
        return reject(
            f"oversize: {len(payload)} bytes (limit {max_payload_bytes}); raw cut to the limit",
            payload[:max_payload_bytes],
        )
    try:
        text = payload.decode("utf-8")
        doc = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        return reject(f"invalid JSON: {type(exc).__name__} at {_position(exc)}")
    if kind == "status":
        return _status(doc, gateway, now, reject)
    media = _media_type(content_type)
    if media == fhir.CONTENT_TYPE:
        return _fhir_reading(doc, text, topic=topic, gateway=gateway, device=device, reject=reject)
    if media not in NATIVE_CONTENT_TYPES:
        return reject(f"content type: {media[:40]!r} is not a reading format this backend takes")
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return reject(f"schema: a FHIR Bundle without the Content Type {fhir.CONTENT_TYPE}")
    try:
        compiled_validator("reading-1")(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        if isinstance(doc, dict) and doc.get("schema") not in (None, READING_SCHEMA):
            return reject(f"schema: unknown schema {str(doc.get('schema'))[:40]!r}")
        return reject(_schema_reason(exc))
    if doc["gateway"] != gateway:
        # A hub may publish only under its own id (its broker identity's ACL); a payload that
        # names another hub is not to be believed either way.
        return reject("gateway: the topic and the payload name different gateways")
    if device is None or doc["device"]["id"] != device:
        return reject("device: the topic and the payload name different devices")
    try:
        measured_at = _utc(doc["measured_at"])
        received_at = _utc(doc["received_at"])
    except ValueError:
        return reject("schema: measured_at or received_at is not a real date-time")
    return ReadingRow(
        id=doc["id"],
        gateway=gateway,
        device=device,
        kind=doc["kind"],
        measured_at=measured_at,
        received_at=received_at,
        payload=text,
        topic=topic,
    )


def _fhir_reading(
    doc: Any,
    text: str,
    *,
    topic: str,
    gateway: str,
    device: str | None,
    reject: Callable[[str], RejectedRow],
) -> ReadingRow | RejectedRow:
    try:
        facts = fhir.bundle_facts(doc)
    except fhir.BadBundle as why:
        return reject(str(why))
    # The same rules as for the native payload: a hub speaks only for itself and its devices.
    if facts.gateway != gateway:
        return reject("gateway: the topic and the payload name different gateways")
    if device is None or facts.device != device:
        return reject("device: the topic and the payload name different devices")
    return ReadingRow(
        id=facts.id,
        gateway=gateway,
        device=device,
        kind=facts.kind,
        measured_at=facts.measured_at,
        received_at=facts.received_at,
        payload=text,
        topic=topic,
        format="fhir",
    )


def _position(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"byte {exc.pos}"
    if isinstance(exc, UnicodeDecodeError):
        return f"byte {exc.start}"
    return "?"


def _status(
    doc: Any, gateway: str, now: datetime, reject: Callable[[str], RejectedRow]
) -> StatusRow | RejectedRow:
    try:
        compiled_validator("status-1")(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        if isinstance(doc, dict) and doc.get("schema") not in (None, STATUS_SCHEMA):
            return reject(f"schema: unknown schema {str(doc.get('schema'))[:40]!r}")
        return reject(_schema_reason(exc))
    if doc["gateway"] != gateway:
        return reject("gateway: the topic and the payload name different gateways")
    devices = doc.get("devices") or {}
    failing = sorted(d for d, info in devices.items() if info.get("state") == "failing")
    return StatusRow(
        gateway=gateway,
        doc=doc,
        received_at=now,
        online=doc["state"] == "online",
        version=doc["version"],
        unsent=doc.get("unsent"),
        oldest_unsent_age_s=doc.get("oldest_unsent_age_s"),
        failing_devices=failing,
    )


def utc_now() -> datetime:
    return datetime.now(UTC)
