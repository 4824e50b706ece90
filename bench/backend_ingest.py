"""Backend ingest: readings/s from a pre-filled broker backlog into PostgreSQL.

Subject: `homehub-backend ingest` worker processes (the real command) against a private
PostgreSQL (`homehub_backend.sandbox`, fsync=on, synchronous_commit=on, on a real disk)
and the private mosquitto. The backlog is published while the workers are away, into
their persistent sessions (created beforehand with the workers' client ids), so the
workers start on a full queue. The rate is the readings that appear in PostgreSQL over
the time from the first to the last of them (polled with count(*)), so process start-up
is not counted; the same clock is used for one and for two workers.

Baseline: a plain psycopg loop in this process: the same payloads, already parsed (no
MQTT, no JSON decoding, no validation), in batches of the worker's batch_max, each batch
one transaction with `executemany` of `INSERT ... ON CONFLICT (id) DO NOTHING`, then
commit. Targets (issue 9): one worker ≥ 0.8 of the baseline; two workers in one share
group ≥ 1.6 times one worker (2 cores).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from homehub_backend import db
from homehub_backend.ingest import share_filter
from homehub_backend.sandbox import PostgresSandbox
from homehub_backend.validate import Topics, classify
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import TOPIC_PREFIX, Result, encode_all, make_readings, median, scratch_dir
from gateway.sim.broker import MosquittoBroker

TARGET_ONE = 0.8
TARGET_TWO = 1.6
GROUP = "bench"

_PLAIN_INSERT = (
    "INSERT INTO readings (id, gateway, device, kind, measured_at, received_at, payload)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (id) DO NOTHING"
)


def _client(port: int, client_id: str, clean: bool = False) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=clean, properties=props)
    client.loop_start()
    return client


def _make_session(port: int, client_id: str) -> None:
    """The worker's persistent session with its shared subscription, then gone."""
    client = _client(port, client_id)
    done = threading.Event()
    client.on_subscribe = lambda *_: done.set()
    client.subscribe(share_filter(GROUP, TOPIC_PREFIX), qos=1)
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    client.disconnect()
    client.loop_stop()


def _publish(port: int, items: list[tuple[str, bytes]]) -> None:
    client = _client(port, f"bench-pub-{uuid.uuid4().hex[:6]}", clean=True)
    for start in range(0, len(items), 1000):
        infos = [client.publish(t, p, qos=1) for t, p in items[start : start + 1000]]
        for info in infos:
            info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0


def _reset(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE readings, rejected, hubs")
        conn.commit()


def _write_config(path: Path, port: int, dsn: str, batch: int) -> Path:
    path.write_text(
        "\n".join(
            [
                "[broker]",
                f"port = {port}",
                "[ingest]",
                f'share_group = "{GROUP}"',
                f"batch_max = {batch}",
                "[database]",
                f"dsn = {json.dumps(dsn)}",
                "",
            ]
        )
    )
    return path


def _workers_rate(
    broker: MosquittoBroker,
    dsn: str,
    config: Path,
    items: list[tuple[str, bytes]],
    workers: int,
    tag: str,
) -> float:
    import subprocess

    _reset(dsn)
    ids = [f"bench-{tag}-{n}" for n in range(workers)]
    for client_id in ids:
        _make_session(broker.port, client_id)
    _publish(broker.port, items)  # into the sessions: the backlog
    total = len(items)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "homehub_backend",
                "--log-level",
                "WARNING",
                "ingest",
                "--config",
                str(config),
                "--client-id",
                client_id,
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for client_id in ids
    ]
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 300
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT count(*) FROM readings").fetchone()
                n, now = (int(row[0]) if row else 0), time.monotonic()
                if n and first is None:
                    first = (now, n)
                if n >= total:
                    break
                if now > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"workers stored {n} of {total}")
                time.sleep(0.02)
        assert first is not None
        elapsed = now - first[0]
        return (total - first[1]) / elapsed if elapsed > 0 else float("inf")
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(20)
        for client_id in ids:
            _end_session(broker.port, client_id)


def _end_session(port: int, client_id: str) -> None:
    """Gone for good: an offline member of a share group keeps getting its share queued."""
    client = _client(port, client_id, clean=True)
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    client.disconnect(properties=props)
    client.loop_stop()


def _baseline_rate(dsn: str, rows: list[db.ReadingRow], batch: int) -> float:
    _reset(dsn)
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    _PLAIN_INSERT,
                    [
                        (r.id, r.gateway, r.device, r.kind, r.measured_at, r.received_at, r.payload)
                        for r in rows[start : start + batch]
                    ],
                )
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def run(count: int = 20_000, batch: int = 500, rounds: int = 2) -> list[Result]:
    encoded = encode_all(make_readings(count, tag="backend"))
    items = [(e.topic, e.payload) for e in encoded]
    topics = Topics(TOPIC_PREFIX)
    now = datetime.now(UTC)
    rows = [classify(topics, t, p, 65536, now) for t, p in items]
    readings = [r for r in rows if isinstance(r, db.ReadingRow)]
    assert len(readings) == count, "the bench payloads must be valid readings"
    # The cluster on a real disk (fsync must cost what it costs), reachable by `nobody`.
    parent = Path("/var/tmp")
    with scratch_dir("backend") as work:
        pg = PostgresSandbox(parent=parent)
        broker = MosquittoBroker(work / "broker")
        try:
            pg.start(timeout_s=60)
            with psycopg.connect(pg.dsn) as conn:
                db.migrate(conn)
            broker.start()
            config = _write_config(work / "backend.toml", broker.port, pg.dsn, batch)
            base, one, two = [], [], []
            # Alternate the three so that drift of the (shared, virtual) disk hits all alike.
            for r in range(rounds):
                base.append(_baseline_rate(pg.dsn, readings, batch))
                one.append(_workers_rate(broker, pg.dsn, config, items, 1, f"one{r}"))
                two.append(_workers_rate(broker, pg.dsn, config, items, 2, f"two{r}"))
        finally:
            broker.stop()
            pg.cleanup()
    base_rate, one_rate, two_rate = median(base), median(one), median(two)
    extra: dict[str, Any] = {
        "count": count,
        "batch_max": batch,
        "rounds": rounds,
        "baseline_per_round": [round(x) for x in base],
        "one_worker_per_round": [round(x) for x in one],
        "two_workers_per_round": [round(x) for x in two],
        "cpus": os.cpu_count(),
    }
    return [
        Result(
            name="backend_ingest",
            metric=f"one ingest worker, {count} readings from a broker backlog into PostgreSQL",
            unit="readings/s",
            value=one_rate,
            baseline=base_rate,
            baseline_label=f"plain psycopg executemany, batches of {batch}, commit each",
            better="higher",
            target=f">= {TARGET_ONE}",
            passed=one_rate / base_rate >= TARGET_ONE,
            extra=extra,
        ),
        Result(
            name="backend_scale",
            metric="two ingest workers in one share group",
            unit="readings/s",
            value=two_rate,
            baseline=one_rate,
            baseline_label="one worker, same backlog, same run",
            better="higher",
            target=f">= {TARGET_TWO}",
            passed=two_rate / one_rate >= TARGET_TWO,
            extra=extra,
        ),
    ]


if __name__ == "__main__":
    for result in run(count=int(sys.argv[1]) if len(sys.argv) > 1 else 20_000):
        print(result.as_json())
