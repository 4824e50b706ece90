"""Helpers for the backend tests: configs, readings, publishers, confirm collectors, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from homehub_backend.config import BackendConfig, load_config
from homehub_backend.ingest import Worker
from homehub_contract import confirm_topic, reading_topic, validator
from paho.mqtt.enums import CallbackAPIVersion

FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5}


def write_backend_config(
    path: Path, *, port: int, dsn: str, **sections: dict[str, Any]
) -> tuple[Path, BackendConfig]:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        return repr(v)

    merged: dict[str, dict[str, Any]] = {
        "broker": {"port": port, "client_id": f"backend-{uuid.uuid4().hex[:8]}", **FAST},
        "ingest": {"db_retry_min_s": 0.05, "db_retry_max_s": 0.5},
        "database": {"dsn": dsn},
    }
    for name, table in sections.items():
        merged.setdefault(name, {}).update(table)
    lines = []
    for name, table in merged.items():
        lines += [f"[{name}]", *(f"{k} = {value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines))
    return path, load_config(path)


def reading_doc(gateway: str, n: int, device: str = "bp-1") -> dict[str, Any]:
    """A valid homehub.reading/1 document, as the hub's payload.encode_reading makes them."""
    doc: dict[str, Any] = {
        "schema": "homehub.reading/1",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{gateway}/{device}/{n}")),
        "gateway": gateway,
        "device": {"id": device, "driver": "simulated"},
        "kind": "blood_pressure",
        "measured_at": f"2026-11-22T09:{n // 60 % 60:02d}:{n % 60:02d}+01:00",
        "measured_at_source": "device",
        "received_at": "2026-11-22T08:14:05.123Z",
        "values": [
            {"mdc": 150021, "code": "MDC_PRESS_BLD_NONINV_SYS", "value": 120.0, "unit": "mm[Hg]"},
            {"mdc": 150022, "code": "MDC_PRESS_BLD_NONINV_DIA", "value": 80.0, "unit": "mm[Hg]"},
        ],
        "status": [],
    }
    assert not list(validator("reading-1").iter_errors(doc))
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class Publisher:
    """A paho client standing in for a hub: publishes QoS 1 and waits for the PUBACKs."""

    def __init__(self, port: int, client_id: str = "") -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.publish_many([(topic, payload)], retain=retain)

    def publish_many(
        self, items: Iterable[tuple[str, bytes]], retain: bool = False, timeout_s: float = 20
    ) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in items]
        for info in infos:
            info.wait_for_publish(timeout_s)
            assert info.is_published()

    def readings(self, docs: Iterable[dict[str, Any]], prefix: str = "homehub") -> None:
        self.publish_many(
            (reading_topic(prefix, d["gateway"], d["device"]["id"]), encode(d)) for d in docs
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class ConfirmCollector:
    """Subscribes to hubs' confirm topics; collects every confirmed id per gateway."""

    port: int
    gateways: list[str]
    prefix: str = "homehub"
    ids: dict[str, list[str]] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> ConfirmCollector:
        ready = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe([(confirm_topic(self.prefix, g), 1) for g in self.gateways])
        self.client.loop_start()
        assert ready.wait(10), "confirm collector did not subscribe"
        return self

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        assert not list(validator("confirm-1").iter_errors(doc)), doc
        assert msg.topic == confirm_topic(self.prefix, doc["gateway"])
        with self._cond:
            self.documents.append(doc)
            self.ids.setdefault(doc["gateway"], []).extend(doc["ids"])
            self._cond.notify_all()

    def unique(self) -> set[str]:
        with self._cond:
            return {i for ids in self.ids.values() for i in ids}

    def wait_for(self, ids: set[str], timeout_s: float) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: ids <= self._unique_locked(), timeout_s)
            missing = len(ids - self._unique_locked())
        assert ok, f"{missing} of {len(ids)} ids not confirmed in {timeout_s} s"

    def _unique_locked(self) -> set[str]:
        return {i for ids in self.ids.values() for i in ids}

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ThreadWorker:
    """An ingest Worker on a thread of this process (cheaper than a subprocess)."""

    def __init__(self, config: BackendConfig) -> None:
        self.worker = Worker(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="ingest")

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def start(self, timeout_s: float = 10) -> ThreadWorker:
        self.thread.start()
        assert self.worker.wait_subscribed(timeout_s), "worker did not subscribe"
        return self

    def stop(self, timeout_s: float = 10) -> None:
        self.worker.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


def worker_process(config: Path, *extra: str, log_level: str = "INFO") -> subprocess.Popen[str]:
    """`homehub-backend ingest` in a subprocess."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "homehub_backend",
            "--log-level",
            log_level,
            "ingest",
            "--config",
            str(config),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop_process(process: subprocess.Popen[str], timeout_s: float = 10) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
            raise AssertionError("the worker did not stop on SIGTERM") from None
    return process.returncode


def reading_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM readings")]


def rejected_rows(dsn: str) -> list[tuple[str, str, bytes]]:
    with psycopg.connect(dsn) as conn:
        return [
            (r[0], r[1], bytes(r[2]))
            for r in conn.execute("SELECT topic, reason, raw FROM rejected ORDER BY seq")
        ]
