"""Helpers for the panel's tests: gpiozero's MockFactory passed in, pin histories."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

from gateway.config import PanelSection
from gateway.events import Event, EventBus, PanelShows
from gateway.panel import GpioBackend, Panel

#: (red, green, blue) per colour name, as the README documents.
RGB = {"green": (0.0, 1.0, 0.0), "amber": (1.0, 0.4, 0.0), "red": (1.0, 0.0, 0.0), None: (0, 0, 0)}
RGB_PINS = (12, 13, 19)
SEPARATE_PINS = {"green": 5, "amber": 6, "red": 26}
BUTTON_PIN = 17
BUZZER_PIN = 21


@dataclass
class MockPanel:
    panel: Panel
    factory: MockFactory
    events: EventBus
    shown: list[str] = field(default_factory=list)
    measure_presses: int = 0
    pairing_presses: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def pin(self, number: int) -> Any:
        return self.factory.pin(number)

    def on_event(self, event: Event) -> None:
        if isinstance(event, PanelShows):
            self.shown.append(event.state)
            self._changed.set()

    async def wait_shown(self, state: str, timeout_s: float = 5.0) -> None:
        """Until the panel shows `state` (now or later)."""
        async with asyncio.timeout(timeout_s):
            while not self.shown or self.shown[-1] != state:
                self._changed.clear()
                await self._changed.wait()

    def publish(self, *events: Event) -> None:
        for event in events:
            self.events.publish(event)


@contextlib.asynccontextmanager
async def mock_panel(
    *,
    pattern_scale: float = 1.0,
    on_state: Callable[[str], None] | None = None,
    pin_class: type[MockPin] = MockPWMPin,
    **config: Any,
) -> AsyncIterator[MockPanel]:
    """A started panel on MockFactory pins; `pin_class=MockPin`: pins without PWM."""
    factory = MockFactory(pin_class=pin_class)
    cfg = PanelSection(backend="gpio", **config)
    events = EventBus()
    holder: dict[str, MockPanel] = {}

    def measure() -> None:
        holder["p"].measure_presses += 1

    def pairing() -> None:
        holder["p"].pairing_presses += 1

    panel = Panel(
        cfg,
        GpioBackend(cfg, factory),
        events,
        on_measure=measure,
        on_pairing=pairing,
        pattern_scale=pattern_scale,
    )
    mp = holder["p"] = MockPanel(panel, factory, events)
    events.subscribe(mp.on_event)
    if on_state is not None:
        events.subscribe(lambda e: on_state(e.state) if isinstance(e, PanelShows) else None)
    panel.start()
    try:
        yield mp
    finally:
        await panel.close()


def changes(pin: Any) -> list[tuple[float, float]]:
    """A mock pin's changes since its last clear_states: (seconds since then, value)."""
    out: list[tuple[float, float]] = []
    t = 0.0
    for i, state in enumerate(pin.states):
        t += state.timestamp
        if i > 0:
            out.append((t, float(state.state)))
    return out


def expected_changes(
    steps: list[tuple[float, float]], initial: float, until_s: float
) -> list[tuple[float, float]]:
    """The changes a pin makes playing `steps` ((value, seconds), repeated) until `until_s`."""
    out: list[tuple[float, float]] = []
    t, current = 0.0, initial
    while t < until_s:
        for value, seconds in steps:
            if t >= until_s:
                break
            if abs(value - current) > 1e-9:
                out.append((t, value))
                current = value
            t += seconds
    return out


#: Timers never fire early, but a loaded machine (two CPUs shared with mosquitto and
#: other tests) may run them late: a change may come 20 ms early or 150 ms late.
EARLY_S = 0.02
LATE_S = 0.15


def assert_changes(
    actual: list[tuple[float, float]],
    expected: list[tuple[float, float]],
    what: str = "pin",
    offset_s: float = 0.0,
    tolerance: tuple[float, float] = (EARLY_S, LATE_S),
) -> None:
    """`actual` begins with `expected`, each change at its time (+ `offset_s`, the
    pattern's start), at most tolerance[0] early and tolerance[1] late."""
    assert len(actual) >= len(expected), (
        f"{what}: {len(actual)} changes, expected {len(expected)}:\n{actual}\n{expected}"
    )
    for i, ((ta, va), (te, ve)) in enumerate(zip(actual, expected, strict=False)):
        assert abs(va - ve) < 1e-6, f"{what} change {i}: value {va}, expected {ve} ({actual})"
        late = ta - (te + offset_s)
        assert -tolerance[0] <= late <= tolerance[1], (
            f"{what} change {i} (to {ve}): at {ta - offset_s:.3f} s, expected {te:.3f} s"
        )
