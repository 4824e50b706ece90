"""Command windows: "measure now" and BLE "pairing", opened by the panel's button.

A window is open for a while after a command and closes by itself. Drivers may
consult the ones in their `DriverContext` (`context.measure`, `context.pairing`):

- `is_open`: e.g. a BLE driver scans at full duty while `context.measure.is_open`;
- `await wait_open()`: e.g. a serial driver polls its device only in a window;
- `requests` and `await wait_request(after)`: act once per command (a press while
  the window is open extends it and counts as a new request).

Opening and closing publish `WindowOpened(kind, seconds)` / `WindowClosed(kind)`
so the panel can show them. A window lives on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.events import Event, WindowClosed, WindowOpened

log = logging.getLogger(__name__)


class CommandWindow:
    def __init__(
        self,
        kind: str,
        default_s: float,
        publish: Callable[[Event], None] | None = None,
    ) -> None:
        self.kind = kind
        self.default_s = default_s
        self._publish = publish
        self._open = asyncio.Event()
        self._closed = asyncio.Event()
        self._closed.set()
        self._changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._until = 0.0
        #: how many times the window was opened or extended
        self.requests = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def remaining(self) -> float:
        """Seconds until the window closes (0 when closed)."""
        if not self.is_open:
            return 0.0
        return max(0.0, self._until - asyncio.get_running_loop().time())

    def open(self, seconds: float | None = None) -> None:
        """Open the window, or extend an open one to `seconds` from now (never shorten)."""
        loop = asyncio.get_running_loop()
        seconds = self.default_s if seconds is None else seconds
        until = loop.time() + seconds
        was_open = self.is_open
        if not was_open or until > self._until:
            self._until = until
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(until, self.close)
        self.requests += 1
        self._open.set()
        self._closed.clear()
        self._changed.set()
        self._changed = asyncio.Event()
        log.info("%s window %s for %.0f s", self.kind, "extended" if was_open else "open", seconds)
        if self._publish is not None:
            self._publish(WindowOpened(self.kind, seconds))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.is_open:
            return
        self._open.clear()
        self._closed.set()
        log.info("%s window closed", self.kind)
        if self._publish is not None:
            self._publish(WindowClosed(self.kind))

    async def wait_open(self) -> None:
        await self._open.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_request(self, after: int) -> int:
        """Wait until `requests` exceeds `after`; return the new count."""
        while self.requests <= after:
            await self._changed.wait()
        return self.requests
