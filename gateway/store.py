"""The durable reading store: an SQLite outbox on the SD card.

Contract (ARCHITECTURE.md, data path step 2): `Store.add` returns only after the
reading is committed, so a driver acknowledges to its device only what is on
disk. The uplink reads unsent readings in `seq` order and marks them delivered
only after a successful PUBACK. "In flight" is deliberately a memory-only state:
after a crash or restart every reading not yet marked delivered is simply
unsent again, and is resent under the same id.

A reading's life (issue 9): stored -> published (`delivered_at`, success PUBACK)
-> confirmed (`confirmed_at`, the backend says it holds the id). A published
reading whose confirmation never comes is made unsent again by
`requeue_unconfirmed`, keeping its seq, id and payload.

Blocking SQLite calls run on one dedicated thread (the connection is confined
to it); the asyncio side batches concurrent adds into one transaction (group
commit), so many drivers cost one fsync, not one each.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.drivers.base import StoredReading
from gateway.errors import StoreError, StoreFullError
from gateway.reading import Reading, reading_id
from gateway.uplink.payload import encode_reading

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 2
SQLITE_FULL = 13
_SYNC_LEVEL = {"full": 2, "normal": 1}
_DELETE_BATCH = 500
DROP_LOG_INTERVAL_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    -- AUTOINCREMENT: a seq is never reused after deletes, so ordering holds forever.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    delivered_at REAL,
    confirmed_at REAL
);
CREATE INDEX IF NOT EXISTS readings_unsent ON readings(seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS readings_delivered ON readings(delivered_at)
    WHERE delivered_at IS NOT NULL;
%(v2_indexes)s
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    last_reading_at REAL NOT NULL
);
-- Per-device cursors (e.g. a glucose meter's last stored record sequence number).
CREATE TABLE IF NOT EXISTS device_cursors (
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (device_id, name)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
"""

# Version 2 (issue 9): published but not yet confirmed, for the status and the requeue.
_V2_INDEXES = """
CREATE INDEX IF NOT EXISTS readings_unconfirmed ON readings(delivered_at)
    WHERE delivered_at IS NOT NULL AND confirmed_at IS NULL;
"""
_SCHEMA = _SCHEMA % {"v2_indexes": _V2_INDEXES}

# In-place upgrades, each run in one transaction with the version bump: a crash
# mid-migration leaves the file at the old version, and the next open redoes it.
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE readings ADD COLUMN confirmed_at REAL;" + _V2_INDEXES,
}


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _statements(script: str) -> list[str]:
    """Split an SQL script into statements (to run them inside one transaction)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


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
    ) -> None:
        self.path = path
        self.max_readings = max_readings
        self.read_only = read_only
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
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{path}: cannot open store read-only: {exc}") from exc
            self._count = 0
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            self._configure(synchronous, max_page_count)
            self._version = self._migrate()
            self._count = int(self._db.execute("SELECT count(*) FROM readings").fetchone()[0])
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> int:
        """Create a new store at SCHEMA_VERSION, or upgrade an older one in place."""
        db = self._db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            # A downgraded hub must not write rows a newer schema would misread.
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this"
                f" homehub's ({SCHEMA_VERSION}); install a newer homehub"
            )
        if version == SCHEMA_VERSION:
            return version
        db.execute("BEGIN IMMEDIATE")
        try:
            has_readings = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'readings'"
            ).fetchone()
            if version == 0 and not has_readings:
                script = _SCHEMA
            else:
                # Version 0 with a readings table: version-1 code set user_version
                # only after creating the tables, so a crash between left this.
                script = "".join(_MIGRATIONS[v] for v in range(max(version, 1), SCHEMA_VERSION))
            # executescript would COMMIT first; run the statements one by one instead.
            for statement in _statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if version:
            log.warning("store: schema upgraded from version %d to %d", version, SCHEMA_VERSION)
        return SCHEMA_VERSION

    def _configure(self, synchronous: str, max_page_count: int | None) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute(f"PRAGMA synchronous = {_SYNC_LEVEL[synchronous]}")
        db.execute("PRAGMA secure_delete = ON")
        db.execute("PRAGMA busy_timeout = 5000")
        if max_page_count is not None:
            # Used by tests to make "disk full" happen on demand (SQLITE_FULL).
            db.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
        # Verify: a pragma SQLite did not take is silently ignored, and a store
        # that is not what we think it is must not pretend to be durable.
        actual = {**self.pragmas(), "journal_mode": mode}
        wanted = {
            "journal_mode": "wal",
            "synchronous": _SYNC_LEVEL[synchronous],
            "secure_delete": 1,
        }
        if actual != wanted:
            raise StoreError(
                f"{self.path}: SQLite refused the pragmas: wanted {wanted}, got {actual}"
            )

    def pragmas(self) -> dict[str, Any]:
        """The durability pragmas as SQLite reports them on this connection."""
        names = ("journal_mode", "synchronous", "secure_delete")
        return {name: self._db.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

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
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
                raise StoreFullError(f"{self.path}: disk full: {exc}") from exc
            raise StoreError(f"{self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return result

    def add_many(self, rows: Sequence[NewRow]) -> AddReport:
        """Commit `rows` in one transaction, enforcing the size bound first."""

        def work(db: sqlite3.Connection) -> tuple[AddReport, int, int]:
            # Count only readings that will really be new: a device re-sending
            # records we hold must not push unsent readings out of the store.
            # The extra look-up is needed only near the bound (the common case
            # is far below it, and then every row may as well count as new).
            incoming = len(rows)
            if self._count + incoming > self.max_readings:
                incoming = self._count_new(db, rows)
            deleted, dropped = self._make_room(db, incoming)
            results: list[AddResult] = []
            inserted = 0
            last_by_device: dict[str, float] = {}
            for row in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO readings(id, device_id, payload, received_at)"
                    " VALUES (?, ?, ?, ?)",
                    (row.id, row.device_id, row.payload, row.received_at),
                )
                if cur.rowcount == 1:
                    inserted += 1
                    results.append(AddResult(int(cur.lastrowid or 0), duplicate=False))
                else:
                    # Same source_key, so same id: the device sent a record we hold.
                    seq = db.execute("SELECT seq FROM readings WHERE id = ?", (row.id,)).fetchone()
                    results.append(AddResult(int(seq[0]) if seq else 0, duplicate=True))
                last = last_by_device.get(row.device_id, row.received_at)
                last_by_device[row.device_id] = max(last, row.received_at)
            # One upsert per device per transaction, not one per reading.
            db.executemany(
                "INSERT INTO devices(device_id, last_reading_at) VALUES (?, ?)"
                " ON CONFLICT(device_id) DO UPDATE SET last_reading_at ="
                " max(last_reading_at, excluded.last_reading_at)",
                last_by_device.items(),
            )
            return AddReport(results, dropped), inserted, deleted

        report, inserted, deleted = self._write(work)
        self._count += inserted - deleted
        return report

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

        return self._write(work)

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
        return self._write(work)

    def requeue_unconfirmed(self, published_before: float) -> int:
        """Make readings published before `published_before` and not confirmed unsent again.

        They keep their seq, id and payload, so the backend drops the resend if
        it did get the first one. Their seq is below what an uplink has already
        read, so the uplink must fetch again from the start (`after_seq=0`).
        """

        def work(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE readings SET delivered_at = NULL WHERE seq IN (SELECT seq FROM readings"
                " WHERE delivered_at IS NOT NULL AND confirmed_at IS NULL AND delivered_at < ?"
                " LIMIT ?)",
                (published_before, _DELETE_BATCH),
            )
            return int(cur.rowcount)

        # Small transactions, like the purge: a backend away for days leaves up to
        # max_readings published rows, and one huge transaction means a huge WAL.
        total = 0
        while True:
            changed = self._write(work)
            total += changed
            if changed < _DELETE_BATCH:
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

            def work(db: sqlite3.Connection) -> int:
                cur = db.execute(
                    "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings"  # noqa: S608
                    f" WHERE {where} LIMIT ?)",
                    (*params, _DELETE_BATCH),
                )
                return int(cur.rowcount)

            deleted = self._write(work)
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

    def get_cursor(self, device_id: str, name: str) -> int | None:
        row = self._db.execute(
            "SELECT value FROM device_cursors WHERE device_id = ? AND name = ?", (device_id, name)
        ).fetchone()
        return None if row is None else int(row[0])

    def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (and fsync it): the NORMAL-mode safety net."""
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- reading ---------------------------------------------------------------

    def fetch_unsent(
        self, after_seq: int, limit: int, skip_devices: Sequence[str] = ()
    ) -> list[OutboxRow]:
        sql = (
            "SELECT seq, id, device_id, payload, received_at FROM readings"
            " WHERE delivered_at IS NULL AND seq > ?"
        )
        params: list[Any] = [after_seq]
        if skip_devices:
            sql += f" AND device_id NOT IN ({','.join('?' * len(skip_devices))})"
            params.extend(skip_devices)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [
            OutboxRow(int(s), str(i), str(d), bytes(p), float(r))
            for s, i, d, p, r in self._db.execute(sql, params)
        ]

    def stats(self) -> StoreStats:
        db = self._db
        unsent, oldest = db.execute(
            "SELECT count(*), min(received_at) FROM readings WHERE delivered_at IS NULL"
        ).fetchone()
        unconfirmed, oldest_unconfirmed = 0, None
        if self._version >= 2:
            unconfirmed, oldest_unconfirmed = db.execute(
                "SELECT count(*), min(received_at) FROM readings"
                " WHERE delivered_at IS NOT NULL AND confirmed_at IS NULL"
            ).fetchone()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        total = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        devices = {str(d): float(t) for d, t in db.execute("SELECT * FROM devices")}
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
        )

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA quick_check").fetchone()[0] == "ok")

    def close(self) -> None:
        self._db.close()


class Store:
    """The asyncio face of the store: every call runs on the store's own thread."""

    def __init__(
        self,
        outbox_factory: Callable[[], SqliteOutbox],
        *,
        gateway_id: str,
        on_dropped: Callable[[int], None] | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="homehub-store")
        self._factory = outbox_factory
        self._outbox: SqliteOutbox | None = None
        self._gateway_id = gateway_id
        self._on_dropped = on_dropped
        # Told after every commit that added readings, whoever was waiting for
        # it: a driver cancelled mid-emit still gets its reading published.
        self._on_committed = on_committed
        self._drop_logged_at = -DROP_LOG_INTERVAL_S
        self._dropped_unlogged = 0
        self._pending: list[tuple[NewRow, asyncio.Future[StoredReading]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.disk_full = False
        self.dropped_since_start = 0

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        gateway_id: str,
        synchronous: Literal["full", "normal"] = "full",
        max_readings: int = 500_000,
        max_page_count: int | None = None,
        on_dropped: Callable[[int], None] | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> Store:
        store = cls(
            lambda: SqliteOutbox(
                path,
                synchronous=synchronous,
                max_readings=max_readings,
                max_page_count=max_page_count,
            ),
            gateway_id=gateway_id,
            on_dropped=on_dropped,
            on_committed=on_committed,
        )
        try:
            store._outbox = await store._run(store._factory)
        except sqlite3.DatabaseError as exc:
            store._executor.shutdown(wait=False)
            raise StoreError(f"{path}: cannot open store: {exc}") from exc
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        return store

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def outbox(self) -> SqliteOutbox:
        if self._outbox is None:
            raise StoreError("store is closed")
        return self._outbox

    async def add(self, reading: Reading, received_at: datetime) -> StoredReading:
        """Commit one reading; return its stable id once it is on disk.

        Raises StoreFullError when the disk is full (the reading is NOT stored,
        so the driver must not acknowledge it to its device).
        """
        rid = reading_id(self._gateway_id, reading)
        row = NewRow(
            id=rid,
            device_id=reading.device_id,
            payload=encode_reading(
                reading, reading_id=rid, gateway_id=self._gateway_id, received_at=received_at
            ),
            received_at=received_at.timestamp(),
        )
        future: asyncio.Future[StoredReading] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="store-flush")
        return await future

    async def _flush(self) -> None:
        # Group commit: everything that arrived while the last fsync ran goes
        # into the next transaction together.
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                report = await self._run(self.outbox.add_many, [row for row, _ in batch])
            except StoreFullError as exc:
                if not self.disk_full:
                    log.error("store: disk full, readings cannot be stored: %s", exc)
                self.disk_full = True
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.disk_full:
                log.warning("store: writing again after a full disk")
            self.disk_full = False
            # Answer the waiting drivers first: nothing below may leave them hanging.
            for (row, future), result in zip(batch, report.results, strict=True):
                if not future.done():
                    future.set_result(StoredReading(row.id, result.seq, result.duplicate))
            if self._on_committed is not None and not all(r.duplicate for r in report.results):
                try:
                    self._on_committed()
                except Exception:
                    log.exception("store: on_committed callback failed")
            if report.dropped_now:
                self.dropped_since_start += report.dropped_now
                self._dropped_unlogged += report.dropped_now
                # Loud, but not a flood: offline at the bound, every new reading
                # drops one; say so at once, then at most once a minute.
                now = time.monotonic()
                if now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
                    log.error(
                        "store: bound of %d readings reached; dropped the %d oldest unsent",
                        self.outbox.max_readings,
                        self._dropped_unlogged,
                    )
                    self._drop_logged_at, self._dropped_unlogged = now, 0
                if self._on_dropped is not None:
                    try:
                        self._on_dropped(report.dropped_now)
                    except Exception:
                        log.exception("store: on_dropped callback failed")

    async def fetch_unsent(
        self, after_seq: int, limit: int, skip_devices: Sequence[str] = ()
    ) -> list[OutboxRow]:
        return await self._run(self.outbox.fetch_unsent, after_seq, limit, tuple(skip_devices))

    async def mark_delivered(self, seqs: Sequence[int]) -> int:
        return await self._run(self.outbox.mark_delivered, list(seqs), time.time())

    async def mark_confirmed(self, ids: Sequence[str]) -> int:
        """The backend confirmed these reading ids; returns how many became confirmed."""
        return await self._run(self.outbox.mark_confirmed, list(ids), time.time())

    async def requeue_unconfirmed(self, published_before: float) -> int:
        """Published before `published_before` (time.time()) and unconfirmed: unsent again."""
        return await self._run(self.outbox.requeue_unconfirmed, published_before)

    async def purge_delivered(self, retention_s: float, *, require_confirmed: bool = False) -> int:
        older_than = time.time() - retention_s
        return await self._run(
            functools.partial(
                self.outbox.purge_delivered, older_than, require_confirmed=require_confirmed
            )
        )

    async def get_cursor(self, device_id: str, name: str) -> int | None:
        return await self._run(self.outbox.get_cursor, device_id, name)

    async def set_cursor(self, device_id: str, name: str, value: int) -> None:
        """Commit a cursor. Runs after every add queued before it (one store thread)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        await self._run(self.outbox.set_cursor, device_id, name, value, time.time())

    async def checkpoint(self) -> None:
        await self._run(self.outbox.checkpoint)

    async def ping(self) -> None:
        """Round trip through the store's thread and SQLite: is the store alive?"""
        await self._run(self.outbox.ping)

    async def stats(self) -> StoreStats:
        return await self._run(self.outbox.stats)

    async def set_max_page_count(self, pages: int) -> int:
        return await self._run(self.outbox.set_max_page_count, pages)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            await asyncio.get_running_loop().run_in_executor(self._executor, outbox.close)
        self._executor.shutdown(wait=True)
