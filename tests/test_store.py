"""The SQLite outbox, on real files: pragmas, ordering, bounds, disk full, SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway import mdc
from gateway.errors import StoreCorruptError, StoreError, StoreFullError
from gateway.mdc import Ucum
from gateway.reading import Kind, Reading, Value
from gateway.store import SCHEMA_VERSION, AddReport, NewRow, SqliteOutbox, Store
from gateway.store.outbox import NEW_STORE_PAGE_SIZE

GATEWAY = "hub-test"
TIMEOUT_S = 20.0
LOCAL = timezone(timedelta(hours=2))


def weight(n: int, *, device_id: str = "scale-1", source_key: bool = True) -> Reading:
    return Reading(
        device_id=device_id,
        driver="simulated",
        kind=Kind.WEIGHT,
        measured_at=datetime(2026, 5, 1, 7, 30, tzinfo=LOCAL) + timedelta(minutes=n),
        measured_at_source="device",
        values=(Value.of(mdc.MASS_BODY_ACTUAL, 80.0 + n / 10, Ucum.KG),),
        source_key=f"record-{n}" if source_key else None,
    )


def now() -> datetime:
    return datetime.now(UTC)


def row(n: int, *, device_id: str = "d", received_at: float = 1000.0) -> NewRow:
    return NewRow(f"id-{n:06d}", device_id, b'{"n":%d}' % n, received_at + n)


def integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def stored_ids(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {str(r[0]) for r in db.execute("SELECT id FROM readings")}
    finally:
        db.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state" / "readings.sqlite3", gateway_id=GATEWAY)
    yield opened
    await opened.close()


# -- pragmas ------------------------------------------------------------------------------


@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
def test_pragmas_on_a_real_file(tmp_path: Path, synchronous: str, level: int) -> None:
    path = tmp_path / "deep" / "dir" / "readings.sqlite3"
    outbox = SqliteOutbox(path, synchronous=synchronous)  # type: ignore[arg-type]
    try:
        assert outbox.pragmas() == {"journal_mode": "wal", "synchronous": level, "secure_delete": 2}
        outbox.add_many([row(1)])
        assert Path(f"{path}-wal").exists()
    finally:
        outbox.close()
    # WAL is a property of the file itself: another connection sees it too.
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_a_devices_time_is_written_when_it_moved_a_minute_and_at_close(tmp_path: Path) -> None:
    # Issue 11 (wear): the devices row is one more page per commit.
    path = tmp_path / "readings.sqlite3"
    outbox = SqliteOutbox(path)

    def on_disk() -> dict[str, float]:
        db = sqlite3.connect(path)
        try:
            return {str(d): float(t) for d, t in db.execute("SELECT * FROM devices")}
        finally:
            db.close()

    try:
        outbox.add_many([row(0, received_at=1000.0)])  # new to this connection: written
        assert on_disk() == {"d": 1000.0}
        outbox.add_many([row(1, received_at=1000.0)])  # 1 s later: kept in memory
        assert on_disk() == {"d": 1000.0}
        assert outbox.stats().devices == {"d": 1001.0}
        outbox.add_many([row(61, received_at=1000.0)])  # a minute on: written
        assert on_disk() == {"d": 1061.0}
        outbox.add_many([row(62, received_at=1000.0)])
    finally:
        outbox.close()
    assert on_disk() == {"d": 1062.0}  # close writes what waited


def test_new_stores_get_small_pages_and_an_existing_file_keeps_its_own(tmp_path: Path) -> None:
    # Issue 11 (wear): a commit costs its frames, page_size + 24 bytes each.
    new = tmp_path / "new.sqlite3"
    SqliteOutbox(new).close()
    old = tmp_path / "old.sqlite3"
    db = sqlite3.connect(old)
    db.execute("PRAGMA page_size = 4096")
    db.execute("CREATE TABLE t(x)")  # the file exists with 4 KiB pages
    db.close()
    outbox = SqliteOutbox(old)
    try:
        outbox.add_many([row(1)])
        assert outbox.stats().total == 1
    finally:
        outbox.close()
    for path, size in ((new, NEW_STORE_PAGE_SIZE), (old, 4096)):
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA page_size").fetchone()[0] == size
        finally:
            db.close()
    assert path.read_bytes()[18:20] == b"\x02\x02"  # file header: WAL read/write versions


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    # The outbox itself refuses it with the store's own error, naming the file;
    # Store.open salvages (tests/test_store_salvage.py).
    with pytest.raises(StoreCorruptError, match=f"{path}: store file damaged"):
        SqliteOutbox(path)


# -- order, delivery, duplicates ----------------------------------------------------------


async def test_add_then_fetch_unsent_in_order(store: Store) -> None:
    stored = []
    for n in range(6):
        device = "scale-1" if n % 2 == 0 else "scale-2"
        stored.append(await store.add(weight(n, device_id=device), now()))
    seqs = [s.seq for s in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    assert not any(s.duplicate for s in stored)

    rows = await store.fetch_unsent(0, 100)
    assert [r.id for r in rows] == [s.id for s in stored]
    assert [r.seq for r in rows] == seqs
    doc = json.loads(rows[0].payload)
    assert doc["id"] == stored[0].id and doc["gateway"] == GATEWAY
    assert doc["device"]["id"] == "scale-1"

    assert [r.seq for r in await store.fetch_unsent(seqs[2], 2)] == seqs[3:5]
    only_1 = await store.fetch_unsent(0, 100, skip_devices=["scale-2"])
    assert {r.device_id for r in only_1} == {"scale-1"} and len(only_1) == 3


async def test_mark_delivered(store: Store) -> None:
    stored = [await store.add(weight(n), now()) for n in range(5)]
    before = await store.stats()
    assert before.unsent == 5 and before.last_delivery_at is None

    # Nothing delivered: no delivery time is recorded (the status must not claim one).
    assert await store.mark_delivered([]) == 0
    assert (await store.stats()).last_delivery_at is None

    assert await store.mark_delivered([stored[1].seq, stored[3].seq]) == 2
    assert await store.mark_delivered([stored[1].seq]) == 0  # already delivered
    rows = await store.fetch_unsent(0, 100)
    assert [r.seq for r in rows] == [stored[0].seq, stored[2].seq, stored[4].seq]
    stats = await store.stats()
    assert stats.unsent == 3 and stats.total == 5
    assert stats.last_delivery_at is not None
    assert abs(stats.last_delivery_at - time.time()) < 60
    assert set(stats.devices) == {"scale-1"}


async def test_duplicate_source_key_is_stored_once(store: Store) -> None:
    first = await store.add(weight(7), now())
    again = await store.add(weight(7), now() + timedelta(seconds=5))
    assert first.duplicate is False
    assert again.duplicate is True
    assert (again.id, again.seq) == (first.id, first.seq)
    other = await store.add(weight(8), now())
    assert other.id != first.id and other.seq > first.seq
    # Without a source key every reading is new.
    a = await store.add(weight(9, source_key=False), now())
    b = await store.add(weight(9, source_key=False), now())
    assert a.id != b.id and not b.duplicate
    assert (await store.stats()).total == 4
    # Even after delivery, a re-read record keeps its single row.
    await store.mark_delivered([first.seq])
    late = await store.add(weight(7), now())
    assert late.duplicate and late.seq == first.seq
    assert [r.id for r in await store.fetch_unsent(0, 10)] == [other.id, a.id, b.id]


async def test_duplicates_in_one_group_commit(store: Store) -> None:
    results = await asyncio.gather(*(store.add(weight(1), now()) for _ in range(5)))
    assert len({r.id for r in results}) == 1 and len({r.seq for r in results}) == 1
    assert [r.duplicate for r in results] == [False, True, True, True, True]
    assert (await store.stats()).total == 1


# -- purge and the size bound -------------------------------------------------------------


def test_purge_delivered_only_old_delivered(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "r.sqlite3")
    try:
        results = outbox.add_many([row(n) for n in range(1300)]).results
        seqs = [r.seq for r in results]
        assert outbox.mark_delivered(seqs[:1100], at=100.0) == 1100  # more than one batch
        assert outbox.mark_delivered(seqs[1100:1200], at=200.0) == 100
        # 1200..1299 stay unsent.

        assert outbox.purge_delivered(older_than=150.0) == 1100
        stats = outbox.stats()
        assert stats.total == 200 and stats.unsent == 100
        assert outbox.purge_delivered(older_than=150.0) == 0
        assert outbox.purge_delivered(older_than=200.0) == 0  # strictly older
        assert outbox.purge_delivered(older_than=1e12) == 100
        assert [r.seq for r in outbox.fetch_unsent(0, 1000)] == seqs[1200:]
        assert outbox.stats().total == 100
    finally:
        outbox.close()


def test_size_bound_drops_delivered_first_then_oldest_unsent(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "r.sqlite3", max_readings=100)
    try:
        seqs = [r.seq for r in outbox.add_many([row(n) for n in range(100)]).results]
        outbox.mark_delivered(seqs[40:50], at=500.0)  # delivered, but not the oldest rows

        report = outbox.add_many([row(n) for n in range(100, 110)])
        assert report.dropped_now == 0  # ten delivered rows made the room
        stats = outbox.stats()
        assert (stats.total, stats.unsent, stats.dropped) == (100, 100, 0)

        report = outbox.add_many([row(n) for n in range(110, 125)])
        assert report.dropped_now == 15
        stats = outbox.stats()
        assert (stats.total, stats.unsent, stats.dropped) == (100, 100, 15)
        kept = [r.id for r in outbox.fetch_unsent(0, 1000)]
        expected = [f"id-{n:06d}" for n in [*range(15, 40), *range(50, 125)]]
        assert kept == expected  # the newest survive, in order

        # A device re-sending records the store holds must not push anything out.
        report = outbox.add_many([row(n) for n in range(100, 125)])
        assert report.dropped_now == 0
        assert all(r.duplicate for r in report.results)
        assert outbox.stats().dropped == 15 and outbox.stats().total == 100
    finally:
        outbox.close()

    # The bound and the dropped count survive a restart.
    reopened = SqliteOutbox(tmp_path / "r.sqlite3", max_readings=100)
    try:
        reopened.add_many([row(200)])
        stats = reopened.stats()
        assert (stats.total, stats.dropped) == (100, 16)
    finally:
        reopened.close()


async def test_store_reports_dropped_readings(tmp_path: Path) -> None:
    dropped: list[int] = []
    store = await Store.open(
        tmp_path / "r.sqlite3", gateway_id=GATEWAY, max_readings=100, on_dropped=dropped.append
    )
    try:
        first = [await store.add(weight(n), now()) for n in range(100)]
        assert dropped == []
        await asyncio.gather(*(store.add(weight(n), now()) for n in range(100, 103)))
        assert dropped == [3]
        assert store.dropped_since_start == 3
        assert (await store.stats()).dropped == 3
        unsent = await store.fetch_unsent(0, 1000)
        assert unsent[0].id == first[3].id and len(unsent) == 100
    finally:
        await store.close()


async def test_failing_on_dropped_does_not_hang_add(tmp_path: Path) -> None:
    def explode(count: int) -> None:
        raise RuntimeError("panel gone")

    store = await Store.open(
        tmp_path / "r.sqlite3", gateway_id=GATEWAY, max_readings=100, on_dropped=explode
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*(store.add(weight(n), now()) for n in range(101)))
            later = await store.add(weight(500), now())
        assert later.seq > 0
        assert (await store.stats()).dropped == 2
    finally:
        await store.close()


# -- disk full ----------------------------------------------------------------------------


async def test_disk_full_is_reported_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    store = await Store.open(path, gateway_id=GATEWAY, max_page_count=30)
    committed: list[str] = []
    try:
        with pytest.raises(StoreFullError):
            for n in range(20_000):
                committed.append((await store.add(weight(n), now())).id)
        assert len(committed) > 10, "the limit should leave room for some readings"
        assert store.disk_full
        # Still full: the next reading fails too, and nothing half-written remains.
        with pytest.raises(StoreFullError):
            await store.add(weight(99_999), now())
        assert integrity(path) == "ok"
        assert stored_ids(path) == set(committed)
        assert (await store.stats()).total == len(committed)

        # Space again: writing resumes on the same store, without a restart.
        assert await store.set_max_page_count(100_000) >= 100_000
        again = await store.add(weight(99_999), now())
        assert not again.duplicate and not store.disk_full
        assert len(await store.fetch_unsent(0, 100_000)) == len(committed) + 1
    finally:
        await store.close()
    assert integrity(path) == "ok"
    assert stored_ids(path) == {*committed, again.id}


# -- group commit -------------------------------------------------------------------------


async def test_group_commit_200_concurrent_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_add_many = SqliteOutbox.add_many

    def counting_add_many(self: SqliteOutbox, rows: Sequence[NewRow]) -> AddReport:
        calls.append(len(rows))
        return real_add_many(self, rows)

    monkeypatch.setattr(SqliteOutbox, "add_many", counting_add_many)
    path = tmp_path / "r.sqlite3"
    store = await Store.open(path, gateway_id=GATEWAY)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            results = await asyncio.gather(
                *(store.add(weight(n, device_id=f"dev-{n % 7}"), now()) for n in range(200))
            )
        assert len({r.seq for r in results}) == 200
        assert len({r.id for r in results}) == 200
        assert not any(r.duplicate for r in results)
        assert sum(calls) == 200
        assert len(calls) < 10, f"no group commit: {len(calls)} transactions"
        stats = await store.stats()
        assert stats.total == 200 and stats.unsent == 200 and len(stats.devices) == 7
        # Each caller got its own reading's row back.
        rows = {r.id: r for r in await store.fetch_unsent(0, 1000)}
        assert all(rows[r.id].seq == r.seq for r in results)
    finally:
        await store.close()
    assert len(stored_ids(path)) == 200


async def test_add_after_close_fails_cleanly(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "r.sqlite3", gateway_id=GATEWAY)
    await store.close()
    with pytest.raises(StoreError):
        async with asyncio.timeout(TIMEOUT_S):
            await store.add(weight(1), now())


# -- read-only reader beside the writer ---------------------------------------------------


@pytest.mark.parametrize("dirname", ["plain", "odd ?#% name"])
def test_read_only_reader_beside_writer(tmp_path: Path, dirname: str) -> None:
    path = tmp_path / dirname / "readings.sqlite3"
    writer = SqliteOutbox(path)
    try:
        seqs = [r.seq for r in writer.add_many([row(n) for n in range(10)]).results]
        writer.mark_delivered(seqs[:3], at=time.time())
        # Not checkpointed: the reader must read the writer's WAL to see these rows.
        assert Path(f"{path}-wal").stat().st_size > 0
        reader = SqliteOutbox(path, read_only=True)
        try:
            stats = reader.stats()
            assert (stats.total, stats.unsent) == (10, 7)
            assert stats.last_delivery_at is not None
            with pytest.raises(StoreError, match="read-only"):
                reader.add_many([row(99)])
            with pytest.raises(sqlite3.OperationalError):
                reader._db.execute("DELETE FROM readings")
            # The writer goes on while the reader is open, and the reader sees it.
            writer.add_many([row(10)])
            assert reader.stats().total == 11
        finally:
            reader.close()
        assert len(writer.fetch_unsent(0, 100)) == 8
    finally:
        writer.close()


def test_read_only_missing_store_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteOutbox(tmp_path / "none.sqlite3", read_only=True)
    assert not (tmp_path / "none.sqlite3").exists()


# -- durability under SIGKILL -------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta, timezone
    from pathlib import Path

    from gateway import mdc
    from gateway.mdc import Ucum
    from gateway.reading import Kind, Reading, Value
    from gateway.store import Store

    RUN = sys.argv[2]

    def reading(n):
        return Reading(
            device_id=f"dev-{n % 3}",
            driver="simulated",
            kind=Kind.TEMPERATURE,
            measured_at=datetime.now(UTC).astimezone(timezone(timedelta(hours=1))),
            measured_at_source="hub",
            values=(Value.of(mdc.TEMP_BODY, 36.6, Ucum.CEL),),
            source_key=f"{RUN}-{n}",
        )

    async def add_and_print(store, n):
        stored = await store.add(reading(n), datetime.now(UTC))
        print(stored.id, flush=True)  # only after add returned: committed

    async def main():
        store = await Store.open(Path(sys.argv[1]), gateway_id="hub-kill")
        print("open", flush=True)
        n = 0
        while True:
            # a few at once, so kills also land inside group commits
            await asyncio.gather(*(add_and_print(store, n + i) for i in range(4)))
            n += 4

    asyncio.run(main())
    """
)


def read_lines(stream: object, into: queue.Queue[str | None]) -> None:
    assert hasattr(stream, "readline")
    for line in iter(stream.readline, ""):
        # A line cut off by the kill has no newline: its id may not have been printed whole.
        if line.endswith("\n"):
            into.put(line.rstrip("\n"))
    into.put(None)


def test_sigkill_loses_no_committed_reading(tmp_path: Path) -> None:
    path = tmp_path / "state" / "readings.sqlite3"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    all_printed: set[str] = set()
    for run in range(3):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path), f"run{run}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(child.stdout, lines), daemon=True)
        reader.start()
        printed: list[str] = []
        try:
            deadline = time.monotonic() + TIMEOUT_S
            assert lines.get(timeout=TIMEOUT_S) == "open"
            while len(printed) < 200:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                assert line is not None, (
                    f"child ended early: {child.stderr.read() if child.stderr else ''}"
                )
                printed.append(line)
            child.send_signal(signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=TIMEOUT_S)
        assert child.returncode == -signal.SIGKILL
        # Whatever else it printed before dying was committed too.
        while (line := lines.get(timeout=TIMEOUT_S)) is not None:
            printed.append(line)
        reader.join(timeout=TIMEOUT_S)
        assert child.stderr is not None
        child.stderr.close()
        assert len(set(printed)) == len(printed) >= 200
        all_printed.update(printed)

        assert integrity(path) == "ok", f"run {run}"
        on_disk = stored_ids(path)
        missing = all_printed - on_disk
        assert not missing, f"run {run}: {len(missing)} acknowledged readings lost"

    # And the store opens normally afterwards, every reading still unsent.
    outbox = SqliteOutbox(path)
    try:
        assert outbox.integrity_ok()
        assert outbox.stats().unsent == len(stored_ids(path)) >= len(all_printed)
    finally:
        outbox.close()
    assert os.path.getsize(path) > 0
