"""A store that survives a failing SD card (issue 11 part 6), on real damaged files."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreCorruptError, StoreError
from gateway.store import NewRow, SqliteOutbox, Store, codec
from gateway.store.outbox import NEW_STORE_PAGE_SIZE
from gateway.store.salvage import KEEP_QUARANTINED, Recovery

GATEWAY = "hub-test"
PAGE = NEW_STORE_PAGE_SIZE  # a new store's page size (issue 11: 1 KiB, for wear)
ROWS = 400


def row(n: int) -> NewRow:
    rid = f"id-{n:06d}"
    # Values that do not compress away (the store deflates payloads, issue 11 part 4):
    # stored, a row is about as big as a real reading's (~100-150 bytes).
    pad = random.Random(n).randbytes(40).hex()
    payload = json.dumps({"id": rid, "pad": pad, "mark": f"<{n:06d}>"}).encode()
    return NewRow(rid, f"dev-{n % 3}", payload, 1000.0 + n)


def fill(path: Path, *, delivered: int = 100) -> dict[str, tuple[int, bytes]]:
    """A closed store of ROWS readings (the first `delivered` delivered); id -> (seq, payload)."""
    outbox = SqliteOutbox(path)
    try:
        rows = [row(n) for n in range(ROWS)]
        seqs = [r.seq for r in outbox.add_many(rows).results]
        outbox.mark_delivered(seqs[:delivered], at=2000.0)
        outbox.set_cursor("dev-0", "seq", 77, 1.0)
    finally:
        outbox.close()
    return {r.id: (s, r.payload) for r, s in zip(rows, seqs, strict=True)}


def rows_in_page(path: Path, page: int) -> set[str]:
    """The readings whose cell lies in page `page` (0-based) of the file.

    By their id in a table leaf page (b-tree page type 13): the payload is stored
    compressed, and the id index's pages (type 10) hold the ids too.
    """
    data = path.read_bytes()[page * PAGE : (page + 1) * PAGE]
    if not data or data[0] != 13:
        return set()
    return {f"id-{n:06d}" for n in range(ROWS) if f"id-{n:06d}".encode() in data}


def overwrite_page(path: Path, page: int) -> None:
    with path.open("r+b") as f:
        f.seek(page * PAGE)
        f.write(random.Random(page).randbytes(PAGE))


def contents(path: Path) -> dict[str, tuple[int, bytes, float | None]]:
    db = sqlite3.connect(path)
    try:
        return {
            str(i): (int(s), codec.decode(bytes(p)), d)
            for s, i, p, d in db.execute("SELECT seq, id, payload, delivered_at FROM readings")
        }
    finally:
        db.close()


def quarantined(directory: Path) -> list[Path]:
    return sorted(directory.glob("readings.sqlite3.corrupt-*"))


async def open_store(path: Path, recoveries: list[Recovery]) -> Store:
    return await Store.open(path, gateway_id=GATEWAY, on_recovered=recoveries.append)


async def test_a_page_overwritten_mid_file_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite3"
    original = fill(path)
    page = next(p for p in range(path.stat().st_size // PAGE // 2, 1000) if rows_in_page(path, p))
    lost = rows_in_page(path, page)
    assert 0 < len(lost) < 10
    overwrite_page(path, page)
    with pytest.raises(StoreCorruptError):
        SqliteOutbox(path)  # the quick_check at open finds it

    recoveries: list[Recovery] = []
    store = await open_store(path, recoveries)
    try:
        await store.ping()
        stats = await store.stats()
        assert stats.total == ROWS - len(lost)
        unsent = await store.fetch_unsent(0, 1000)
        assert [r.id for r in unsent] == [
            i for i in sorted(original) if i not in lost and original[i][0] > 100
        ]
        # A new reading continues above every seq the damaged file handed out.
        new = await store._op(lambda o: o.add_many([row(ROWS)]))
        assert new.results[0].seq == ROWS + 1
        assert await store.get_cursor("dev-0", "seq") is None  # cursors are not carried over
        await store.mark_delivered([r.seq for r in unsent])
    finally:
        await store.close()
    # Every readable reading is there, unchanged (seq, payload, delivered or not).
    got = contents(path)
    for rid, (seq, payload) in original.items():
        if rid in lost:
            assert rid not in got
        else:
            assert got[rid][:2] == (seq, payload)
    (recovery,) = recoveries
    assert recovery.salvaged == ROWS - len(lost) and recovery.unsent == ROWS - 100 - len(
        [i for i in lost if original[i][0] > 100]
    )
    assert recovery.unreadable >= len(lost)
    (bad,) = quarantined(tmp_path)
    assert bad.name == recovery.quarantined
    assert bad.name.startswith("readings.sqlite3.corrupt-2") and bad.name.endswith("Z")
    assert bad.stat().st_size == PAGE * (bad.stat().st_size // PAGE) > 0
    # The new store is sound and says what happened; the status reads it back.
    reopened = SqliteOutbox(path)
    try:
        assert reopened.quick_check() == []
        assert reopened.stats().recovery == Recovery.from_meta(recovery.to_meta())
    finally:
        reopened.close()


async def test_a_file_truncated_to_half_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite3"
    original = fill(path, delivered=0)
    size = path.stat().st_size
    os.truncate(path, size // 2 // PAGE * PAGE)
    recoveries: list[Recovery] = []
    store = await open_store(path, recoveries)
    try:
        unsent = await store.fetch_unsent(0, 1000)
    finally:
        await store.close()
    (recovery,) = recoveries
    # Whatever is in the first half survives, byte for byte; nothing invented.
    assert len(unsent) == recovery.salvaged > ROWS // 4
    assert all(original[r.id] == (r.seq, r.payload) for r in unsent)
    assert len(quarantined(tmp_path)) == 1


async def test_a_file_of_garbage_becomes_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite3"
    path.write_bytes(random.Random(1).randbytes(PAGE * 8))
    recoveries: list[Recovery] = []
    store = await open_store(path, recoveries)
    try:
        assert (await store.stats()).total == 0
        await store._op(lambda o: o.add_many([row(1)]))
        assert len(await store.fetch_unsent(0, 10)) == 1
    finally:
        await store.close()
    (recovery,) = recoveries
    assert (recovery.salvaged, recovery.unsent) == (0, 0)
    (bad,) = quarantined(tmp_path)
    assert bad.read_bytes() == random.Random(1).randbytes(PAGE * 8)


async def test_damage_met_by_a_read_is_salvaged_and_the_read_answered(tmp_path: Path) -> None:
    """Damage after the open: the uplink's read meets it, is salvaged, and gets its rows."""
    path = tmp_path / "readings.sqlite3"
    original = fill(path, delivered=0)
    recoveries: list[Recovery] = []
    store = await open_store(path, recoveries)
    try:
        page = next(p for p in range(3, 1000) if rows_in_page(path, p))
        lost = rows_in_page(path, page)
        overwrite_page(path, page)
        # Another connection's write invalidates the store's page cache, as time would.
        other = sqlite3.connect(path)
        other.execute("INSERT INTO meta VALUES ('poke', 1)")
        other.commit()
        other.close()
        unsent = await store.fetch_unsent(0, 1000)
        assert [r.id for r in unsent] == [i for i in sorted(original) if i not in lost]
        assert len(recoveries) == 1
        await store.ping()
    finally:
        await store.close()
    assert (tmp_path / recoveries[0].quarantined).exists()


async def test_damage_again_soon_after_a_salvage_fails_the_ping(tmp_path: Path) -> None:
    path = tmp_path / "readings.sqlite3"
    path.write_bytes(b"\0" * PAGE * 4)
    recoveries: list[Recovery] = []
    store = await open_store(path, recoveries)
    try:
        assert len(recoveries) == 1  # salvaged at open
        await store.ping()
        # The card goes on failing: the fresh file is damaged too.
        await store._op(lambda o: o.add_many([row(n) for n in range(ROWS)]))
        other = sqlite3.connect(path)
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        other.execute("INSERT INTO meta VALUES ('poke', 1)")  # the store re-reads its pages
        other.commit()
        other.close()
        overwrite_page(path, next(p for p in range(3, 1000) if rows_in_page(path, p)))
        with pytest.raises(StoreCorruptError, match="again"):
            await store.fetch_unsent(0, 1000)
        # From now on the store says it cannot serve: the watchdog stops being petted.
        with pytest.raises(StoreError, match="cannot serve"):
            await store.ping()
    finally:
        await store.close()
    assert len(quarantined(tmp_path)) == 1, "no salvage loop"


def test_only_the_newest_quarantined_copies_are_kept(tmp_path: Path) -> None:
    from gateway.store.salvage import salvage

    path = tmp_path / "readings.sqlite3"
    for n in range(KEEP_QUARANTINED + 2):
        path.write_bytes(b"garbage")
        (tmp_path / f"readings.sqlite3.corrupt-2020010{n}T000000Z").write_bytes(b"old")
        salvage(path, "test", create=lambda at: SqliteOutbox(at, check=False))
    assert len(quarantined(tmp_path)) == KEEP_QUARANTINED
    assert all(p.name.startswith("readings.sqlite3.corrupt-2") for p in quarantined(tmp_path))
    assert not any("20200101" in p.name for p in quarantined(tmp_path))
