"""Issue 9 on the hub: readings are confirmed by the backend, not just published.

Real mosquitto on loopback, the real uplink and store, and the stand-in confirming
backend `gateway.sim.confirmer.Confirmer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.events import EventBus, ReadingDelivered, ReadingStored
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
