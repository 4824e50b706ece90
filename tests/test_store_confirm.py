"""The store side of end-to-end confirmation (issue 9): schema 2, confirm, requeue, retention."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.store import SCHEMA_VERSION, NewRow, SqliteOutbox, Store

# The version-1 schema exactly as homehub 0.x created it (before issue 9).
V1_SCHEMA = """
CREATE TABLE readings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX readings_unsent ON readings(seq) WHERE delivered_at IS NULL;
CREATE INDEX readings_delivered ON readings(delivered_at) WHERE delivered_at IS NOT NULL;
CREATE TABLE devices (device_id TEXT PRIMARY KEY, last_reading_at REAL NOT NULL);
CREATE TABLE device_cursors (
    device_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (device_id, name)
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
"""


def row(n: int, *, received_at: float = 1000.0) -> NewRow:
    return NewRow(f"id-{n:06d}", "d", b'{"n":%d}' % n, received_at + n)


def make_v1(path: Path, *, user_version: int = 1) -> None:
    db = sqlite3.connect(path)
    try:
        db.executescript(V1_SCHEMA)
        db.execute("PRAGMA journal_mode = WAL")
        db.executemany(
            "INSERT INTO readings(id, device_id, payload, received_at, delivered_at)"
            " VALUES (?, 'd', ?, ?, ?)",
            [(f"old-{n}", b"p%d" % n, 100.0 + n, 500.0 if n < 3 else None) for n in range(5)],
        )
        db.execute("INSERT INTO meta VALUES ('dropped', 7), ('last_delivery_at', 500.0)")
        db.execute("INSERT INTO device_cursors VALUES ('g', 'seq', 42, 1.0)")
        db.execute(f"PRAGMA user_version = {user_version}")
        db.commit()
    finally:
        db.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SqliteOutbox]:
    opened = SqliteOutbox(tmp_path / "r.sqlite3")
    yield opened
    opened.close()


# -- schema version 2 ----------------------------------------------------------------------


@pytest.mark.parametrize("user_version", [1, 0])
def test_version_1_file_migrated_in_place(tmp_path: Path, user_version: int) -> None:
    # user_version 0 with tables: version-1 code set it only after creating them.
    path = tmp_path / "readings.sqlite3"
    make_v1(path, user_version=user_version)
    outbox = SqliteOutbox(path)
    try:
        stats = outbox.stats()
        assert (stats.total, stats.unsent, stats.dropped) == (5, 2, 7)
        assert stats.last_delivery_at == 500.0
        # What was published under version 1 counts as published, not confirmed.
        assert stats.unconfirmed == 3 and stats.oldest_unconfirmed_at == 100.0
        assert stats.last_confirmation_at is None
        assert [r.id for r in outbox.fetch_unsent(0, 10)] == ["old-3", "old-4"]
        assert outbox.get_cursor("g", "seq") == 42
        # New rows continue the old seq (AUTOINCREMENT state kept).
        assert outbox.add_many([row(1)]).results[0].seq == 6
        assert outbox.mark_confirmed(["old-0"], at=600.0) == 1
    finally:
        outbox.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        columns = [r[1] for r in db.execute("PRAGMA table_info(readings)")]
        # priority: version 3 (issue 10); the clock hold: version 4 (issue 13)
        assert columns[-5:] == [
            "confirmed_at",
            "priority",
            "clock_hold",
            "stamp_boottime",
            "stamp_boot_id",
        ]
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"readings_unconfirmed", "readings_priority", "readings_clock_hold"} <= indexes
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    # Opening again migrates nothing and keeps the confirmation.
    again = SqliteOutbox(path)
    try:
        assert again.stats().unconfirmed == 2 and again.stats().total == 6
    finally:
        again.close()


def test_read_only_open_of_a_version_1_file_does_not_migrate(tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite3"
    make_v1(path)
    reader = SqliteOutbox(path, read_only=True)
    try:
        stats = reader.stats()
        assert stats.total == 5 and stats.unconfirmed == 0
    finally:
        reader.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite3"
    SqliteOutbox(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        SqliteOutbox(path)


# -- confirm, requeue, retention -----------------------------------------------------------


def test_mark_confirmed_by_id(outbox: SqliteOutbox) -> None:
    seqs = [r.seq for r in outbox.add_many([row(n) for n in range(5)]).results]
    outbox.mark_delivered(seqs[:3], at=200.0)
    assert outbox.mark_confirmed([], at=300.0) == 0
    assert outbox.stats().last_confirmation_at is None
    # Unknown ids are ignored; a confirmation may overtake its PUBACK (id-000004).
    assert outbox.mark_confirmed(["id-000000", "nope", "id-000004", "id-000000"], at=300.0) == 2
    assert outbox.mark_confirmed(["id-000000"], at=400.0) == 0  # idempotent
    assert outbox.mark_confirmed(["nope"], at=500.0) == 0
    stats = outbox.stats()
    assert stats.last_confirmation_at == 300.0  # only a real confirmation counts
    assert stats.unconfirmed == 2 and stats.oldest_unconfirmed_at == 1001.0
    assert stats.unsent == 1
    # Confirmed before its PUBACK: never sent again, and the late PUBACK changes nothing.
    assert [r.id for r in outbox.fetch_unsent(0, 10)] == ["id-000003"]
    assert outbox.mark_delivered([seqs[4]], at=350.0) == 0
    got = dict(outbox._db.execute("SELECT id, delivered_at || '/' || confirmed_at FROM readings"))
    assert got["id-000000"] == "200.0/300.0" and got["id-000004"] == "300.0/300.0"


def test_mark_confirmed_a_thousand_ids(outbox: SqliteOutbox) -> None:
    seqs = [r.seq for r in outbox.add_many([row(n) for n in range(1200)]).results]
    outbox.mark_delivered(seqs, at=200.0)
    ids = [f"id-{n:06d}" for n in range(1000)]
    assert outbox.mark_confirmed(ids, at=300.0) == 1000
    assert outbox.stats().unconfirmed == 200


def test_requeue_unconfirmed(outbox: SqliteOutbox) -> None:
    seqs = [r.seq for r in outbox.add_many([row(n) for n in range(1300)]).results]
    payloads = {r.seq: (r.id, r.payload) for r in outbox.fetch_unsent(0, 2000)}
    outbox.mark_delivered(seqs[:1100], at=100.0)  # more than one batch
    outbox.mark_delivered(seqs[1100:1200], at=200.0)
    outbox.mark_confirmed([f"id-{n:06d}" for n in range(10)], at=150.0)

    assert outbox.requeue_unconfirmed(published_before=100.0) == 0  # strictly before
    assert outbox.requeue_unconfirmed(published_before=150.0) == 1090
    again = outbox.fetch_unsent(0, 2000)
    # Same seq, same id, same payload; the confirmed and the recent stay published.
    assert [r.seq for r in again] == seqs[10:1100] + seqs[1200:]
    assert all(payloads[r.seq] == (r.id, r.payload) for r in again)
    stats = outbox.stats()
    assert stats.unconfirmed == 100 and stats.unsent == 1190
    assert outbox.requeue_unconfirmed(published_before=150.0) == 0


def test_purge_requires_confirmation(outbox: SqliteOutbox) -> None:
    seqs = [r.seq for r in outbox.add_many([row(n) for n in range(700)]).results]
    outbox.mark_delivered(seqs[:600], at=100.0)
    outbox.mark_confirmed([f"id-{n:06d}" for n in range(550)], at=110.0)  # > one batch
    outbox.mark_confirmed([f"id-{n:06d}" for n in range(550, 560)], at=300.0)
    outbox.mark_confirmed(["id-000650"], at=120.0)  # confirmed, never PUBACKed

    assert outbox.purge_delivered(110.0, require_confirmed=True) == 0  # strictly older
    assert outbox.purge_delivered(200.0, require_confirmed=True) == 551
    stats = outbox.stats()
    assert stats.total == 149 and stats.unconfirmed == 40 and stats.unsent == 99
    # Without the requirement, published is enough (confirm off: today's meaning),
    # so the 10 confirmed late and the 40 unconfirmed go too.
    assert outbox.purge_delivered(200.0) == 50
    assert outbox.stats().total == 99


async def test_store_confirm_api(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "readings.sqlite3", gateway_id="hub-test")
    try:
        await store._run(store.outbox.add_many, [row(n) for n in range(3)])
        rows = await store.fetch_unsent(0, 10)
        await store.mark_delivered([r.seq for r in rows])
        assert await store.mark_confirmed([rows[0].id, "unknown"]) == 1
        stats = await store.stats()
        assert stats.unconfirmed == 2 and stats.last_confirmation_at is not None
        assert abs(stats.last_confirmation_at - time.time()) < 60
        assert await store.requeue_unconfirmed(time.time() + 1) == 2
        assert [r.id for r in await store.fetch_unsent(0, 10)] == [rows[1].id, rows[2].id]
        # Just confirmed: a retention of an hour keeps it, zero purges it.
        assert await store.purge_delivered(3600, require_confirmed=True) == 0
        assert await store.purge_delivered(0, require_confirmed=True) == 1
        assert (await store.stats()).total == 2
    finally:
        await store.close()
