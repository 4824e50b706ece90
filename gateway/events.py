"""Events from the daemon's parts to whoever listens (the panel, the status, tests).

Events are published on the event loop's thread and delivered synchronously to
subscribers, which must not block. The panel knows only these events, nothing of
drivers (issue 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events."""


@dataclass(frozen=True, slots=True)
class ReadingStored(Event):
    device_id: str
    reading_id: str
    duplicate: bool
    #: outside the care plan's limits and the plan asks the panel to say so (issue 10)
    show_flag: bool = False


@dataclass(frozen=True, slots=True)
class ReadingDelivered(Event):
    """The broker acknowledged the reading with a PUBACK meaning a subscriber got it.

    With `[mqtt] confirm = true` that is "published", not yet "your care team has it"
    (that is ReadingsConfirmed).
    """

    device_id: str
    reading_id: str


@dataclass(frozen=True, slots=True)
class ReadingsConfirmed(Event):
    """The backend confirmed it holds these readings (issue 9; one event per confirmation).

    Ids the hub does not know may be among them: a backend confirms what it holds.
    """

    reading_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PublishRefused(Event):
    device_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class UplinkUp(Event):
    #: `[mqtt] confirm = true`: "sent" waits for ReadingsConfirmed, not the PUBACK.
    confirming: bool = False


@dataclass(frozen=True, slots=True)
class UplinkDown(Event):
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceFailing(Event):
    device_id: str
    error: str


@dataclass(frozen=True, slots=True)
class DeviceRecovered(Event):
    device_id: str


@dataclass(frozen=True, slots=True)
class ReadingsDropped(Event):
    """The store reached its bound and discarded its oldest unsent readings."""

    count: int


@dataclass(frozen=True, slots=True)
class DiskFull(Event):
    pass


@dataclass(frozen=True, slots=True)
class DiskOk(Event):
    pass


@dataclass(frozen=True, slots=True)
class StoreRecovered(Event):
    """The store file was damaged and salvaged into a fresh one (issue 11).

    The panel shows "needs help" until a reading goes all the way again.
    """

    salvaged: int
    unreadable: int


@dataclass(frozen=True, slots=True)
class HubStarted(Event):
    """The daemon is up: store open, uplink and drivers started."""


@dataclass(frozen=True, slots=True)
class WindowOpened(Event):
    """A command window opened or was extended ("measure" now, BLE "pairing")."""

    kind: str
    seconds: float


@dataclass(frozen=True, slots=True)
class WindowClosed(Event):
    kind: str


@dataclass(frozen=True, slots=True)
class MeasurementDue(Event):
    """The care plan's open windows still waiting for a reading, by kind (issue 10).

    Published whenever the set changes; empty: nothing is due.
    """

    kinds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QuietHours(Event):
    """The care plan's quiet hours began (`active`) or ended (issue 10): no light but
    "needs help", at `help_level`."""

    active: bool
    help_level: float


@dataclass(frozen=True, slots=True)
class ButtonStuck(Event):
    """The panel's button has been held far too long; reported once per episode."""

    held_s: float


@dataclass(frozen=True, slots=True)
class ButtonReleased(Event):
    """A stuck button was released."""


@dataclass(frozen=True, slots=True)
class ClockWrong(Event):
    """The hub's wall clock is implausible (gateway/clockcheck.py)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClockOk(Event):
    pass


@dataclass(frozen=True, slots=True)
class BleRecoveryStep(Event):
    """The BLE runtime took a recovery step after silence (issue 12): never a problem by itself."""

    step: str  # gateway.drivers.ble.recovery.Step's value, e.g. "power_cycle"


@dataclass(frozen=True, slots=True)
class BleAdapterFailing(Event):
    """The Bluetooth adapter did not come back (power-on failed, discovery cannot start,
    adapter gone); published once per episode."""

    error: str


@dataclass(frozen=True, slots=True)
class BleAdapterOk(Event):
    """Discovery runs on the adapter (again)."""


@dataclass(frozen=True, slots=True)
class PanelShows(Event):
    """The panel changed what it shows (its state's name, e.g. "sent")."""

    state: str


@dataclass(frozen=True, slots=True)
class Identify(Event):
    """Show "here I am" for `seconds` (the `identify` command, issue 10); 0 ends it."""

    seconds: float


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # one broken listener must not stop the data path
                log.exception("event subscriber failed on %s", type(event).__name__)

    def queue(self) -> tuple[asyncio.Queue[Event], Callable[[], None]]:
        """An unbounded queue receiving every event from now on (tests, status)."""
        q: asyncio.Queue[Event] = asyncio.Queue()
        return q, self.subscribe(q.put_nowait)


@dataclass(frozen=True, slots=True)
class CertificateTrouble(Event):
    """The hub's TLS identity cannot work (issue 14): "needs help" until CertificateOk.

    `source` is "check" (the certificate file: expired, not yet valid, unreadable) or
    "broker" (the broker refused it); `reason` is short, for the panel.
    """

    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class CertificateOk(Event):
    source: str
