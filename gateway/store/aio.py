"""`Store`: the asyncio face of the outbox; every call runs on the store's own thread."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.drivers.base import StoredReading
from gateway.errors import StoreError, StoreFullError
from gateway.reading import Reading, reading_id
from gateway.store.outbox import NewRow, OutboxRow, SqliteOutbox, StoreStats
from gateway.uplink.payload import encode_reading

log = logging.getLogger("gateway.store")

T = TypeVar("T")

DROP_LOG_INTERVAL_S = 60.0


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
