"""Concrete windows from a care plan's schedule, in the hub's local time (pure).

A `Window` says "06:00-10:00 daily"; a `Slot` is one of its occurrences as two aware
instants. Wall times are resolved with zoneinfo on each local date, so a window keeps
its wall-clock times across a daylight-saving change (it is an hour shorter or longer
that night when it spans the change); a start in the skipped hour is taken with the
offset before the change (PEP 495, fold=0), i.e. an hour later on the wall.
"""

from __future__ import annotations

import logging
import os
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path

from gateway.careplan.model import WEEKDAYS, CarePlan, QuietHours, Window, hhmm

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    start: datetime  # aware, UTC
    end: datetime
    index: int  # the window's position in the plan's schedule
    kind: str

    @property
    def key(self) -> str:
        """Stable name of this occurrence (persisted: which slots were measured)."""
        return f"{self.index}@{self.start.isoformat()}"


def hub_zone() -> tzinfo:
    """The hub's own zone as an IANA zone (DST rules, not a fixed offset).

    TZ, else the zone /etc/localtime points at, else its contents, else UTC.
    """
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            log.warning("care plan: TZ names no known zone; using /etc/localtime")
    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            return zoneinfo.ZoneInfo(target.split("zoneinfo/", 1)[1])
        with localtime.open("rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, zoneinfo.ZoneInfoNotFoundError, ValueError):
        return UTC


def plan_zone(plan: CarePlan) -> tzinfo:
    return zoneinfo.ZoneInfo(plan.timezone) if plan.timezone else hub_zone()


def _utc(day: date, hhmm_text: str, zone: tzinfo) -> datetime:
    return datetime.combine(day, hhmm(hhmm_text), zone).astimezone(UTC)


def _occurrence(window: Window, day: date, zone: tzinfo) -> tuple[datetime, datetime]:
    if window.at is not None and window.tolerance_min is not None:
        at = _utc(day, window.at, zone)
        tolerance = timedelta(minutes=window.tolerance_min)
        return at - tolerance, at + tolerance
    assert window.start is not None and window.end is not None
    start = _utc(day, window.start, zone)
    end_day = day + timedelta(days=1) if window.end <= window.start else day
    return start, _utc(end_day, window.end, zone)


def slots_between(plan: CarePlan, zone: tzinfo, since: datetime, until: datetime) -> list[Slot]:
    """Every occurrence that overlaps [since, until), by start."""
    first = since.astimezone(zone).date() - timedelta(days=1)
    last = until.astimezone(zone).date() + timedelta(days=1)
    slots: list[Slot] = []
    day = first
    while day <= last:
        weekday = WEEKDAYS[day.weekday()]
        for index, window in enumerate(plan.schedule):
            if window.days is not None and weekday not in window.days:
                continue
            start, end = _occurrence(window, day, zone)
            if end > since and start < until:
                slots.append(Slot(start, end, index, window.kind.value))
        day += timedelta(days=1)
    return sorted(slots)


def quiet_spans(
    quiet: QuietHours, zone: tzinfo, since: datetime, until: datetime
) -> list[tuple[datetime, datetime]]:
    """The quiet-hours periods overlapping [since, until)."""
    spans = []
    day = since.astimezone(zone).date() - timedelta(days=1)
    last = until.astimezone(zone).date() + timedelta(days=1)
    while day <= last:
        start = _utc(day, quiet.start, zone)
        end_day = day + timedelta(days=1) if quiet.end <= quiet.start else day
        end = _utc(end_day, quiet.end, zone)
        if end > since and start < until:
            spans.append((start, end))
        day += timedelta(days=1)
    return spans
