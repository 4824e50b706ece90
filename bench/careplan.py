"""Care plan memory (issue 10): a hub's resident memory with a plan of 10 windows and
10 thresholds (and the weight rule and quiet hours) against the same hub without one.

Two `homehub run` processes start together against one private mosquitto, each with
the demo's `simulated` devices making a reading every `interval_s` (so every reading
goes through the plan's flags and windows) and its own state directory; one of them
finds a care plan in `state_dir/care-plan.json`. Their VmRSS is read `rss_after_s`
after they connected, `samples` times one second apart, and the medians compared.
Target: the plan costs < 1 MiB.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import Result, private_broker, scratch_dir, toml_text
from bench.footprint import _hub, demo_config, memory_kb

TARGET_EXTRA_MIB = 1.0

PLAN: dict[str, Any] = {
    "version": 1,
    "schedule": [
        {"kind": "weight", "start": "06:00", "end": "10:00"},
        {"kind": "blood_pressure", "at": "08:00", "tolerance_min": 90},
        {"kind": "blood_pressure", "at": "20:00", "tolerance_min": 90},
        {"kind": "pulse_oximeter", "at": "09:00", "tolerance_min": 60},
        {"kind": "pulse_oximeter", "at": "21:00", "tolerance_min": 60},
        {"kind": "glucose", "at": "07:30", "tolerance_min": 30},
        {"kind": "glucose", "at": "12:30", "tolerance_min": 30},
        {"kind": "glucose", "at": "19:30", "tolerance_min": 30},
        {"kind": "temperature", "start": "17:00", "end": "19:00", "days": ["mon", "thu"]},
        {"kind": "weight", "start": "18:00", "end": "22:00", "days": ["sun"]},
    ],
    "thresholds": [
        {"mdc": 150021, "above": 160, "below": 90, "unit": "mm[Hg]"},
        {"mdc": 150022, "above": 100, "below": 50, "unit": "mm[Hg]"},
        {"mdc": 149546, "above": 120, "below": 45},
        {"mdc": 150456, "below": 92},
        {"mdc": 149530, "above": 120, "below": 45},
        {"mdc": 160184, "above": 250, "below": 70, "unit": "mg/dL"},
        {"mdc": 160188, "above": 13.9, "below": 3.9, "unit": "mmol/L"},
        {"mdc": 150364, "above": 38.0, "below": 35.5, "unit": "Cel"},
        {"mdc": 188736, "above": 150, "unit": "kg"},
        {"mdc": 188736, "above": 330, "unit": "[lb_av]"},
    ],
    "weight_gain": {"kg": 2.0, "days": 3},
    "quiet_hours": {"start": "22:00", "end": "07:00"},
}


def _config(root: Path, name: str, port: int, interval_s: float) -> Path:
    state = root / name
    state.mkdir()
    data, _ = demo_config(state, port, root / "serial", idle=True)
    data["gateway"]["id"] = f"bench-{name}"
    data["panel"] = {"backend": "none"}
    for device in data["devices"]:
        device["interval_s"] = interval_s
    path = root / f"{name}.toml"
    path.write_text(toml_text(data))
    return path


def run(*, rss_after_s: float = 30.0, samples: int = 10, interval_s: float = 1.0) -> list[Result]:
    with scratch_dir("careplan") as work, private_broker(work) as broker:
        plain = _config(work, "none", broker.port, interval_s)
        planned = _config(work, "plan", broker.port, interval_s)
        (work / "plan" / "care-plan.json").write_text(json.dumps(PLAN))
        hubs = [_hub("none", plain), _hub("plan", planned)]
        try:
            for hub in hubs:
                hub.start()
            for hub in hubs:
                hub.wait_ready(30)
            time.sleep(rss_after_s)
            rss: dict[str, list[int]] = {"none": [], "plan": []}
            for _ in range(samples):
                for hub in hubs:
                    if not hub.alive():
                        raise RuntimeError(f"{hub.name} hub exited: {hub.lines[-8:]}")
                    rss[hub.name].append(memory_kb(hub.pid)["VmRSS"])
                time.sleep(1.0)
            in_force = any("care plan" in line and "in force" in line for line in hubs[1].lines)
            if not in_force:
                raise RuntimeError(f"the plan hub did not load its plan: {hubs[1].lines[-8:]}")
        finally:
            for hub in hubs:
                hub.stop()
    with_plan = statistics.median(rss["plan"]) / 1024
    without = statistics.median(rss["none"]) / 1024
    extra = with_plan - without
    return [
        Result(
            name="careplan",
            metric="hub RSS with a care plan (10 windows, 10 thresholds) vs none",
            unit="MiB",
            value=round(with_plan, 2),
            baseline=round(without, 2),
            baseline_label="the same hub without a plan",
            better="lower",
            target=f"< {TARGET_EXTRA_MIB:g} MiB more",
            passed=extra < TARGET_EXTRA_MIB,
            extra={
                "extra_mib": round(extra, 3),
                "rss_kb_plan": rss["plan"],
                "rss_kb_none": rss["none"],
                "rss_after_s": rss_after_s,
                "reading_interval_s": interval_s,
            },
        )
    ]
