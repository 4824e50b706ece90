"""What the panel shows: a pure state machine from daemon events to one state.

No pins, no loop, no clock of its own: feed it events with the time they
happened (`handle(event, now)`), ask what to show (`state(now)`) and when that
may change without a new event (`next_change(now)`). Times are monotonic seconds.

Priority, highest first (the README's table is the patient-facing version):

1. STARTING      the daemon has not started yet
2. GOT_IT        a new reading was stored: shown at least `got_it_s`, then until it
                 is sent, an uplink loss or `send_wait_s`
3. SENT          that reading is sent: `sent_s`; SENT_OUTSIDE_PLAN instead, for
                 `outside_plan_s`, when it is outside the care plan's limits and the
                 plan says `show_on_panel` (issue 10)
4. STORED_LATER  that reading was stored but cannot go now (uplink down, publish
                 refused, or not sent within `send_wait_s`): `stored_later_s`

"Sent" is the reading's PUBACK, or with `[mqtt] confirm = true` (the uplink says
so in `UplinkUp.confirming`) the backend's confirmation (`ReadingsConfirmed`,
issue 9): then a PUBACK alone keeps GOT_IT ("sending"), and no confirmation
within `send_wait_s` is STORED_LATER, never SENT.
5. INSTALLER     the pairing window is open (long press)
6. IDENTIFY      the care team's `identify` command (issue 10): for its N seconds
                 (at most 300), so an installer or a relative finds the box
7. NEEDS_HELP    any help reason holds (see `help_reasons`)
8. WAITING       the measure window is open and no reading has been stored since it opened
9. MEASUREMENT_DUE  the care plan expects a measurement now and none of that kind has come
                 (`MeasurementDue`, issue 10): a reminder, so below the patient's own press
10. READY        none of the above

The care plan's quiet hours (`QuietHours`) do not change the state: `quiet` tells the
panel to show nothing but "needs help", dimmed (gateway/panel/panel.py).

Only the latest stored reading drives 2-4, and a new "measure now" press ends its
feedback. "sent" needs a `ReadingDelivered` (or `ReadingsConfirmed`) for that
very reading id: a store alone never shows it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.events import (
    BleAdapterFailing,
    BleAdapterOk,
    ButtonReleased,
    ButtonStuck,
    CertificateOk,
    CertificateTrouble,
    ClockOk,
    ClockWrong,
    DeviceFailing,
    DeviceRecovered,
    DiskFull,
    DiskOk,
    Event,
    HubStarted,
    Identify,
    MeasurementDue,
    PublishRefused,
    QuietHours,
    ReadingDelivered,
    ReadingsConfirmed,
    ReadingsDropped,
    ReadingStored,
    StoreRecovered,
    UplinkDown,
    UplinkUp,
    WindowClosed,
    WindowOpened,
)


class PanelState(enum.Enum):
    STARTING = "starting"
    GOT_IT = "got it"
    SENT = "sent"
    SENT_OUTSIDE_PLAN = "sent, outside your plan"
    STORED_LATER = "stored, will send later"
    INSTALLER = "installer"
    IDENTIFY = "here I am"
    NEEDS_HELP = "needs help"
    WAITING = "waiting for you"
    MEASUREMENT_DUE = "measurement due"
    READY = "ready"


#: Highest first.
PRIORITY: tuple[PanelState, ...] = tuple(PanelState)


@dataclass(frozen=True, slots=True)
class StateTimings:
    got_it_s: float = 1.4  # at least one cycle of the "got it" pattern
    sent_s: float = 10.0
    stored_later_s: float = 10.0
    send_wait_s: float = 30.0
    help_after_failures: int = 3
    offline_help_s: float = 21600.0
    #: how long a sent reading outside the plan's limits shows (issue 10, show_on_panel)
    outside_plan_s: float = 600.0


@dataclass(slots=True)
class _Latest:
    reading_id: str
    device_id: str
    stored_at: float
    delivered_at: float | None = None
    deferred_at: float | None = None
    show_flag: bool = False  # outside the care plan's limits, and the plan says to show it


class PanelStateMachine:
    def __init__(self, timings: StateTimings, now: float) -> None:
        self.timings = timings
        self.started = False
        self.uplink_up = False
        self.confirming = False  # "sent" means confirmed by the backend (issue 9)
        self.offline_since: float | None = now
        self.measuring = False  # measure window open, no reading since it opened
        self.pairing = False
        self.failures: dict[str, int] = {}
        self.dropping = False
        self.refused = False
        self.disk_full = False
        self.store_damaged = False  # salvaged from a damaged file; until a delivery
        self.button_stuck = False
        self.clock_wrong = False
        self.certificate: dict[str, str] = {}  # source -> reason (issue 14)
        self.ble_adapter_failing = False
        self.identify_until: float | None = None  # issue 10
        self.latest: _Latest | None = None
        self.due = False  # the care plan waits for a measurement (issue 10)
        self.quiet = False  # the care plan's quiet hours
        self.quiet_level = 1.0  # "needs help"'s brightness in quiet hours

    # -- input -------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> None:
        match event:
            case HubStarted():
                self.started = True
            case Identify(seconds=seconds):
                self.identify_until = now + seconds if seconds > 0 else None
            case ReadingStored(device_id=device, reading_id=rid, duplicate=False, show_flag=flag):
                self.measuring = False
                self.latest = _Latest(rid, device, now, show_flag=flag)
                if not self.uplink_up:
                    self.latest.deferred_at = now
            case ReadingDelivered(reading_id=rid):
                self.dropping = False
                self.refused = False
                if self.confirming:
                    pass  # published, not yet "your care team has it"
                else:
                    # A reading went all the way after a salvage: the store works again.
                    self.store_damaged = False
                    if self.latest is not None and self.latest.reading_id == rid:
                        self.latest.delivered_at = now
            case ReadingsConfirmed(reading_ids=ids):
                if self.confirming:
                    # The backend holds a reading after a salvage: the store works again.
                    self.store_damaged = False
                latest = self.latest
                if self.confirming and latest is not None and latest.reading_id in ids:
                    latest.delivered_at = now
            case PublishRefused(device_id=device):
                self.refused = True
                self._defer(now, device)
            case UplinkUp(confirming=confirming):
                self.uplink_up = True
                self.confirming = confirming
                self.offline_since = None
            case UplinkDown():
                self.uplink_up = False
                if self.offline_since is None:
                    self.offline_since = now
                self._defer(now, None)
            case DeviceFailing(device_id=device):
                self.failures[device] = self.failures.get(device, 0) + 1
            case DeviceRecovered(device_id=device):
                self.failures.pop(device, None)
            case ReadingsDropped():
                self.dropping = True
            case DiskFull():
                self.disk_full = True
            case DiskOk():
                self.disk_full = False
            case StoreRecovered():
                self.store_damaged = True
            case ButtonStuck():
                self.button_stuck = True
            case ButtonReleased():
                self.button_stuck = False
            case ClockWrong():
                self.clock_wrong = True
            case ClockOk():
                self.clock_wrong = False
            case CertificateTrouble(source=source, reason=reason):
                self.certificate[source] = reason
            case CertificateOk(source=source):
                self.certificate.pop(source, None)
            # Issue 12: only an adapter that does not come back; silence never gets here.
            case BleAdapterFailing():
                self.ble_adapter_failing = True
            case BleAdapterOk():
                self.ble_adapter_failing = False
            case WindowOpened(kind="measure"):
                # A new press: the patient has moved on from the last reading's feedback.
                self.measuring = True
                self.latest = None
            case WindowClosed(kind="measure"):
                self.measuring = False
            case MeasurementDue(kinds=kinds):
                self.due = bool(kinds)
            case QuietHours(active=active, help_level=level):
                self.quiet, self.quiet_level = active, level
            case WindowOpened(kind="pairing"):
                self.pairing = True
            case WindowClosed(kind="pairing"):
                self.pairing = False
            case _:
                pass

    def _defer(self, now: float, device: str | None) -> None:
        latest = self.latest
        if latest is None or latest.delivered_at is not None or latest.deferred_at is not None:
            return
        if device is None or device == latest.device_id:
            latest.deferred_at = now

    # -- output ------------------------------------------------------------------------

    def changed_by_delivery(self, reading_id: str) -> bool:
        """Whether a ReadingDelivered for `reading_id` would change anything.

        A hub draining a backlog delivers thousands of readings a second; all but
        the one the light is about (and the first after trouble) change nothing.
        """
        return (
            self.dropping
            or self.refused
            or self.store_damaged
            or (
                not self.confirming
                and self.latest is not None
                and self.latest.reading_id == reading_id
            )
        )

    def changed_by_confirmation(self, reading_ids: tuple[str, ...]) -> bool:
        """Whether a ReadingsConfirmed would change anything (a drain confirms thousands)."""
        latest = self.latest
        return self.confirming and (
            self.store_damaged or (latest is not None and latest.reading_id in reading_ids)
        )

    def help_reasons(self, now: float) -> list[str]:
        t = self.timings
        reasons = [
            f"device {device} keeps failing"
            for device, count in sorted(self.failures.items())
            if count >= t.help_after_failures
        ]
        if self.disk_full:
            reasons.append("disk full")
        if self.store_damaged:
            reasons.append("store damaged, salvaged")
        if self.dropping:
            reasons.append("store full, dropping readings")
        if self.refused:
            reasons.append("broker refuses readings")
        if self.offline_since is not None and now - self.offline_since >= t.offline_help_s:
            reasons.append("offline too long")
        if self.button_stuck:
            reasons.append("button stuck")
        if self.clock_wrong:
            reasons.append("clock wrong")
        reasons.extend(sorted(set(self.certificate.values())))
        if self.ble_adapter_failing:
            reasons.append("bluetooth adapter failing")
        return reasons

    def _feedback(self, now: float) -> tuple[PanelState | None, float | None]:  # noqa: PLR0911
        """The latest reading's state, and when it ends."""
        latest = self.latest
        if latest is None:
            return None, None
        t = self.timings
        got_it_end = latest.stored_at + t.got_it_s
        if latest.delivered_at is not None:
            start = max(latest.delivered_at, got_it_end)
            if now < got_it_end:
                return PanelState.GOT_IT, got_it_end
            if latest.show_flag:
                # Only once the care team has it: the message is "they will see this one".
                end = start + t.outside_plan_s
                return (PanelState.SENT_OUTSIDE_PLAN, end) if now < end else (None, None)
            end = start + t.sent_s
            return (PanelState.SENT, end) if now < end else (None, None)
        deferred_at = latest.deferred_at
        if deferred_at is None and now >= latest.stored_at + t.send_wait_s:
            deferred_at = latest.stored_at + t.send_wait_s
        if deferred_at is None:
            return PanelState.GOT_IT, latest.stored_at + t.send_wait_s
        if now < got_it_end:
            return PanelState.GOT_IT, got_it_end
        end = max(deferred_at, got_it_end) + t.stored_later_s
        return (PanelState.STORED_LATER, end) if now < end else (None, None)

    def state(self, now: float) -> PanelState:  # noqa: PLR0911 - one return per priority
        if not self.started:
            return PanelState.STARTING
        feedback, _ = self._feedback(now)
        if feedback is not None:
            return feedback
        if self.pairing:
            return PanelState.INSTALLER
        if self.identifying(now):
            return PanelState.IDENTIFY
        if self.help_reasons(now):
            return PanelState.NEEDS_HELP
        if self.measuring:
            return PanelState.WAITING
        return PanelState.MEASUREMENT_DUE if self.due else PanelState.READY

    def identifying(self, now: float) -> bool:
        return self.identify_until is not None and now < self.identify_until

    def next_change(self, now: float) -> float | None:
        """The next time `state()` may change without an event (None: not by time)."""
        candidates: list[float] = []
        if self.identify_until is not None:
            candidates.append(self.identify_until)
        _, end = self._feedback(now)
        if end is not None:
            candidates.append(end)
        if self.offline_since is not None:
            candidates.append(self.offline_since + self.timings.offline_help_s)
        later = [c for c in candidates if c > now]
        return min(later) if later else None
