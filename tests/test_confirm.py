"""Issue 9 on the hub: readings are confirmed by the backend, not just published.

Real mosquitto on loopback, the real uplink and store, and the stand-in confirming
backend `gateway.sim.confirmer.Confirmer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.events import (
    Event,
    EventBus,
    PanelShows,
    ReadingDelivered,
    ReadingsConfirmed,
    ReadingStored,
    UplinkDown,
)
from gateway.sim.broker import MosquittoBroker
from gateway.sim.confirmer import Confirmer
from tests.helpers import next_event, running_hub, sim_device, write_config


class LogWatch(logging.Handler):
    """Collects one logger's records; lets a test await a message."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._loop.call_soon_threadsafe(self._changed.set)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def wait_for(self, needle: str, timeout_s: float, level: int = logging.DEBUG) -> str:
        async with asyncio.timeout(timeout_s):
            while True:
                for message in self.messages(level):
                    if needle in message:
                        return message
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def uplink_log() -> AsyncIterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("gateway.uplink")
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(saved)


async def test_no_matching_subscribers_is_not_delivered_until_a_subscriber_appears(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    uplink_log: LogWatch,
) -> None:
    broker = broker_factory(subscriber=False)  # nobody subscribed: PUBACK 0x10
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=3)],
        mqtt={"reconnect_min_s": 0.1},
    )
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events) as hub:
        for _ in range(3):
            await next_event(queue, ReadingStored, 10)
        warning = await uplink_log.wait_for("no subscriber for", 10, logging.WARNING)
        assert "homehub/hub-test/readings/bp-1" in warning
        assert "is the backend subscribed?" in warning
        assert hub.store is not None and hub.uplink is not None
        stats = await hub.store.stats()
        assert stats.unsent == 3 and stats.last_delivery_at is None
        assert hub.uplink.delivered_count == 0
        # Retried with backoff, not a hot loop: one WARNING, the retries at DEBUG.
        await uplink_log.wait_for("no subscriber for", 10, logging.DEBUG)
        with Confirmer(broker.port) as backend:
            delivered = set()
            while len(delivered) < 3:
                event, _ = await next_event(queue, ReadingDelivered, 15)
                assert isinstance(event, ReadingDelivered)
                delivered.add(event.reading_id)
            assert delivered <= set(backend.wait_received(3, 5))
        assert hub.uplink.delivered_count == 3
        await hub.uplink.flush_deliveries()
        assert (await hub.store.stats()).unsent == 0
    no_subscriber = [m for m in uplink_log.messages(logging.WARNING) if "no subscriber" in m]
    assert len(no_subscriber) == 1, no_subscriber
    assert any("have a subscriber again" in m for m in uplink_log.messages(logging.INFO))


# -- confirmations end to end ----------------------------------------------------------

CONFIRM_TOPIC = "homehub/hub-test/confirm"


def confirm_config(
    tmp_path: Path,
    broker: MosquittoBroker,
    count: int,
    store: dict[str, Any] | None = None,
    **mqtt: Any,
) -> Path:
    return write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=count)],
        mqtt={"confirm": True, "reconnect_min_s": 0.1, **mqtt},
        store=store,
    )


class Seen:
    """What the hub's event bus said about deliveries and confirmations, awaitable."""

    def __init__(self, events: EventBus) -> None:
        self.delivered: list[str] = []
        self.confirmed: set[str] = set()
        self.stored: list[str] = []
        self.down = 0
        self.sent_shown: list[bool] = []  # per "sent" shown: was the latest reading confirmed?
        self._changed = asyncio.Event()
        events.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        match event:
            case ReadingStored(reading_id=rid, duplicate=False):
                self.stored.append(rid)
            case ReadingDelivered(reading_id=rid):
                self.delivered.append(rid)
            case ReadingsConfirmed(reading_ids=ids):
                self.confirmed.update(ids)
            case UplinkDown():
                self.down += 1
            case PanelShows(state="sent"):
                self.sent_shown.append(bool(self.stored) and self.stored[-1] in self.confirmed)
            case _:
                return
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def delivered_ids(self, count: int, timeout_s: float) -> list[str]:
        await self.until(lambda: len(self.delivered) >= count, timeout_s)
        return self.delivered[:count]

    async def confirmed_ids(self, wanted: set[str], timeout_s: float) -> None:
        await self.until(lambda: wanted <= self.confirmed, timeout_s)


def publish_raw(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish QoS 1 messages as some client on the broker (a backend, or not), acked."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def confirm_doc(ids: list[str], gateway: str = "hub-test") -> bytes:
    return json.dumps({"schema": "homehub.confirm/1", "gateway": gateway, "ids": ids}).encode()


async def test_confirm_round_trip_through_mosquitto(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory(subscriber=False)  # the confirming backend is the subscriber
    events = EventBus()
    seen = Seen(events)
    with Confirmer(broker.port) as backend:
        async with running_hub(confirm_config(tmp_path, broker, 5), events) as hub:
            ids = await seen.delivered_ids(5, 10)
            await seen.confirmed_ids(set(ids), 10)
            assert hub.store is not None and hub.confirmations is not None
            stats = await hub.store.stats()
            assert (stats.unsent, stats.unconfirmed, stats.total) == (0, 0, 5)
            assert stats.last_confirmation_at is not None
            assert hub.confirmations.confirmed == 5 and hub.confirmations.ignored == 0
            doc = hub.status.document(stats)
            assert doc["unconfirmed"] == 0 and doc["oldest_unconfirmed_age_s"] is None
            assert doc["last_confirmation_at"] is not None
            backend.wait_idle(5, 5)  # (a benchmark's wait between rounds)
            assert set(ids) == set(backend.received) == backend.confirmed
            with pytest.raises(TimeoutError):
                backend.wait_idle(6, 0.05)  # a sixth reading never came
            # The panel said "sent", and only once the latest reading was confirmed.
            await seen.until(lambda: bool(seen.sent_shown), 5)
    assert all(seen.sent_shown), seen.sent_shown


async def test_bad_confirmations_change_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker], uplink_log: LogWatch
) -> None:
    broker = broker_factory(subscriber=False)
    events = EventBus()
    seen = Seen(events)
    with Confirmer(broker.port) as backend:
        backend.pause()  # it receives, but does not confirm
        async with running_hub(confirm_config(tmp_path, broker, 3), events) as hub:
            ids = await seen.delivered_ids(3, 10)
            assert hub.store is not None and hub.confirmations is not None
            await hub.uplink.flush_deliveries() if hub.uplink else None
            assert (await hub.store.stats()).unconfirmed == 3
            secret = ids[0]
            bad = [
                (CONFIRM_TOPIC, b"{not json"),
                (CONFIRM_TOPIC, b"\xff\xfe"),
                (CONFIRM_TOPIC, json.dumps({"schema": "homehub.confirm/2", "ids": ids}).encode()),
                (CONFIRM_TOPIC, json.dumps({"schema": "homehub.confirm/1", "ids": ids}).encode()),
                (CONFIRM_TOPIC, confirm_doc([secret], gateway="hub-other")),
                (CONFIRM_TOPIC, confirm_doc([secret, secret])),  # not unique
                (CONFIRM_TOPIC, confirm_doc([secret] + [f"x{i}" for i in range(1000)])),
                (CONFIRM_TOPIC, confirm_doc([secret]) + b" " * 100_000),  # oversize bytes
                # The right document on another hub's topic never reaches this hub.
                ("homehub/hub-other/confirm", confirm_doc([secret])),
            ]
            # Unknown ids only: valid, and changes nothing either. Then a sentinel:
            # the hub handles confirmations in order, so once it is in, all are.
            publish_raw(
                broker.port,
                [
                    *bad,
                    (CONFIRM_TOPIC, confirm_doc(["unknown-1", "unknown-2"])),
                    (CONFIRM_TOPIC, confirm_doc([ids[2]])),
                ],
            )
            await seen.confirmed_ids({ids[2]}, 10)
            stats = await hub.store.stats()
            assert stats.unconfirmed == 2 and stats.unsent == 0
            assert hub.confirmations.confirmed == 1
            assert hub.confirmations.ignored == 7  # the oversize one stops at the inbox
            warnings = uplink_log.messages(logging.WARNING)
            ignored = [m for m in warnings if "ignored a" in m]
            assert len(ignored) == 8, ignored
            # Never the ids (or anything else from the payload) in the log.
            for message in uplink_log.messages():
                assert secret not in message and "x999" not in message
            # Counted at DEBUG (alone or together with the sentinel, if they queued up).
            unknown = [m for m in uplink_log.messages() if "confirmed ids were unknown" in m]
            assert unknown and unknown[0].startswith("mqtt: 2 of "), unknown


async def test_unconfirmed_after_a_broker_crash_are_published_again_and_arrive(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    # The broker PUBACKs the readings (its own subscriber takes them), then dies
    # before any backend got them: only the confirmation timeout brings them back.
    broker = broker_factory(subscriber=True)
    events = EventBus()
    seen = Seen(events)
    config = confirm_config(tmp_path, broker, 3, confirm_timeout_s=1.0)
    async with running_hub(config, events) as hub:
        ids = await seen.delivered_ids(3, 10)
        broker.kill()
        await seen.until(lambda: seen.down > 0, 10)
        assert hub.store is not None
        await hub.uplink.flush_deliveries() if hub.uplink else None
        broker.start()
        with Confirmer(broker.port) as backend:
            await seen.confirmed_ids(set(ids), 15)
            assert set(ids) <= set(backend.received)
            stats = await hub.store.stats()
            assert (stats.unsent, stats.unconfirmed) == (0, 0)
            assert hub.confirm_watch is not None and hub.confirm_watch.requeued >= 3


async def test_retention_deletes_only_confirmed_readings(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory(subscriber=True)
    events = EventBus()
    seen = Seen(events)
    config = confirm_config(
        tmp_path, broker, 3, store={"retention_hours": 0.0, "purge_interval_s": 1.0}
    )
    async with running_hub(config, events) as hub:
        ids = await seen.delivered_ids(3, 10)
        assert hub.store is not None
        publish_raw(broker.port, [(CONFIRM_TOPIC, confirm_doc(ids[:2]))])
        await seen.confirmed_ids(set(ids[:2]), 10)
        # Purged within a housekeeping round or two (no event to await: poll, bounded).
        async with asyncio.timeout(10):
            while (await hub.store.stats()).total > 1:
                await asyncio.sleep(0.1)
        stats = await hub.store.stats()
        # The unconfirmed one stays, although published long past the retention.
        assert (stats.total, stats.unconfirmed, stats.unsent) == (1, 1, 0)


async def test_confirmations_sent_while_the_hub_is_down_arrive_when_it_is_back(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    # Clean Start 0 on every connection, the first after a restart included (not
    # paho's MQTT_CLEAN_START_FIRST_ONLY): the broker kept the session and queued.
    broker = broker_factory(subscriber=True)
    config = confirm_config(tmp_path, broker, 3)
    events = EventBus()
    seen = Seen(events)
    async with running_hub(config, events) as hub:
        ids = await seen.delivered_ids(3, 10)
    publish_raw(broker.port, [(CONFIRM_TOPIC, confirm_doc(ids))])
    # Back without the device (its simulated readings would start over).
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        mqtt={"confirm": True, "reconnect_min_s": 0.1},
    )
    events = EventBus()
    seen = Seen(events)
    async with running_hub(config, events) as hub:
        await seen.confirmed_ids(set(ids), 10)
        assert hub.store is not None
        stats = await hub.store.stats()
        assert (stats.unsent, stats.unconfirmed, stats.total) == (0, 0, 3)
        # Confirmed from the queue, not by republishing.
        assert hub.confirm_watch is not None and hub.confirm_watch.requeued == 0
        assert seen.delivered == []


async def test_inbox_hands_queued_messages_of_a_route_over_together_in_order() -> None:
    from gateway.uplink.inbox import InboundMessage, Inbox

    batches: list[list[bytes]] = []
    single: list[bytes] = []
    fail = False

    async def one(message: InboundMessage) -> None:
        single.append(message.payload)

    async def many(messages: list[InboundMessage]) -> None:
        if fail:
            raise RuntimeError("store down")
        batches.append([m.payload for m in messages])

    inbox = Inbox()
    inbox.route("a", one, max_bytes=10, batch=many)
    inbox.route("b", one, max_bytes=10)
    msgs = [
        InboundMessage(t, p)
        for t, p in [
            ("a", b"1"),
            ("a", b"x" * 11),
            ("a", b"2"),
            ("b", b"3"),
            ("c", b"4"),
            ("a", b"5"),
        ]
    ]
    assert await inbox.dispatch_many(msgs) == [True] * 6
    # The oversize one is dropped (and acknowledged), the others keep their order.
    assert batches == [[b"1", b"2"]] and single == [b"3", b"5"]
    fail = True
    acks = await inbox.dispatch_many([InboundMessage("a", b"6"), InboundMessage("a", b"7")])
    assert acks == [False, False]  # not committed: not acknowledged, delivered again


async def test_a_burst_of_confirmations_is_one_commit_a_lone_one_is_committed_at_once(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.store import Store

    # A linger far longer than the test's waits, so what is grouped is unmistakable.
    monkeypatch.setattr("gateway.daemon.CONFIRM_LINGER_S", 1.5)
    commits: list[list[str]] = []
    first_called = asyncio.Event()
    release_first = asyncio.Event()
    mark_confirmed = Store.mark_confirmed

    async def held_first(self: Store, ids: Any) -> int:
        commits.append(list(ids))
        if len(commits) == 1:
            first_called.set()
            await release_first.wait()  # the store is busy with this commit
        return await mark_confirmed(self, ids)

    monkeypatch.setattr(Store, "mark_confirmed", held_first)
    broker = broker_factory(subscriber=True)  # success PUBACKs, no confirming backend
    events = EventBus()
    seen = Seen(events)
    async with running_hub(confirm_config(tmp_path, broker, 20), events) as hub:
        ids = await seen.delivered_ids(20, 10)
        # Alone: committed at once, not after the linger.
        await asyncio.to_thread(publish_raw, broker.port, [(CONFIRM_TOPIC, confirm_doc(ids[:1]))])
        await asyncio.wait_for(first_called.wait(), 1.0)
        # Queued behind the held commit: the uplink is now in a burst.
        await asyncio.to_thread(
            publish_raw, broker.port, [(CONFIRM_TOPIC, confirm_doc([i])) for i in ids[1:5]]
        )
        release_first.set()
        # Well after the queued ones could have been committed without a linger, more
        # arrive: they join the same commit.
        await asyncio.sleep(0.2)
        await asyncio.to_thread(
            publish_raw, broker.port, [(CONFIRM_TOPIC, confirm_doc([i])) for i in ids[5:]]
        )
        await seen.confirmed_ids(set(ids), 10)
        assert commits == [ids[:1], ids[1:]]
        assert hub.store is not None and hub.confirmations is not None
        assert hub.confirmations.confirmed == 20
        assert (await hub.store.stats()).unconfirmed == 0


def test_parse_confirmation_accepts_exactly_what_the_schema_accepts() -> None:
    # parse_confirmation checks the ids itself and lets the schema check the rest with
    # the first id only (speed): the verdict must be the schema's on the whole document.
    from homehub_contract import validator

    from gateway.uplink.confirm import BadConfirmation, parse_confirmation

    base: dict[str, Any] = {"schema": "homehub.confirm/1", "gateway": "hub-test", "ids": ["a"]}
    docs: list[Any] = [
        base,
        {**base, "ids": [f"r{i}" for i in range(1000)]},
        {**base, "ids": [f"r{i}" for i in range(1001)]},
        {**base, "ids": []},
        {**base, "ids": ["a", "b", "a"]},
        {**base, "ids": ["a", ""]},
        {**base, "ids": ["a", "x" * 64]},
        {**base, "ids": ["a", "x" * 65]},
        {**base, "ids": ["a", "\u00e9" * 64]},  # 64 code points, 128 bytes
        {**base, "ids": ["a", 7]},
        {**base, "ids": ["a", None]},
        {**base, "ids": "a"},
        {**base, "ids": {"a": 1}},
        {**base, "confirmed_at": "2026-12-03T15:00:00.000Z"},
        {**base, "confirmed_at": "2026-12-03T15:00:00+01:00"},
        {**base, "confirmed_at": 5},
        {**base, "schema": "homehub.confirm/2"},
        {**base, "gateway": "hub test"},
        {**base, "gateway": "hub-test\n"},  # what `pattern` (a search) makes of "$"
        {**base, "gateway": "h" * 65},
        {**base, "gateway": 5},
        {**base, "schema": 1},
        {**base, "confirmed_at": "2026-12-03T15:00:00Z", "extra": [1, 2]},
        {**base, "extra": "ignored"},
        {k: v for k, v in base.items() if k != "schema"},
        {k: v for k, v in base.items() if k != "ids"},
        ["a"],
        "a",
    ]
    # The checks one by one apply to the usual documents (else this test proves little).
    from gateway.uplink.confirm import _plainly_valid

    assert _plainly_valid(base) and _plainly_valid(docs[13])
    schema = validator("confirm-1")
    for doc in docs:
        assert not _plainly_valid(doc) or schema.is_valid(doc), doc
        payload = json.dumps(doc).encode()
        try:
            ids = parse_confirmation(payload, "hub-test")
        except BadConfirmation:
            assert not (schema.is_valid(doc) and doc["gateway"] == "hub-test"), doc
        else:
            assert schema.is_valid(doc) and doc["gateway"] == "hub-test", doc
            assert ids == doc["ids"]


async def test_the_confirmer_in_a_process_of_its_own_confirms_and_reports_idle(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    # bench/confirm.py runs it so (`python -m gateway.sim.confirmer`), off the hub's GIL.
    from bench.confirm import RemoteConfirmer

    broker = broker_factory(subscriber=False)  # the confirmer is the only subscriber
    events = EventBus()
    seen = Seen(events)
    with RemoteConfirmer(broker.port, "homehub") as backend:
        async with running_hub(confirm_config(tmp_path, broker, 3), events):
            ids = await seen.delivered_ids(3, 10)
            await seen.confirmed_ids(set(ids), 10)
            await asyncio.to_thread(backend.wait_idle, 3, 5)
            assert backend.confirmations >= 1
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(backend.wait_idle, 4, 0.2)
