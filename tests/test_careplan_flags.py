"""Care plan flags: thresholds per MDC code and the weight-gain rule (issue 10)."""

from __future__ import annotations

import json
import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path

from homehub_contract import validator

from gateway.careplan import CarePlanService
from gateway.mdc import (
    MASS_BODY_ACTUAL,
    PRESS_BLD_NONINV_DIA,
    PRESS_BLD_NONINV_SYS,
    PULS_OXIM_SAT_O2,
    Ucum,
)
from gateway.reading import Kind, Reading, Value
from gateway.uplink.payload import encode_reading

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=PARIS)


def bp(sys_: float, dia: float, unit: str = Ucum.MMHG) -> Reading:
    return Reading(
        device_id="bp-1",
        driver="simulated",
        kind=Kind.BLOOD_PRESSURE,
        measured_at=NOW,
        measured_at_source="device",
        values=(
            Value.of(PRESS_BLD_NONINV_SYS, sys_, unit),
            Value.of(PRESS_BLD_NONINV_DIA, dia, unit),
        ),
    )


def weight(kg: float, at: datetime, unit: str = Ucum.KG) -> Reading:
    return Reading(
        device_id="scale-1",
        driver="simulated",
        kind=Kind.WEIGHT,
        measured_at=at,
        measured_at_source="device",
        values=(Value.of(MASS_BODY_ACTUAL, kg, unit),),
    )


def plans(tmp_path: Path, doc: dict[str, object]) -> CarePlanService:
    service = CarePlanService(tmp_path, now=lambda: NOW, zone=PARIS)
    service.set(doc)
    return service


def test_thresholds_flag_the_right_readings(tmp_path: Path) -> None:
    p = plans(
        tmp_path,
        {
            "thresholds": [
                {"mdc": 150021, "above": 160, "below": 90, "unit": "mm[Hg]"},
                {"mdc": 150022, "above": 100},
                {"mdc": 150456, "below": 92},
            ]
        },
    )
    assert p.flags(bp(120, 80)) == ()
    assert p.flags(bp(160, 80)) == ()  # at the limit is not outside it
    assert p.flags(bp(161, 80)) == ("above:150021",)
    assert p.flags(bp(85, 60)) == ("below:150021",)
    assert p.flags(bp(170, 105)) == ("above:150021", "above:150022")
    # The systolic threshold is in mm[Hg]; a kPa reading is not compared with it.
    assert p.flags(bp(25.0, 12.0, Ucum.KPA)) == ()
    spo2 = Reading(
        device_id="ox-1",
        driver="simulated",
        kind=Kind.PULSE_OXIMETER,
        measured_at=NOW,
        measured_at_source="device",
        values=(Value.of(PULS_OXIM_SAT_O2, 90.0, Ucum.PERCENT),),
    )
    assert p.flags(spo2) == ("below:150456",)
    missing = bp(120, 80).model_copy(
        update={"values": (Value.of(PRESS_BLD_NONINV_SYS, None, Ucum.MMHG),)}
    )
    assert p.flags(missing) == ()  # "not available" is never outside a threshold


def test_weight_gain_rule(tmp_path: Path) -> None:
    p = plans(tmp_path, {"weight_gain": {"kg": 2.0, "days": 3}})
    day = timedelta(days=1)

    def step(kg: float, at: datetime, unit: str = Ucum.KG) -> tuple[str, ...]:
        r = weight(kg, at, unit)
        flags = p.flags(r)
        p.stored(r, at)
        return flags

    assert step(80.0, NOW) == ()
    assert step(80.5, NOW + day) == ()
    assert step(82.0, NOW + 2 * day) == ()  # +2.0 is not more than 2.0
    assert step(82.1, NOW + 3 * day) == ("weight_gain",)  # 80.0 three days before
    # Day 4: the 80.0 of day 0 is out of the window; the lowest is 80.5 (day 1).
    assert step(82.4, NOW + 4 * day) == ()
    assert step(82.6, NOW + 4 * day + timedelta(hours=1)) == ("weight_gain",)
    # In pounds: 185 lb = 83.9 kg.
    assert step(185.0, NOW + 4 * day + timedelta(hours=2), Ucum.LB) == ("weight_gain",)
    # A scale's memory of older days changes nothing the rule looks at.
    assert step(70.0, NOW - 30 * day) == ()
    # Only one number per day is kept, and only the days the rule looks at; written by
    # flush() (run() calls it each round and when it stops), not per reading.
    p.flush()
    state = json.loads((tmp_path / "care-plan-state.json").read_text())
    assert list(state["weights"]) == ["2026-12-04", "2026-12-05", "2026-12-06", "2026-12-07"]
    # ... and they survive a restart.
    again = CarePlanService(tmp_path, now=lambda: NOW, zone=PARIS)
    again.load()
    assert again.flags(weight(84.1, NOW + 5 * day)) == ("weight_gain",)  # 82.0 on day 2
    assert again.flags(weight(83.9, NOW + 5 * day)) == ()


def test_no_plan_no_flags(tmp_path: Path) -> None:
    p = CarePlanService(tmp_path, now=lambda: NOW)
    p.load()
    assert p.flags(bp(250, 150)) == ()


def test_flags_in_the_payload_are_schema_checked() -> None:
    check = validator("reading-1")
    common = {"reading_id": "r-1", "gateway_id": "hub-1", "received_at": NOW.astimezone(UTC)}
    plain = json.loads(encode_reading(bp(120, 80), **common))
    assert "flags" not in plain  # additive: unflagged payloads are unchanged
    check.validate(plain)
    flagged = json.loads(
        encode_reading(bp(170, 80), flags=("above:150021", "weight_gain"), **common)
    )
    assert flagged["flags"] == ["above:150021", "weight_gain"]
    check.validate(flagged)
    flagged["flags"] = ["sideways:1"]
    assert not check.is_valid(flagged)


def test_run_writes_remembered_weights_when_it_stops(tmp_path: Path) -> None:
    import asyncio

    async def scenario() -> None:
        p = plans(tmp_path, {"weight_gain": {"kg": 2.0, "days": 3}})
        task = asyncio.create_task(p.run())
        await asyncio.sleep(0)
        p.stored(weight(80.0, NOW), NOW)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    state = json.loads((tmp_path / "care-plan-state.json").read_text())
    assert state["weights"] == {"2026-12-03": 80.0}
