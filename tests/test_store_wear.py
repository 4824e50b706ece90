"""Schema 5's wear levers (issue 11 part 4): explicit seqs, no unsent index, the cursor.

The seqs must still never be reused (the uplink keeps them as cursors), and every
way a reading becomes unsent again (a requeue, a held reading released) must put it
back in front of the in-memory cursor.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreFullError
from gateway.store import ClockStamp, NewRow, SqliteOutbox
from gateway.store.outbox import NEW_STORE_PAGE_SIZE

FRAME = NEW_STORE_PAGE_SIZE + 24  # a WAL frame: the page and its header


def row(n: int, *, stamp: ClockStamp | None = None, priority: int = 0) -> NewRow:
    payload = json.dumps(
        {
            "schema": "homehub.reading/1",
            "id": f"0e3b7c1a-2f4d-5e6f-8a9b-{n:012d}",
            "device": {"id": "bp-1", "driver": "simulated"},
            "kind": "blood_pressure",
            "values": [
                {"mdc": 150021, "code": "MDC_PRESS_BLD_NONINV_SYS", "value": 120.0 + n % 40}
            ],
        },
        separators=(",", ":"),
    ).encode()
    return NewRow(f"id-{n:06d}", "bp-1", payload, 1000.0 + n, priority=priority, stamp=stamp)


def schema_objects(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()


def test_a_new_store_has_no_autoincrement_and_no_unsent_index(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    outbox = SqliteOutbox(path)
    try:
        outbox.add_many([row(1)])
    finally:
        outbox.close()
    names = schema_objects(path)
    assert "readings" in names
    assert "sqlite_sequence" not in names and "readings_unsent" not in names


def test_an_insert_commit_writes_about_two_pages(tmp_path: Path) -> None:
    # The table leaf and the id index; page 1 and the parent only when a leaf fills
    # (five or six compressed readings to a page). Schema 4 wrote ~4.7 pages here.
    path = tmp_path / "r.sqlite3"
    wal = Path(f"{path}-wal")
    outbox = SqliteOutbox(path)
    try:
        for n in range(20):
            outbox.add_many([row(n)])
        before = wal.stat().st_size
        for n in range(20, 80):
            outbox.add_many([row(n)])
        frames = (wal.stat().st_size - before) / FRAME / 60
    finally:
        outbox.close()
    assert 2.0 <= frames <= 2.6, frames


def test_seqs_are_never_reused_after_everything_is_purged(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    outbox = SqliteOutbox(path)
    try:
        seqs = [r.seq for r in outbox.add_many([row(n) for n in range(5)]).results]
        assert seqs == [1, 2, 3, 4, 5]
        outbox.mark_delivered(seqs, at=2000.0)
        assert outbox.purge_delivered(older_than=3000.0) == 5
        assert outbox.add_many([row(5)]).results[0].seq == 6  # same connection
        outbox.mark_delivered([6], at=2000.0)
        assert outbox.purge_delivered(older_than=3000.0) == 1
    finally:
        outbox.close()
    again = SqliteOutbox(path)  # a restart: from meta 'seq_high', the table is empty
    try:
        assert again.stats().total == 0
        assert again.add_many([row(6)]).results[0].seq == 7
    finally:
        again.close()


def test_a_duplicate_takes_no_seq_and_a_rolled_back_insert_gives_its_seq_back(
    tmp_path: Path,
) -> None:
    outbox = SqliteOutbox(tmp_path / "r.sqlite3")
    try:
        first = outbox.add_many([row(1), row(1), row(2)]).results
        assert [(r.seq, r.duplicate) for r in first] == [(1, False), (1, True), (2, False)]
        outbox.set_max_page_count(1)  # full: nothing more fits
        with pytest.raises(StoreFullError):
            outbox.add_many([row(n) for n in range(3, 300)])
        outbox.set_max_page_count(1_000_000)
        assert outbox.add_many([row(3)]).results[0].seq == 3
    finally:
        outbox.close()


def test_an_autoincrement_store_upgraded_keeps_its_sequence(tmp_path: Path) -> None:
    # A schema-4 file: AUTOINCREMENT and readings_unsent. It keeps the first (no
    # table copy), loses the second, and seqs continue above sqlite_sequence.
    path = tmp_path / "r.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE readings (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            device_id TEXT NOT NULL, payload BLOB NOT NULL, received_at REAL NOT NULL,
            delivered_at REAL, confirmed_at REAL, priority INTEGER NOT NULL DEFAULT 0,
            clock_hold INTEGER NOT NULL DEFAULT 0, stamp_boottime REAL, stamp_boot_id TEXT);
        CREATE INDEX readings_unsent ON readings(seq) WHERE delivered_at IS NULL;
        CREATE INDEX readings_delivered ON readings(delivered_at)
            WHERE delivered_at IS NOT NULL;
        CREATE TABLE devices (device_id TEXT PRIMARY KEY, last_reading_at REAL NOT NULL);
        CREATE TABLE device_cursors (device_id TEXT NOT NULL, name TEXT NOT NULL,
            value INTEGER NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (device_id, name));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value);
        INSERT INTO readings(id, device_id, payload, received_at)
            VALUES ('old-1', 'd', x'7b7d', 1.0), ('old-2', 'd', x'7b7d', 2.0);
        DELETE FROM readings WHERE id = 'old-2';
        PRAGMA user_version = 4;
        """
    )
    db.close()
    outbox = SqliteOutbox(path)
    try:
        assert [r.id for r in outbox.fetch_unsent(0, 10)] == ["old-1"]
        assert outbox.add_many([row(1)]).results[0].seq == 3  # not 2: it was handed out
    finally:
        outbox.close()
    names = schema_objects(path)
    assert "readings_unsent" not in names and "sqlite_sequence" in names


def test_a_requeued_reading_is_in_front_of_the_cursor_again(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "r.sqlite3")
    try:
        seqs = [r.seq for r in outbox.add_many([row(n) for n in range(10)]).results]
        outbox.mark_delivered(seqs[:8], at=2000.0)
        assert [r.seq for r in outbox.fetch_unsent(0, 100)] == seqs[8:]
        outbox.mark_confirmed(["id-000000", "id-000001"], at=2001.0)
        # Published long ago and never confirmed: unsent again, from the start.
        assert outbox.requeue_unconfirmed(published_before=3000.0) == 6
        assert [r.seq for r in outbox.fetch_unsent(0, 100)] == seqs[2:]
        stats = outbox.stats()
        assert (stats.unsent, stats.oldest_unsent_at) == (8, 1002.0)
    finally:
        outbox.close()


def test_a_held_reading_released_below_the_cursor_is_sent(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "r.sqlite3")
    try:
        held = outbox.add_many([row(0, stamp=ClockStamp(5.0, "boot"))]).results[0].seq
        seqs = [r.seq for r in outbox.add_many([row(n) for n in range(1, 5)]).results]
        assert [r.seq for r in outbox.fetch_unsent(0, 100)] == seqs
        outbox.mark_delivered(seqs, at=2000.0)
        assert outbox.fetch_unsent(0, 100) == []
        stats = outbox.stats()
        # Held readings are unsent, and the oldest of them.
        assert (stats.unsent, stats.oldest_unsent_at) == (1, 1000.0)
        assert outbox.release_held([(held, None)]) == 1
        assert [r.seq for r in outbox.fetch_unsent(0, 100)] == [held]
    finally:
        outbox.close()


def test_the_cursor_survives_a_restart_and_skipped_devices(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    outbox = SqliteOutbox(path)
    try:
        rows = [row(n) for n in range(6)]
        rows[1] = NewRow("other-1", "scale-1", rows[1].payload, 1001.0)
        seqs = [r.seq for r in outbox.add_many(rows).results]
        # The poison guard skips scale-1: its reading stays unsent below the others.
        sent = [r.seq for r in outbox.fetch_unsent(0, 100, skip_devices=("scale-1",))]
        assert sent == [s for s in seqs if s != seqs[1]]
        outbox.mark_delivered(sent, at=2000.0)
        assert [r.id for r in outbox.fetch_unsent(0, 100)] == ["other-1"]
    finally:
        outbox.close()
    again = SqliteOutbox(path)
    try:
        assert [r.id for r in again.fetch_unsent(0, 100)] == ["other-1"]
        assert again.stats().unsent == 1
        assert len(again.fetch_unsent(0, 100, priority=True)) == 0
    finally:
        again.close()
