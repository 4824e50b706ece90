"""The measure button: raw edges in, short press / long press / stuck out.

Runs on the event loop; the backend's edges (gpiozero's thread) arrive through
`edge_threadsafe`, which hops with `loop.call_soon_threadsafe`.

- Debounce: a change counts only once the pin has stayed in its new state for
  `bounce_s` (glitches shorter than that are ignored, however many).
- Short press: released before `long_s` -> `on_short`, on release.
- Long press: held `long_s` -> `on_long` once, while still held; holding on does
  not repeat, and the release after it is not a short press.
- Stuck: held `stuck_s` -> `on_stuck(held_s)` once; its release -> `on_released`.
  A button already down when the panel starts is never a press (only maybe stuck).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class ButtonLogic:
    def __init__(
        self,
        *,
        bounce_s: float,
        long_s: float,
        stuck_s: float,
        on_short: Callable[[], None],
        on_long: Callable[[], None],
        on_stuck: Callable[[float], None],
        on_released: Callable[[], None],
    ) -> None:
        self.bounce_s = bounce_s
        self.long_s = long_s
        self.stuck_s = stuck_s
        self._on_short = on_short
        self._on_long = on_long
        self._on_stuck = on_stuck
        self._on_released = on_released
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pressed = False  # debounced state
        self._raw = False
        self._raw_at = 0.0
        self._pressed_at = 0.0
        self._settle: asyncio.TimerHandle | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._counts = True  # this press may become a short/long press
        self._long_fired = False
        self._stuck = False

    def start(self, loop: asyncio.AbstractEventLoop, pressed_now: bool) -> None:
        self._loop = loop
        self._raw = self.pressed = pressed_now
        if pressed_now:
            log.warning("panel: the button is down at start; not a press")
            self._press(loop.time(), counts=False)

    def edge_threadsafe(self, pressed: bool) -> None:
        """Called on any thread (gpiozero's) for each raw edge."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.edge, pressed)

    def edge(self, pressed: bool) -> None:
        """A raw edge, on the loop (timed on arrival: the hop takes microseconds)."""
        loop = self._loop
        if loop is None:
            return
        at = loop.time()
        self._raw, self._raw_at = pressed, at
        if self._settle is not None:
            self._settle.cancel()
        self._settle = loop.call_at(at + self.bounce_s, self._settled)

    def _settled(self) -> None:
        self._settle = None
        if self._raw == self.pressed:
            return  # a glitch: back where it was
        self.pressed = self._raw
        if self._raw:
            self._press(self._raw_at, counts=True)
        else:
            self._release()

    def _press(self, at: float, *, counts: bool) -> None:
        loop = self._loop
        assert loop is not None
        self._pressed_at = at
        self._counts = counts
        self._long_fired = False
        self._timers = [loop.call_at(at + self.stuck_s, self._stuck_now)]
        if counts:
            self._timers.append(loop.call_at(at + self.long_s, self._long_now))

    def _long_now(self) -> None:
        self._long_fired = True
        log.info("panel: long press (installer mode)")
        self._on_long()

    def _stuck_now(self) -> None:
        self._stuck = True
        assert self._loop is not None
        held = self._loop.time() - self._pressed_at
        log.warning("panel: the button has been held for %.0f s; ignoring it until released", held)
        self._on_stuck(held)

    def _release(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self._stuck:
            self._stuck = False
            log.info("panel: the stuck button was released")
            self._on_released()
        elif self._counts and not self._long_fired:
            log.info("panel: short press (measure now)")
            self._on_short()

    def close(self) -> None:
        for timer in [*self._timers, *([self._settle] if self._settle else [])]:
            timer.cancel()
        self._timers = []
        self._settle = None
        self._loop = None
