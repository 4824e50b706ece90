"""Salvage a damaged store: copy every readable reading into a fresh file (issue 11).

SD cards fail by returning bad pages. SQLite's `.recover` is not in Python's
sqlite3, so this is a row-by-row copy: scan `readings` forwards in seq order
until a damaged page stops the scan, backwards from the end until one stops it
again, and look up every seq in between one by one. Every row copied must be
sound: the right types, and a payload that is JSON carrying the row's own id (a
damaged page must not turn into a wrong reading).

The bad file and its -wal/-shm are kept aside under a dated name for a human,
`readings.sqlite3.corrupt-YYYYMMDDTHHMMSSZ`; only the newest few are kept, so a
card that keeps failing does not also fill up with quarantined copies.

Device cursors are not carried over: a cursor may point past a reading the
salvage lost, and without one a device sends again every record it holds (the
store drops those it has, by id), which may bring lost readings back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.store import codec

log = logging.getLogger("gateway.store")

#: Quarantined copies kept beside the store (the newest).
KEEP_QUARANTINED = 3
#: At most this many single-seq look-ups across a damaged stretch of the table.
MAX_LOOKUPS = 200_000
_COPY_BATCH = 500
_COLUMNS = ("seq", "id", "device_id", "payload", "received_at", "delivered_at", "confirmed_at")
_META_KEYS = ("dropped", "last_delivery_at", "last_confirmation_at")


@dataclass(frozen=True, slots=True)
class Recovery:
    """What one salvage did; kept in the new store's meta and shown in the status."""

    at: float
    salvaged: int  # readings copied into the fresh store
    unsent: int  # of those, not yet delivered
    unreadable: int  # rows (or seqs in a damaged stretch) that could not be read or were unsound
    quarantined: str  # file name of the bad store, beside the new one
    reason: str

    def to_meta(self) -> str:
        return json.dumps(
            {
                "at": self.at,
                "salvaged": self.salvaged,
                "unsent": self.unsent,
                "unreadable": self.unreadable,
                "quarantined": self.quarantined,
            }
        )

    @classmethod
    def from_meta(cls, text: Any) -> Recovery | None:
        try:
            doc = json.loads(text)
            return cls(
                at=float(doc["at"]),
                salvaged=int(doc["salvaged"]),
                unsent=int(doc["unsent"]),
                unreadable=int(doc["unreadable"]),
                quarantined=str(doc["quarantined"]),
                reason="",
            )
        except (TypeError, ValueError, KeyError):
            return None


def quarantine_name(path: Path, at: float) -> Path:
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while candidate.exists():  # two in one second: never overwrite evidence
        candidate = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    return candidate


def salvage(path: Path, reason: str, *, create: Any) -> Recovery:
    """Replace the damaged store at `path` by a fresh one holding every readable reading.

    `create(tmp_path)` opens a new, empty SqliteOutbox there (the caller's
    settings). The bad file is only moved aside once the new one is complete,
    so a failure here (a full disk) leaves the bad file where it was, to be
    salvaged again at the next attempt. Runs on the store's thread, with the
    bad store's connection already closed.
    """
    at = time.time()
    tmp = path.with_name(f"{path.name}.salvage")
    _remove_set(tmp)
    rows, unreadable = _read_rows(path)
    extra = _read_extra(path)
    new = create(tmp)
    try:
        db = new._db
        for start in range(0, len(rows), _COPY_BATCH):
            chunk = rows[start : start + _COPY_BATCH]

            def copy(db: sqlite3.Connection, chunk: list[tuple[Any, ...]] = chunk) -> None:
                db.executemany(
                    f"INSERT OR IGNORE INTO readings({', '.join(_COLUMNS)})"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    chunk,
                )

            new._write(copy)
        unsent = sum(1 for r in rows if r[5] is None)
        quarantined = quarantine_name(path, at)
        recovery = Recovery(at, len(rows), unsent, unreadable, quarantined.name, reason)

        def finish(db: sqlite3.Connection) -> None:
            # Seqs only grow, even past rows the salvage lost (the uplink may hold them):
            # the fresh store hands out seqs above meta 'seq_high' (schema 5).
            top = max([extra["seq"], *(r[0] for r in rows)], default=0)
            if top:
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('seq_high', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                    (top,),
                )
            db.executemany(
                "INSERT OR REPLACE INTO devices(device_id, last_reading_at) VALUES (?, ?)",
                extra["devices"],
            )
            db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", extra["meta"])
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('recovery', ?)",
                (recovery.to_meta(),),
            )

        new._write(finish)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        new.close()
    # The new file is complete and closed (its WAL checkpointed away): swap.
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{quarantined}{suffix}")
    os.replace(tmp, path)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{tmp}{suffix}", f"{path}{suffix}")
    _fsync_dir(path.parent)
    _prune_quarantined(path)
    return recovery


def _connect_damaged(path: Path) -> sqlite3.Connection | None:
    """A connection to the damaged file for reading what is left."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
        # writable_schema: SQLite then trusts the file's real size over its header's,
        # so a truncated file is read up to where it ends instead of refused whole.
        # query_only: this connection never writes to the evidence.
        db.execute("PRAGMA writable_schema = ON")
        db.execute("PRAGMA query_only = ON")
    except sqlite3.Error:
        return None
    return db


def _read_rows(path: Path) -> tuple[list[tuple[Any, ...]], int]:
    """Every sound row of the bad file's readings table, in seq order; and the unreadable count."""
    db = _connect_damaged(path)
    if db is None:
        return [], 0
    try:
        try:
            columns = {str(r[1]) for r in db.execute("PRAGMA table_info(readings)")}
        except sqlite3.Error:
            return [], 0  # the schema itself is unreadable (or not a database at all)
        select = ", ".join(c if c in columns else "NULL" for c in _COLUMNS)
        found: dict[int, tuple[Any, ...]] = {}
        unsound = 0
        forward_end = _scan(db, f"SELECT {select} FROM readings ORDER BY seq", found)  # noqa: S608
        if forward_end is None:
            rows = sorted(found.values())
            return _sound(rows)
        backward_end = _scan(
            db,
            f"SELECT {select} FROM readings WHERE seq > ? ORDER BY seq DESC",  # noqa: S608
            found,
            (forward_end,),
        )
        # Seqs between the two damaged spots: look each one up on its own.
        low = forward_end
        high = backward_end if backward_end is not None else _max_seq(db, found)
        failed = 0
        for seq in _between(low, high):
            try:
                row = db.execute(
                    f"SELECT {select} FROM readings WHERE seq = ?",  # noqa: S608
                    (seq,),
                ).fetchone()
            except sqlite3.Error:
                failed += 1
                continue
            if row is not None:
                found[int(row[0])] = tuple(row)
        rows, unsound = _sound(sorted(found.values()))
        return rows, unsound + failed
    finally:
        db.close()


def _scan(
    db: sqlite3.Connection,
    sql: str,
    found: dict[int, tuple[Any, ...]],
    params: tuple[Any, ...] = (),
) -> int | None:
    """Collect rows until the scan fails; None if it finished, else the last seq it read."""
    last = params[0] if params else 0
    try:
        for row in db.execute(sql, params):
            found[int(row[0])] = tuple(row)
            last = int(row[0])
    except sqlite3.Error:
        return int(last)
    return None


def _max_seq(db: sqlite3.Connection, found: dict[int, tuple[Any, ...]]) -> int:
    """The highest seq the file ever handed out, from what is still readable."""
    candidates = [max(found, default=0)]
    for sql in (
        "SELECT seq FROM sqlite_sequence WHERE name = 'readings'",
        "SELECT value FROM meta WHERE key = 'seq_high'",
        "SELECT max(seq) FROM readings",
    ):
        with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
            value = db.execute(sql).fetchone()
            if value is not None and value[0] is not None:
                candidates.append(int(value[0]))
    return max(candidates) + 1


def _between(low: int, high: int) -> Iterator[int]:
    stop = min(high, low + 1 + MAX_LOOKUPS)
    yield from range(low + 1, stop)


def _sound(rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int]:
    """Keep rows whose every field has its type and whose payload names its own id."""
    good: list[tuple[Any, ...]] = []
    bad = 0
    for row in rows:
        seq, rid, device, payload, received, delivered, confirmed = row
        try:
            ok = (
                isinstance(seq, int)
                and isinstance(rid, str)
                and isinstance(device, str)
                and isinstance(payload, bytes)
                and isinstance(received, float)
                and (delivered is None or isinstance(delivered, float))
                and (confirmed is None or isinstance(confirmed, float))
                and json.loads(codec.decode(payload)).get("id") == rid
            )
        except (ValueError, AttributeError):  # PayloadDamaged is a ValueError
            ok = False
        if ok:
            good.append(row)
        else:
            bad += 1
    return good, bad


def _read_extra(path: Path) -> dict[str, Any]:
    """Best effort: the seq high-water mark, the devices' last reading times, the counters."""
    extra: dict[str, Any] = {"seq": 0, "devices": [], "meta": []}
    db = _connect_damaged(path)
    if db is None:
        return extra
    try:
        # The seq high-water mark: sqlite_sequence (a store created before schema 5,
        # AUTOINCREMENT) or meta 'seq_high' (schema 5), whichever is readable and higher.
        for sql in (
            "SELECT seq FROM sqlite_sequence WHERE name = 'readings'",
            "SELECT value FROM meta WHERE key = 'seq_high'",
        ):
            with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
                value = db.execute(sql).fetchone()
                if value:
                    extra["seq"] = max(extra["seq"], int(value[0]))
        with contextlib.suppress(sqlite3.Error):
            extra["devices"] = [
                (d, t)
                for d, t in db.execute("SELECT device_id, last_reading_at FROM devices")
                if isinstance(d, str) and isinstance(t, float)
            ]
        with contextlib.suppress(sqlite3.Error):
            marks = ",".join("?" * len(_META_KEYS))
            extra["meta"] = [
                (k, v)
                for k, v in db.execute(
                    f"SELECT key, value FROM meta WHERE key IN ({marks})",  # noqa: S608
                    _META_KEYS,
                )
                if isinstance(v, int | float)
            ]
    finally:
        db.close()
    return extra


def _remove_set(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _fsync_dir(directory: Path) -> None:
    """Make the renames durable (POSIX: a rename is in the directory, not the file)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(f"{directory}: cannot open the store's directory: {exc}") from exc
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune_quarantined(path: Path) -> None:
    copies = sorted(
        (
            p
            for p in path.parent.glob(f"{path.name}.corrupt-*")
            if not p.name.endswith(("-wal", "-shm"))
        ),
        key=lambda p: p.name,
    )
    for old in copies[:-KEEP_QUARANTINED]:
        log.warning("store: removing the oldest quarantined store %s", old.name)
        _remove_set(old)
