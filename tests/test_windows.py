"""The measure/pairing windows drivers consult (virtual time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.events import Event, WindowClosed, WindowOpened
from gateway.windows import CommandWindow


async def _window() -> None:
    seen: list[Event] = []
    window = CommandWindow("measure", 120.0, seen.append)
    loop = asyncio.get_running_loop()
    start = loop.time()
    waiter = asyncio.create_task(window.wait_request(0))
    window.open()
    assert window.is_open and await waiter == 1
    await asyncio.sleep(100)
    window.open()  # extends to 120 s from now
    assert window.remaining() == pytest.approx(120.0)
    await window.wait_closed()
    assert loop.time() - start == pytest.approx(220.0)
    assert seen == [WindowOpened("measure", 120.0)] * 2 + [WindowClosed("measure")]
    window.open(10)
    window.open(1)  # never shortens
    await window.wait_closed()
    assert loop.time() - start == pytest.approx(230.0)
    assert window.requests == 4 and not window.is_open


def test_window_opens_extends_and_closes_by_itself(virtual: Any) -> None:
    virtual(_window)
