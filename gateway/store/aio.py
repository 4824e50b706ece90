"""`Store`: the asyncio face of the outbox; every call runs on the store's own thread.

It also keeps the store alive on a failing SD card (issue 11): a damaged file
(found by the quick_check at open, by the rolling `check`, or by any read or
write that meets a bad page) is salvaged into a fresh one on the store's
thread, and the call that met the damage is run again on the fresh store, so
the uplink, the drivers and the watchdog see a store that works, and
`on_recovered` tells the daemon to say so loudly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.drivers.base import StoredReading
from gateway.errors import StoreCorruptError, StoreError, StoreFullError
from gateway.reading import Reading, reading_id
from gateway.store.outbox import ClockStamp, HeldRow, NewRow, OutboxRow, SqliteOutbox, StoreStats
from gateway.store.salvage import Recovery, salvage
from gateway.uplink.payload import encode_reading

log = logging.getLogger("gateway.store")

T = TypeVar("T")

DROP_LOG_INTERVAL_S = 60.0
#: A second salvage within this time is refused: the card is dying, and the
#: watchdog (the ping fails) lets systemd restart the hub instead of looping.
RECOVERY_MIN_INTERVAL_S = 600.0
#: How often `wait_writable` tries a small write while the disk is full.
SPACE_POLL_S = 1.0
#: Rows read per `check` step (the rolling integrity check).
CHECK_STEP_ROWS = 2000


class Store:
    """The asyncio face of the store: every call runs on the store's own thread."""

    def __init__(
        self,
        outbox_factory: Callable[[Path, bool], SqliteOutbox],
        path: Path,
        *,
        gateway_id: str,
        on_dropped: Callable[[int], None] | None = None,
        on_committed: Callable[[], None] | None = None,
        on_recovered: Callable[[Recovery], None] | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="homehub-store")
        self._factory = outbox_factory
        self.path = path
        self._outbox: SqliteOutbox | None = None
        self._gateway_id = gateway_id
        self._on_dropped = on_dropped
        # Told after every commit that added readings, whoever was waiting for
        # it: a driver cancelled mid-emit still gets its reading published.
        self._on_committed = on_committed
        self._on_recovered = on_recovered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drop_logged_at = -DROP_LOG_INTERVAL_S
        self._dropped_unlogged = 0
        self._pending: list[tuple[NewRow, asyncio.Future[StoredReading]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._recovered_at: float | None = None  # monotonic, this process
        #: why the store cannot serve (damage it may not salvage again); fails the ping
        self._broken: str | None = None
        self._closed = False
        self._check_cursor = 0
        self._max_page_count: int | None = None
        self.disk_full = False
        self.dropped_since_start = 0
        #: the salvage this process did, if any (the status shows the stored one)
        self.recovery: Recovery | None = None

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
        on_recovered: Callable[[Recovery], None] | None = None,
    ) -> Store:
        """Open the store; a damaged file is salvaged first (see `on_recovered`)."""

        def factory(at: Path, check: bool) -> SqliteOutbox:
            return SqliteOutbox(
                at,
                synchronous=synchronous,
                max_readings=max_readings,
                max_page_count=store._max_page_count,
                check=check,
            )

        store = cls(
            factory,
            path,
            gateway_id=gateway_id,
            on_dropped=on_dropped,
            on_committed=on_committed,
            on_recovered=on_recovered,
        )
        store._max_page_count = max_page_count
        store._loop = asyncio.get_running_loop()
        try:
            store._outbox = await store._run(store._open_or_salvage)
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        return store

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _op(self, op: Callable[[SqliteOutbox], T]) -> T:
        """Run `op` on the store's thread against the current outbox, salvaging once if damaged."""
        # Closed: StoreError here, not a refusal from the executor. (Not `self.outbox`:
        # it is None for a moment during a salvage, and calls then wait their turn.)
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        return await self._run(self._on_thread, op)

    def _on_thread(self, op: Callable[[SqliteOutbox], T]) -> T:
        try:
            return op(self.outbox)
        except StoreCorruptError as exc:
            self._salvage(str(exc))
            # Again on the fresh store; damage there too is not salvaged in a loop.
            return op(self.outbox)

    # -- salvage (on the store's thread) -----------------------------------------------

    def _open_or_salvage(self) -> SqliteOutbox:
        try:
            return self._factory(self.path, True)
        except StoreCorruptError as exc:
            self._salvage(str(exc), opening=True)
            return self.outbox

    def _salvage(self, reason: str, *, opening: bool = False) -> None:
        now = time.monotonic()
        if self._recovered_at is not None and now - self._recovered_at < RECOVERY_MIN_INTERVAL_S:
            if self._broken is None:
                log.error("store: damaged again soon after a salvage; giving up: %s", reason)
            self._broken = f"{reason} (again, within minutes of a salvage)"
            raise StoreCorruptError(self._broken)
        self._recovered_at = now
        log.error("store: %s; salvaging every readable reading into a fresh store", reason)
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            outbox.close()
        try:
            recovery = salvage(self.path, reason, create=lambda at: self._factory(at, False))
        except Exception as exc:
            log.error("store: salvage failed (%s); the store cannot serve", exc)
            self._broken = f"salvage failed: {exc}"
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{self.path}: salvage failed: {exc}") from exc
        self._broken = None
        self._outbox = self._factory(self.path, True)
        self.recovery = recovery
        log.error(
            "store: salvaged %d readings (%d unsent), %d unreadable; the damaged file is"
            " kept as %s",
            recovery.salvaged,
            recovery.unsent,
            recovery.unreadable,
            recovery.quarantined,
        )
        if self._on_recovered is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._tell_recovered, recovery)

    def _tell_recovered(self, recovery: Recovery) -> None:
        assert self._on_recovered is not None
        try:
            self._on_recovered(recovery)
        except Exception:
            log.exception("store: on_recovered callback failed")

    @property
    def outbox(self) -> SqliteOutbox:
        if self._outbox is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._outbox

    async def add(
        self,
        reading: Reading,
        received_at: datetime,
        flags: Sequence[str] = (),
        stamp: ClockStamp | None = None,
    ) -> StoredReading:
        """Commit one reading; return its stable id once it is on disk.

        Raises StoreFullError when the disk is full (the reading is NOT stored,
        so the driver must not acknowledge it to its device). `flags` (the care plan's,
        issue 10) go into the payload, and a flagged reading is sent ahead of the backlog.
        With a `stamp` (issue 13) the reading is held back until `release_held`.
        """
        rid = reading_id(self._gateway_id, reading)
        row = NewRow(
            id=rid,
            device_id=reading.device_id,
            payload=encode_reading(
                reading,
                reading_id=rid,
                gateway_id=self._gateway_id,
                received_at=received_at,
                flags=flags,
            ),
            received_at=received_at.timestamp(),
            priority=1 if flags else 0,
            stamp=stamp,
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
                rows = [row for row, _ in batch]
                report = await self._op(functools.partial(SqliteOutbox.add_many, rows=rows))
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
        self,
        after_seq: int,
        limit: int,
        skip_devices: Sequence[str] = (),
        priority: bool | None = None,
    ) -> list[OutboxRow]:
        skip = tuple(skip_devices)
        return await self._op(lambda outbox: outbox.fetch_unsent(after_seq, limit, skip, priority))

    async def held(self) -> list[HeldRow]:
        """Readings held back until the clock is synchronised (issue 13)."""
        return await self._op(SqliteOutbox.held)

    async def release_held(self, releases: Sequence[tuple[int, bytes | None]]) -> int:
        """Publish held readings: (seq, corrected payload, or None for as it is)."""
        items = list(releases)
        return await self._op(lambda outbox: outbox.release_held(items))

    async def mark_delivered(self, seqs: Sequence[int]) -> int:
        marks, at = list(seqs), time.time()
        if not marks:
            return 0  # issue 11: nothing to mark never touches the store (it may be closed)
        return await self._op(lambda outbox: outbox.mark_delivered(marks, at))

    async def mark_confirmed(self, ids: Sequence[str]) -> int:
        """The backend confirmed these reading ids; returns how many became confirmed."""
        confirmed, at = list(ids), time.time()
        if not confirmed:
            return 0
        return await self._op(lambda outbox: outbox.mark_confirmed(confirmed, at))

    async def requeue_unconfirmed(self, published_before: float) -> int:
        """Published before `published_before` (time.time()) and unconfirmed: unsent again."""
        return await self._op(lambda outbox: outbox.requeue_unconfirmed(published_before))

    async def purge_delivered(self, retention_s: float, *, require_confirmed: bool = False) -> int:
        older_than = time.time() - retention_s
        return await self._op(
            functools.partial(
                SqliteOutbox.purge_delivered,
                older_than=older_than,
                require_confirmed=require_confirmed,
            )
        )

    async def get_cursor(self, device_id: str, name: str) -> int | None:
        return await self._op(lambda outbox: outbox.get_cursor(device_id, name))

    async def set_cursor(self, device_id: str, name: str, value: int) -> None:
        """Commit a cursor. Runs after every add queued before it (one store thread)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        at = time.time()
        await self._op(lambda outbox: outbox.set_cursor(device_id, name, value, at))

    async def checkpoint(self) -> None:
        await self._op(SqliteOutbox.checkpoint)

    async def ping(self) -> None:
        """Is the store alive and able to serve reads? (The watchdog's question.)

        A real read of what the uplink needs next; damage found is salvaged, and
        only a store that still cannot answer fails the ping.
        """
        if self._broken is not None:
            raise StoreError(f"{self.path}: the store cannot serve: {self._broken}")
        await self._op(SqliteOutbox.ping)

    async def check(self) -> None:
        """One step of the cheap rolling integrity check (salvages what it finds damaged)."""

        def step(outbox: SqliteOutbox) -> int:
            return outbox.check_step(self._check_cursor, CHECK_STEP_ROWS)

        self._check_cursor = await self._op(step)

    async def wait_writable(self) -> None:
        """Return once a small write succeeds again after a full disk (issue 11).

        Tried every SPACE_POLL_S, so a driver waiting on it stores again within
        seconds of space coming back instead of after its restart backoff.
        """
        while True:
            try:
                await self._op(SqliteOutbox.probe_space)
            except StoreFullError:
                await asyncio.sleep(SPACE_POLL_S)
                continue
            if self.disk_full:
                log.warning("store: space again after a full disk")
                self.disk_full = False
            return

    async def stats(self) -> StoreStats:
        return await self._op(SqliteOutbox.stats)

    async def set_max_page_count(self, pages: int) -> int:
        """Tests: change the page limit ("disk full" on demand); a salvaged store keeps it."""
        self._max_page_count = pages
        return await self._op(lambda outbox: outbox.set_max_page_count(pages))

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._closed:
            return
        self._closed = True
        # Behind every call already queued on the store's thread (FIFO).
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_outbox)
        self._executor.shutdown(wait=True)

    def _close_outbox(self) -> None:
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            outbox.close()
