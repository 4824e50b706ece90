"""The backend contract: `homehub.reading/1` and `homehub.status/1` against their JSON Schemas."""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from homehub_contract import READING_SCHEMA, STATUS_SCHEMA, load_schema, reading_topic, status_topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker, ValidationError

from gateway import __version__, mdc
from gateway.mdc import Ucum
from gateway.reading import Kind, Reading, Value, reading_id, utc_iso_ms
from gateway.status import DeviceStatus, StatusTracker
from gateway.store import StoreStats
from gateway.uplink.payload import encode_reading, offline_status

# RFC 3339 date-time (jsonschema's own check needs an optional package; be explicit).
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(text: object) -> bool:
    if not isinstance(text, str):
        return True
    if not RFC3339.match(text):
        return False
    datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


def validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


READING_V = validator("reading-1")
STATUS_V = validator("status-1")

OSLO_WINTER = timezone(timedelta(hours=1))
MEASURED = datetime(2026, 11, 22, 9, 14, 3, 456789, tzinfo=OSLO_WINTER)
RECEIVED = datetime(2026, 11, 22, 8, 14, 5, 123456, tzinfo=UTC)


def reject_constants(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in payload")


def decode(payload: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(payload, parse_constant=reject_constants)
    return doc


def bp_reading(
    sys_: float | None = 120.0,
    dia: float | None = 80.0,
    *,
    device_id: str = "bp-1",
    source_key: str | None = "C0:11:22:33:44:55#17",
    measured_at: datetime = MEASURED,
    status: tuple[str, ...] = ("irregular_pulse",),
) -> Reading:
    return Reading(
        device_id=device_id,
        driver="ble.blood_pressure",
        kind=Kind.BLOOD_PRESSURE,
        measured_at=measured_at,
        measured_at_source="device",
        values=(
            Value.of(mdc.PRESS_BLD_NONINV_SYS, sys_, Ucum.MMHG),
            Value.of(mdc.PRESS_BLD_NONINV_DIA, dia, Ucum.MMHG),
        ),
        status=status,
        source_key=source_key,
    )


def encode(reading: Reading, gateway_id: str = "hub-0001") -> dict[str, Any]:
    rid = reading_id(gateway_id, reading)
    return decode(
        encode_reading(reading, reading_id=rid, gateway_id=gateway_id, received_at=RECEIVED)
    )


def test_reading_validates_and_matches_the_documented_example() -> None:
    doc = encode(bp_reading())
    READING_V.validate(doc)
    assert doc["schema"] == READING_SCHEMA == "homehub.reading/1"
    assert doc["gateway"] == "hub-0001"
    assert doc["device"] == {"id": "bp-1", "driver": "ble.blood_pressure"}
    assert doc["kind"] == "blood_pressure"
    assert doc["measured_at"] == "2026-11-22T09:14:03+01:00"
    assert doc["received_at"] == "2026-11-22T08:14:05.123Z"
    assert doc["values"] == [
        {"mdc": 150021, "code": "MDC_PRESS_BLD_NONINV_SYS", "value": 120.0, "unit": "mm[Hg]"},
        {"mdc": 150022, "code": "MDC_PRESS_BLD_NONINV_DIA", "value": 80.0, "unit": "mm[Hg]"},
    ]
    assert doc["status"] == ["irregular_pulse"]


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("schema", "homehub.reading/2"),
        ("values", []),
        ("values", [{"mdc": 1, "code": "MDC_X", "value": "NaN", "unit": "%"}]),
        ("received_at", "2026-11-22T09:14:05.123+01:00"),
        ("measured_at", "2026-11-22T09:14:03"),
        ("status", ["a", "a"]),
        ("gateway", "hub/1"),
    ],
)
def test_schema_is_not_vacuous(field: str, bad: Any) -> None:
    doc = encode(bp_reading())
    doc[field] = bad
    with pytest.raises(ValidationError):
        READING_V.validate(doc)


@pytest.mark.parametrize("missing", [math.nan, math.inf, -math.inf, None])
def test_not_available_values_become_null(missing: float | None) -> None:
    reading = bp_reading(sys_=missing)
    payload = encode_reading(reading, reading_id="x", gateway_id="hub-0001", received_at=RECEIVED)
    assert b"NaN" not in payload and b"Infinity" not in payload
    doc = decode(payload)
    READING_V.validate(doc)
    assert doc["values"][0]["value"] is None
    assert doc["values"][1]["value"] == 80.0


def test_id_deterministic_with_source_key() -> None:
    first = reading_id("hub-0001", bp_reading())
    assert first == reading_id("hub-0001", bp_reading())
    # Same record re-read later (other values cannot happen, but other stamps can):
    assert first == reading_id("hub-0001", bp_reading(measured_at=MEASURED + timedelta(hours=1)))
    assert uuid.UUID(first).version == 5
    others = {
        reading_id("hub-0002", bp_reading()),
        reading_id("hub-0001", bp_reading(device_id="bp-2")),
        reading_id("hub-0001", bp_reading(source_key="C0:11:22:33:44:55#18")),
    }
    assert first not in others and len(others) == 3
    # The id survives encoding unchanged.
    assert encode(bp_reading())["id"] == first


def test_id_random_without_source_key() -> None:
    ids = {reading_id("hub-0001", bp_reading(source_key=None)) for _ in range(50)}
    assert len(ids) == 50
    assert all(uuid.UUID(i).version == 4 for i in ids)
    READING_V.validate(encode(bp_reading(source_key=None)))


@pytest.mark.parametrize(
    ("offset", "suffix"),
    [
        (timedelta(hours=1), "+01:00"),
        (timedelta(hours=-3, minutes=-30), "-03:30"),
        (timedelta(hours=5, minutes=45), "+05:45"),
        (timedelta(0), "+00:00"),
    ],
)
def test_measured_at_keeps_its_offset(offset: timedelta, suffix: str) -> None:
    moment = datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=timezone(offset))
    doc = encode(bp_reading(measured_at=moment))
    READING_V.validate(doc)
    assert doc["measured_at"].endswith(suffix)
    assert datetime.fromisoformat(doc["measured_at"]) == moment.replace(microsecond=0)


def test_measured_at_offset_with_seconds_is_given_in_utc() -> None:
    # Amsterdam local mean time was +00:19:32; RFC 3339 has no seconds in offsets.
    moment = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone(timedelta(minutes=19, seconds=32)))
    doc = encode(bp_reading(measured_at=moment))
    READING_V.validate(doc)
    assert datetime.fromisoformat(doc["measured_at"]) == moment


def test_naive_measured_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        bp_reading(measured_at=datetime(2026, 1, 1, 12, 0, 0))


@pytest.mark.parametrize(
    ("received", "text"),
    [
        (datetime(2026, 11, 22, 9, 14, 5, 123456, tzinfo=OSLO_WINTER), "2026-11-22T08:14:05.123Z"),
        (datetime(2026, 11, 22, 8, 14, 5, tzinfo=UTC), "2026-11-22T08:14:05.000Z"),
        (datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "2026-12-31T23:59:59.999Z"),
    ],
)
def test_received_at_is_utc_with_milliseconds(received: datetime, text: str) -> None:
    assert utc_iso_ms(received) == text
    payload = encode_reading(bp_reading(), reading_id="x", gateway_id="h", received_at=received)
    assert decode(payload)["received_at"] == text


def test_status_flags_are_unique() -> None:
    doc = encode(bp_reading(status=("irregular_pulse", "cuff_loose", "irregular_pulse")))
    READING_V.validate(doc)
    assert doc["status"] == ["irregular_pulse", "cuff_loose"]


def test_bad_device_id_is_refused_before_it_reaches_a_topic() -> None:
    with pytest.raises(ValueError, match="device_id"):
        bp_reading(device_id="bp/1")


def test_topics() -> None:
    assert reading_topic("homehub", "hub-0001", "bp-1") == "homehub/hub-0001/readings/bp-1"
    assert status_topic("a/b", "hub-0001") == "a/b/hub-0001/status"


# -- property: any float, any offset ------------------------------------------------------

any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]),
    st.none(),
)
# Whole-minute offsets (RFC 3339) and, rarely, ones with seconds (historic local mean time).
offsets = st.one_of(
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timedelta(minutes=m)),
    st.integers(-86399, 86399).map(lambda s: timedelta(seconds=s)),
)
moments = st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2099, 12, 30)).flatmap(
    lambda d: offsets.map(lambda o: d.replace(tzinfo=timezone(o)))
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(any_float, min_size=1, max_size=6),
    measured_at=moments,
    received_at=moments,
    status=st.lists(st.sampled_from(["a", "b", "irregular_pulse"]), max_size=5),
    source_key=st.one_of(st.none(), st.text(max_size=40)),
)
def test_any_reading_encodes_to_valid_json(
    values: list[float | None],
    measured_at: datetime,
    received_at: datetime,
    status: list[str],
    source_key: str | None,
) -> None:
    reading = Reading(
        device_id="dev-1",
        driver="simulated",
        kind=Kind.TEMPERATURE,
        measured_at=measured_at,
        measured_at_source="hub",
        values=tuple(Value.of(mdc.TEMP_BODY, v, Ucum.CEL) for v in values),
        status=tuple(status),
        source_key=source_key,
    )
    rid = reading_id("hub-1", reading)
    payload = encode_reading(reading, reading_id=rid, gateway_id="hub-1", received_at=received_at)
    doc = decode(payload)  # strict JSON: no NaN/Infinity tokens
    READING_V.validate(doc)
    for given_value, out in zip(values, doc["values"], strict=True):
        if given_value is None or not math.isfinite(given_value):
            assert out["value"] is None
        else:
            assert isinstance(out["value"], float)
            assert out["value"] == given_value  # JSON round trip of a finite float is exact
    assert datetime.fromisoformat(doc["measured_at"]) == measured_at.replace(microsecond=0)
    in_utc = received_at.astimezone(UTC)
    assert datetime.fromisoformat(doc["received_at"].replace("Z", "+00:00")) == (
        in_utc.replace(microsecond=in_utc.microsecond // 1000 * 1000)
    )
    assert doc["id"] == rid


# -- status documents ---------------------------------------------------------------------


def tracker() -> StatusTracker:
    status = StatusTracker(gateway_id="hub-0001")
    status.devices["bp-1"] = DeviceStatus(driver="ble.blood_pressure", state="ok")
    status.devices["oxi-1"] = DeviceStatus(
        driver="serial.contec_cms50", state="failing", restarts=3, last_error="no such port"
    )
    return status


def test_status_document_validates() -> None:
    now = 1_795_000_000.0
    stats = StoreStats(
        unsent=4,
        oldest_unsent_at=now - 12.5,
        last_delivery_at=now - 1.0,
        dropped=2,
        total=90,
        devices={"bp-1": now - 30.0},
    )
    doc = tracker().document(stats, now=now)
    STATUS_V.validate(doc)
    assert doc["schema"] == STATUS_SCHEMA and doc["state"] == "online"
    assert doc["oldest_unsent_age_s"] == 12.5
    assert doc["store"] == {"dropped": 2, "full": False, "disk_full": False, "recovered": None}
    assert doc["devices"]["bp-1"]["last_reading_at"].endswith("Z")
    assert doc["devices"]["oxi-1"]["last_reading_at"] is None
    assert doc["devices"]["oxi-1"]["restarts"] == 3


def test_status_document_reports_unconfirmed_readings() -> None:
    # Issue 9: published but not yet confirmed, beside unsent.
    now = 1_795_000_000.0
    stats = StoreStats(
        unsent=1,
        oldest_unsent_at=now - 2.0,
        last_delivery_at=now - 1.0,
        dropped=0,
        total=10,
        unconfirmed=3,
        oldest_unconfirmed_at=now - 400.25,
        last_confirmation_at=now - 60.0,
    )
    doc = tracker().document(stats, now=now)
    STATUS_V.validate(doc)
    assert doc["unconfirmed"] == 3
    assert doc["oldest_unconfirmed_age_s"] == 400.2
    assert doc["last_confirmation_at"] == "2026-11-18T11:05:40.000Z"
    for bad in ({"unconfirmed": -1}, {"oldest_unconfirmed_age_s": "old"}):
        assert not STATUS_V.is_valid({**doc, **bad})


def test_status_document_of_an_empty_store_validates() -> None:
    stats = StoreStats(unsent=0, oldest_unsent_at=None, last_delivery_at=None, dropped=0, total=0)
    doc = StatusTracker(gateway_id="hub-0001").document(stats)
    STATUS_V.validate(doc)
    assert doc["oldest_unsent_age_s"] is None and doc["last_delivery_at"] is None
    assert doc["devices"] == {}


def test_status_age_never_negative_when_clock_steps_back() -> None:
    now = 1_795_000_000.0
    stats = StoreStats(
        unsent=1, oldest_unsent_at=now + 60, last_delivery_at=None, dropped=0, total=1
    )
    doc = tracker().document(stats, now=now)
    STATUS_V.validate(doc)
    assert doc["oldest_unsent_age_s"] == 0.0


def test_offline_status_validates() -> None:
    doc = decode(offline_status("hub-0001", __version__))
    STATUS_V.validate(doc)
    assert doc == {
        "schema": "homehub.status/1",
        "gateway": "hub-0001",
        "state": "offline",
        "version": __version__,
    }


def test_status_schema_rejects_a_bad_state() -> None:
    doc = decode(offline_status("hub-0001", __version__))
    doc["state"] = "asleep"
    with pytest.raises(ValidationError):
        STATUS_V.validate(doc)
