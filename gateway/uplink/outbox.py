"""Which stored readings the uplink sends next, and which it holds back.

`PublishQueue` reads unsent readings from the store in seq order into a small
read-ahead buffer, the care plan's flagged ones first (issue 10: after an outage a
reading outside a threshold reaches the care team before the backlog), skipping
readings already in flight, devices paused after a refusal, and single readings held
back because the broker cannot take them.
`PoisonGuard` spots the one reading that makes the broker drop the connection
every time it is sent, so it cannot block every reading behind it.

Holding back never deletes: a held reading stays unsent in the store, is shown
in the status, and is tried again later (and after every restart).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable

from gateway.store import OutboxRow, Store

#: A held-back reading is tried again after this long (the broker may be fixed).
HOLD_RETRY_S = 3600.0
#: Losses of the connection with the same oldest reading in flight before it is
#: sent alone; one more loss while it is alone holds it back.
POISON_LOSSES = 3


class PublishQueue:
    """Seq-ordered read-ahead over the store's unsent readings."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._buffer: deque[OutboxRow] = deque()
        self._cursor = 0  # highest seq read into the buffer
        self._exhausted = False  # the store had nothing after the cursor
        # The same for flagged readings (priority > 0), read before the others.
        self._flagged_cursor = 0
        self._flagged_exhausted = False
        # Bumped by every new reading / reset, so a read that raced with one does
        # not wrongly conclude "nothing to send" or undo a reset.
        self._new_readings = 0
        self._position = 0
        self.paused: dict[str, float] = {}  # device -> monotonic time it may resume
        self.held: dict[int, float] = {}  # seq -> monotonic time it may be tried again
        self.wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._buffer)

    def notify_new(self) -> None:
        self._exhausted = False
        self._flagged_exhausted = False
        self._new_readings += 1
        self.wake.set()

    def reset(self) -> None:
        """Read again from the oldest unsent reading (after a reconnect or a pause ends)."""
        self._position += 1
        self._buffer.clear()
        self._cursor = 0
        self._exhausted = False
        self._flagged_cursor = 0
        self._flagged_exhausted = False
        self.wake.set()

    def pause_device(self, device_id: str, seconds: float) -> None:
        self.paused[device_id] = time.monotonic() + seconds
        # Drop this device's read-ahead; it restarts from its oldest unsent later.
        self._buffer = deque(row for row in self._buffer if row.device_id != device_id)
        asyncio.get_running_loop().call_later(seconds, self._resume, device_id)

    def _resume(self, device_id: str) -> None:
        if self.paused.get(device_id, 0.0) <= time.monotonic():
            self.paused.pop(device_id, None)
            self.reset()

    def hold(self, seq: int, seconds: float = HOLD_RETRY_S) -> None:
        self.held[seq] = time.monotonic() + seconds
        self._buffer = deque(row for row in self._buffer if row.seq != seq)
        asyncio.get_running_loop().call_later(seconds, self._release, seq)

    def _release(self, seq: int) -> None:
        if self.held.get(seq, 0.0) <= time.monotonic():
            self.held.pop(seq, None)
            self.reset()

    def wants_refill(self, window: int) -> bool:
        more = not self._exhausted or not self._flagged_exhausted
        return more and len(self._buffer) <= window // 2

    def pop(self) -> OutboxRow | None:
        return self._buffer.popleft() if self._buffer else None

    async def refill(self, window: int, busy: Iterable[int]) -> None:
        """Read up to two windows of unsent readings after the cursor."""
        now = time.monotonic()
        paused = tuple(d for d, until in self.paused.items() if until > now)
        new_readings, position = self._new_readings, self._position
        limit = window * 2 - len(self._buffer)
        if not self._flagged_exhausted:
            rows = await self._store.fetch_unsent(self._flagged_cursor, limit, paused, True)
            if position != self._position:
                return
            if rows:
                self._flagged_cursor = rows[-1].seq
                # Ahead of any unflagged read-ahead, in their own seq order.
                self._buffer.extendleft(reversed(self._keep(rows, busy)))
                return
            self._flagged_exhausted = new_readings == self._new_readings
        rows = await self._store.fetch_unsent(self._cursor, limit, paused, False)
        if position != self._position:
            return  # reset while we read: read again from there
        if not rows:
            self._exhausted = new_readings == self._new_readings
            return
        self._cursor = rows[-1].seq
        self._buffer.extend(self._keep(rows, busy))

    def _keep(self, rows: list[OutboxRow], busy: Iterable[int]) -> list[OutboxRow]:
        skip = set(busy) | set(self.held)
        return [row for row in rows if row.seq not in skip and row.device_id not in self.paused]


class PoisonGuard:
    """Finds the reading the broker answers by dropping the connection.

    Some refusals have no PUBACK: mosquitto answers a too-large publish with a
    reason code paho cannot parse, and the connection dies. Resending in seq
    order would send that reading first on every connection, for ever, and
    nothing behind it would reach the care team. So: when the connection is lost
    POISON_LOSSES times in a row with the same oldest reading in flight, send it
    alone; if the connection dies again with only it in flight, hold it back.
    """

    def __init__(self, limit: int = POISON_LOSSES) -> None:
        self._limit = limit
        self._suspect: int | None = None
        self._losses = 0
        self.probing = False  # send one reading at a time until the suspect is cleared

    def delivered(self, seq: int) -> None:
        if seq == self._suspect:
            self._suspect, self._losses, self.probing = None, 0, False

    def connection_lost(self, inflight: Iterable[int]) -> int | None:
        """Record a lost connection; return a seq to hold back, if one is found."""
        seqs = sorted(inflight)
        if not seqs:
            return None
        oldest = seqs[0]
        if oldest == self._suspect:
            self._losses += 1
        else:
            self._suspect, self._losses, self.probing = oldest, 1, False
        if self.probing and seqs == [oldest] and self._losses > self._limit:
            self._suspect, self._losses, self.probing = None, 0, False
            return oldest
        if self._losses >= self._limit:
            self.probing = True
        return None
