"""The care plan document (issue 10): what to measure when, thresholds, quiet hours.

The backend sends it as JSON (`care-plan/set`); the hub keeps the plan in force in
`state_dir/care-plan.json`. Every field is checked here and an invalid plan is refused
as a whole with every problem named by its field path (`CarePlanError`): a plan the
hub half-understood could hide a due measurement or a patient getting worse.

Times are the hub's local wall time ("HH:MM", 24 h) in `timezone` (an IANA name;
default: the hub's own zone), so "06:00" stays 06:00 across daylight-saving changes.
"""

from __future__ import annotations

import hashlib
import json
import zoneinfo
from datetime import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import CarePlanError
from gateway.reading import Kind

#: Bounds that keep a plan small on the hub (and the status document bounded).
MAX_WINDOWS = 48
MAX_THRESHOLDS = 64
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Strict):
    """One expected measurement: `start`-`end`, or `at` ± `tolerance_min`, local time.

    A window may cross midnight (start 22:00, end 01:00 ends the next day). `days`
    limits it to some weekdays (of the day it starts); default every day.
    """

    kind: Kind
    start: StrictStr | None = Field(default=None, pattern=_HHMM)
    end: StrictStr | None = Field(default=None, pattern=_HHMM)
    at: StrictStr | None = Field(default=None, pattern=_HHMM)
    tolerance_min: StrictInt | None = Field(default=None, ge=1, le=720)
    days: tuple[Weekday, ...] | None = Field(default=None, min_length=1, max_length=7)

    @model_validator(mode="after")
    def _one_form(self) -> Window:
        ranged = self.start is not None or self.end is not None
        timed = self.at is not None or self.tolerance_min is not None
        if ranged == timed:
            raise ValueError("give either start and end, or at and tolerance_min")
        if ranged and (self.start is None or self.end is None):
            raise ValueError("start and end go together")
        if timed and (self.at is None or self.tolerance_min is None):
            raise ValueError("at and tolerance_min go together")
        if ranged and self.start == self.end:
            raise ValueError("start and end are the same time (an empty window)")
        if self.days is not None and len(set(self.days)) != len(self.days):
            raise ValueError("days repeat")
        return self

    def span(self) -> tuple[time, int]:
        """(local start time, length in minutes)."""
        if self.at is not None and self.tolerance_min is not None:
            at = hhmm(self.at)
            start_min = (at.hour * 60 + at.minute - self.tolerance_min) % 1440
            return time(start_min // 60, start_min % 60), 2 * self.tolerance_min
        assert self.start is not None and self.end is not None
        start, end = hhmm(self.start), hhmm(self.end)
        length = (end.hour * 60 + end.minute - start.hour * 60 - start.minute) % 1440
        return start, length


class Threshold(_Strict):
    """A value of MDC code `mdc` below `below` or above `above` is flagged.

    `unit` (UCUM) limits it to values in that unit (a scale may report kg or lb);
    without it, any unit. `show_on_panel`: see CarePlan.show_on_panel.
    """

    mdc: StrictInt = Field(ge=0, le=0xFFFFFFFF)
    below: StrictFloat | None = Field(default=None, allow_inf_nan=False)
    above: StrictFloat | None = Field(default=None, allow_inf_nan=False)
    unit: StrictStr | None = Field(default=None, min_length=1, max_length=16)

    @model_validator(mode="after")
    def _bounds(self) -> Threshold:
        if self.below is None and self.above is None:
            raise ValueError("give below, above or both")
        if self.below is not None and self.above is not None and self.below >= self.above:
            raise ValueError("below must be less than above")
        return self


class WeightGain(_Strict):
    """The heart-failure rule: body weight up by more than `kg` within `days` days."""

    kg: StrictFloat = Field(gt=0, le=50, allow_inf_nan=False)
    days: StrictInt = Field(ge=1, le=14)


class QuietHours(_Strict):
    """No light from `start` to `end` (local), except "needs help", dimmed."""

    start: StrictStr = Field(pattern=_HHMM)
    end: StrictStr = Field(pattern=_HHMM)
    help_level: StrictFloat = Field(default=0.2, ge=0.01, le=1.0)

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end are the same time")
        return self


class CarePlan(_Strict):
    """The whole plan. An empty document `{}` is "no plan"."""

    #: The care team's own version number, echoed in the status.
    version: StrictInt | None = Field(default=None, ge=0)
    timezone: StrictStr | None = Field(default=None, min_length=1, max_length=64)
    schedule: tuple[Window, ...] = Field(default=(), max_length=MAX_WINDOWS)
    thresholds: tuple[Threshold, ...] = Field(default=(), max_length=MAX_THRESHOLDS)
    weight_gain: WeightGain | None = None
    quiet_hours: QuietHours | None = None
    #: False (default): a flag only changes what the backend sees; the light gives no
    #: clinical advice (issue 10). True: once a flagged reading is sent, the panel shows
    #: "sent, outside your plan" instead of "sent" (gateway/panel/states.py).
    show_on_panel: StrictBool = False

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError("not a known IANA time zone") from exc
        return v

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)

    @property
    def empty(self) -> bool:
        return not (self.schedule or self.thresholds or self.weight_gain or self.quiet_hours)

    def digest(self) -> str:
        """A short hash of the plan's canonical JSON: the status names the plan by it."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(plan)"


def parse_plan(doc: Any) -> CarePlan:
    """Validate a care plan document; CarePlanError names every bad field."""
    if not isinstance(doc, dict):
        raise CarePlanError([("(plan)", "must be a JSON object")])
    try:
        return CarePlan.model_validate(doc)
    except ValidationError as exc:
        # The field and what is wrong, never the value (it may be a patient's threshold).
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append((_path(loc), message))
        raise CarePlanError(problems) from None
