"""FHIR payloads at the backend (issue 13 part 1): a hub's transaction Bundle, Content Type
application/fhir+json, is checked, stored under the hub's reading id and confirmed; a bad
one lands in `rejected` with its reason. The Bundles are the hub's own (gateway/uplink/fhir.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from homehub_backend import fhir
from homehub_backend.config import BackendConfig
from homehub_backend.db import ReadingRow, RejectedRow
from homehub_backend.validate import Topics, classify
from homehub_contract import reading_topic
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.sim.broker import MosquittoBroker
from gateway.uplink.fhir import render_fhir
from gateway.uplink.fhir_codes import SPECIALIZATIONS
from tests.backend.support import Publisher, ThreadWorker, reading_doc, rejected_rows
from tests.helpers import hub_process, sim_device, wait_until, write_config

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
TOPICS = Topics("homehub")
TOPIC = "homehub/hub-1/readings/bp-1"
Make = Callable[..., tuple[Path, BackendConfig]]


def bundle(doc: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = doc or reading_doc("hub-1", 1)
    parsed: dict[str, Any] = json.loads(render_fhir(json.dumps(doc).encode(), version="0.1.0"))
    return parsed


def as_fhir(doc: Any, topic: str = TOPIC, content_type: str | None = fhir.CONTENT_TYPE) -> Any:
    payload = json.dumps(doc).encode()
    return classify(TOPICS, topic, payload, 65536, NOW, content_type=content_type)


def test_the_backend_knows_every_kind_the_hub_renders() -> None:
    assert {code.code: kind for kind, code in SPECIALIZATIONS.items()} == fhir.KINDS


def test_a_hub_bundle_becomes_the_row_of_its_native_reading() -> None:
    doc = reading_doc("hub-1", 7)
    row = as_fhir(bundle(doc))
    assert isinstance(row, ReadingRow), row
    # The hub's reading id: resends in either form are one row, the confirm names it.
    assert row.id == doc["id"]
    assert (row.gateway, row.device, row.kind, row.format) == (
        "hub-1",
        "bp-1",
        "blood_pressure",
        "fhir",
    )
    assert row.measured_at == datetime.fromisoformat(doc["measured_at"])
    assert row.received_at is None  # not in the Bundle: unknown, never made up
    assert json.loads(row.payload)["resourceType"] == "Bundle"
    # A parameter on the media type is the same type (RFC 6838).
    again = as_fhir(bundle(doc), content_type="application/fhir+json; fhirVersion=4.0")
    assert isinstance(again, ReadingRow) and again.id == doc["id"]


def test_a_clock_fault_brings_the_hubs_storing_time() -> None:
    doc = reading_doc("hub-1", 8) | {"status": ["device_clock_ahead"], "measured_at_source": "hub"}
    row = as_fhir(bundle(doc))
    assert isinstance(row, ReadingRow), row
    assert row.received_at == datetime.fromisoformat(doc["received_at"])


def _without_phg(b: dict[str, Any]) -> None:
    b["entry"] = [e for e in b["entry"] if "PhgDevice" not in json.dumps(e["resource"]["meta"])]


def _devices_only(b: dict[str, Any]) -> None:
    b["entry"] = [e for e in b["entry"] if e["resource"]["resourceType"] == "Device"]


def _observations(b: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Observation"]


BAD: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "not a bundle": (lambda b: b.update(resourceType="Observation"), "not a Bundle"),
    "a collection": (lambda b: b.update(type="collection"), "Bundle.type"),
    "no identifier": (lambda b: b.pop("identifier"), "Bundle.identifier"),
    "a long identifier": (lambda b: b["identifier"].update(value="x" * 65), "Bundle.identifier"),
    "no entries": (lambda b: b.update(entry=[]), "Bundle.entry"),
    "a GET entry": (lambda b: b["entry"][0]["request"].update(method="GET"), "not a POST"),
    "an Observation without identifier": (
        lambda b: _observations(b)[0].pop("identifier"),
        "Observation has no identifier",
    ),
    "another reading's Observation": (
        lambda b: _observations(b)[0]["identifier"][0].update(value="other-150020"),
        "not the reading id",
    ),
    "no effective time": (
        lambda b: _observations(b)[0].pop("effectiveDateTime"),
        "effectiveDateTime is missing",
    ),
    "no gateway device": (_without_phg, "no PhgDevice"),
    "no observation": (_devices_only, "no PHD Observation"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_bundle_is_rejected_with_its_reason(case: str) -> None:
    change, reason = BAD[case]
    doc = bundle()
    change(doc)
    row = as_fhir(doc)
    assert isinstance(row, RejectedRow), row
    assert row.reason.startswith("fhir: ") and reason in row.reason, row.reason
    assert row.raw == json.dumps(doc).encode()


def test_topic_rules_and_content_types() -> None:
    other_hub = as_fhir(bundle(), topic="homehub/hub-2/readings/bp-1")
    assert isinstance(other_hub, RejectedRow) and other_hub.reason.startswith("gateway:")
    other_device = as_fhir(bundle(), topic="homehub/hub-1/readings/oxi-1")
    assert isinstance(other_device, RejectedRow) and other_device.reason.startswith("device:")
    unlabelled = as_fhir(bundle(), content_type=None)
    assert isinstance(unlabelled, RejectedRow)
    assert "without the Content Type application/fhir+json" in unlabelled.reason
    unknown = as_fhir(reading_doc("hub-1", 1), content_type="text/csv")
    assert isinstance(unknown, RejectedRow) and unknown.reason.startswith("content type:")
    native = as_fhir(reading_doc("hub-1", 1), content_type="application/json")
    assert isinstance(native, ReadingRow) and native.format == "homehub"


def hub_store(state_dir: Path) -> dict[str, float | None]:
    db = sqlite3.connect(f"file:{state_dir / 'readings.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        return dict(db.execute("SELECT id, confirmed_at FROM readings").fetchall())
    finally:
        db.close()


def fhir_rows(dsn: str) -> dict[str, tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, format, kind, payload->>'resourceType' FROM readings"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_a_fhir_hub_is_stored_and_confirmed(
    tmp_path: Path, broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    """A real hub process, payload = "fhir" and confirm = true: every reading reaches
    PostgreSQL once as a Bundle, and the hub's store ends with all of them confirmed."""
    count = 40
    _, config = backend_config(broker.port)
    worker = ThreadWorker(config).start()
    state = tmp_path / "state"
    cfg = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=state,
        gateway_id="hub-fhir",
        devices=[
            sim_device("bp-1", "blood_pressure", interval_s=0.0, count=count // 2, burst=10),
            sim_device("oxi-1", "pulse_oximeter", interval_s=0.0, count=count // 2, burst=10),
        ],
        mqtt={"payload": "fhir", "confirm": True, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
    )
    hub = hub_process(cfg, log_level="WARNING")
    try:
        wait_until(lambda: len(fhir_rows(database)) >= count, 30, "the Bundles in PostgreSQL")
        wait_until(
            lambda: len(s := hub_store(state)) == count and None not in s.values(),
            30,
            "every reading confirmed in the hub's store",
            step_s=0.1,
        )
        # A bad Bundle from the same hub goes to `rejected`, the worker carries on.
        bad = bundle(reading_doc("hub-fhir", 1))
        bad["type"] = "collection"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = fhir.CONTENT_TYPE
        publisher = Publisher(broker.port)
        try:
            info = publisher.client.publish(
                reading_topic("homehub", "hub-fhir", "bp-1"),
                json.dumps(bad).encode(),
                qos=1,
                properties=props,
            )
            info.wait_for_publish(10)
        finally:
            publisher.close()
        wait_until(lambda: bool(rejected_rows(database)), 10, "the bad Bundle rejected")
    finally:
        hub.terminate()
        hub.wait(10)
        worker.stop()
    stored = fhir_rows(database)
    assert set(stored) == set(hub_store(state))  # the hub's own reading ids, each once
    assert {v[0] for v in stored.values()} == {"fhir"}
    assert {v[2] for v in stored.values()} == {"Bundle"}
    assert {v[1] for v in stored.values()} == {"blood_pressure", "pulse_oximeter"}
    [(topic, reason, _)] = rejected_rows(database)
    assert topic == "homehub/hub-fhir/readings/bp-1"
    assert reason == "fhir: Bundle.type is not 'transaction'"
    assert worker.worker.counters.rejected == 1
