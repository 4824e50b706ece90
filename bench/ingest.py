"""Ingest: committed readings per second through `Store.add`, synchronous=FULL, on a real disk.

Subject: `gateway.store.Store` opened with synchronous="full"; one reading per
`Store.add` call, each awaited before the next (a single driver: every reading is
its own transaction and fsync). The cost of `Store.add` includes the reading's id
(uuid5), its JSON encoding and the hop to the store thread and back.

Baseline: plain `sqlite3` in the same run, with the store's pragmas (WAL,
synchronous=FULL, secure_delete=ON), one `BEGIN; INSERT; COMMIT` per row, the same
encoded payloads (so the same sizes), into a table with the same columns and no
secondary index, called directly on the calling thread.

fsync times on shared or virtual disks drift by 2x within seconds, so the two are
not run one after the other: they alternate in short blocks (`block_s`) on one
file each, and each side's rate is its readings over its own time. A third side,
reported as extra information, is the same plain INSERT+COMMIT run on a
one-thread executor and awaited: the cost of keeping blocking I/O off the event
loop, which any store obeying the architecture pays.

Extra: concurrent ingest, 8 drivers calling `Store.add` at once (group commit),
with the mean number of readings per transaction.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    GATEWAY_ID,
    Encoded,
    Result,
    encode_all,
    filesystem_type,
    make_readings,
    remove_db,
    scratch_dir,
)
from gateway.reading import Reading
from gateway.store import AddReport, NewRow, Store

TARGET_RATIO = 0.8
CONCURRENT_DRIVERS = 8

_BASELINE_SCHEMA = """
CREATE TABLE readings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL
)
"""
_INSERT = "INSERT INTO readings(id, device_id, payload, received_at) VALUES (?, ?, ?, ?)"


def _plain_db(path: Path, *, any_thread: bool = False) -> sqlite3.Connection:
    remove_db(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=not any_thread)
    if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
        raise RuntimeError(f"{path}: WAL refused")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA secure_delete = ON")
    db.execute(_BASELINE_SCHEMA)
    return db


def _plain_commit(db: sqlite3.Connection, row: Encoded) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute(_INSERT, (row.id, row.device_id, row.payload, row.received_at.timestamp()))
    db.execute("COMMIT")


def _count_commits(store: Store) -> list[int]:
    """Wrap the outbox's add_many to record each transaction's size (instrumentation only)."""
    sizes: list[int] = []
    outbox = store.outbox
    real: Callable[[Sequence[NewRow]], AddReport] = outbox.add_many

    def counted(rows: Sequence[NewRow]) -> AddReport:
        sizes.append(len(rows))
        return real(rows)

    outbox.add_many = counted  # type: ignore[method-assign]
    return sizes


class _Side:
    """One contender: its step, and the readings and seconds it has accumulated."""

    def __init__(self, step: Callable[[Reading, Encoded], Awaitable[None]]) -> None:
        self.step = step
        self.count = 0
        self.seconds = 0.0

    async def block(self, work: Iterator[tuple[Reading, Encoded]], block_s: float) -> bool:
        """Run for `block_s`; False when `work` ran out."""
        start = time.perf_counter()
        deadline = start + block_s
        done = 0
        exhausted = False
        while time.perf_counter() < deadline:
            item = next(work, None)
            if item is None:
                exhausted = True
                break
            await self.step(*item)
            done += 1
        self.seconds += time.perf_counter() - start
        self.count += done
        return not exhausted

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


async def _sequential(
    work_dir: Path,
    readings: Sequence[Reading],
    rows: Sequence[Encoded],
    block_s: float,
    blocks: int,
) -> tuple[dict[str, float], bool]:
    loop = asyncio.get_running_loop()
    store = await Store.open(work_dir / "store.sqlite3", gateway_id=GATEWAY_ID, synchronous="full")
    plain = _plain_db(work_dir / "plain.sqlite3")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-plain")
    hopped = await loop.run_in_executor(
        executor, lambda: _plain_db(work_dir / "hopped.sqlite3", any_thread=True)
    )

    async def store_step(reading: Reading, row: Encoded) -> None:
        await store.add(reading, row.received_at)

    async def plain_step(_reading: Reading, row: Encoded) -> None:
        _plain_commit(plain, row)

    async def hopped_step(_reading: Reading, row: Encoded) -> None:
        await loop.run_in_executor(executor, _plain_commit, hopped, row)

    sides = {
        "store": _Side(store_step),
        "plain": _Side(plain_step),
        "plain_via_executor": _Side(hopped_step),
    }
    # The store needs distinct readings (a repeated id is a duplicate, not an insert);
    # the plain tables have no unique index, so they may cycle through the same rows.
    store_work = iter(zip(readings, rows, strict=True))
    cyclic = itertools.cycle(list(zip(readings, rows, strict=True)))
    exhausted = False
    try:
        for index in range(blocks):
            # Rotate who goes first, so no side always follows the same neighbour.
            order = list(sides)
            order = order[index % len(order) :] + order[: index % len(order)]
            for name in order:
                source = store_work if name == "store" else cyclic
                if not await sides[name].block(source, block_s):
                    exhausted = True
    finally:
        await store.close()
        plain.close()
        await loop.run_in_executor(executor, hopped.close)
        executor.shutdown()
    return {name: side.rate for name, side in sides.items()}, exhausted


async def _concurrent(
    path: Path, readings: Sequence[Reading], rows: Sequence[Encoded], duration_s: float
) -> tuple[float, float, bool]:
    """(readings/s, mean readings per transaction, ran out of readings) with concurrent drivers."""
    remove_db(path)
    store = await Store.open(path, gateway_id=GATEWAY_ID, synchronous="full")
    sizes = _count_commits(store)
    work = iter(zip(readings, rows, strict=True))
    done = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def driver() -> None:
        nonlocal done
        for reading, row in work:
            await store.add(reading, row.received_at)
            done += 1
            if time.perf_counter() >= deadline:
                return

    try:
        await asyncio.gather(*(driver() for _ in range(CONCURRENT_DRIVERS)))
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    return done / elapsed, done / max(1, len(sizes)), done >= len(readings)


def run(
    *, block_s: float = 0.25, blocks: int = 12, concurrent_s: float = 1.5, pool: int = 20_000
) -> list[Result]:
    readings = make_readings(pool, tag="ingest")
    rows = encode_all(readings)
    spare = make_readings(pool, tag="ingest-concurrent")
    spare_rows = encode_all(spare)
    with scratch_dir("ingest") as work:
        rates, exhausted = asyncio.run(_sequential(work, readings, rows, block_s, blocks))
        concurrent_rate, per_commit, ran_out = asyncio.run(
            _concurrent(work / "concurrent.sqlite3", spare, spare_rows, concurrent_s)
        )
        fstype = filesystem_type(work)
    store_rate, base_rate = rates["store"], rates["plain"]
    ratio = store_rate / base_rate
    return [
        Result(
            name="ingest",
            metric="Store.add, one reading per call, sequential",
            unit="readings/s",
            value=store_rate,
            baseline=base_rate,
            baseline_label="plain sqlite3 INSERT+COMMIT, same pragmas",
            better="higher",
            target=f"ratio >= {TARGET_RATIO}",
            passed=ratio >= TARGET_RATIO,
            extra={
                "synchronous": "full",
                "filesystem": fstype,
                "blocks": blocks,
                "block_s": block_s,
                "mean_payload_bytes": round(sum(len(r.payload) for r in rows) / len(rows), 1),
                "store_us_per_reading": round(1e6 / store_rate, 1),
                "plain_us_per_reading": round(1e6 / base_rate, 1),
                "plain_via_executor_readings_per_s": round(rates["plain_via_executor"], 1),
                "plain_via_executor_ratio": round(rates["plain_via_executor"] / base_rate, 3),
                "concurrent_drivers": CONCURRENT_DRIVERS,
                "concurrent_readings_per_s": round(concurrent_rate, 1),
                "concurrent_vs_sequential": round(concurrent_rate / store_rate, 2),
                "concurrent_readings_per_commit": round(per_commit, 2),
                "pool_exhausted": exhausted or ran_out,
            },
        )
    ]
