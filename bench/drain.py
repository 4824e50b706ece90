"""Drain: a backlog of buffered readings delivered by the real uplink to a loopback mosquitto.

Subject: `gateway.daemon.Hub` with no devices (so: the real `Store` and `MqttUplink`,
status loop and housekeeping included) opened on a store file pre-filled with N
readings. The clock starts at `UplinkUp` (CONNACK received) and stops at the N-th
`ReadingDelivered` event (a success PUBACK); the time until the store also shows
`unsent == 0` (every delivery marked on disk) is reported beside it.

Baseline: a plain paho loop in the same run: one `paho.Client` (MQTT 5, `loop_start`,
TCP_NODELAY like the uplink), QoS 1, a semaphore of the same `max_inflight` acquired
before each `publish` and released in `on_publish`, publishing the same N payloads
on the same topics from memory. Rounds alternate baseline / hub; medians are compared.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench.common import (
    Encoded,
    Result,
    encode_all,
    hub_config,
    make_readings,
    median,
    private_broker,
    scratch_dir,
)
from gateway.config import HubConfig, MqttSection
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import Event, EventBus, ReadingDelivered, UplinkUp
from gateway.store import NewRow, SqliteOutbox

TARGET_RATIO = 0.8
FILL_BATCH = 1000


@dataclass
class DrainRun:
    seconds: float  # UplinkUp / CONNACK -> last success PUBACK
    marked_seconds: float | None = None  # UplinkUp -> store shows unsent == 0 (hub only)
    receive_maximum: int | None = None  # the broker's, from CONNACK (baseline only)
    cpu_seconds: float = 0.0  # this process's CPU (all threads) over the whole run

    def rate(self, count: int) -> float:
        return count / self.seconds


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Notes(logging.Handler):
    """Keeps the uplink's notes about its window (e.g. the broker's Receive Maximum)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "in flight" in message or "Receive Maximum" in message:
            self.messages.append(message)


def prefill(path: Path, rows: list[Encoded]) -> None:
    """Fill a store file through gateway.store (closed: a single file, safe to copy)."""
    outbox = SqliteOutbox(path, synchronous="full", max_readings=max(500_000, len(rows)))
    try:
        for start in range(0, len(rows), FILL_BATCH):
            outbox.add_many(
                [
                    NewRow(r.id, r.device_id, r.payload, r.received_at.timestamp())
                    for r in rows[start : start + FILL_BATCH]
                ]
            )
    finally:
        outbox.close()  # the last connection to close checkpoints and removes the WAL
    if Path(f"{path}-wal").exists():
        raise RuntimeError(f"{path}: WAL left behind; the copy would miss readings")


def seed_store(template: Path, config: HubConfig) -> None:
    """Give `config`'s hub a copy of the pre-filled store `template` (see `prefill`)."""
    config.gateway.state_dir.mkdir(parents=True)
    shutil.copyfile(template, config.store_path)


async def _hub_drain(config: HubConfig, count: int) -> DrainRun:
    loop = asyncio.get_running_loop()
    events = EventBus()
    done: asyncio.Future[float] = loop.create_future()
    started: list[float] = []
    delivered = 0

    def on_event(event: Event) -> None:
        nonlocal delivered
        if isinstance(event, UplinkUp) and not started:
            started.append(time.perf_counter())
        elif isinstance(event, ReadingDelivered):
            delivered += 1
            if delivered == count and not done.done():
                done.set_result(time.perf_counter())

    events.subscribe(on_event)
    hub = Hub(config, DriverRegistry({}), events=events)
    task = asyncio.create_task(hub.run(), name="bench-hub")
    try:
        ended = await asyncio.wait_for(done, timeout=180)
        assert hub.store is not None
        # No event says "marked on disk": poll the store (after the clock stopped).
        while (await hub.store.stats()).unsent:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        marked = time.perf_counter()
    finally:
        hub.stop()
        await task
    return DrainRun(ended - started[0], marked - started[0])


def _baseline_drain(rows: list[Encoded], port: int, window: int, client_id: str) -> DrainRun:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    client.max_inflight_messages_set(window + 2)  # as the uplink: paho never queues
    slots = threading.Semaphore(window)
    connected = threading.Event()
    finished = threading.Event()
    acked = 0
    failed = 0
    count = len(rows)
    receive_maximum: list[int | None] = [None]

    def on_connect(_c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, props: Any) -> None:
        receive_maximum[0] = getattr(props, "ReceiveMaximum", None)
        connected.set()

    def on_publish(_c: paho.Client, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
        nonlocal acked, failed
        acked += 1
        if rc.value >= 0x80:
            failed += 1
        slots.release()
        if acked == count:
            finished.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("baseline: no CONNACK")
        # The same window as the uplink's: it keeps one slot of the broker's
        # Receive Maximum for its status message (MQTT 5 §3.2.2.3.3).
        rm = receive_maximum[0]
        effective = max(1, min(window, rm - 1)) if rm else window
        for _ in range(window - effective):
            slots.acquire()
        start = time.perf_counter()
        for row in rows:
            slots.acquire()
            client.publish(row.topic, row.payload, qos=1)
        if not finished.wait(180):
            raise RuntimeError(f"baseline: only {acked} of {count} PUBACKs")
        seconds = time.perf_counter() - start
    finally:
        client.disconnect()
        client.loop_stop()
    if failed:
        raise RuntimeError(f"baseline: {failed} publishes refused")
    return DrainRun(seconds, receive_maximum=receive_maximum[0])


def run(*, count: int = 20_000, rounds: int = 3) -> list[Result]:
    window = MqttSection().max_inflight
    with scratch_dir("drain") as work, private_broker(work) as broker:
        t0 = time.perf_counter()
        rows = encode_all(make_readings(count, tag="drain"))
        template = work / "template.sqlite3"
        prefill(template, rows)
        fill_s = time.perf_counter() - t0
        payload_bytes = sum(len(r.payload) for r in rows) / len(rows)
        hub_runs: list[DrainRun] = []
        base_runs: list[DrainRun] = []
        notes = _Notes()
        uplink_log = logging.getLogger("gateway.uplink.mqtt")
        saved_level = uplink_log.level
        uplink_log.setLevel(logging.INFO)
        uplink_log.addHandler(notes)
        try:
            for i in range(rounds):
                cpu = _process_cpu()
                base_runs.append(_baseline_drain(rows, broker.port, window, f"bench-paho-{i}"))
                base_runs[-1].cpu_seconds = _process_cpu() - cpu
                config = hub_config(work / f"state{i}", broker.port)
                seed_store(template, config)
                cpu = _process_cpu()
                hub_runs.append(asyncio.run(_hub_drain(config, count)))
                hub_runs[-1].cpu_seconds = _process_cpu() - cpu
        finally:
            uplink_log.removeHandler(notes)
            uplink_log.setLevel(saved_level)
    hub_rates = [r.rate(count) for r in hub_runs]
    base_rates = [r.rate(count) for r in base_runs]
    hub_rate, base_rate = median(hub_rates), median(base_rates)
    marked = [count / r.marked_seconds for r in hub_runs if r.marked_seconds]
    ratio = hub_rate / base_rate
    return [
        Result(
            name="drain",
            metric=f"{count} buffered readings -> PUBACK",
            unit="readings/s",
            value=hub_rate,
            baseline=base_rate,
            baseline_label="plain paho loop, same window",
            better="higher",
            target=f"ratio >= {TARGET_RATIO}",
            passed=ratio >= TARGET_RATIO,
            extra={
                "count": count,
                "max_inflight": window,
                "broker_receive_maximum": base_runs[0].receive_maximum,
                "uplink_log": sorted(set(notes.messages)),
                "rounds": rounds,
                "mean_payload_bytes": round(payload_bytes, 1),
                "hub_readings_per_s": [round(r, 1) for r in hub_rates],
                "baseline_readings_per_s": [round(r, 1) for r in base_rates],
                "hub_until_store_marked_readings_per_s": round(median(marked), 1),
                # CPU of this process (every thread; not mosquitto) per reading, whole run:
                # on a busy or small machine the drain is CPU-bound and follows this.
                "hub_cpu_us_per_reading": round(
                    median([r.cpu_seconds for r in hub_runs]) / count * 1e6, 1
                ),
                "baseline_cpu_us_per_reading": round(
                    median([r.cpu_seconds for r in base_runs]) / count * 1e6, 1
                ),
                "prefill_s": round(fill_s, 2),
            },
        )
    ]
