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
    reading_doc,
    reading_ids,
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
