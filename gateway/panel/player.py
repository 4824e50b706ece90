"""Plays patterns on a backend, from the event loop.

Each step is scheduled from the pattern's start time, not from the previous
step's end, so a late wake-up never accumulates drift. `scale` multiplies every
duration (1.0 in the hub; tests may shorten patterns).
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.panel.backends import PanelBackend
from gateway.panel.patterns import Pattern


class PatternPlayer:
    def __init__(self, backend: PanelBackend, scale: float = 1.0) -> None:
        self.backend = backend
        self.scale = scale
        self.pattern: Pattern | None = None
        self._task: asyncio.Task[None] | None = None
        self._beeping: asyncio.Task[None] | None = None

    def play(self, pattern: Pattern) -> None:
        """Start `pattern` from its beginning (replacing the current one)."""
        self._cancel(self._task)
        self.pattern = pattern
        self._task = asyncio.get_running_loop().create_task(
            self._run(pattern), name=f"panel-{pattern.name}"
        )

    def beep(self, durations: tuple[float, ...]) -> None:
        """Buzzer on/off for `durations` (on, off, on, ...), once."""
        if durations and (self._beeping is None or self._beeping.done()):
            self._beeping = asyncio.get_running_loop().create_task(self._beep(durations))

    async def _run(self, pattern: Pattern) -> None:
        loop = asyncio.get_running_loop()
        backend = self.backend
        steps = pattern.steps
        if len(steps) == 1 or not pattern.repeat:
            for step in steps:
                backend.show(step.colour, step.level)
                if len(steps) > 1:
                    await asyncio.sleep(step.seconds * self.scale)
            return
        at = loop.time()
        while True:
            for step in steps:
                backend.show(step.colour, step.level)
                at += step.seconds * self.scale
                await asyncio.sleep(max(0.0, at - loop.time()))

    async def _beep(self, durations: tuple[float, ...]) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time()
        try:
            for i, seconds in enumerate(durations):
                self.backend.buzz(i % 2 == 0)
                at += seconds * self.scale
                await asyncio.sleep(max(0.0, at - loop.time()))
        finally:
            self.backend.buzz(False)

    @staticmethod
    def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            task.cancel()

    async def stop(self) -> None:
        """Stop playing (the backend keeps its last frame until closed)."""
        tasks = [t for t in (self._task, self._beeping) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = self._beeping = None
