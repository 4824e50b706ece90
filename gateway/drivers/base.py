"""The Driver interface every device plug-in implements.

A driver owns one device: connecting, the protocol, decoding, the device's clock.
It hands each `Reading` to `DriverContext.emit`, which returns only once the
reading is committed to disk, so a driver acknowledges to its device (moves a
record cursor on, ...) only what is already safe.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.clock import Clock
from gateway.errors import DriverError
from gateway.reading import Reading
from gateway.windows import CommandWindow

#: Device and gateway ids end up in MQTT topics: keep them to topic-safe characters.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class DriverOptions(BaseModel):
    """Keys every `[[devices]]` table has. Drivers subclass this with their own keys."""

    # allow_inf_nan=False: `interval_s = inf` is a typo, never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(
        pattern=ID_PATTERN, description="Device id, unique in this hub; used in topics."
    )
    driver: str = Field(description="Driver name from the homehub.drivers entry-point group.")


@dataclass(frozen=True, slots=True)
class StoredReading:
    """What `emit` returns: the reading's stable id and its place in the store."""

    id: str
    seq: int
    duplicate: bool  # the same record (same source_key) was already stored


class Cursors(Protocol):
    """Small per-device integers kept in the store (e.g. a glucose meter's last sequence).

    Move a cursor on only after `emit` returned for the records it covers: then a
    crash between the two re-reads a record (stored once, by its source_key)
    and never skips one.
    """

    async def get_cursor(self, device_id: str, name: str) -> int | None: ...

    async def set_cursor(self, device_id: str, name: str, value: int) -> None: ...


T = TypeVar("T")


def _ignore_report(problem: str | None) -> None:
    """Default `report`: nobody listens (a driver used outside the hub, in tests)."""


def _ignore_count(name: str) -> None:
    """Default `count`: nobody listens."""


def _ignore_flag(_value: bool) -> None:
    """Default for a status flag: nobody listens."""


def _clock_state_unknown() -> bool | None:
    """Default `clock_synced`: nobody knows (so nothing writes the time to a device)."""
    return None


@dataclass(slots=True)
class DriverContext:
    """Everything a driver may use from the hub; passed in, never global."""

    device_id: str
    clock: Clock
    logger: logging.Logger
    emit: Callable[[Reading], Awaitable[StoredReading]]
    # The rest by keyword only: a positional mix-up would pass silently.
    _: KW_ONLY
    #: "measure now" (the patient's short press): a driver may act on it, e.g. scan
    #: at full duty while it is open; see gateway/windows.py.
    measure: CommandWindow = field(default_factory=lambda: CommandWindow("measure", 120.0))
    #: installer's pairing window (long press): bonding BLE devices may pair.
    pairing: CommandWindow = field(default_factory=lambda: CommandWindow("pairing", 300.0))
    #: Report a lasting problem the driver copes with itself without raising (a
    #: vanished port it keeps reopening, input it cannot decode): the status shows
    #: the device "failing" with this text. None: the problem is over. The text is
    #: sent to the backend: never put patient values in it.
    report: Callable[[str | None], None] = _ignore_report
    #: Count an event the status shows per device (e.g. "skipped_other_user": a
    #: shared cuff's record of someone else); never a patient value in the name.
    count: Callable[[str], None] = _ignore_count
    #: Whether the device waits for the installer to pair it (issue 12: a BLE device
    #: with `pair = true` and no bond, outside the pairing window); the status's
    #: `devices.{id}.needs_pairing`.
    needs_pairing: Callable[[bool], None] = _ignore_flag
    #: Whether the hub's clock is synchronised to a time server now (None: cannot
    #: tell). Issue 13: a driver writes the time to a device only when it is True,
    #: never teaching a cuff the stale time a Pi boots with.
    clock_synced: Callable[[], bool | None] = _clock_state_unknown
    #: the store's per-device cursors (e.g. a glucose meter's last stored sequence)
    cursors: Cursors | None = None
    #: shared hub resources by type (e.g. the BLE runtime all BLE drivers share)
    services: Mapping[type[Any], Any] = field(default_factory=dict)

    def service(self, kind: type[T]) -> T:
        found = self.services.get(kind)
        if not isinstance(found, kind):
            raise DriverError(f"this hub offers no {kind.__name__}")
        return found


class Driver(abc.ABC):
    """Base class of device drivers, registered under the `homehub.drivers` entry points."""

    #: pydantic model validating this driver's `[[devices]]` keys.
    Options: ClassVar[type[DriverOptions]] = DriverOptions

    def __init__(self, options: DriverOptions, context: DriverContext) -> None:
        self.options = options
        self.context = context

    @abc.abstractmethod
    async def run(self) -> None:
        """Read the device until cancelled.

        Return normally when the driver has nothing more to do (e.g. a finite
        simulation). Raise on failure: the daemon logs it, reports it in the
        status and restarts the driver with backoff.
        """
