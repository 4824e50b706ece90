"""Latency: from a driver's emit to the broker's PUBACK, one reading at a time, loopback.

Subject: `gateway.daemon.Hub` (synchronous=FULL) running one benchmark driver,
registered like any plug-in through a `DriverRegistry`. The driver emits one
reading through its `DriverContext.emit` (the Hub's path: `Store.add`, events,
`notify_new_reading`), waits for that reading's `ReadingDelivered` event (a
success PUBACK, seen on the event loop), pauses `gap_s`, and emits the next. The
first `warmup` readings are not counted. Also reported: emit -> committed (emit
returned) and committed -> PUBACK.

Baseline: the same two steps without the hub: a plain sqlite3 INSERT + COMMIT
(WAL, synchronous=FULL, secure_delete) on the calling thread, then a plain paho
publish (QoS 1, loop_start, TCP_NODELAY) and a wait for its `on_publish`, with the
same payload. Baseline and hub samples alternate reading by reading (the baseline
step runs on a worker thread while the hub is idle), so both see the same machine.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench.common import (
    Encoded,
    Result,
    encode_all,
    hub_config,
    make_readings,
    percentile,
    private_broker,
    remove_db,
    scratch_dir,
)
from gateway.daemon import Hub
from gateway.drivers.base import Driver
from gateway.drivers.registry import DriverRegistry
from gateway.events import DeviceFailing, Event, EventBus, ReadingDelivered, UplinkUp
from gateway.reading import Kind, Reading

TARGET_P99_MS = 25.0
DRIVER_NAME = "bench.latency"
DEVICE_ID = "bp-1"


@dataclass
class Samples:
    """Per-reading times in seconds."""

    total: list[float] = field(default_factory=list)  # emit -> PUBACK
    commit: list[float] = field(default_factory=list)  # emit -> committed
    publish: list[float] = field(default_factory=list)  # committed -> PUBACK

    def add(self, start: float, committed: float, acked: float) -> None:
        self.total.append(acked - start)
        self.commit.append(committed - start)
        self.publish.append(acked - committed)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in ("total", "commit", "publish"):
            values: list[float] = getattr(self, name)
            for q in (50, 90, 99):
                out[f"{name}_p{q}_ms"] = round(percentile(values, q) * 1e3, 3)
            out[f"{name}_max_ms"] = round(max(values) * 1e3, 3)
        return out


class PlainPath:
    """The baseline: plain sqlite3 commit, then plain paho publish and PUBACK."""

    def __init__(self, path: Path, port: int) -> None:
        remove_db(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute(
            "CREATE TABLE readings (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
            " device_id TEXT NOT NULL, payload BLOB NOT NULL, received_at REAL NOT NULL)"
        )
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="bench-latency-baseline",
            protocol=paho.MQTTv5,
        )
        self._connected = threading.Event()
        self._acked = threading.Event()
        self._acked_at = 0.0
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("baseline: no CONNACK")

    def _on_connect(self, _c: paho.Client, _u: Any, _f: Any, _rc: ReasonCode, _p: Any) -> None:
        self._connected.set()

    def _on_publish(self, _c: paho.Client, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
        self._acked_at = time.perf_counter()
        self._acked.set()

    def step(self, row: Encoded) -> tuple[float, float, float]:
        """(start, committed, acked) for one reading, in perf_counter seconds."""
        self._acked.clear()
        start = time.perf_counter()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute(
            "INSERT INTO readings(id, device_id, payload, received_at) VALUES (?, ?, ?, ?)",
            (row.id, row.device_id, row.payload, row.received_at.timestamp()),
        )
        self._db.execute("COMMIT")
        committed = time.perf_counter()
        self._client.publish(row.topic, row.payload, qos=1)
        if not self._acked.wait(10):
            raise RuntimeError("baseline: no PUBACK")
        return start, committed, self._acked_at

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._db.close()


class Probe:
    """Shared between the benchmark and its driver: readings, samples, delivery times."""

    def __init__(
        self,
        readings: Sequence[Reading],
        rows: Sequence[Encoded],
        plain: PlainPath,
        warmup: int,
        gap_s: float,
    ) -> None:
        self.readings = readings
        self.rows = rows
        self.plain = plain
        self.warmup = warmup
        self.gap_s = gap_s
        self.hub = Samples()
        self.baseline = Samples()
        self.connected = asyncio.Event()
        self.finished = asyncio.Event()
        self.failure: str | None = None
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self._early: dict[str, float] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, UplinkUp):
            self.connected.set()
        elif isinstance(event, DeviceFailing):
            self.failure = event.error
            self.finished.set()
        elif isinstance(event, ReadingDelivered):
            now = time.perf_counter()
            future = self._waiting.pop(event.reading_id, None)
            if future is None:
                self._early[event.reading_id] = now
            elif not future.done():
                future.set_result(now)

    async def delivered(self, reading_id: str) -> float:
        if reading_id in self._early:
            return self._early.pop(reading_id)
        future = asyncio.get_running_loop().create_future()
        self._waiting[reading_id] = future
        return await asyncio.wait_for(future, 10.0)


class LatencyDriver(Driver):
    """Emits the probe's readings one at a time, each waiting for its PUBACK."""

    probe: ClassVar[Probe | None] = None

    async def run(self) -> None:
        probe = self.probe
        assert probe is not None
        await probe.connected.wait()
        for index, (reading, row) in enumerate(zip(probe.readings, probe.rows, strict=True)):
            start = time.perf_counter()
            stored = await self.context.emit(reading)
            committed = time.perf_counter()
            acked = await probe.delivered(stored.id)
            await asyncio.sleep(probe.gap_s)
            # The baseline's turn, on a worker thread; its times are its own.
            plain = await asyncio.to_thread(probe.plain.step, row)
            await asyncio.sleep(probe.gap_s)
            if index >= probe.warmup:
                probe.hub.add(start, committed, acked)
                probe.baseline.add(*plain)
        probe.finished.set()


async def _measure(state_dir: Path, port: int, probe: Probe) -> None:
    driver = type("BenchLatencyDriver", (LatencyDriver,), {"probe": probe})
    registry = DriverRegistry({DRIVER_NAME: driver})
    config = hub_config(
        state_dir, port, registry=registry, devices=[{"id": DEVICE_ID, "driver": DRIVER_NAME}]
    )
    events = EventBus()
    events.subscribe(probe.on_event)
    hub = Hub(config, registry, events=events)
    task = asyncio.create_task(hub.run(), name="bench-hub")
    try:
        await asyncio.wait_for(probe.finished.wait(), 300)
    finally:
        hub.stop()
        await task
    if probe.failure is not None:
        raise RuntimeError(f"latency driver failed: {probe.failure}")


def run(*, count: int = 500, warmup: int = 20, gap_s: float = 0.01) -> list[Result]:
    # One blood pressure cuff: the largest payload of the demo's devices.
    readings = make_readings(
        count + warmup,
        tag="latency",
        devices=[(DEVICE_ID, Kind.BLOOD_PRESSURE)],
        driver=DRIVER_NAME,
    )
    rows = encode_all(readings)
    with scratch_dir("latency") as work, private_broker(work) as broker:
        plain = PlainPath(work / "plain.sqlite3", broker.port)
        try:
            probe = Probe(readings, rows, plain, warmup, gap_s)
            asyncio.run(_measure(work / "state", broker.port, probe))
        finally:
            plain.close()
    hub, base = probe.hub, probe.baseline
    hub_p99 = percentile(hub.total, 99) * 1e3
    base_p99 = percentile(base.total, 99) * 1e3
    return [
        Result(
            name="latency",
            metric=f"emit -> PUBACK p99 ({len(hub.total)} readings, one at a time)",
            unit="ms",
            value=hub_p99,
            baseline=base_p99,
            baseline_label="plain sqlite3 commit + paho publish/PUBACK",
            better="lower",
            target=f"p99 < {TARGET_P99_MS:g} ms",
            passed=hub_p99 < TARGET_P99_MS,
            extra={
                "count": len(hub.total),
                "warmup": warmup,
                "gap_s": gap_s,
                "synchronous": "full",
                "p50_ms": round(percentile(hub.total, 50) * 1e3, 3),
                "baseline_p50_ms": round(percentile(base.total, 50) * 1e3, 3),
                "hub": hub.summary(),
                "baseline": base.summary(),
            },
        )
    ]
