"""Commands (issue 10): the `status` command's round trip on loopback.

`commands_status`: a backend (paho MQTT 5, in this process) publishes `status` to the
real `gateway.daemon.Hub` (no devices, panel none) with a Response Topic and
Correlation Data and times until the `homehub.response/1` arrives, one at a time
(N runs after a warm-up). Baseline, same run, same broker: an echo responder (a bare
paho client answering each request on its Response Topic with a fixed payload), so the
ratio is what the hub adds to MQTT's own round trip: parsing, the checks, the store's
statistics for the status document, and its encoding. Target: p99 < 50 ms.

The hub's rate limit (20 at once, 0.5/s) is lifted for the run: the benchmark asks far
faster than any backend should.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import (
    GATEWAY_ID,
    TOPIC_PREFIX,
    Result,
    hub_config,
    median,
    percentile,
    private_broker,
    scratch_dir,
)
from gateway.commands import TokenBucket
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import EventBus, UplinkUp

TARGET_P99_MS = 50.0


class _Asker:
    """Publishes a request, waits for the answer with its correlation data (paho thread)."""

    def __init__(self, port: int, request_topic: str, response_topic: str) -> None:
        self.request_topic = request_topic
        self.response_topic = response_topic
        self._answered = threading.Event()
        self._waiting: bytes | None = None
        self.client = _client(port, "bench-asker")
        self.client.on_message = self._on_message
        _subscribe(self.client, response_topic)

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        if getattr(message.properties, "CorrelationData", None) == self._waiting:
            self._answered.set()

    def ask(self, body: bytes, timeout_s: float = 5.0) -> float:
        """One round trip, seconds."""
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.response_topic
        props.CorrelationData = correlation
        props.MessageExpiryInterval = 60
        self._answered.clear()
        self._waiting = correlation
        start = time.perf_counter()
        self.client.publish(self.request_topic, body, qos=1, properties=props)
        if not self._answered.wait(timeout_s):
            raise RuntimeError(f"no response on {self.response_topic} in {timeout_s} s")
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:6]}",
        protocol=paho.MQTTv5,
    )
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        # As the hub does (and a backend should): Nagle would hold a request behind
        # the PUBACK just sent until the broker's delayed ACK, ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("bench client did not connect")
    return client


def _subscribe(client: paho.Client, topic: str) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *_: done.set()
    client.subscribe(topic, qos=1)
    if not done.wait(10):
        raise RuntimeError(f"no SUBACK for {topic}")


def _echo(port: int, topic: str) -> paho.Client:
    """The baseline: answers every request at once, on its Response Topic."""
    client = _client(port, "bench-echo")

    def on_message(c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
        c.publish(message.properties.ResponseTopic, b'{"ok":true}', qos=1, properties=props)  # type: ignore[union-attr]

    client.on_message = on_message
    _subscribe(client, topic)
    return client


def _times(asker: _Asker, body: bytes, count: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        asker.ask(body)
    return [asker.ask(body) * 1000 for _ in range(count)]


async def _measure(count: int, warmup: int) -> tuple[list[float], list[float]]:
    with scratch_dir("commands") as work, private_broker(work) as broker:
        config = hub_config(work / "state", broker.port)
        events = EventBus()
        queue, _ = events.queue()
        hub = Hub(config, DriverRegistry.from_entry_points(), events=events)
        task = asyncio.create_task(hub.run())
        prefix = f"{TOPIC_PREFIX}/{GATEWAY_ID}"
        asker = _Asker(broker.port, f"{prefix}/command/status", f"{prefix}/response/bench")
        body = json.dumps({"schema": "homehub.command/1", "id": "x", "gateway": GATEWAY_ID})
        try:
            async with asyncio.timeout(15):
                while not isinstance(await queue.get(), UplinkUp):
                    pass
            assert hub.command_channel is not None
            hub.command_channel.bucket = TokenBucket(10**9, 10**9)

            def ask_all() -> list[float]:
                # Fresh ids: a repeated one would be answered from the LRU, not measured.
                times = []
                for i in range(warmup + count):
                    doc = json.loads(body)
                    doc["id"] = f"bench-{i}"
                    deadline = time.monotonic() + 10
                    while True:  # the first ones may race the hub's SUBSCRIBE
                        try:
                            times.append(asker.ask(json.dumps(doc).encode(), 1.0) * 1000)
                            break
                        except RuntimeError:
                            if time.monotonic() > deadline:
                                raise
                return times[warmup:]

            hub_times = await asyncio.to_thread(ask_all)
        finally:
            asker.close()
            hub.stop()
            await asyncio.wait_for(task, 10)
        echo = _echo(broker.port, "bench/echo/request")
        base = _Asker(broker.port, "bench/echo/request", "bench/echo/response")
        try:
            base_times = await asyncio.to_thread(_times, base, body.encode(), count, warmup)
        finally:
            base.close()
            echo.disconnect()
            echo.loop_stop()
    return hub_times, base_times


def run(*, quick: bool = False) -> list[Result]:
    count, warmup = (50, 10) if quick else (500, 50)
    hub_times, base_times = asyncio.run(_measure(count, warmup))
    p99 = percentile(hub_times, 99)
    base_p99 = percentile(base_times, 99)
    return [
        Result(
            name="commands_status",
            metric=f"status command round trip p99 ({count} runs, {warmup} warm-up)",
            unit="ms",
            value=round(p99, 2),
            baseline=round(base_p99, 2),
            baseline_label="echo responder p99 (bare paho client, same broker)",
            better="lower",
            target=f"p99 < {TARGET_P99_MS:g} ms",
            passed=p99 < TARGET_P99_MS,
            extra={
                "p50_ms": round(median(hub_times), 2),
                "max_ms": round(max(hub_times), 2),
                "baseline_p50_ms": round(median(base_times), 2),
                "baseline_max_ms": round(max(base_times), 2),
            },
        )
    ]
