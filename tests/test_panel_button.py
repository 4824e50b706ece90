"""The measure button: short, long, bounce, held, stuck (MockFactory pins, virtual time).

The default timings (50 ms debounce, 5 s long press, 30 s stuck) are used as
they are: virtual time makes them instant and exact.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from gateway.config import PanelSection
from gateway.events import ButtonReleased, ButtonStuck, Event, EventBus, HubStarted
from gateway.panel import GpioBackend, Panel
from tests.panel_helpers import BUTTON_PIN, MockPanel, mock_panel


def press(mp: MockPanel) -> None:
    mp.pin(BUTTON_PIN).drive_low()  # pulled up: pressed connects it to ground


def release(mp: MockPanel) -> None:
    mp.pin(BUTTON_PIN).drive_high()


def collect(mp: MockPanel, kind: type[Event]) -> list[Event]:
    seen: list[Event] = []
    mp.events.subscribe(lambda e: seen.append(e) if isinstance(e, kind) else None)
    return seen


async def _short_press() -> None:
    async with mock_panel() as mp:
        press(mp)
        await asyncio.sleep(0.3)
        assert mp.measure_presses == 0  # a short press counts on release
        release(mp)
        await asyncio.sleep(0.1)
        assert (mp.measure_presses, mp.pairing_presses) == (1, 0)
        press(mp)
        await asyncio.sleep(4.9)
        release(mp)
        await asyncio.sleep(0.1)
        assert (mp.measure_presses, mp.pairing_presses) == (2, 0)


def test_short_press_is_measure_now(virtual: Any) -> None:
    virtual(_short_press)


async def _long_press() -> None:
    async with mock_panel() as mp:
        press(mp)
        await asyncio.sleep(4.99)
        assert mp.pairing_presses == 0
        await asyncio.sleep(0.1)  # 5 s plus the 50 ms debounce
        assert mp.pairing_presses == 1  # while still held: the installer sees it
        await asyncio.sleep(20)  # holding on does not repeat
        release(mp)
        await asyncio.sleep(0.1)
        assert (mp.measure_presses, mp.pairing_presses) == (0, 1)


def test_long_press_is_installer_mode_once_however_long_held(virtual: Any) -> None:
    virtual(_long_press)


async def _bounce() -> None:
    async with mock_panel() as mp:
        # Chatter shorter than the debounce time, ending released: no press at all.
        for _ in range(5):
            press(mp)
            await asyncio.sleep(0.005)
            release(mp)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        assert (mp.measure_presses, mp.pairing_presses) == (0, 0)
        # A real press that bounces when made and when released: one press.
        for _ in range(3):
            press(mp)
            await asyncio.sleep(0.004)
            release(mp)
            await asyncio.sleep(0.004)
        press(mp)
        await asyncio.sleep(0.2)
        for _ in range(3):
            release(mp)
            await asyncio.sleep(0.004)
            press(mp)
            await asyncio.sleep(0.004)
        release(mp)
        await asyncio.sleep(0.5)
        assert (mp.measure_presses, mp.pairing_presses) == (1, 0)


def test_bounces_are_filtered(virtual: Any) -> None:
    virtual(_bounce)


async def _stuck(caplog: pytest.LogCaptureFixture) -> None:
    async with mock_panel() as mp:
        stuck = collect(mp, ButtonStuck)
        freed = collect(mp, ButtonReleased)
        mp.publish(HubStarted())
        await mp.wait_shown("ready")
        press(mp)
        await asyncio.sleep(31)
        assert [type(e) for e in stuck] == [ButtonStuck]
        assert mp.shown[-1] == "needs help"
        await asyncio.sleep(600)  # still held: reported once, not a stream
        assert len(stuck) == 1 and not freed
        assert mp.pairing_presses == 1 and mp.measure_presses == 0  # the 5 s mark, once
        release(mp)
        await asyncio.sleep(0.1)
        assert len(freed) == 1 and mp.measure_presses == 0
        assert mp.shown[-1] == "ready"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "held" in r.message]
    assert len(warnings) == 1


def test_stuck_button_is_reported_once(virtual: Any, caplog: pytest.LogCaptureFixture) -> None:
    virtual(lambda: _stuck(caplog))


async def _down_at_start() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    cfg = PanelSection(backend="gpio")
    presses: list[str] = []
    backend = GpioBackend(cfg, factory)
    factory.pin(BUTTON_PIN).drive_low()  # already down when the panel starts
    panel = Panel(
        cfg,
        backend,
        EventBus(),
        on_measure=lambda: presses.append("short"),
        on_pairing=lambda: presses.append("long"),
    )
    panel.start()
    try:
        await asyncio.sleep(10)
        factory.pin(BUTTON_PIN).drive_high()
        await asyncio.sleep(0.1)
        assert presses == []  # neither a long press at 5 s nor a short one on release
        factory.pin(BUTTON_PIN).drive_low()
        await asyncio.sleep(0.1)
        factory.pin(BUTTON_PIN).drive_high()
        await asyncio.sleep(0.1)
        assert presses == ["short"]  # re-armed
    finally:
        await panel.close()


def test_button_down_at_start_is_not_a_press(virtual: Any) -> None:
    virtual(_down_at_start)


async def test_edges_from_gpiozeros_thread_hop_to_the_loop() -> None:
    """Real clock: the pin is driven from another thread, as gpiozero's callbacks come."""
    async with mock_panel(bounce_s=0.02) as mp:
        calls: list[int] = []
        original = mp.panel.button._on_short

        def on_short() -> None:
            calls.append(threading.get_ident())
            original()

        mp.panel.button._on_short = on_short
        await asyncio.to_thread(press, mp)
        await asyncio.sleep(0.1)
        await asyncio.to_thread(release, mp)
        async with asyncio.timeout(2):
            while not calls:
                await asyncio.sleep(0.01)
        assert calls == [threading.get_ident()]  # ran on the loop's thread
        assert mp.measure_presses == 1
