"""Which flags a reading carries under a care plan (pure; issue 10).

- `below:<mdc>` / `above:<mdc>`: a value of that MDC code is below / above the plan's
  threshold (only values in the threshold's `unit`, when it names one).
- `weight_gain`: body weight (MDC_MASS_BODY_ACTUAL) is up by more than `kg` on the
  lowest weight of the last `days` local days (the heart-failure rule). The hub keeps
  one number per local day, that day's lowest weight, never the readings.
"""

from __future__ import annotations

from datetime import date, timedelta, tzinfo

from gateway.careplan.model import CarePlan
from gateway.mdc import MASS_BODY_ACTUAL, Ucum
from gateway.reading import Reading

LB_KG = 0.45359237
WEIGHT_GAIN = "weight_gain"


def threshold_flags(plan: CarePlan, reading: Reading) -> set[str]:
    flags: set[str] = set()
    for value in reading.values:
        if value.value is None:
            continue
        for t in plan.thresholds:
            if t.mdc != value.mdc or (t.unit is not None and t.unit != value.unit):
                continue
            if t.below is not None and value.value < t.below:
                flags.add(f"below:{t.mdc}")
            if t.above is not None and value.value > t.above:
                flags.add(f"above:{t.mdc}")
    return flags


def body_weight_kg(reading: Reading) -> float | None:
    for value in reading.values:
        if value.mdc != MASS_BODY_ACTUAL.number or value.value is None:
            continue
        if value.unit == Ucum.KG:
            return value.value
        if value.unit == Ucum.LB:
            return value.value * LB_KG
    return None


def weight_gain(
    minima: dict[date, float], day: date, kg: float, limit_kg: float, days: int
) -> bool:
    """Whether `kg` on `day` is more than `limit_kg` over the lowest of `day - days`..`day`."""
    earlier = [m for d, m in minima.items() if day - timedelta(days=days) <= d <= day]
    return bool(earlier) and kg - min(earlier) > limit_kg


def remember_weight(minima: dict[date, float], day: date, kg: float, days: int) -> bool:
    """Keep `day`'s lowest weight and only the days the rule can still look at.

    Returns whether anything changed (to persist only then).
    """
    if minima and day < max(minima) - timedelta(days=days):
        return False  # older than the rule looks (a device's memory): nothing to keep
    changed = False
    if day not in minima or kg < minima[day]:
        minima[day] = kg
        changed = True
    newest = max(minima)
    for old in [d for d in minima if d < newest - timedelta(days=days)]:
        del minima[old]
        changed = True
    return changed


def local_day(reading: Reading, zone: tzinfo) -> date:
    return reading.measured_at.astimezone(zone).date()
