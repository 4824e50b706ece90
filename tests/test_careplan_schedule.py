"""Care plan windows on virtual time: "measurement due" starts and ends at the right
moments, ends only on a reading of its kind, missed windows, quiet hours (issue 10).

The service and the panel run on tests/virtual_time.py's loop; the wall clock given to
the service is that loop's time from a fixed local moment, so a day passes in no time
and every boundary is exact.
"""

from __future__ import annotations

import asyncio
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.careplan import CarePlanService, parse_plan
from gateway.careplan.schedule import slots_between
from gateway.events import DiskFull, HubStarted, MeasurementDue, PanelShows, UplinkUp
from gateway.mdc import MASS_BODY_ACTUAL, PRESS_BLD_NONINV_SYS, Ucum
from gateway.reading import Kind, Reading, Value
from tests.panel_helpers import RGB_PINS, mock_panel

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
Run = Callable[[Callable[[], Awaitable[Any]]], Any]


def reading(kind: Kind, at: datetime, value: float = 80.0) -> Reading:
    code, unit = (
        (MASS_BODY_ACTUAL, Ucum.KG) if kind is Kind.WEIGHT else (PRESS_BLD_NONINV_SYS, Ucum.MMHG)
    )
    return Reading(
        device_id="dev-1",
        driver="simulated",
        kind=kind,
        measured_at=at,
        measured_at_source="device",
        values=(Value.of(code, value, unit),),
    )


class Wall:
    """The wall clock as the virtual loop's time from `start`."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.origin = asyncio.get_running_loop().time()

    def now(self) -> datetime:
        elapsed = asyncio.get_running_loop().time() - self.origin
        return (self.start + timedelta(seconds=elapsed)).astimezone(PARIS)

    async def until(self, moment: datetime) -> None:
        await asyncio.sleep((moment - self.now()).total_seconds())


def local(day: int, hour: int, minute: int = 0, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=PARIS)


async def _due_scenario(tmp_path: Path) -> None:
    wall = Wall(local(3, 5))
    dues: list[tuple[datetime, tuple[str, ...]]] = []
    shown: list[tuple[datetime, str]] = []

    def record(event: Any) -> None:
        if isinstance(event, MeasurementDue):
            dues.append((wall.now(), event.kinds))
        elif isinstance(event, PanelShows):
            shown.append((wall.now(), event.state))

    async with mock_panel() as mp:
        # One bus: the plan's events reach the panel as the daemon's would.
        mp.events.subscribe(record)
        plans = CarePlanService(tmp_path, now=wall.now, publish=mp.events.publish, zone=PARIS)
        mp.publish(HubStarted(), UplinkUp())  # (offline 6 h would be "needs help")
        plans.set({"schedule": [{"kind": "weight", "start": "06:00", "end": "10:00"}]})
        task = asyncio.create_task(plans.run())
        try:
            await wall.until(local(3, 7))
            assert dues == [(local(3, 6), ("weight",))]
            assert shown[-1] == (local(3, 6), "measurement due")
            # Another kind does not end it.
            plans.stored(reading(Kind.BLOOD_PRESSURE, local(3, 7)), local(3, 7))
            await wall.until(local(3, 7, 30))
            assert mp.panel.state is not None and mp.panel.state.value == "measurement due"
            # A weight measured before the window (a device's memory) does not either.
            plans.stored(reading(Kind.WEIGHT, local(3, 5, 59)), local(3, 7, 30))
            assert plans.due == ("weight",)
            plans.stored(reading(Kind.WEIGHT, local(3, 7, 30)), local(3, 7, 30))
            assert dues[-1] == (local(3, 7, 30), ())
            assert shown[-1] == (local(3, 7, 30), "ready")
            # Past the end: a measured window is not missed.
            await wall.until(local(3, 11))
            assert plans.missed == []
            status = plans.status()
            assert status is not None
            assert status["next_window"] == {
                "kind": "weight",
                "start": "2026-12-04T05:00:00Z",
                "end": "2026-12-04T09:00:00Z",
            }
            # Next day: no reading at all.
            await wall.until(local(4, 10, 1))
            assert dues[-2:] == [(local(4, 6), ("weight",)), (local(4, 10), ())]
            assert [s for s in shown if s[0] >= local(4, 0)] == [
                (local(4, 6), "measurement due"),
                (local(4, 10), "ready"),
            ]
            assert plans.missed == [
                {"kind": "weight", "start": "2026-12-04T05:00:00Z", "end": "2026-12-04T09:00:00Z"}
            ]
            # A late upload of a weight measured in that window takes it off the list.
            plans.stored(reading(Kind.WEIGHT, local(4, 8)), local(4, 12))
            assert plans.missed == []
        finally:
            task.cancel()


def test_measurement_due_starts_and_ends_at_the_right_times(tmp_path: Path, virtual: Run) -> None:
    virtual(lambda: _due_scenario(tmp_path))


async def _restart_scenario(tmp_path: Path) -> None:
    wall = Wall(local(3, 5))
    plan = {"schedule": [{"kind": "weight", "at": "08:00", "tolerance_min": 60}]}
    first = CarePlanService(tmp_path, now=wall.now, zone=PARIS)
    first.load()
    first.set(plan)
    # The hub is off from 05:00 to the next day 12:00: both windows passed unmeasured.
    await wall.until(local(4, 12))
    again = CarePlanService(tmp_path, now=wall.now, zone=PARIS)
    again.load()
    again.evaluate()
    assert [m["start"] for m in again.missed] == ["2026-12-03T06:00:00Z", "2026-12-04T06:00:00Z"]
    # Judged once only.
    again.evaluate()
    third = CarePlanService(tmp_path, now=wall.now, zone=PARIS)
    third.load()
    third.evaluate()
    assert len(third.missed) == 2


def test_windows_missed_while_off_are_judged_once_at_start(tmp_path: Path, virtual: Run) -> None:
    virtual(lambda: _restart_scenario(tmp_path))


async def _quiet_scenario(tmp_path: Path) -> None:
    wall = Wall(local(3, 21))
    async with mock_panel() as mp:
        plans = CarePlanService(tmp_path, now=wall.now, publish=mp.events.publish, zone=PARIS)
        mp.publish(HubStarted(), UplinkUp())
        plans.set({"quiet_hours": {"start": "22:00", "end": "07:00", "help_level": 0.25}})
        task = asyncio.create_task(plans.run())
        red, green, _blue = (mp.pin(n) for n in RGB_PINS)
        try:
            await wall.until(local(3, 21, 30))
            assert green.state == pytest.approx(0.1)  # ready, dim green
            await wall.until(local(3, 22, 0) + timedelta(seconds=0.5))
            assert plans.quiet
            assert (red.state, green.state) == (0, 0)  # ready is dark at night
            mp.publish(DiskFull())
            await asyncio.sleep(0.5)  # inside the red "on" second of the blink
            assert mp.panel.state is not None and mp.panel.state.value == "needs help"
            assert red.state == pytest.approx(0.25)  # needs help, dimmed
            await wall.until(local(4, 7, 0) + timedelta(seconds=0.5))
            assert not plans.quiet
            assert red.state == pytest.approx(1.0)  # full brightness again by day
        finally:
            task.cancel()


def test_quiet_hours_dark_but_needs_help_dimmed(tmp_path: Path, virtual: Run) -> None:
    virtual(lambda: _quiet_scenario(tmp_path))


def test_windows_keep_wall_time_across_dst() -> None:
    plan = parse_plan({"schedule": [{"kind": "weight", "start": "06:00", "end": "10:00"}]})
    # Europe/Paris leaves summer time on 2026-10-25 (03:00 -> 02:00).
    slots = slots_between(
        plan, PARIS, datetime(2026, 10, 24, tzinfo=UTC), datetime(2026, 10, 26, 23, tzinfo=UTC)
    )
    starts = [s.start.astimezone(PARIS).strftime("%d %H:%M") for s in slots]
    assert starts == ["24 06:00", "25 06:00", "26 06:00"]
    assert [s.start.hour for s in slots] == [4, 5, 5]  # UTC moves, the wall does not


def test_window_across_midnight_and_days() -> None:
    plan = parse_plan(
        {
            "schedule": [
                {"kind": "glucose", "start": "22:00", "end": "01:00", "days": ["thu"]},
                {"kind": "pulse_oximeter", "at": "00:15", "tolerance_min": 30},
            ]
        }
    )
    # Thursday 3 December 2026 and the next day.
    slots = slots_between(plan, PARIS, local(3, 0), local(4, 23, 59))
    glucose = [s for s in slots if s.kind == "glucose"]
    assert [(s.start.astimezone(PARIS), s.end.astimezone(PARIS)) for s in glucose] == [
        (local(3, 22), local(4, 1))
    ]
    spo2 = [s for s in slots if s.kind == "pulse_oximeter" and s.start >= local(3, 0)]
    assert spo2[0].start.astimezone(PARIS) == local(3, 23, 45)
    assert spo2[0].end.astimezone(PARIS) == local(4, 0, 45)


def test_a_wrong_clock_judges_no_window_missed(tmp_path: Path) -> None:
    """A Pi boots in 1970 (no RTC) and NTP sets the clock later: no week of 'missed'."""
    plan = {"schedule": [{"kind": "weight", "start": "06:00", "end": "10:00"}]}
    clock = {"now": datetime(1970, 1, 1, 0, 5, tzinfo=UTC)}
    plans = CarePlanService(tmp_path, now=lambda: clock["now"], zone=PARIS)
    plans.set(plan)
    plans.evaluate()
    clock["now"] = local(3, 12)  # NTP answered
    plans.evaluate()
    assert plans.missed == []
    clock["now"] = local(4, 12)  # a day later, the window of the 4th passed unmeasured
    plans.evaluate()
    assert [m["start"] for m in plans.missed] == ["2026-12-04T05:00:00Z"]
