"""The light (and sound) patterns: data, one per panel state.

Patterns differ in rhythm as well as colour, so they read without colour vision:
steady dim, slow breathing, double blink, steady bright, long-on/short-off,
slow even blink, triple flash, chase, quick green/red alternation ("here I am"),
long even blink ("measurement due"), slow green/amber alternation ("sent, outside
your plan"). The README's state table documents them;
tests/test_panel_patterns.py checks the pins follow them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.panel.states import PanelState


class Colour(enum.Enum):
    GREEN = "green"
    AMBER = "amber"
    RED = "red"


#: (red, green, blue) at full brightness, for an RGB LED.
RGB: dict[Colour, tuple[float, float, float]] = {
    Colour.GREEN: (0.0, 1.0, 0.0),
    Colour.AMBER: (1.0, 0.4, 0.0),
    Colour.RED: (1.0, 0.0, 0.0),
}


@dataclass(frozen=True, slots=True)
class Step:
    """Show `colour` at `level` (0..1) for `seconds`; colour None is dark."""

    colour: Colour | None
    level: float
    seconds: float


DARK = None


@dataclass(frozen=True, slots=True)
class Pattern:
    name: str
    description: str
    steps: tuple[Step, ...]
    repeat: bool = True
    #: buzzer on/off durations played once when the pattern starts ("" = silent)
    beeps: tuple[float, ...] = ()

    @property
    def cycle_s(self) -> float:
        return sum(step.seconds for step in self.steps)


def _steady(colour: Colour, level: float) -> tuple[Step, ...]:
    return (Step(colour, level, 1.0),)


def _breathing(colour: Colour, period_s: float = 4.0, steps: int = 20) -> tuple[Step, ...]:
    """A triangle from dark to full and back, in 2 * `steps` equal steps."""
    dt = period_s / (2 * steps)
    up = [Step(colour, round(i / steps, 3), dt) for i in range(1, steps + 1)]
    down = [Step(colour, round((steps - i) / steps, 3), dt) for i in range(1, steps + 1)]
    return tuple(up + down)


G, A, R = Colour.GREEN, Colour.AMBER, Colour.RED


def patterns(ready_level: float = 0.1, *, pwm: bool = True) -> dict[PanelState, Pattern]:
    """Every state's pattern; `ready_level` is the brightness of "ready" (0: off).
    `pwm` False: for LEDs that are only on or off (a pin factory without PWM, issue 11),
    the two patterns that dim get on/off rhythms of their own (see `_on_off`)."""
    table = {
        PanelState.STARTING: Pattern(
            "chase",
            "green, amber, red 0.2 s each with 0.1 s dark between, repeated",
            (
                Step(G, 1.0, 0.2),
                Step(DARK, 0.0, 0.1),
                Step(A, 1.0, 0.2),
                Step(DARK, 0.0, 0.1),
                Step(R, 1.0, 0.2),
                Step(DARK, 0.0, 0.1),
            ),
        ),
        PanelState.READY: Pattern(
            "steady dim green", "green at low brightness, steady", _steady(G, ready_level)
        ),
        PanelState.WAITING: Pattern(
            "breathing green",
            "green fading up over 2 s and down over 2 s, repeated",
            _breathing(G),
        ),
        PanelState.GOT_IT: Pattern(
            "double blink",
            "two short bright green blinks (0.2 s on, 0.2 s off), 0.8 s dark, repeated",
            (Step(G, 1.0, 0.2), Step(DARK, 0.0, 0.2), Step(G, 1.0, 0.2), Step(DARK, 0.0, 0.8)),
        ),
        PanelState.SENT: Pattern(
            "steady bright green", "green at full brightness, steady", _steady(G, 1.0)
        ),
        # Issue 10 (care plan `show_on_panel`): "sent" (green) and amber in turn, slowly,
        # never dark: a reading the care team has and will look at; no alarm, no red.
        PanelState.SENT_OUTSIDE_PLAN: Pattern(
            "slow green-amber alternation",
            "green 1 s, amber 1 s, repeated, never dark",
            (Step(G, 1.0, 1.0), Step(A, 1.0, 1.0)),
        ),
        PanelState.STORED_LATER: Pattern(
            "amber, long on short off",
            "amber 1.7 s on, 0.3 s dark, repeated",
            (Step(A, 1.0, 1.7), Step(DARK, 0.0, 0.3)),
        ),
        # Issue 10: a reminder, not an alarm: green, and half the pace of "needs help".
        PanelState.MEASUREMENT_DUE: Pattern(
            "long green blink",
            "green 2 s on, 2 s dark, repeated",
            (Step(G, 1.0, 2.0), Step(DARK, 0.0, 2.0)),
        ),
        PanelState.NEEDS_HELP: Pattern(
            "slow red blink",
            "red 1 s on, 1 s dark, repeated; three short beeps when the trouble starts",
            (Step(R, 1.0, 1.0), Step(DARK, 0.0, 1.0)),
            beeps=(0.1, 0.1, 0.1, 0.1, 0.1),
        ),
        PanelState.INSTALLER: Pattern(
            "triple flash",
            "three quick amber flashes (0.1 s on, 0.1 s between), 1.1 s dark, repeated",
            (
                Step(A, 1.0, 0.1),
                Step(DARK, 0.0, 0.1),
                Step(A, 1.0, 0.1),
                Step(DARK, 0.0, 0.1),
                Step(A, 1.0, 0.1),
                Step(DARK, 0.0, 1.1),
            ),
        ),
        # Issue 10: unlike any other state, never dark and quick (4 changes a second),
        # green and red in turn; two long beeps so the box can be heard as well.
        PanelState.IDENTIFY: Pattern(
            "green-red alternation",
            "green 0.25 s, red 0.25 s, repeated, never dark; two long beeps when it starts",
            (Step(G, 1.0, 0.25), Step(R, 1.0, 0.25)),
            beeps=(0.5, 0.3, 0.5),
        ),
    }
    if not pwm:
        table.update(_on_off(ready_level))
    return table


#: Quiet hours (issue 10): everything but "needs help" is dark.
QUIET = Pattern("dark", "off (quiet hours)", _steady(G, 0.0))


def dimmed(pattern: Pattern, level: float) -> Pattern:
    """`pattern` at `level` of its brightness and silent ("needs help" in quiet hours).
    Without PWM a level above 0 is simply on: the rhythm is kept either way."""
    steps = tuple(Step(s.colour, round(s.level * level, 3), s.seconds) for s in pattern.steps)
    return Pattern(
        f"{pattern.name}, dimmed", f"{pattern.description}, dimmed", steps, pattern.repeat
    )


def _on_off(ready_level: float) -> dict[PanelState, Pattern]:
    """ "ready" and "waiting for you" without dimming. "ready" must not become steady
    green: that is "sent", and a false "sent" is the one thing the light may never say.
    So "ready" is a short green flash every 5 s, and the breathing becomes an even
    0.5 s blink (quicker than "needs help", 1 s, and green)."""
    ready = (
        Pattern("dark", "off (ready_level = 0)", _steady(G, 0.0))
        if ready_level <= 0.0
        else Pattern(
            "green heartbeat",
            "a short green flash (0.1 s) every 5 s",
            (Step(G, 1.0, 0.1), Step(DARK, 0.0, 4.9)),
        )
    )
    return {
        PanelState.READY: ready,
        PanelState.WAITING: Pattern(
            "quick green blink",
            "green 0.5 s on, 0.5 s dark, repeated",
            (Step(G, 1.0, 0.5), Step(DARK, 0.0, 0.5)),
        ),
    }
