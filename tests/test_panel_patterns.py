"""Each state drives the pins in its documented pattern and timing.

The table below is the README's state table, written out again as the spec:
(colour, brightness, seconds) steps, repeated. gpiozero's MockFactory is passed
in; the pins' recorded histories are compared against the spec on virtual time
(tests/virtual_time.py: exact to the microsecond, no wall-clock wait), and once
on the real clock with a tolerance for a loaded machine.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from gpiozero.pins.mock import MockPin

from gateway.events import (
    DiskFull,
    Event,
    HubStarted,
    Identify,
    MeasurementDue,
    PanelShows,
    ReadingDelivered,
    ReadingStored,
    UplinkUp,
    WindowOpened,
)
from gateway.panel import PanelState
from tests.panel_helpers import (
    BUZZER_PIN,
    EARLY_S,
    LATE_S,
    RGB,
    RGB_PINS,
    SEPARATE_PINS,
    assert_changes,
    changes,
    expected_changes,
    mock_panel,
)

Steps = list[tuple[str | None, float, float]]


def breathing() -> Steps:
    up = [("green", i / 20, 0.1) for i in range(1, 21)]
    down = [("green", (20 - i) / 20, 0.1) for i in range(1, 21)]
    return up + down


#: state -> (steps, events that lead there)
SPEC: dict[str, tuple[Steps, list[Event]]] = {
    "starting": (
        [("green", 1, 0.2), (None, 0, 0.1), ("amber", 1, 0.2), (None, 0, 0.1),
         ("red", 1, 0.2), (None, 0, 0.1)],
        [],
    ),
    "ready": ([("green", 0.1, 0.5)], [HubStarted()]),
    "waiting for you": (breathing(), [HubStarted(), WindowOpened("measure", 120)]),
    "got it": (
        [("green", 1, 0.2), (None, 0, 0.2), ("green", 1, 0.2), (None, 0, 0.8)],
        [HubStarted(), UplinkUp(), ReadingStored("bp-1", "r1", duplicate=False)],
    ),
    "sent": (
        [("green", 1, 0.5)],
        [HubStarted(), UplinkUp(), ReadingStored("bp-1", "r1", duplicate=False),
         ReadingDelivered("bp-1", "r1")],
    ),
    # Issue 10: a care plan with show_on_panel, a flagged reading once it is sent.
    "sent, outside your plan": (
        [("green", 1, 1.0), ("amber", 1, 1.0)],
        [HubStarted(), UplinkUp(),
         ReadingStored("bp-1", "r1", duplicate=False, show_flag=True),
         ReadingDelivered("bp-1", "r1")],
    ),
    "stored, will send later": (
        [("amber", 1, 1.7), (None, 0, 0.3)],
        [HubStarted(), ReadingStored("bp-1", "r1", duplicate=False)],
    ),
    "needs help": ([("red", 1, 1.0), (None, 0, 1.0)], [HubStarted(), DiskFull()]),
    "measurement due": (
        [("green", 1, 2.0), (None, 0, 2.0)], [HubStarted(), MeasurementDue(("weight",))]
    ),
    "installer": (
        [("amber", 1, 0.1), (None, 0, 0.1), ("amber", 1, 0.1), (None, 0, 0.1),
         ("amber", 1, 0.1), (None, 0, 1.1)],
        [HubStarted(), WindowOpened("pairing", 300)],
    ),
    # Issue 10: the identify command; never dark, quick, green and red in turn.
    "here I am": ([("green", 1, 0.25), ("red", 1, 0.25)], [HubStarted(), Identify(30)]),
}  # fmt: skip

#: Without PWM (issue 11): the same, except the two patterns that dim. "ready" must not
#: look like "sent" (steady green), so it is a heartbeat; breathing is an even blink.
SPEC_ON_OFF: dict[str, tuple[Steps, list[Event]]] = {
    **SPEC,
    "ready": ([("green", 1, 0.1), (None, 0, 4.9)], [HubStarted()]),
    "waiting for you": (
        [("green", 1, 0.5), (None, 0, 0.5)], [HubStarted(), WindowOpened("measure", 120)]
    ),
}  # fmt: skip


def _cycle_s(steps: Steps) -> float:
    return sum(s for _, _, s in steps)


def _channel(steps: Steps, value: Any) -> list[tuple[float, float]]:
    return [(value(colour, level), seconds) for colour, level, seconds in steps]


async def _check(
    state: str,
    pins: dict[int, Any],
    tolerance: tuple[float, float],
    spec: dict[str, tuple[Steps, list[Event]]] = SPEC,
    **config: Any,
) -> None:
    """Lead the panel to `state`, then compare each pin with its channel of the spec
    for one cycle and a bit (steady patterns: watched 0.5 s for stray changes)."""
    steps, events = spec[state]
    until = _cycle_s(steps) + steps[0][2] / 2
    steady = len(steps) == 1
    async with mock_panel(**config) as mp:
        cleared = asyncio.Event()

        def clear(event: Event) -> None:
            if getattr(event, "state", None) == state and not cleared.is_set():
                for number in pins:
                    mp.pin(number).clear_states()
                cleared.set()

        mp.events.subscribe(clear)
        if state == "starting":  # already showing: start over from the beginning
            clear(PanelShows("starting"))
            mp.panel.player.play(mp.panel.patterns[PanelState.STARTING])
        mp.publish(*events)
        await asyncio.wait_for(cleared.wait(), 5)
        expected = {
            number: expected_changes(
                _channel(steps, value), float(mp.pin(number).states[0].state), until
            )
            for number, value in pins.items()
        }
        # Wait (bounded) until every pin made its expected changes.
        async with asyncio.timeout(until + 3):
            while any(len(changes(mp.pin(n))) < len(expected[n]) for n in pins):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5 if steady else 0.0)
        await mp.panel.player.stop()
        recorded = {number: changes(mp.pin(number)) for number in pins}
        # The pattern's start: the first change of any pin (expected at 0).
        firsts = [recorded[n][0][0] for n in pins if expected[n] and expected[n][0][0] == 0.0]
        offset = min(firsts) if firsts else 0.0
        assert offset <= tolerance[1], f"{state}: started {offset:.3f} s after the state changed"
        for number in pins:
            if steady:
                assert len(recorded[number]) == len(expected[number]), (state, recorded)
            assert_changes(
                recorded[number][: len(expected[number])],
                expected[number],
                f"{state}: pin {number}",
                offset,
                tolerance,
            )


def _rgb(index: int) -> Any:
    return lambda colour, level: round(RGB[colour][index] * level, 3)


def _led(name: str) -> Any:
    return lambda colour, level: level if colour == name else 0.0


def _rgb_on_off(index: int) -> Any:
    # A channel without PWM is on or off: amber (1, 0.4, 0) is red and green on.
    return lambda colour, level: 1.0 if RGB[colour][index] * level > 0 else 0.0


EXACT = (1e-6, 1e-6)
RGB_CHANNELS = {number: _rgb(i) for i, number in enumerate(RGB_PINS)}
LED_CHANNELS = {number: _led(name) for name, number in SEPARATE_PINS.items()}
RGB_ON_OFF = {number: _rgb_on_off(i) for i, number in enumerate(RGB_PINS)}


@pytest.mark.parametrize("state", list(SPEC))
def test_rgb_led_follows_the_documented_pattern(state: str, virtual: Any) -> None:
    virtual(lambda: _check(state, RGB_CHANNELS, EXACT))


@pytest.mark.parametrize("state", list(SPEC))
def test_separate_leds_follow_the_documented_pattern(state: str, virtual: Any) -> None:
    virtual(lambda: _check(state, LED_CHANNELS, EXACT, leds="separate"))


@pytest.mark.parametrize("state", list(SPEC_ON_OFF))
def test_without_pwm_rgb_led_plays_the_on_off_patterns(state: str, virtual: Any) -> None:
    virtual(lambda: _check(state, RGB_ON_OFF, EXACT, SPEC_ON_OFF, pin_class=MockPin))


@pytest.mark.parametrize("state", list(SPEC_ON_OFF))
def test_without_pwm_separate_leds_play_the_on_off_patterns(state: str, virtual: Any) -> None:
    virtual(
        lambda: _check(state, LED_CHANNELS, EXACT, SPEC_ON_OFF, pin_class=MockPin, leds="separate")
    )


async def test_without_pwm_the_backend_says_so_and_no_pin_is_ever_dimmed() -> None:
    async with mock_panel(pin_class=MockPin) as mp:
        assert mp.panel.backend.pwm is False and mp.panel.backend.pin_factory == "mock"
        mp.publish(HubStarted())
        await mp.wait_shown("ready")
        # A "ready" cycle (5 s) would be long; the heartbeat's flash is enough here.
        async with asyncio.timeout(2):
            while not any(float(s.state) == 1.0 for s in mp.pin(RGB_PINS[1]).states):
                await asyncio.sleep(0.01)
        values = {float(s.state) for n in RGB_PINS for s in mp.pin(n).states}
        assert values <= {0.0, 1.0}
    async with mock_panel() as pwm:
        assert pwm.panel.backend.pwm is True


async def test_patterns_keep_their_timing_on_the_real_clock() -> None:
    """The same, on the real clock, for a blink pattern and a slow one at once."""
    results = await asyncio.gather(
        _check("got it", RGB_CHANNELS, (EARLY_S, LATE_S)),
        _check("needs help", LED_CHANNELS, (EARLY_S, LATE_S), leds="separate"),
        return_exceptions=True,
    )
    failures = [str(r) for r in results if isinstance(r, BaseException)]
    assert not failures, "\n".join(failures)


def test_needs_help_beeps_three_times_once_when_trouble_starts(virtual: Any) -> None:
    virtual(_beeps)


async def _beeps() -> None:
    async with mock_panel(buzzer_pin=BUZZER_PIN) as mp:
        buzzer = mp.pin(BUZZER_PIN)
        mp.publish(HubStarted())
        await mp.wait_shown("ready")
        buzzer.clear_states()
        mp.publish(DiskFull())
        await mp.wait_shown("needs help")
        await asyncio.sleep(0.7)
        expected = [(0.0, 1.0), (0.1, 0.0), (0.2, 1.0), (0.3, 0.0), (0.4, 1.0), (0.5, 0.0)]
        recorded = changes(buzzer)
        assert len(recorded) == 6
        assert_changes(recorded, expected, "buzzer", recorded[0][0], EXACT)
        # Coming back to "needs help" after a reading's feedback does not beep again.
        buzzer.clear_states()
        mp.publish(UplinkUp(), ReadingStored("bp-1", "r1", duplicate=False))
        mp.publish(ReadingDelivered("bp-1", "r1"))
        await mp.wait_shown("sent")
        await mp.wait_shown("needs help", 15)
        assert changes(buzzer) == []


async def test_close_leaves_the_light_dark() -> None:
    async with mock_panel() as mp:
        mp.publish(HubStarted())
        await mp.wait_shown("ready")
        await asyncio.sleep(0.05)
        assert float(mp.pin(RGB_PINS[1]).state) == pytest.approx(0.1)
    assert all(float(mp.pin(n).state) == 0.0 for n in RGB_PINS)
