"""The care plan in force on this hub: get/set, windows, flags and what it remembers.

`CarePlanService` is the one object the daemon holds (issue 10):

- `get()` / `set(doc)` are what the `care-plan/get` and `care-plan/set` commands call.
  `set` validates the whole document first (CarePlanError names every bad field and
  nothing changes), then writes `state_dir/care-plan.json` atomically (write, fsync,
  rename, fsync the directory) before it returns, then puts the plan in force.
- `flags(reading)` is asked for each reading before it is stored (the flags go into its
  payload); `stored(reading)` once it is committed ends a due window of its kind and
  remembers a body weight.
- `evaluate()` follows the wall clock: it publishes `MeasurementDue` when the set of due
  kinds changes and `QuietHours` when quiet hours begin or end, and records the windows
  that passed without a reading as missed. `run()` calls it at every window boundary
  (and at least once a minute, so a clock step is caught up quickly).

What it remembers besides the plan (`state_dir/care-plan-state.json`, same atomic write,
written when it changes; new weights by `flush()`, within a minute, not per reading):
which window occurrences were measured, the missed ones (at most MAX_MISSED, newest
kept), how far the windows were judged, and the daily lowest body weight of the last
`weight_gain.days` days. No readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from gateway.careplan.flags import (
    WEIGHT_GAIN,
    body_weight_kg,
    local_day,
    remember_weight,
    threshold_flags,
    weight_gain,
)
from gateway.careplan.model import CarePlan, parse_plan
from gateway.careplan.schedule import Slot, plan_zone, quiet_spans, slots_between
from gateway.clockcheck import clock_problem
from gateway.errors import CarePlanError
from gateway.events import Event, MeasurementDue, QuietHours
from gateway.identity import _write_private as write_atomic
from gateway.reading import Reading

log = logging.getLogger(__name__)

PLAN_FILE = "care-plan.json"
STATE_FILE = "care-plan-state.json"
#: The status lists at most this many missed windows (the newest).
MAX_MISSED = 20
#: Windows that ended while the hub was off are judged up to this far back.
CATCH_UP = timedelta(days=7)
#: `run()` re-evaluates at least this often (a wall-clock step, a late NTP sync).
EVALUATE_EVERY_S = 60.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _slot_json(slot: Slot) -> dict[str, str]:
    return {"kind": slot.kind, "start": _iso(slot.start), "end": _iso(slot.end)}


class CarePlanService:
    def __init__(
        self,
        state_dir: Path,
        *,
        now: Callable[[], datetime],
        publish: Callable[[Event], None] | None = None,
        on_change: Callable[[], None] | None = None,
        zone: tzinfo | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.plan_path = state_dir / PLAN_FILE
        self.state_path = state_dir / STATE_FILE
        self._now = now
        self._publish = publish or (lambda _event: None)
        self._on_change = on_change or (lambda: None)
        self._zone_override = zone
        self.plan = CarePlan()
        self.zone: tzinfo = zone or plan_zone(self.plan)
        #: why the plan file could not be used (the status says so); None: fine
        self.problem: str | None = None
        self._measured: set[str] = set()  # Slot.key of occurrences that got their reading
        self.missed: list[dict[str, str]] = []
        self._judged_until: datetime | None = None
        self._minima: dict[date, float] = {}
        self.due: tuple[str, ...] = ()
        self.quiet = False
        self._wake = asyncio.Event()
        self._dirty = False  # weights remembered but not yet written

    # -- the plan --------------------------------------------------------------------

    def load(self) -> None:
        """The plan and memory from `state_dir` (at start). A damaged file is logged
        and reported in the status; the hub runs on without a plan rather than stop."""
        try:
            text = self.plan_path.read_text()
        except FileNotFoundError:
            text = None
        except OSError as exc:
            self.problem = f"cannot read {PLAN_FILE}: {exc.strerror}"
            log.error("care plan: %s; running without one", self.problem)
            text = None
        if text is not None:
            try:
                self._use(parse_plan(json.loads(text)))
            except (ValueError, CarePlanError) as exc:
                self.problem = f"{PLAN_FILE} is not a valid care plan"
                log.error("care plan: %s (%s); running without one", self.problem, exc)
        self._load_state()
        if not self.plan.empty:
            log.info("care plan %s in force", self.plan.digest())

    def get(self) -> dict[str, Any]:
        """The plan in force as JSON (`{}`: none)."""
        return self.plan.to_json()

    def set(self, doc: dict[str, Any]) -> None:
        """Validate, persist, then apply `doc`; on CarePlanError nothing has changed."""
        plan = parse_plan(doc)
        data = json.dumps(plan.to_json(), sort_keys=True, indent=1).encode() + b"\n"
        # Durable before it is in force (and before the command says ok).
        try:
            write_atomic(self.plan_path, data, owner=None)
        except OSError as exc:
            # Not in force either: a plan the hub would forget at the next restart.
            log.error("care plan: cannot write %s: %s", PLAN_FILE, exc.strerror)
            raise CarePlanError([("(plan)", f"cannot be saved: {exc.strerror}")]) from exc
        before = self.plan.digest()
        self._use(plan)
        self.problem = None
        if plan.digest() != before:
            # A new plan starts judging from now: the old plan's windows are not missed.
            self._measured.clear()
            self.missed.clear()
            self._judged_until = self._now()
            log.info("care plan %s in force (was %s)", plan.digest(), before)
        self._save_state()
        self.evaluate()
        self._wake.set()
        self._on_change()

    # The command channel's handlers (gateway/commands/registry.py: args -> result).
    # `care-plan/set`'s args are the plan document itself; a CarePlanError's problems
    # become the response's field errors (prefixed "args.").

    def get_command(self, args: dict[str, Any]) -> dict[str, Any]:
        """`care-plan/get`: the plan in force, its hash and version."""
        return {"plan": self.get(), "hash": self.plan.digest(), "version": self.plan.version}

    def set_command(self, args: dict[str, Any]) -> dict[str, Any]:
        """`care-plan/set`: put `args` in force (persisted first); its hash and version."""
        self.set(args)
        return {"hash": self.plan.digest(), "version": self.plan.version}

    def _use(self, plan: CarePlan) -> None:
        self.plan = plan
        self.zone = self._zone_override or plan_zone(plan)

    # -- readings ----------------------------------------------------------------------

    def flags(self, reading: Reading) -> tuple[str, ...]:
        """The reading's flags under the plan (called before it is stored; changes nothing)."""
        plan = self.plan
        if not plan.thresholds and plan.weight_gain is None:
            return ()
        flags = threshold_flags(plan, reading)
        rule = plan.weight_gain
        kg = body_weight_kg(reading) if rule is not None else None
        if (
            rule is not None
            and kg is not None
            and weight_gain(self._minima, local_day(reading, self.zone), kg, rule.kg, rule.days)
        ):
            flags.add(WEIGHT_GAIN)
        return tuple(sorted(flags))

    def stored(self, reading: Reading, received_at: datetime | None = None) -> None:
        """A reading was committed: it ends a due window of its kind, and a body weight
        is remembered for the weight-gain rule (only what is stored counts)."""
        plan = self.plan
        if plan.empty:
            return
        rule = plan.weight_gain
        kg = body_weight_kg(reading) if rule is not None else None
        if rule is not None and kg is not None:
            # Written by run() within EVALUATE_EVERY_S (and at stop), not per reading: a
            # scale's memory of many days must not cost an fsync each on the event loop.
            day = local_day(reading, self.zone)
            self._dirty |= remember_weight(self._minima, day, kg, rule.days)
        if self._measured_in(reading, received_at or self._now()):
            self._save_state()
            self.evaluate()

    def _measured_in(self, reading: Reading, received: datetime) -> bool:
        """Mark the windows this reading counts for. It counts when it was measured in
        the window, or received while the window was open and measured no earlier than
        its start (a device clock ahead); a record from a device's memory measured
        before the window does not end it."""
        measured = reading.measured_at
        kind = reading.kind.value
        changed = False
        since = min(measured, received)
        for slot in slots_between(self.plan, self.zone, since - CATCH_UP, received + timedelta(1)):
            if slot.kind != kind or slot.key in self._measured or measured < slot.start:
                continue
            if measured < slot.end or slot.start <= received < slot.end:
                self._measured.add(slot.key)
                changed = True
                slot_doc = _slot_json(slot)
                if slot_doc in self.missed:  # measured in it after all (a late upload)
                    self.missed.remove(slot_doc)
        return changed

    # -- time ------------------------------------------------------------------------

    def evaluate(self) -> datetime | None:
        """Judge the windows at the current time; return the next boundary (None: none)."""
        now = self._now()
        plan = self.plan
        boundaries: list[datetime] = []
        due: set[str] = set()
        judged = self._judged_until
        if judged is not None and clock_problem(judged) is not None:
            judged = None  # judged on a clock that was wrong (a Pi before NTP): start over
        # On an implausible clock nothing is judged missed (it would be a week of them
        # once the clock is set); what is due now is still shown.
        judging = clock_problem(now) is None
        since = now - CATCH_UP if judged is None else max(judged, now - CATCH_UP)
        changed = False
        slots = slots_between(plan, self.zone, min(since, now), now + timedelta(days=2))
        for slot in slots:
            if slot.end <= now:
                if (
                    judging
                    and judged is not None
                    and slot.end > since
                    and slot.key not in self._measured
                ):
                    self.missed.append(_slot_json(slot))
                    changed = True
                    log.info("care plan: a %s window passed without a reading", slot.kind)
                continue
            if slot.start <= now and slot.key not in self._measured:
                due.add(slot.kind)
            boundaries.extend(b for b in (slot.start, slot.end) if b > now)
        if judging and (judged is None or now > judged):
            self._judged_until = now
        if len(self.missed) > MAX_MISSED:
            del self.missed[: len(self.missed) - MAX_MISSED]
        # Forget measured occurrences once they cannot matter any more.
        horizon = now - CATCH_UP - timedelta(days=1)
        for key in [k for k in self._measured if datetime.fromisoformat(k.split("@")[1]) < horizon]:
            self._measured.discard(key)
        if changed:
            self._save_state()
        quiet = False
        if plan.quiet_hours is not None:
            for start, end in quiet_spans(plan.quiet_hours, self.zone, now, now + timedelta(2)):
                quiet |= start <= now < end
                boundaries.extend(b for b in (start, end) if b > now)
        due_now = tuple(sorted(due))
        if due_now != self.due:
            self.due = due_now
            self._publish(MeasurementDue(due_now))
            changed = True
        if quiet != self.quiet:
            self.quiet = quiet
            level = plan.quiet_hours.help_level if plan.quiet_hours is not None else 1.0
            self._publish(QuietHours(quiet, level))
            changed = True
        if changed:
            self._on_change()
        return min(boundaries) if boundaries else None

    def _quiet_at(self, now: datetime) -> bool:
        quiet = self.plan.quiet_hours
        if quiet is None:
            return False
        spans = quiet_spans(quiet, self.zone, now, now + timedelta(seconds=1))
        return any(start <= now < end for start, end in spans)

    def next_window(self) -> Slot | None:
        now = self._now()
        for slot in slots_between(self.plan, self.zone, now, now + timedelta(days=8)):
            if slot.start > now:
                return slot
        return None

    async def run(self) -> None:
        """Evaluate at every boundary and at least every EVALUATE_EVERY_S."""
        try:
            await self._run()
        finally:
            self.flush()

    def flush(self) -> None:
        """Write remembered weights not yet on disk (run() does, each round and at stop)."""
        if self._dirty:
            self._save_state()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                at = self.evaluate()
                self.flush()
            except Exception:
                log.exception("care plan: evaluating the windows failed; will try again")
                at = None
            wait = EVALUATE_EVERY_S
            if at is not None:
                # At least 1 ms: a boundary a rounding error away must not spin the loop.
                wait = min(wait, max(0.001, (at - self._now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        """The status document's `care_plan` block (None: no plan and no problem)."""
        plan = self.plan
        if plan.empty and self.problem is None:
            return None
        upcoming = self.next_window()
        now = self._now()
        # From the windows, not from the last evaluate(): right also for `homehub status`.
        due = {
            slot.kind
            for slot in slots_between(plan, self.zone, now, now + timedelta(seconds=1))
            if slot.start <= now < slot.end and slot.key not in self._measured
        }
        return {
            "version": plan.version,
            "hash": plan.digest(),
            "windows": len(plan.schedule),
            "thresholds": len(plan.thresholds) + (plan.weight_gain is not None),
            "due": sorted(due),
            "next_window": None if upcoming is None else _slot_json(upcoming),
            "missed": list(self.missed),
            "quiet": self._quiet_at(now),
            "problem": self.problem,
        }

    # -- memory ------------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            doc = json.loads(self.state_path.read_text())
            if doc.get("plan") != self.plan.digest():
                # Another plan's windows; the weights are the patient's whatever the plan.
                self._minima = {date.fromisoformat(d): float(v) for d, v in doc["weights"].items()}
                return
            self._measured = set(doc["measured"])
            self.missed = [dict(m) for m in doc["missed"]][-MAX_MISSED:]
            judged = doc["judged_until"]
            self._judged_until = None if judged is None else datetime.fromisoformat(judged)
            self._minima = {date.fromisoformat(d): float(v) for d, v in doc["weights"].items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # The type only: a message could quote a remembered weight.
            log.warning(
                "care plan: %s unreadable (%s); starting afresh", STATE_FILE, type(exc).__name__
            )

    def _save_state(self) -> None:
        doc = {
            "plan": self.plan.digest(),
            "judged_until": None if self._judged_until is None else self._judged_until.isoformat(),
            "measured": sorted(self._measured),
            "missed": self.missed,
            "weights": {d.isoformat(): kg for d, kg in sorted(self._minima.items())},
        }
        try:
            write_atomic(self.state_path, json.dumps(doc).encode(), owner=None)
            self._dirty = False
        except OSError as exc:
            # Losing this costs a missed-window report or a weight-gain flag after a
            # restart, never a reading: log and go on.
            log.error("care plan: cannot write %s: %s", STATE_FILE, exc.strerror)
