"""When the BLE runtime acts on silence and when it asks for help: pure, on virtual time.

Issue 12 part 4. A quiet home is the normal case: cuffs and scales advertise only
for a minute after a measurement, so hours without a single advertisement say
nothing about the adapter. Silence therefore only starts recovery steps, in turn
(`LADDER`), each one more disruptive than the last; it never asks for help.
Help is for an adapter that does not come back: a power-on that fails, a
discovery that cannot start, an adapter that vanished (`AdapterHealth`).

No loop, no clock of its own: the runtime passes the time (`loop.time()`), the
tests pass whatever time they like.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class AdapterError(Exception):
    """The adapter did not come back (power-on refused, adapter gone); the message says how."""


class Step(enum.StrEnum):
    """Recovery steps, mildest first. The names are the status counters'."""

    #: stop and start discovery (also clears BlueZ's and the controller's duplicate filter)
    RESTART_SCAN = "restart_scan"
    #: Adapter1.Powered off and on (BlueZ); Bumble: the host powers off and on. Linux sends
    #: HCI_Reset when it powers a controller on, so on BlueZ this already resets it.
    POWER_CYCLE = "power_cycle"
    #: the strongest the stack offers: Bumble reopens its HCI transport; BlueZ offers no
    #: other controller reset over D-Bus (HCIDEVRESET needs CAP_NET_ADMIN, which the
    #: hardened service does not have), so it power-cycles with a longer pause.
    RESET = "reset"


LADDER: tuple[Step, ...] = (Step.RESTART_SCAN, Step.POWER_CYCLE, Step.RESET)

#: however long the silence, at most one step this often (a quiet home: one an hour)
MAX_INTERVAL_S = 3600.0


@dataclass(slots=True)
class SilencePolicy:
    """Which step silence calls for, and when.

    The first step comes `stall_s` after the last sign of life, the next ones
    `stall_s` apart; after the whole ladder it starts again with the spacing
    doubled each round, up to `MAX_INTERVAL_S`. Any sign of life (an
    advertisement, a visit) starts over from the mildest step.
    """

    stall_s: float
    max_interval_s: float = MAX_INTERVAL_S
    _due_at: float = 0.0
    _taken: int = 0
    #: the last sign of life
    heard_at: float = 0.0

    def heard(self, now: float) -> None:
        """A sign of life: the radio works."""
        self._taken = 0
        self.heard_at = now
        self._due_at = now + self.stall_s

    @property
    def due_at(self) -> float:
        """When the next step is due (if silence lasts)."""
        return self._due_at

    @property
    def taken(self) -> int:
        """Steps taken since the last sign of life."""
        return self._taken

    def due(self, now: float) -> Step | None:
        """The step to take now, if one is due; it counts as taken."""
        if self.stall_s <= 0 or now < self._due_at:
            return None
        step = LADDER[self._taken % len(LADDER)]
        self._taken += 1
        rounds = self._taken // len(LADDER)
        self._due_at = now + min(self.stall_s * 2.0**rounds, self.max_interval_s)
        return step

    def postpone(self, now: float, seconds: float) -> None:
        """Not now (a device is connected): ask again in `seconds`."""
        self._due_at = max(self._due_at, now + seconds)


#: consecutive failures before the adapter is reported: one retry first, so a
#: bluetoothd still starting at boot does not beep at the patient
FAILURES_BEFORE_HELP = 2


@dataclass(slots=True)
class AdapterHealth:
    """Whether the adapter needs help: reported once per episode, cleared once."""

    failures: int = 0
    failing: bool = False
    last_error: str | None = None
    #: steps taken, by Step name (the status counters)
    steps: dict[str, int] = field(default_factory=dict)

    def took(self, step: Step) -> None:
        self.steps[step.value] = self.steps.get(step.value, 0) + 1

    def failed(self, reason: str) -> bool:
        """The adapter did not come back; True when this starts a "needs help" episode."""
        self.failures += 1
        self.last_error = reason
        if self.failing or self.failures < FAILURES_BEFORE_HELP:
            return False
        self.failing = True
        return True

    def worked(self) -> bool:
        """Discovery runs on the adapter; True when this ends a "needs help" episode."""
        self.failures = 0
        self.last_error = None
        if not self.failing:
            return False
        self.failing = False
        return True
