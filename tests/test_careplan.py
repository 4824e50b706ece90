"""The care plan document: validation naming the field, atomic persistence, get/set (issue 10)."""

from __future__ import annotations

import copy
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.careplan import PLAN_FILE, CarePlanService, parse_plan
from gateway.errors import CarePlanError, GatewayError

PLAN: dict[str, Any] = {
    "version": 3,
    "timezone": "Europe/Paris",
    "schedule": [
        {"kind": "weight", "start": "06:00", "end": "10:00"},
        {"kind": "blood_pressure", "at": "08:00", "tolerance_min": 90},
        {"kind": "blood_pressure", "at": "20:00", "tolerance_min": 90, "days": ["mon", "thu"]},
    ],
    "thresholds": [
        {"mdc": 150021, "above": 160, "below": 90, "unit": "mm[Hg]"},
        {"mdc": 150456, "below": 92},
    ],
    "weight_gain": {"kg": 2, "days": 3},
    "quiet_hours": {"start": "22:00", "end": "07:00"},
}


def service(state_dir: Path) -> CarePlanService:
    return CarePlanService(state_dir, now=lambda: datetime(2026, 12, 3, 12, 0, tzinfo=UTC))


def test_set_persists_before_returning_and_get_returns_it(tmp_path: Path) -> None:
    plans = service(tmp_path)
    plans.load()
    assert plans.get() == {}
    plans.set(copy.deepcopy(PLAN))
    on_disk = json.loads((tmp_path / PLAN_FILE).read_text())
    assert on_disk == plans.get()
    assert plans.get()["schedule"][1] == PLAN["schedule"][1]
    assert plans.get()["thresholds"][0]["above"] == 160
    # Thresholds are the patient's: readable by the service user only.
    assert stat.S_IMODE(os.stat(tmp_path / PLAN_FILE).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    again = service(tmp_path)
    again.load()
    assert again.get() == plans.get()
    assert again.plan.digest() == plans.plan.digest()


def test_empty_plan_clears(tmp_path: Path) -> None:
    plans = service(tmp_path)
    plans.set(copy.deepcopy(PLAN))
    assert plans.status() is not None
    plans.set({})
    assert plans.get() == {}
    assert plans.status() is None
    again = service(tmp_path)
    again.load()
    assert again.get() == {}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(PLAN)
    target: Any = doc
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is _DELETE:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("schedule[0].kind", "spo2_typo", "schedule[0].kind"),
        ("schedule[0].start", "6:00", "schedule[0].start"),
        ("schedule[0].start", "24:00", "schedule[0].start"),
        ("schedule[0].end", "06:00", "schedule[0]"),  # empty window
        ("schedule[1].end", "10:00", "schedule[1]"),  # both forms
        ("schedule[1].tolerance_min", 0, "schedule[1].tolerance_min"),
        ("schedule[1].tolerance_min", "90", "schedule[1].tolerance_min"),
        ("schedule[2].days", ["mon", "mon"], "schedule[2]"),
        ("schedule[2].days", ["monday"], "schedule[2].days[0]"),
        ("thresholds[0].above", "160", "thresholds[0].above"),
        ("thresholds[0].above", True, "thresholds[0].above"),
        ("thresholds[0].below", 170, "thresholds[0]"),  # below >= above
        ("thresholds[1].below", _DELETE, "thresholds[1]"),  # neither bound
        ("thresholds[1].mdc", -1, "thresholds[1].mdc"),
        ("weight_gain.days", 0, "weight_gain.days"),
        ("weight_gain.kg", float("inf"), "weight_gain.kg"),
        ("quiet_hours.end", "22:00", "quiet_hours"),
        ("timezone", "Mars/Olympus", "timezone"),
        ("version", "3", "version"),
        ("show_on_panel", 1, "show_on_panel"),
        ("colour", "red", "colour"),  # unknown field
        ("schedule[0].extra", 1, "schedule[0].extra"),
    ],
)
def test_invalid_plan_names_the_field_and_changes_nothing(
    tmp_path: Path, path: str, value: Any, field: str
) -> None:
    plans = service(tmp_path)
    plans.set(copy.deepcopy(PLAN))
    before_file = (tmp_path / PLAN_FILE).read_bytes()
    before = plans.get()
    with pytest.raises(CarePlanError) as caught:
        plans.set(_with(path, value))
    assert isinstance(caught.value, GatewayError)
    assert field in [p for p, _ in caught.value.problems], caught.value.problems
    # No value in the message (a threshold is patient data).
    assert "Mars" not in str(caught.value)
    assert plans.get() == before
    assert (tmp_path / PLAN_FILE).read_bytes() == before_file


def test_every_problem_named_at_once() -> None:
    with pytest.raises(CarePlanError) as caught:
        parse_plan({"schedule": [{"kind": "weight"}], "thresholds": [{"mdc": "x", "above": 1}]})
    fields = {p for p, _ in caught.value.problems}
    assert fields == {"schedule[0]", "thresholds[0].mdc"}


@pytest.mark.parametrize("doc", [[], "plan", None, 3])
def test_not_an_object(doc: Any) -> None:
    with pytest.raises(CarePlanError) as caught:
        parse_plan(doc)
    assert caught.value.problems == [("(plan)", "must be a JSON object")]


def test_damaged_plan_file_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / PLAN_FILE).write_text('{"schedule": [')
    plans = service(tmp_path)
    plans.load()
    assert plans.get() == {}
    status = plans.status()
    assert status is not None and status["problem"] == f"{PLAN_FILE} is not a valid care plan"
    plans.set(copy.deepcopy(PLAN))
    assert plans.status()["problem"] is None  # type: ignore[index]


def test_a_plan_that_cannot_be_saved_is_not_in_force(tmp_path: Path) -> None:
    plans = service(tmp_path / "missing")  # no such directory: the write fails
    with pytest.raises(CarePlanError) as caught:
        plans.set(copy.deepcopy(PLAN))
    assert caught.value.problems[0][0] == "(plan)"
    assert plans.get() == {}


def test_hub_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.careplan.schedule import hub_zone

    monkeypatch.setenv("TZ", "America/New_York")
    assert str(hub_zone()) == "America/New_York"
    monkeypatch.setenv("TZ", ":Europe/Paris")
    assert str(hub_zone()) == "Europe/Paris"


def test_command_handlers(tmp_path: Path) -> None:
    plans = service(tmp_path)
    assert plans.get_command({})["plan"] == {}
    result = plans.set_command(copy.deepcopy(PLAN))
    assert result == {"hash": plans.plan.digest(), "version": 3}
    got = plans.get_command({})
    assert got["plan"] == plans.get() and got["hash"] == result["hash"]
    with pytest.raises(CarePlanError):
        plans.set_command({"schedule": "daily"})
    assert plans.get_command({}) == got


def test_damaged_state_file_starts_afresh_without_logging_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plans = service(tmp_path)
    plans.set(copy.deepcopy(PLAN))
    doc = json.loads((tmp_path / "care-plan-state.json").read_text())
    doc["weights"] = {"2026-12-01": "81.7kg"}
    (tmp_path / "care-plan-state.json").write_text(json.dumps(doc))
    again = service(tmp_path)
    again.load()
    assert again.get() == plans.get()
    assert "unreadable" in caplog.text and "81.7" not in caplog.text
