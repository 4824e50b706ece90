"""The ingest worker against a real mosquitto and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
from homehub_backend.config import BackendConfig

from gateway.sim.broker import MosquittoBroker
from tests.backend.support import (
    ConfirmCollector,
    Publisher,
    ThreadWorker,
    encode,
    reading_doc,
    reading_ids,
    rejected_rows,
)
from tests.helpers import wait_until

Make = Callable[..., tuple[Path, BackendConfig]]


def test_readings_are_stored_once_and_confirmed(
    broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    _, config = backend_config(broker.port)
    docs = [reading_doc("hub-a", n) for n in range(300)] + [
        reading_doc("hub-b", n) for n in range(200)
    ]
    confirms = ConfirmCollector(broker.port, ["hub-a", "hub-b"]).start()
    worker = ThreadWorker(config).start()
    hub = Publisher(broker.port)
    try:
        hub.readings(docs)
        hub.readings(docs[:50])  # resent: a no-op, but confirmed again
        confirms.wait_for({d["id"] for d in docs}, timeout_s=20)
        wait_until(lambda: worker.worker.counters.duplicates >= 50, 10, "the duplicates")
    finally:
        hub.close()
        worker.stop()
        confirms.stop()
    ids = reading_ids(database)
    assert sorted(ids) == sorted(d["id"] for d in docs)
    # Each hub is confirmed only its own readings.
    assert set(confirms.ids["hub-a"]) == {d["id"] for d in docs if d["gateway"] == "hub-a"}
    assert set(confirms.ids["hub-b"]) == {d["id"] for d in docs if d["gateway"] == "hub-b"}
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT gateway, device, kind, measured_at, payload->'values'->0->>'code'"
            " FROM readings WHERE id = %s",
            (docs[0]["id"],),
        ).fetchone()
    assert row is not None
    assert row[:3] == ("hub-a", "bp-1", "blood_pressure")
    assert row[3].isoformat() == "2026-11-22T08:00:00+00:00"
    assert row[4] == "MDC_PRESS_BLD_NONINV_SYS"


def test_bad_input_is_rejected_with_its_reason_and_the_worker_keeps_going(
    broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    _, config = backend_config(broker.port, ingest={"max_payload_bytes": 2048})
    good = reading_doc("hub-a", 1)
    wrong_gateway = {**reading_doc("hub-a", 2), "gateway": "hub-b"}
    wrong_device = reading_doc("hub-a", 3, device="oxi-1")
    missing_values = {k: v for k, v in reading_doc("hub-a", 4).items() if k != "values"}
    bad_value = reading_doc("hub-a", 5)
    bad_value["values"][0]["value"] = "120"
    nul = reading_doc("hub-a", 6)
    nul["status"] = ["a\u0000b"]  # valid JSON, refused by PostgreSQL's jsonb
    bad = [
        ("homehub/hub-a/readings/bp-1", b"{not json", "invalid JSON"),
        ("homehub/hub-a/readings/bp-1", b"\xff\xfe", "invalid JSON"),
        ("homehub/hub-a/readings/bp-1", encode(wrong_gateway), "gateway: the topic and"),
        ("homehub/hub-a/readings/bp-1", encode(wrong_device), "device: the topic and"),
        ("homehub/hub-a/readings/bp-1", encode(missing_values), "schema: data must contain"),
        ("homehub/hub-a/readings/bp-1", encode(bad_value), "schema: data.values[0].value must be"),
        ("homehub/hub-a/readings/bp-1", b"[" + b" " * 4096 + b"]", "oversize: 4098 bytes"),
        ("homehub/hub-a/readings/bp-1", encode({"schema": "homehub.reading/9"}), "unknown schema"),
        ("homehub/hub-a/readings/bp-1", encode(nul), "database refused it: SQLSTATE"),
        ("homehub/hub-a/status", b"{}", "schema: data must contain"),
    ]
    confirms = ConfirmCollector(broker.port, ["hub-a", "hub-b"]).start()
    worker = ThreadWorker(config).start()
    hub = Publisher(broker.port)
    try:
        hub.publish_many((topic, payload) for topic, payload, _ in bad)
        hub.readings([good])  # after all of that, still working
        confirms.wait_for({good["id"]}, timeout_s=10)
        wait_until(lambda: worker.worker.counters.rejected >= len(bad), 10, "the rejections")
    finally:
        hub.close()
        worker.stop()
        confirms.stop()
    assert reading_ids(database) == [good["id"]]
    rows = rejected_rows(database)
    assert len(rows) == len(bad)
    by_raw = {raw: (topic, reason) for topic, reason, raw in rows}
    for topic, payload, reason in bad:
        raw = payload[:2048]
        assert raw in by_raw, reason
        assert by_raw[raw][0] == topic
        assert reason in by_raw[raw][1], (reason, by_raw[raw][1])
    # Nothing rejected was confirmed.
    assert confirms.unique() == {good["id"]}


def test_a_duplicate_id_from_another_gateway_is_not_confirmed_to_it(
    broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    _, config = backend_config(broker.port)
    original = reading_doc("hub-a", 1)
    thief = {**original, "gateway": "hub-b"}
    confirms = ConfirmCollector(broker.port, ["hub-a", "hub-b"]).start()
    worker = ThreadWorker(config).start()
    hub = Publisher(broker.port)
    try:
        hub.readings([original])
        confirms.wait_for({original["id"]}, timeout_s=10)
        hub.readings([thief])
        wait_until(lambda: worker.worker.counters.rejected >= 1, 10, "the rejection")
    finally:
        hub.close()
        worker.stop()
        confirms.stop()
    assert "hub-b" not in confirms.ids
    assert [r[1] for r in rejected_rows(database)] == ["id already held for another gateway"]
