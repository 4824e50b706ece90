"""`python -m bench` (`make bench`): every benchmark in turn, a table, results JSON.

Every benchmark that has a baseline measures it in the same run, so the ratios
compare like with like on whatever machine runs them; absolute numbers are shown
beside them. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import (
    backend_ingest,
    ble_idle,
    careplan,
    commands,
    confirm,
    drain,
    fhir,
    footprint,
    ingest,
    latency,
    sign,
    wear,
)
from bench.common import Result, filesystem_type, scratch_dir, scratch_parent
from gateway.sim.broker import find_mosquitto

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

Runner = Callable[[bool], list[Result]]


def _ble(quick: bool) -> list[Result]:
    """bench/ble_latency.py: a virtual BLE cuff's advertisement -> PUBACK (no baseline)."""
    from bench import ble_latency

    output = io.StringIO()
    with scratch_dir("ble") as work, contextlib.redirect_stdout(output):
        numbers = asyncio.run(ble_latency.run(work))
    return [
        Result(
            name="ble_latency",
            metric=f"BLE cuff advertisement -> PUBACK p99 ({numbers['runs']:g} runs)",
            unit="ms",
            value=numbers["p99_ms"],
            baseline=None,
            baseline_label="none (virtual radio)",
            better="lower",
            target="none (information)",
            passed=None,
            extra={**{k: round(v, 4) for k, v in numbers.items()}, "output": output.getvalue()},
        )
    ]


# name -> run(quick); the short, disk-bound ones first, the minute-long footprint last.
BENCHMARKS: dict[str, Runner] = {
    "ingest": lambda quick: (
        ingest.run(blocks=4, concurrent_s=0.5, pool=5_000) if quick else ingest.run()
    ),
    "latency": lambda quick: latency.run(count=100) if quick else latency.run(),
    "drain": lambda quick: drain.run(count=5_000, rounds=1) if quick else drain.run(),
    "confirm": lambda quick: confirm.run(quick=quick),
    "commands": lambda quick: commands.run(quick=quick),
    "fhir": lambda quick: fhir.run(quick=quick),
    "sign": lambda quick: sign.run(quick=quick),
    "ble_latency": _ble,
    "ble_idle": lambda quick: ble_idle.run(cpu_window_s=15.0 if quick else 60.0),
    "backend_ingest": lambda quick: (
        backend_ingest.run(count=3_000, rounds=1) if quick else backend_ingest.run()
    ),
    "wear": lambda quick: (
        wear.run(steady=20, bursts=2, idle_window_s=30.0, quick=True) if quick else wear.run()
    ),
    "careplan": lambda quick: careplan.run(rss_after_s=8, samples=3) if quick else careplan.run(),
    "footprint": lambda quick: (
        footprint.run(rss_after_s=15, settle_s=2, cpu_window_s=8) if quick else footprint.run()
    ),
}


def _command(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (done.stdout or done.stderr).strip()


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment() -> dict[str, Any]:
    mosquitto = _command(find_mosquitto(), "-h").splitlines()
    git = shutil.which("git")
    commit = _command(git, "-C", str(REPO), "rev-parse", "--short", "HEAD") if git else "?"
    # --no-optional-locks: a read-only look that never rewrites the index.
    dirty = (
        _command(git, "-C", str(REPO), "--no-optional-locks", "status", "--porcelain", "gateway")
        if git
        else ""
    )
    scratch = scratch_parent()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho_mqtt": version("paho-mqtt"),
        "pydantic": version("pydantic"),
        "mosquitto": mosquitto[0] if mosquitto else "?",
        "git_commit": commit,
        "gateway_tree_modified": bool(dirty.strip()),
        "scratch_dir": str(scratch),
        "scratch_filesystem": filesystem_type(scratch),
        "loadavg_at_start": _loadavg(),
    }


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(results: list[Result]) -> str:
    header = ("benchmark", "value", "baseline", "ratio", "target", "result")
    rows = [header]
    for r in results:
        verdict = "info" if r.passed is None else ("PASS" if r.passed else "FAIL")
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        baseline = "-" if r.baseline is None else f"{_number(r.baseline)} {r.unit}"
        target = "-" if r.passed is None else r.target
        rows.append((r.name, f"{_number(r.value)} {r.unit}", baseline, ratio, target, verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(f"{r.name}: {r.metric}; baseline = {r.baseline_label}" for r in results)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run; numbers are not comparable"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)

    env = environment()
    cpus = env["cpus"] or 1
    print(
        f"homehub bench: {', '.join(names)} on {cpus} CPU(s), load {env['loadavg_at_start']},"
        f" scratch {env['scratch_dir']} ({env['scratch_filesystem']})",
        flush=True,
    )
    if env["loadavg_at_start"][0] > cpus / 2:
        print("warning: the machine is busy; ratios stay fair, absolute numbers suffer", flush=True)

    results: list[Result] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in names:
        print(f"- {name} ...", end=" ", flush=True)
        started = time.monotonic()
        try:
            results.extend(BENCHMARKS[name](args.quick))
        except Exception as exc:  # one broken benchmark must not hide the others
            errors[name] = "".join(traceback.format_exception(exc))
            print(f"ERROR: {exc}", flush=True)
            continue
        timings[name] = round(time.monotonic() - started, 1)
        print(f"{timings[name]} s", flush=True)
    env["loadavg_at_end"] = _loadavg()

    print()
    print(table(results))
    doc = {
        "environment": env,
        "quick": args.quick,
        "seconds": timings,
        "results": {r.name: r.as_json() for r in results},
        "errors": errors,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    for name, text in errors.items():
        print(f"\n{name} failed:\n{text}", file=sys.stderr)
    missed = [r.name for r in results if r.passed is False]
    if errors or (args.strict and missed):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
