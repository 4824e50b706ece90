"""An asyncio loop on virtual time, for the panel's timing tests.

When nothing is ready to run, the loop jumps straight to its next timer instead
of sleeping, so a 10 s "sent" or a 120 s measure window takes no wall time and
every timing is exact. gpiozero's mock pins stamp their state changes with the
same virtual clock (its module-level `monotonic` is patched for the test).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import gpiozero.pins.mock
import pytest

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selectors.SelectSelector())
        self._virtual_now = 1000.0
        real_select = self._selector.select

        def select(timeout: float | None = None) -> list[Any]:
            ready = real_select(0)
            if ready:
                return ready
            if timeout is None:
                raise RuntimeError("virtual time: nothing scheduled, the test would hang")
            self._virtual_now += timeout
            return []

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._virtual_now


@pytest.fixture
def virtual(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], Awaitable[T]]], T]]:
    """`virtual(async_fn)` runs `async_fn()` to completion on virtual time."""
    loop = VirtualTimeLoop()
    monkeypatch.setattr(gpiozero.pins.mock, "monotonic", loop.time)

    def run(fn: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            return await fn()

        return loop.run_until_complete(main())

    yield run
    loop.close()
