"""`SqliteOutbox`: the synchronous store core on one SQLite connection (one thread)."""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from gateway.errors import StoreCorruptError, StoreError, StoreFullError
from gateway.store import codec
from gateway.store.salvage import Recovery
from gateway.store.schema import migrate

log = logging.getLogger("gateway.store")

T = TypeVar("T")
P = ParamSpec("P")

# SQLite primary result codes (https://www.sqlite.org/rescode.html).
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_NOTADB = 26
_SYNC_LEVEL = {"full": 2, "normal": 1}
_DELETE_BATCH = 500
# Wear (issue 11 part 4). With WAL and synchronous=FULL every commit appends its
# frames (page_size + 24 bytes each) to the WAL and fsyncs it, so each commit costs
# the 4 KiB file-system pages its frames touch, including the one the last commit
# left half-written and clean again: about 4 KiB + frames x (page_size + 24). A
# reading's insert touches ~4-5 pages (table leaf, the id and unsent indexes, page
# 1 when the file grows); at 4 KiB pages that is ~27 KiB, at 1 KiB ~11 KiB. New
# stores get 1 KiB pages (an existing file keeps its own: changing it needs a VACUUM).
# Not 512 B, although that writes less again (a model run: ~10 KiB instead of ~14 KiB
# per reading at 1/s): a ~700-byte reading no longer fits its table page and spills
# into an overflow page, whose bytes SQLite does not check, so a damaged one hands
# back a wrong payload instead of an error the salvage (issue 11 part 6) can act on.
NEW_STORE_PAGE_SIZE = 1024
# secure_delete FAST, not ON: deleted readings are still zeroed inside the b-tree
# pages they lived on (at no extra I/O), but a page that becomes free is not
# rewritten with zeros (ON wrote one more page per purged reading). What may stay
# behind on free pages until they are reused is documented in README (store).
_SECURE_DELETE = "FAST"
_SECURE_DELETE_VALUE = 2  # what `PRAGMA secure_delete` reports for FAST
# Checkpoint once the WAL holds ~4 MiB (4,000 frames at 1 KiB pages; SQLite's default
# is 1,000 frames): a page changed several times in between (a leaf: insert, mark,
# purge) reaches the database file once. The WAL is cut back to this size after a
# checkpoint. By bytes, so an older store with 4 KiB pages keeps a 4 MiB WAL too.
JOURNAL_SIZE_LIMIT_B = 4 * 1024 * 1024
# A device's `devices.last_reading_at` is written when it moved at least this much
# (or the device is new to this connection), not on every commit: its row costs one
# more page per commit (~1 KiB at 1 reading/s). The newer value waits in memory;
# `stats()` shows it, `close()` writes it. A reader in another process (`homehub
# status`) may see it up to this much behind; a crash loses only that much of it.
DEVICE_WRITE_S = 60.0


def store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """The store's own error for an sqlite3 one, naming the file (issue 11).

    Extended result codes carry the primary code in their low byte.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary == SQLITE_FULL:
        return StoreFullError(f"{path}: disk full: {exc}")
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StoreCorruptError(f"{path}: store file damaged: {exc}")
    return StoreError(f"{path}: {exc}")


def _mapped(
    method: Callable[Concatenate[SqliteOutbox, P], T],
) -> Callable[Concatenate[SqliteOutbox, P], T]:
    """No bare sqlite3 error leaves the outbox: callers see StoreError and the file."""

    @functools.wraps(method)
    def wrapper(self: SqliteOutbox, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    return wrapper


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An unsent reading as the uplink sees it."""

    seq: int
    id: str
    device_id: str
    payload: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class NewRow:
    id: str
    device_id: str
    payload: bytes
    received_at: float
    #: > 0: flagged by the care plan, published ahead of the backlog (issue 10)
    priority: int = 0
    #: issue 13: stamped by the hub on an unsynchronised clock: held back, with the
    #: CLOCK_BOOTTIME and boot id of its stamp (see `held` / `release_held`)
    stamp: ClockStamp | None = None


@dataclass(frozen=True, slots=True)
class ClockStamp:
    """The monotonic moment a hub-stamped reading was taken (issue 13)."""

    boottime: float  # CLOCK_BOOTTIME, seconds
    boot_id: str  # /proc/sys/kernel/random/boot_id


@dataclass(frozen=True, slots=True)
class HeldRow:
    """A reading held back until the clock is synchronised (issue 13)."""

    seq: int
    payload: bytes
    stamp: ClockStamp | None  # None: its columns were lost (cannot be corrected)


@dataclass(slots=True)
class StoreStats:
    unsent: int
    oldest_unsent_at: float | None
    last_delivery_at: float | None
    dropped: int
    total: int
    devices: dict[str, float] = field(default_factory=dict)
    # Published (success PUBACK) but not confirmed by the backend (issue 9).
    unconfirmed: int = 0
    oldest_unconfirmed_at: float | None = None  # its received_at
    last_confirmation_at: float | None = None
    # The last salvage of a damaged file (issue 11), kept in meta across restarts.
    recovery: Recovery | None = None


@dataclass(frozen=True, slots=True)
class AddResult:
    seq: int
    duplicate: bool


@dataclass(slots=True)
class AddReport:
    results: list[AddResult]
    dropped_now: int


class SqliteOutbox:
    """Synchronous store core. Must be used from one thread only."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        max_readings: int = 500_000,
        read_only: bool = False,
        max_page_count: int | None = None,
        check: bool = True,
    ) -> None:
        """Open (creating or upgrading) the store at `path`.

        `check` runs SQLite's quick_check first: a damaged file raises
        StoreCorruptError here, at start, instead of on some later read.
        """
        self.path = path
        self.max_readings = max_readings
        self.read_only = read_only
        self._device_written: dict[str, float] = {}  # last_reading_at on disk, by us
        self._device_pending: dict[str, float] = {}  # newer, not yet written
        if read_only:
            # mode=ro: `homehub status` must never write to a store the daemon owns.
            # Quote the path: '?', '#' and '%' mean something in a URI.
            uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
            try:
                self._db = sqlite3.connect(uri, uri=True, timeout=5.0)
                self._db.execute("PRAGMA query_only = ON")
                self._db.execute("SELECT count(*) FROM readings").fetchone()
                # Read-only never migrates: a version-1 file simply has no confirmations.
                self._version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise StoreError(f"{path}: cannot open store read-only: {exc}") from exc
            self._count = 0
            self._next_seq = self._seq_high_written = 0
            self._unsent_from = 0  # a reader elsewhere: every query starts at the beginning
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise store_error(path, exc) from exc
        try:
            self._configure(synchronous, max_page_count)
            if check:
                problems = self.quick_check()
                if problems:
                    raise StoreCorruptError(
                        f"{path}: store file damaged: quick_check found {len(problems)}"
                        f" problem(s), first: {problems[0]}"
                    )
            self._version = migrate(self._db, path)
            self._count = int(self._db.execute("SELECT count(*) FROM readings").fetchone()[0])
            self._seq_high_written = self._meta_seq_high()
            self._next_seq = max(self._seq_high_written, self._table_seq_high()) + 1
            self._unsent_from = 0
            self._unsent_from = self._first_unsent()
        except sqlite3.Error as exc:
            self._db.close()
            raise store_error(path, exc) from exc
        except BaseException:
            self._db.close()
            raise

    # -- seqs and the unsent cursor (issue 11 part 4) ----------------------------
    #
    # Schema 5 has no AUTOINCREMENT (its sqlite_sequence row was one more page written
    # by every insert commit) and no `readings_unsent` index (one more page per insert
    # and per mark). Instead, in memory on the one connection that writes:
    # - `_next_seq`, the next seq to hand out: above every seq this file ever held, so a
    #   seq is never reused after deletes (the uplink keeps seqs as cursors). Found at
    #   open from max(seq), meta `seq_high` and (a store created before schema 5, which
    #   keeps its AUTOINCREMENT) sqlite_sequence; `seq_high` is written only by a
    #   transaction that deletes rows (purge, the store bound), when it moved.
    # - `_unsent_from`, a lower bound of every unsent, not held reading's seq: the
    #   reads of the unsent queue scan the table from there in seq order (its primary
    #   key) instead of an index. Raised after a mark is committed; lowered by what
    #   makes a reading unsent again (a requeue, a held reading released).

    def _meta_seq_high(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'seq_high'").fetchone()
        return int(row[0]) if row is not None and isinstance(row[0], int) else 0

    def _table_seq_high(self) -> int:
        db = self._db
        top = int(db.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0])
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
            if row is not None:
                top = max(top, int(row[0]))
        return top

    def _first_unsent(self) -> int:
        """The lowest unsent, not held seq from `_unsent_from` on (`_next_seq`: none)."""
        row = self._db.execute(
            "SELECT seq FROM readings WHERE seq >= ? AND delivered_at IS NULL AND clock_hold = 0"
            " ORDER BY seq LIMIT 1",
            (self._unsent_from,),
        ).fetchone()
        return self._next_seq if row is None else int(row[0])

    def _advance_unsent_from(self) -> None:
        """After a committed mark: move the cursor over what is no longer unsent."""
        with contextlib.suppress(sqlite3.Error):  # only an optimisation: stay where it was
            self._unsent_from = self._first_unsent()

    def _write_seq_high(self, db: sqlite3.Connection) -> int | None:
        """In a deleting transaction: persist the seq high-water mark if it moved."""
        high = self._next_seq - 1
        if high <= self._seq_high_written:
            return None
        db.execute(
            "INSERT INTO meta(key, value) VALUES ('seq_high', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            (high,),
        )
        return high

    def _configure(self, synchronous: str, max_page_count: int | None) -> None:
        db = self._db
        if int(db.execute("PRAGMA page_count").fetchone()[0]) == 0:
            # A new, empty file: the page size can only be chosen before the first write.
            db.execute(f"PRAGMA page_size = {NEW_STORE_PAGE_SIZE}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute(f"PRAGMA synchronous = {_SYNC_LEVEL[synchronous]}")
        db.execute(f"PRAGMA secure_delete = {_SECURE_DELETE}")
        db.execute("PRAGMA busy_timeout = 5000")
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        db.execute(f"PRAGMA wal_autocheckpoint = {JOURNAL_SIZE_LIMIT_B // (page_size + 24)}")
        db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_B}")
        if max_page_count is not None:
            # Used by tests to make "disk full" happen on demand (SQLITE_FULL).
            db.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
        # Verify: a pragma SQLite did not take is silently ignored, and a store
        # that is not what we think it is must not pretend to be durable.
        actual = {**self.pragmas(), "journal_mode": mode}
        wanted = {
            "journal_mode": "wal",
            "synchronous": _SYNC_LEVEL[synchronous],
            "secure_delete": _SECURE_DELETE_VALUE,
        }
        if actual != wanted:
            raise StoreError(
                f"{self.path}: SQLite refused the pragmas: wanted {wanted}, got {actual}"
            )

    @_mapped
    def pragmas(self) -> dict[str, Any]:
        """The durability pragmas as SQLite reports them on this connection."""
        names = ("journal_mode", "synchronous", "secure_delete")
        return {name: self._db.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

    @_mapped
    def set_max_page_count(self, pages: int) -> int:
        """Change the page limit ("disk full" on demand); returns the limit now in force."""
        return int(self._db.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0])

    # -- writing ---------------------------------------------------------------

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one IMMEDIATE transaction; map a full disk to StoreFullError."""
        if self.read_only:
            raise StoreError("store opened read-only")
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    # A damaged file may refuse even this; the first error is the one to report.
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        return result

    def add_many(self, rows: Sequence[NewRow]) -> AddReport:
        """Commit `rows` in one transaction, enforcing the size bound first."""

        def work(
            db: sqlite3.Connection,
        ) -> tuple[AddReport, int, int, dict[str, float], dict[str, float], int | None]:
            # Count only readings that will really be new: a device re-sending
            # records we hold must not push unsent readings out of the store.
            # The extra look-up is needed only near the bound (the common case
            # is far below it, and then every row may as well count as new).
            incoming = len(rows)
            if self._count + incoming > self.max_readings:
                incoming = self._count_new(db, rows)
            deleted, dropped = self._make_room(db, incoming)
            high = self._write_seq_high(db) if deleted else None
            results: list[AddResult] = []
            inserted = 0
            seq = self._next_seq
            last_by_device: dict[str, float] = {}
            for row in rows:
                stamp = row.stamp
                # The seq explicitly (no AUTOINCREMENT in schema 5). Only a duplicate
                # id is ignored: a seq already taken would be an error, never a
                # reading silently dropped.
                cur = db.execute(
                    "INSERT INTO readings(seq, id, device_id, payload, received_at, priority,"
                    " clock_hold, stamp_boottime, stamp_boot_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                    (
                        seq,
                        row.id,
                        row.device_id,
                        codec.encode(row.payload),
                        row.received_at,
                        row.priority,
                        0 if stamp is None else 1,
                        None if stamp is None else stamp.boottime,
                        None if stamp is None else stamp.boot_id,
                    ),
                )
                if cur.rowcount == 1:
                    inserted += 1
                    results.append(AddResult(seq, duplicate=False))
                    seq += 1
                else:
                    # Same source_key, so same id: the device sent a record we hold.
                    held = db.execute("SELECT seq FROM readings WHERE id = ?", (row.id,)).fetchone()
                    results.append(AddResult(int(held[0]) if held else 0, duplicate=True))
                last = last_by_device.get(row.device_id, row.received_at)
                last_by_device[row.device_id] = max(last, row.received_at)
            # One upsert per device per transaction, and only when it moved enough.
            due, later = self._devices_due(last_by_device)
            self._upsert_devices(db, due)
            return AddReport(results, dropped), inserted, deleted, due, later, high

        report, inserted, deleted, due, later, high = self._write(work)
        # Only once committed: a reading not stored must not move its device's time,
        # nor the seqs (a rolled-back insert hands its seq out again).
        self._next_seq += inserted
        if high is not None:
            self._seq_high_written = high
        self._count += inserted - deleted
        self._devices_written(due)
        self._device_pending.update(later)
        return report

    def _devices_due(self, latest: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """Split `latest` into (write now, keep in memory) by DEVICE_WRITE_S."""
        due: dict[str, float] = {}
        later: dict[str, float] = {}
        for device, newest in latest.items():
            at = max(newest, self._device_pending.get(device, newest))
            written = self._device_written.get(device)
            if written is None or at - written >= DEVICE_WRITE_S:
                due[device] = at
            else:
                later[device] = max(at, written)
        return due, later

    @staticmethod
    def _upsert_devices(db: sqlite3.Connection, due: dict[str, float]) -> None:
        db.executemany(
            "INSERT INTO devices(device_id, last_reading_at) VALUES (?, ?)"
            " ON CONFLICT(device_id) DO UPDATE SET last_reading_at ="
            " max(last_reading_at, excluded.last_reading_at)",
            due.items(),
        )

    def _devices_written(self, due: dict[str, float]) -> None:
        for device, at in due.items():
            self._device_written[device] = at
            if self._device_pending.get(device, at) <= at:
                self._device_pending.pop(device, None)

    @staticmethod
    def _count_new(db: sqlite3.Connection, rows: Sequence[NewRow]) -> int:
        ids = list(dict.fromkeys(row.id for row in rows))
        known = 0
        for start in range(0, len(ids), _DELETE_BATCH):
            chunk = ids[start : start + _DELETE_BATCH]
            marks = ",".join("?" * len(chunk))
            known += int(
                db.execute(
                    f"SELECT count(*) FROM readings WHERE id IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchone()[0]
            )
        return len(ids) - known

    def _make_room(self, db: sqlite3.Connection, incoming: int) -> tuple[int, int]:
        """Keep at most max_readings rows: drop delivered first, then the oldest unsent.

        Returns (rows deleted, unsent readings dropped); the second is the loud case.
        """
        excess = self._count + incoming - self.max_readings
        if excess <= 0:
            return 0, 0
        # Delivered (published) in seq order, confirmed or not: looking for
        # confirmed rows first would scan the whole table when there are none
        # (confirm off). With confirm on, the oldest published rows are the
        # confirmed ones, and a published reading the backend never confirmed
        # is made unsent again after the timeout, so it is protected below.
        cur = db.execute(
            "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings"
            " WHERE delivered_at IS NOT NULL ORDER BY seq LIMIT ?)",
            (excess,),
        )
        deleted = int(cur.rowcount)
        if excess - deleted <= 0:
            return deleted, 0
        cur = db.execute(
            "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings"
            " WHERE delivered_at IS NULL ORDER BY seq LIMIT ?)",
            (excess - deleted,),
        )
        dropped = int(cur.rowcount)
        db.execute(
            "INSERT INTO meta(key, value) VALUES ('dropped', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (dropped,),
        )
        return deleted + dropped, dropped

    def mark_delivered(self, seqs: Sequence[int], at: float) -> int:
        if not seqs:
            return 0  # no transaction for nothing: not even an empty commit

        def work(db: sqlite3.Connection) -> int:
            changed = 0
            for start in range(0, len(seqs), _DELETE_BATCH):
                chunk = seqs[start : start + _DELETE_BATCH]
                marks = ",".join("?" * len(chunk))
                cur = db.execute(
                    f"UPDATE readings SET delivered_at = ? WHERE delivered_at IS NULL"  # noqa: S608
                    f" AND seq IN ({marks})",
                    (at, *chunk),
                )
                changed += cur.rowcount
            if changed:
                # Only a real delivery counts: the status must not claim one.
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('last_delivery_at', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (at,),
                )
            return changed

        changed = self._write(work)
        if changed:
            self._advance_unsent_from()
        return changed

    def mark_confirmed(self, ids: Sequence[str], at: float) -> int:
        """The backend holds these readings (issue 9): set `confirmed_at`.

        By reading id (the payload's `id`), not seq. Unknown and already
        confirmed ids change nothing. A confirmation can overtake its PUBACK (or
        follow a requeue), so `delivered_at` is set too where it is still NULL:
        a confirmed reading is never sent again. Returns how many rows became
        confirmed.
        """
        unique = list(dict.fromkeys(ids))

        def work(db: sqlite3.Connection) -> int:
            changed = 0
            for start in range(0, len(unique), _DELETE_BATCH):
                chunk = unique[start : start + _DELETE_BATCH]
                marks = ",".join("?" * len(chunk))
                cur = db.execute(
                    "UPDATE readings SET confirmed_at = ?,"  # noqa: S608
                    " delivered_at = coalesce(delivered_at, ?)"
                    f" WHERE confirmed_at IS NULL AND id IN ({marks})",
                    (at, at, *chunk),
                )
                changed += cur.rowcount
            if changed:
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('last_confirmation_at', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (at,),
                )
            return changed

        if not unique:
            return 0
        changed = self._write(work)
        if changed:
            self._advance_unsent_from()
        return changed

    def requeue_unconfirmed(self, published_before: float) -> int:
        """Make readings published before `published_before` and not confirmed unsent again.

        They keep their seq, id and payload, so the backend drops the resend if
        it did get the first one. Their seq is below what an uplink has already
        read, so the uplink must fetch again from the start (`after_seq=0`).
        """

        def work(db: sqlite3.Connection) -> list[int]:
            rows = db.execute(
                "UPDATE readings SET delivered_at = NULL WHERE seq IN (SELECT seq FROM readings"
                " WHERE delivered_at IS NOT NULL AND confirmed_at IS NULL AND delivered_at < ?"
                " LIMIT ?) RETURNING seq",
                (published_before, _DELETE_BATCH),
            ).fetchall()
            return [int(r[0]) for r in rows]

        # Small transactions, like the purge: a backend away for days leaves up to
        # max_readings published rows, and one huge transaction means a huge WAL.
        total = 0
        while True:
            changed = self._write(work)
            if changed:
                # Unsent again, below the cursor: it moves back (once committed).
                self._unsent_from = min(self._unsent_from, *changed)
            total += len(changed)
            if len(changed) < _DELETE_BATCH:
                return total

    def purge_delivered(self, older_than: float, *, require_confirmed: bool = False) -> int:
        """Delete delivered readings older than `older_than`, in small transactions.

        With `require_confirmed` only confirmed readings go, by `confirmed_at` age:
        with a confirming backend a published reading may still be lost.
        """
        if require_confirmed:
            # delivered_at <= confirmed_at always (mark_confirmed sets a missing
            # delivered_at, requeue touches only unconfirmed rows), so the
            # delivered_at index narrows the search without losing a row.
            where = (
                "delivered_at IS NOT NULL AND delivered_at < ?"
                " AND confirmed_at IS NOT NULL AND confirmed_at < ?"
            )
            params: tuple[float, ...] = (older_than, older_than)
        else:
            where = "delivered_at IS NOT NULL AND delivered_at < ?"
            params = (older_than,)
        total = 0
        while True:

            def work(db: sqlite3.Connection) -> tuple[int, int | None]:
                cur = db.execute(
                    "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings"  # noqa: S608
                    f" WHERE {where} LIMIT ?)",
                    (*params, _DELETE_BATCH),
                )
                deleted = int(cur.rowcount)
                # The newest row may be among them: its seq must never come back.
                return deleted, self._write_seq_high(db) if deleted else None

            deleted, high = self._write(work)
            if high is not None:
                self._seq_high_written = high
            self._count -= deleted
            total += deleted
            if deleted < _DELETE_BATCH:
                return total

    def set_cursor(self, device_id: str, name: str, value: int, at: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO device_cursors(device_id, name, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(device_id, name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (device_id, name, value, at),
            )

        self._write(work)

    @_mapped
    def get_cursor(self, device_id: str, name: str) -> int | None:
        row = self._db.execute(
            "SELECT value FROM device_cursors WHERE device_id = ? AND name = ?", (device_id, name)
        ).fetchone()
        return None if row is None else int(row[0])

    def probe_space(self) -> None:
        """A small real write (8 KiB in, then out): raises StoreFullError while the disk is full."""

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('space_probe', zeroblob(8192))"
            )
            db.execute("DELETE FROM meta WHERE key = 'space_probe'")

        self._write(work)

    @_mapped
    def ping(self) -> None:
        """A real read: the schema, the head of the unsent queue and its row (issue 11).

        `SELECT 1` answers even when every reading is unreadable; this touches
        what the uplink reads next, so a damaged store fails the watchdog.
        """
        db = self._db
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        db.execute(
            "SELECT seq, length(id), length(payload) FROM readings"
            " WHERE seq >= ? AND delivered_at IS NULL ORDER BY seq LIMIT 1",
            (self._unsent_from,),
        ).fetchone()
        db.execute("SELECT count(*) FROM meta").fetchone()

    @_mapped
    def check_step(self, after_seq: int, limit: int) -> int:
        """Read `limit` rows after `after_seq` (a rolling check); returns where to go on (0: wrap).

        The cheap periodic check: over successive calls every row of the table
        is read once (not its overflow pages), plus the head of the unsent queue,
        which is what the uplink reads. quick_check reads the whole file at once;
        this spreads it out.
        """
        db = self._db
        db.execute(
            "SELECT count(*) FROM (SELECT seq FROM readings WHERE seq >= ?"
            " AND delivered_at IS NULL ORDER BY seq LIMIT ?)",
            (self._unsent_from, limit),
        ).fetchone()
        rows = db.execute(
            "SELECT seq, length(id), length(device_id), received_at FROM readings"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return int(rows[-1][0]) if len(rows) == limit else 0

    @_mapped
    def checkpoint(self) -> None:
        """Copy the WAL into the database file (and fsync it): the NORMAL-mode safety net."""
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- reading ---------------------------------------------------------------

    @_mapped
    def fetch_unsent(
        self,
        after_seq: int,
        limit: int,
        skip_devices: Sequence[str] = (),
        priority: bool | None = None,
    ) -> list[OutboxRow]:
        """Unsent readings after `after_seq` in seq order; `priority` True: only the
        flagged ones, False: only the others, None: all (issue 10). Readings held for
        the clock's synchronisation (issue 13) are not among them."""
        # From the cursor on, in seq order on the primary key (schema 5 has no
        # index of the unsent readings; the flagged ones keep theirs).
        sql = (
            "SELECT seq, id, device_id, payload, received_at FROM readings"
            " WHERE delivered_at IS NULL AND seq > ? AND clock_hold = 0"
        )
        if priority is not None:
            sql += " AND priority > 0" if priority else " AND priority = 0"
        params: list[Any] = [max(after_seq, self._unsent_from - 1)]
        if skip_devices:
            sql += f" AND device_id NOT IN ({','.join('?' * len(skip_devices))})"
            params.extend(skip_devices)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [
            OutboxRow(int(s), str(i), str(d), self._decode(int(s), p), float(r))
            for s, i, d, p, r in self._db.execute(sql, params)
        ]

    def _decode(self, seq: int, stored: Any) -> bytes:
        """A stored payload as the uplink publishes it; damaged bytes are the file's damage."""
        try:
            return codec.decode(bytes(stored))
        except codec.PayloadDamaged as exc:
            # Corrupt, so the Store salvages: the row fails the salvage's check too.
            raise StoreCorruptError(
                f"{self.path}: store file damaged: reading {seq}: {exc}"
            ) from exc

    # -- held for the clock (issue 13) -----------------------------------------

    @_mapped
    def held(self) -> list[HeldRow]:
        """The readings held back until the clock is synchronised, in seq order."""
        rows = self._db.execute(
            "SELECT seq, payload, stamp_boottime, stamp_boot_id FROM readings"
            " WHERE clock_hold = 1 ORDER BY seq"
        )
        return [
            HeldRow(
                int(seq),
                self._decode(int(seq), payload),
                None if boottime is None or boot_id is None else ClockStamp(boottime, boot_id),
            )
            for seq, payload, boottime, boot_id in rows
        ]

    def release_held(self, releases: Sequence[tuple[int, bytes | None]]) -> int:
        """Let held readings be published, each with its corrected payload or (None)
        as it is; one transaction. Returns how many were still held."""

        def work(db: sqlite3.Connection) -> int:
            released = 0
            # Publishable now, maybe below the cursor; lowering it even if this rolls
            # back is harmless (it is only a lower bound).
            self._unsent_from = min(self._unsent_from, *(seq for seq, _ in releases))
            for seq, payload in releases:
                # coalesce: None keeps the stored payload (the reading goes out as it is).
                released += db.execute(
                    "UPDATE readings SET clock_hold = 0, payload = coalesce(?, payload)"
                    " WHERE seq = ? AND clock_hold = 1",
                    (None if payload is None else codec.encode(payload), seq),
                ).rowcount
            return released

        return self._write(work) if releases else 0

    @_mapped
    def stats(self) -> StoreStats:
        db = self._db
        # One read transaction: the counts below agree with each other. (The read-only
        # connection may already be in one: the sqlite3 module opens one implicitly.)
        began = not db.in_transaction
        if began:
            db.execute("BEGIN")
        try:
            return self._stats(db)
        finally:
            if began and db.in_transaction:
                db.execute("COMMIT")

    def _stats(self, db: sqlite3.Connection) -> StoreStats:
        total = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        # Without an index of the unsent readings (schema 5): all less the delivered
        # ones (their partial index), and the oldest is the head of the queue in seq
        # order (held readings included), not a scan of the whole backlog.
        delivered = db.execute(
            "SELECT count(*) FROM readings WHERE delivered_at IS NOT NULL"
        ).fetchone()[0]
        unsent = int(total) - int(delivered)
        held_from = None
        if self._version >= 4:
            held_from = db.execute("SELECT min(seq) FROM readings WHERE clock_hold = 1").fetchone()[
                0
            ]
        head = db.execute(
            "SELECT received_at FROM readings WHERE seq >= ? AND delivered_at IS NULL"
            " ORDER BY seq LIMIT 1",
            (min(self._unsent_from, self._next_seq if held_from is None else int(held_from)),),
        ).fetchone()
        oldest = None if head is None else head[0]
        unconfirmed, oldest_unconfirmed = 0, None
        if self._version >= 2:
            unconfirmed, oldest_unconfirmed = db.execute(
                "SELECT count(*), min(received_at) FROM readings"
                " WHERE delivered_at IS NOT NULL AND confirmed_at IS NULL"
            ).fetchone()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        devices = {str(d): float(t) for d, t in db.execute("SELECT * FROM devices")}
        for device, at in self._device_pending.items():  # not written yet (DEVICE_WRITE_S)
            devices[device] = max(at, devices.get(device, at))
        return StoreStats(
            unsent=int(unsent),
            oldest_unsent_at=None if oldest is None else float(oldest),
            last_delivery_at=_float_or_none(meta.get("last_delivery_at")),
            dropped=int(meta.get("dropped") or 0),
            total=int(total),
            devices=devices,
            unconfirmed=int(unconfirmed),
            oldest_unconfirmed_at=None if oldest_unconfirmed is None else float(oldest_unconfirmed),
            last_confirmation_at=_float_or_none(meta.get("last_confirmation_at")),
            recovery=Recovery.from_meta(meta.get("recovery")),
        )

    def quick_check(self) -> list[str]:
        """SQLite's quick_check: the problems found (empty: sound). Reads the whole file."""
        rows = [str(r[0]) for r in self._db.execute("PRAGMA quick_check(20)")]
        return [] if rows == ["ok"] else rows

    @_mapped
    def integrity_ok(self) -> bool:
        return not self.quick_check()

    def close(self) -> None:
        if self._device_pending and not self.read_only:
            pending = dict(self._device_pending)
            # Best effort: a damaged or full store still closes.
            with contextlib.suppress(StoreError):
                self._write(lambda db: self._upsert_devices(db, pending))
                self._devices_written(pending)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
