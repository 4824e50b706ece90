"""A stop with readings in flight: every PUBACK marked, nothing against a closed store (issue 11).

The race seen in the emulated arm64 Pi root: on SIGTERM the uplink's `mqtt-acks`
flusher, asleep collecting its batch, woke after the daemon had closed the store
and logged `ERROR store: could not mark 0 readings delivered: store is closed`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.errors import StoreError
from gateway.events import EventBus, ReadingDelivered
from gateway.sim.broker import MosquittoBroker
from gateway.store import Store
from tests.helpers import load, sim_device, write_config

ROUNDS = 6


def _delivered_ids(db_path: Path) -> set[str]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id FROM readings WHERE delivered_at IS NOT NULL").fetchall()
    finally:
        db.close()
    return {str(r[0]) for r in rows}


async def test_stopping_with_readings_in_flight_marks_every_puback_and_logs_no_error(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=state,
        # A stream that never pauses: whenever the stop comes, readings are in flight.
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.002, burst=4)],
    )
    caplog.set_level(logging.WARNING)
    acked: set[str] = set()
    for round_ in range(ROUNDS):
        events = EventBus()
        hub = Hub(load(config), DriverRegistry.from_entry_points(), events=events)
        enough = asyncio.Event()
        # Stop right after a PUBACK, alternating: at once (the flusher has just
        # gone to sleep on its batch) and a few PUBACKs later.
        wanted = len(acked) + 10 + 7 * (round_ % 2)

        def on_event(event: object, wanted: int = wanted, enough: asyncio.Event = enough) -> None:
            if isinstance(event, ReadingDelivered):
                acked.add(event.reading_id)
                if len(acked) >= wanted:
                    enough.set()

        events.subscribe(on_event)
        task = asyncio.create_task(hub.run())
        try:
            await asyncio.wait_for(enough.wait(), 10)
        finally:
            hub.stop()
            await asyncio.wait_for(task, 6)
        # Nothing of the uplink's is left to write once the hub has stopped.
        left = [t for t in asyncio.all_tasks() if t.get_name() == "mqtt-acks" and not t.done()]
        assert left == []
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]
    assert len(acked) >= ROUNDS * 10
    # Every reading the broker acknowledged is marked delivered on disk.
    missing = acked - _delivered_ids(state / "readings.sqlite3")
    assert missing == set()


async def test_an_empty_mark_never_touches_the_store(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "r.sqlite3", gateway_id="hub-test")
    await store.close()
    assert await store.mark_delivered([]) == 0
    assert await store.mark_confirmed([]) == 0
    with pytest.raises(StoreError, match="closed"):
        await store.mark_delivered([1])


@pytest.mark.parametrize(
    ("delay_s", "quiet_s", "count", "most_batches"),
    [
        # A short stream, then quiet: marked in one go once it pauses.
        (60.0, 0.8, 20, 2),
        # A stream that never pauses: marked every delay_s, not per PUBACK.
        (0.4, 60.0, 40, 8),
    ],
)
async def test_deliveries_are_marked_in_few_commits(
    tmp_path: Path,
    broker: MosquittoBroker,
    monkeypatch: pytest.MonkeyPatch,
    delay_s: float,
    quiet_s: float,
    count: int,
    most_batches: int,
) -> None:
    # Issue 11 (wear): each mark commit rewrites the readings' pages and fsyncs.
    monkeypatch.setattr("gateway.uplink.mqtt.MARK_DELAY_S", delay_s)
    monkeypatch.setattr("gateway.uplink.mqtt.MARK_QUIET_S", quiet_s)
    batches: list[int] = []
    original = Store.mark_delivered

    async def recording(self: Store, seqs: list[int]) -> int:
        batches.append(len(seqs))
        return await original(self, seqs)

    monkeypatch.setattr(Store, "mark_delivered", recording)
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=state,
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.05, count=count)],
    )
    events = EventBus()
    queue, _ = events.queue()
    hub = Hub(load(config), DriverRegistry.from_entry_points(), events=events)
    task = asyncio.create_task(hub.run())
    delivered = 0
    try:
        async with asyncio.timeout(20):
            while delivered < count:
                if isinstance(await queue.get(), ReadingDelivered):
                    delivered += 1
            assert hub.store is not None
            # Written without a stop: after the pause, or within delay_s.
            while (await hub.store.stats()).unsent:
                await asyncio.sleep(0.05)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    assert sum(batches) == count
    assert 1 <= len(batches) <= most_batches, batches
