"""The uplink against a real mosquitto: refusals, dead links, the in-flight window."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.daemon import Hub
from gateway.drivers.base import Driver, DriverOptions
from gateway.drivers.registry import DriverRegistry
from gateway.events import (
    Event,
    EventBus,
    PublishRefused,
    ReadingDelivered,
    ReadingStored,
    UplinkDown,
    UplinkUp,
)
from gateway.sim.broker import MosquittoBroker
from gateway.uplink.outbox import HOLD_RETRY_S
from tests.helpers import load, next_event, running_hub, sim_device, write_config


class StatusWatcher:
    """A plain paho subscriber to the hub's retained status topic."""

    def __init__(self, port: int, topic: str) -> None:
        self.docs: list[dict[str, Any]] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        self._loop.call_soon_threadsafe(self._add, doc)

    def _add(self, doc: dict[str, Any]) -> None:
        self.docs.append(doc)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                for doc in self.docs:
                    if predicate(doc):
                        return doc
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_refused_publish_stays_unsent_and_backs_off(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    # Anonymous clients may write only their status: every reading is refused.
    broker = broker_factory(acl="topic write homehub/+/status\ntopic read #\n")
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=5)],
        mqtt={"status_interval_s": 1.0, "reconnect_min_s": 0.1},
    )
    events = EventBus()
    queue, _ = events.queue()
    watcher = StatusWatcher(broker.port, "homehub/hub-test/status")
    try:
        async with running_hub(config, events) as hub:
            refused, first_at = await next_event(queue, PublishRefused, 10)
            assert isinstance(refused, PublishRefused) and refused.device_id == "bp-1"
            assert "authoriz" in refused.reason.lower()
            # The retained status tells the backend the readings are unsent.
            doc = await watcher.wait_for(lambda d: d.get("unsent") == 5, 10)
            assert doc["state"] == "online"
            # Watch for 3 s: retries back off (1 s, then 2 s, ...), no hot loop.
            refusals = 1
            deadline = first_at + 3.0
            with contextlib.suppress(TimeoutError):
                while True:
                    await next_event(queue, PublishRefused, max(0.01, deadline - time.monotonic()))
                    refusals += 1
            assert refusals <= 3, f"{refusals} refusal rounds in 3 s: not backing off"
            assert hub.store is not None
            stats = await hub.store.stats()
            assert stats.unsent == 5 and stats.last_delivery_at is None
            assert hub.uplink is not None and hub.uplink.delivered_count == 0
            assert not any(isinstance(e, ReadingDelivered) for e in _drain(queue))
    finally:
        watcher.close()


def _drain(queue: asyncio.Queue[Event]) -> list[Event]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class PausableProxy:
    """A TCP proxy that can silently stop forwarding (a dead NAT, a pulled cable)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while True:
                    await self.flowing.wait()
                    data = await src.read(65536)
                    if not data:
                        break
                    # Paused mid-read: swallow, as a dead link would.
                    if not self.flowing.is_set():
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.timeout(60)
async def test_silent_link_noticed_within_two_keepalives_and_recovers(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    keepalive = 2
    proxy = PausableProxy(broker.port)
    await proxy.start()
    config = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        devices=[sim_device("oxi-1", "pulse_oximeter", interval_s=0.5, count=0)],
        mqtt={
            "port": proxy.port,
            "keepalive_s": keepalive,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "connect_timeout_s": 2.0,
        },
    )
    events = EventBus()
    queue, _ = events.queue()
    try:
        async with running_hub(config, events):
            await next_event(queue, UplinkUp, 10)
            await next_event(queue, ReadingDelivered, 10)
            proxy.flowing.clear()
            paused_at = time.monotonic()
            _, noticed_at = await next_event(queue, UplinkDown, 4 * keepalive)
            # paho checks keepalive once a second at the latest: allow that tick.
            assert noticed_at - paused_at <= 2 * keepalive + 1.0
            # Readings made while the link is dead are stored, not lost.
            await next_event(queue, ReadingStored, 5)
            proxy.flowing.set()
            await next_event(queue, UplinkUp, 10)
            await next_event(queue, ReadingDelivered, 10)
    finally:
        await proxy.close()


async def test_inflight_window_is_never_exceeded(tmp_path: Path, broker: MosquittoBroker) -> None:
    window = 4
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("w-1", "weight", interval_s=0.0, count=300)],
        mqtt={"max_inflight": window},
    )
    events = EventBus()
    delivered = asyncio.Event()
    count = 0
    peak = 0

    def watch(event: Event) -> None:
        nonlocal count, peak
        uplink = hub.uplink
        if uplink is not None and uplink._session is not None:
            peak = max(peak, len(uplink._session.inflight))
        if isinstance(event, ReadingDelivered):
            count += 1
            if count == 300:
                delivered.set()

    events.subscribe(watch)
    async with running_hub(config, events) as hub:
        await asyncio.wait_for(delivered.wait(), 30)
        assert hub.store is not None
        # ReadingDelivered comes at the PUBACK; the store marks it a moment later.
        async with asyncio.timeout(10):
            while (await hub.store.stats()).unsent:
                await asyncio.sleep(0.02)
    assert 1 <= peak <= window


class OneBigThenSmallOptions(DriverOptions):
    pass


class OneBigThenSmallDriver(Driver):
    """A device whose first record is too large for the broker, then five normal ones."""

    Options = OneBigThenSmallOptions

    async def run(self) -> None:
        from gateway import mdc
        from gateway.reading import Kind, Reading, Value

        for i in range(6):
            flags = tuple(f"vendor_flag_{n:04d}" for n in range(80)) if i == 0 else ()
            await self.context.emit(
                Reading(
                    device_id=self.options.id,
                    driver=self.options.driver,
                    kind=Kind.WEIGHT,
                    measured_at=self.context.clock.now(),
                    measured_at_source="hub",
                    values=(Value.of(mdc.MASS_BODY_ACTUAL, 80.0 + i, "kg"),),
                    status=flags,
                    source_key=f"record-{i}",
                )
            )
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    "limit",
    [
        # Announced in CONNACK (Maximum Packet Size): held back before it is sent.
        "max_packet_size 900",
        # Not announced: mosquitto answers with a code paho cannot parse and the
        # connection dies every time; the poison guard finds the reading.
        "message_size_limit 700",
    ],
)
async def test_a_reading_the_broker_cannot_take_is_held_back_not_blocking_the_rest(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker], limit: str
) -> None:
    from gateway.config import validate_config
    from gateway.drivers.simulated import SimulatedDriver

    broker = broker_factory(extra=[limit])
    registry = DriverRegistry({"simulated": SimulatedDriver, "bigfirst": OneBigThenSmallDriver})
    path = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[{"id": "scale-1", "driver": "bigfirst"}],
        mqtt={"reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
    )
    import tomllib

    config = validate_config(tomllib.loads(path.read_text()), registry)
    events = EventBus()
    queue, _ = events.queue()
    hub = Hub(config, registry, events=events)
    task = asyncio.create_task(hub.run())
    delivered: list[str] = []
    refused: list[PublishRefused] = []
    try:
        async with asyncio.timeout(30):
            while len(delivered) < 5:
                event = await queue.get()
                if isinstance(event, ReadingDelivered):
                    delivered.append(event.reading_id)
                elif isinstance(event, PublishRefused):
                    refused.append(event)
        assert hub.uplink is not None and hub.uplink.held_back == 1
        assert refused and refused[0].device_id == "scale-1"
        assert hub.store is not None
        await hub.uplink.flush_deliveries()  # marks are written in batches (issue 11)
        async with asyncio.timeout(10):
            while (await hub.store.stats()).unsent != 1:
                await asyncio.sleep(0.02)
        status = json.loads(await hub._status_payload())
        assert status["uplink"]["held_back"] == 1 and status["unsent"] == 1
    finally:
        hub.stop()
        await asyncio.wait_for(task, 15)  # the hub promises 5 s; a hang fails, load does not
    assert len(set(delivered)) == 5


async def test_a_status_the_broker_drops_the_connection_for_gets_short_not_a_reading_held(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker], caplog: pytest.LogCaptureFixture
) -> None:
    # The full status (~750 bytes) is over the limit, a reading (~360) is not: before,
    # the hub reconnected for ever and the poison guard held back innocent readings.
    broker = broker_factory(extra=["message_size_limit 600"])
    path = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("w-1", "weight", interval_s=0.2)],
        mqtt={"reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
    )
    events = EventBus()
    queue, _ = events.queue()
    hub = Hub(load(path), DriverRegistry.from_entry_points(), events=events)
    task = asyncio.create_task(hub.run())
    try:
        async with asyncio.timeout(30):
            delivered = 0
            while delivered < 5:
                event = await queue.get()
                delivered += isinstance(event, ReadingDelivered)
        assert hub.uplink is not None and hub.uplink.held_back == 0
        status = await _retained(broker.port, "homehub/+/status")
        assert status["state"] == "online" and "unsent" in status
        assert "devices" not in status  # the short form: scalars only
        assert len(json.dumps(status)) < 600
        assert "sending its short form" in caplog.text
        # An hour later the full form is tried again, as a held reading is.
        assert hub.uplink._status_form_now() == "short"
        hub.uplink._status_reduced_at -= HOLD_RETRY_S
        assert hub.uplink._status_form_now() == "full"
    finally:
        hub.stop()
        await asyncio.wait_for(task, 15)


async def _retained(port: int, topic: str) -> dict[str, Any]:
    """The retained message on `topic`, read by a fresh subscriber."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def take(payload: bytes) -> None:
        if not got.done():
            got.set_result(payload)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        loop.call_soon_threadsafe(take, bytes(message.payload))

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        payload = await asyncio.wait_for(got, 10)
    finally:
        client.disconnect()
        client.loop_stop()
    doc: dict[str, Any] = json.loads(payload)
    return doc


async def test_reload_with_the_same_config_restarts_no_driver(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    path = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("w-1", "weight", interval_s=3600.0)],
    )
    hub = Hub(load(path), DriverRegistry.from_entry_points(), events=EventBus())
    task = asyncio.create_task(hub.run())
    try:
        async with asyncio.timeout(10):
            while "w-1" not in hub._driver_tasks:
                await asyncio.sleep(0.01)
        before = hub._driver_tasks["w-1"]
        await hub.reload(load(path))
        assert hub._driver_tasks["w-1"] is before and not before.done()
        # [panel] belongs to the running panel: a reload keeps it (until a restart).
        path.write_text(path.read_text() + "\n[panel]\nmeasure_window_s = 10.0\n")
        await hub.reload(load(path))
        assert hub.config.panel.measure_window_s == 120.0
        assert hub.measure.default_s == 120.0
        assert hub._driver_tasks["w-1"] is before
    finally:
        hub.stop()
        await asyncio.wait_for(task, 15)  # the hub promises 5 s; a hang fails, load does not


async def test_an_internal_error_in_the_uplink_costs_a_reconnect_not_the_uplink(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from gateway.store import Store

    path = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("t-1", "temperature", interval_s=0.05)],
        mqtt={"reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
    )
    real_fetch = Store.fetch_unsent
    failures = 0

    async def failing_once(self: Store, *args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise sqlite3.OperationalError("disk I/O error")  # what a dying SD card says
        return await real_fetch(self, *args, **kwargs)

    monkeypatch.setattr(Store, "fetch_unsent", failing_once)
    events = EventBus()
    queue, _ = events.queue()
    hub = Hub(load(path), DriverRegistry.from_entry_points(), events=events)
    task = asyncio.create_task(hub.run())
    try:
        await next_event(queue, UplinkDown, 10)
        await next_event(queue, ReadingDelivered, 10)
        assert failures == 1
    finally:
        hub.stop()
        await asyncio.wait_for(task, 15)  # the hub promises 5 s; a hang fails, load does not
