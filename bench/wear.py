"""Wear: bytes the `homehub run` process makes the block layer write, per reading.

Subject: `python -m gateway run` as its own process, one `simulated` blood-pressure
device, a real mosquitto (bench.common), the store on a real disk (never tmpfs:
`/proc/PID/io` `write_bytes` is what the process dirtied in the page cache for a
block device, and on tmpfs/overlay it may stay 0 — the benchmark checks it moved).

Three scenarios, each a fresh hub and store:

- steady: one reading per second (`interval_s = 1`), `count` readings;
- burst: `bursts` handovers of 100 readings at once (`burst = 100`, a meter
  sending its memory), `interval_s` apart;
- idle: one reading at start, then nothing due (`interval_s` = 1 day); the
  counter over `idle_window_s` after that reading was delivered, scaled to an
  hour (x 3600 / window). The window spans at least one purge pass and status
  publishes, so their writes count.

For steady and burst the store is created (empty) before the hub starts, so its
creation is not counted; the counter starts at 0 with the process and is read
after the hub has exited (its zombie's /proc/PID/io, read before it is reaped:
the last WAL checkpoint at close counts), so opening the store, connecting and
the final status count, spread over the readings. In between every reading is
published, acknowledged, marked delivered and, with `retention_hours = 0` and a
short `purge_interval_s`, purged: the whole life of a reading on the hub. Bytes per reading = the
difference / readings. Log volume (journald's share) is counted too: lines
the hub printed per reading.

Baseline: none that means "good" — the targets are absolute (issue 11: <= 8 KiB
per reading at 1/s, <= 2 KiB per reading in bursts of 100, <= 64 KiB per hour
idle). The payload size is reported beside it (amplification = bytes / payload).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import GATEWAY_ID, Result, filesystem_type, private_broker, scratch_dir, toml_text
from gateway.store import SqliteOutbox

TARGET_STEADY_B = 8 * 1024
TARGET_BURST_B = 2 * 1024
TARGET_IDLE_B_PER_H = 64 * 1024
BURST = 100
READY_TEXT = "mqtt: connected"


def io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io as integers (works on a zombie that has not been reaped yet)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


def per_unit(before: dict[str, int], after: dict[str, int], units: float) -> float:
    """Bytes written to storage per unit between two /proc/PID/io readings.

    `write_bytes` less `cancelled_write_bytes` (pages dirtied then truncated away
    before reaching the disk, e.g. a WAL reset): what the block layer was given.
    """
    if units <= 0:
        raise ValueError("no units to divide by")
    written = after["write_bytes"] - before["write_bytes"]
    cancelled = after.get("cancelled_write_bytes", 0) - before.get("cancelled_write_bytes", 0)
    return (written - cancelled) / units


@dataclass
class HubProcess:
    """`homehub run` in its own process; output read on a thread so the pipe never fills."""

    config: Path
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True, name="bench-wear-hub").start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if READY_TEXT in line:
                self.ready.set()
        self.ready.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        assert self.process is not None
        if not self.ready.wait(timeout_s) or self.process.poll() is not None:
            raise RuntimeError(f"hub did not connect: {self.lines[-8:]}")

    def stop_and_count(self, timeout_s: float = 15.0) -> dict[str, int]:
        """SIGTERM, wait for the exit without reaping, read the zombie's counters, reap."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while True:
            # WNOHANG|WNOWAIT: the zombie stays, so its /proc/PID/io stays readable.
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                break
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"hub did not stop: {self.lines[-8:]}")
            time.sleep(0.05)
        counters = io_counters(self.pid)
        self.process.wait(timeout=5)
        return counters

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


def _stats(state_dir: Path) -> tuple[int, int]:
    """(readings held, readings unsent) as `homehub status` would see them."""
    outbox = SqliteOutbox(state_dir / "readings.sqlite3", read_only=True)
    try:
        stats = outbox.stats()
    finally:
        outbox.close()
    return stats.total, stats.unsent


def _delivered_all(state_dir: Path) -> bool:
    """A delivery was recorded and nothing is held any more (delivered and purged)."""
    outbox = SqliteOutbox(state_dir / "readings.sqlite3", read_only=True)
    try:
        stats = outbox.stats()
    finally:
        outbox.close()
    return stats.last_delivery_at is not None and (stats.total, stats.unsent) == (0, 0)


def _wait(what: str, check: Any, timeout_s: float, hub: HubProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {hub.lines[-8:]}")
        time.sleep(0.2)


def _config(work: Path, name: str, port: int, device: dict[str, Any], purge_s: float) -> Path:
    data = {
        "gateway": {"id": GATEWAY_ID, "state_dir": str(work / f"state-{name}")},
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "client_id": f"bench-wear-{name}",
            "unsynced_hold_s": 0.0,  # see bench.common.hub_config
        },
        "store": {"synchronous": "full", "retention_hours": 0.0, "purge_interval_s": purge_s},
        "panel": {"backend": "none"},
        "devices": [{"id": "bp-1", "driver": "simulated", "kind": "blood_pressure", **device}],
    }
    path = work / f"{name}.toml"
    path.write_text(toml_text(data))
    return path


@dataclass
class Measured:
    bytes_per_unit: float
    written: int
    units: float
    log_lines: int
    payload_bytes: float


def _payload_size(state_dir: Path) -> float:
    import sqlite3

    from gateway.store import codec

    db = sqlite3.connect(f"file:{state_dir / 'readings.sqlite3'}?mode=ro", uri=True)
    try:
        # The JSON the hub publishes, not its stored (compressed) form: amplification
        # is against what the reading is.
        sizes = [len(codec.decode(bytes(p))) for (p,) in db.execute("SELECT payload FROM readings")]
    finally:
        db.close()
    return sum(sizes) / len(sizes) if sizes else 0.0


def measure_readings(
    work: Path, port: int, name: str, *, count: int, interval_s: float, burst: int
) -> Measured:
    """Run a hub until `count` readings are delivered and purged; bytes per reading."""
    purge_s = 2.0
    config = _config(
        work,
        name,
        port,
        {"interval_s": interval_s, "count": count, "burst": burst, "seed": 1},
        purge_s,
    )
    state = work / f"state-{name}"
    SqliteOutbox(state / "readings.sqlite3").close()  # created outside the count
    hub = HubProcess(config)
    hub.start()
    # A new process's I/O counters start at 0 (the kernel zeroes them on fork).
    before = {"write_bytes": 0, "cancelled_write_bytes": 0}
    lines_before = 0
    try:
        hub.wait_ready()
        payload = 0.0

        def stored_all() -> bool:
            nonlocal payload
            total, _unsent = _stats(state)
            if total and not payload:
                payload = _payload_size(state)
            return any("driver finished" in line for line in hub.lines)

        _wait("the device's last reading", stored_all, count * interval_s / burst + 60, hub)
        _wait("delivery and purge", lambda: _stats(state) == (0, 0), purge_s * 5 + 30, hub)
        after = hub.stop_and_count()
        lines = len(hub.lines) - lines_before
    finally:
        hub.kill()
    written = after["write_bytes"] - before["write_bytes"]
    if written <= 0:
        raise RuntimeError(
            f"write_bytes did not move on {filesystem_type(work)}: use a block device"
        )
    return Measured(per_unit(before, after, count), written, count, lines, payload)


def measure_idle(work: Path, port: int, *, window_s: float, purge_s: float) -> Measured:
    """Bytes written per hour with nothing due, from a `window_s` window."""
    config = _config(work, "idle", port, {"interval_s": 86400.0, "seed": 1}, purge_s)
    state = work / "state-idle"
    hub = HubProcess(config)
    hub.start()
    try:
        hub.wait_ready()
        # Settled: the first reading delivered and purged, its checkpoint done. Not
        # just "nothing held": before the first reading is stored that is true too,
        # and its insert, mark and purge would then fall into the window.
        _wait("the first reading's delivery and purge", lambda: _delivered_all(state), 60, hub)
        time.sleep(2.0)
        before = io_counters(hub.pid)
        lines_before = len(hub.lines)
        started = time.monotonic()
        time.sleep(window_s)
        after = io_counters(hub.pid)
        window = time.monotonic() - started
        lines = len(hub.lines) - lines_before
        hub.stop_and_count()
    finally:
        hub.kill()
    hours = window / 3600
    return Measured(
        per_unit(before, after, hours),
        after["write_bytes"] - before["write_bytes"],
        hours,
        lines,
        0,
    )


def run(
    *, steady: int = 120, bursts: int = 5, idle_window_s: float = 300.0, quick: bool = False
) -> list[Result]:
    with scratch_dir("wear") as work, private_broker(work) as broker:
        fstype = filesystem_type(work)
        st = measure_readings(work, broker.port, "steady", count=steady, interval_s=1.0, burst=1)
        bu = measure_readings(
            work, broker.port, "burst", count=bursts * BURST, interval_s=5.0, burst=BURST
        )
        idle = measure_idle(
            work, broker.port, window_s=idle_window_s, purge_s=min(60.0, idle_window_s / 3)
        )

    def extra(m: Measured) -> dict[str, Any]:
        return {
            "written_bytes": m.written,
            "units": round(m.units, 6),
            "log_lines": m.log_lines,
            "payload_bytes": round(m.payload_bytes, 1),
            "amplification": round(m.bytes_per_unit / m.payload_bytes, 1)
            if m.payload_bytes
            else None,
            "filesystem": fstype,
            "quick": quick,
        }

    return [
        Result(
            name="wear_steady",
            metric=f"bytes written per reading at 1 reading/s ({steady} readings,"
            " stored, delivered, purged)",
            unit="B",
            value=st.bytes_per_unit,
            baseline=st.payload_bytes or None,
            baseline_label="the reading's payload size",
            better="lower",
            target=f"<= {TARGET_STEADY_B} B",
            passed=st.bytes_per_unit <= TARGET_STEADY_B,
            extra=extra(st),
        ),
        Result(
            name="wear_burst",
            metric=f"bytes written per reading in bursts of {BURST} ({bursts} bursts)",
            unit="B",
            value=bu.bytes_per_unit,
            baseline=bu.payload_bytes or None,
            baseline_label="the reading's payload size",
            better="lower",
            target=f"<= {TARGET_BURST_B} B",
            passed=bu.bytes_per_unit <= TARGET_BURST_B,
            extra=extra(bu),
        ),
        Result(
            name="wear_idle",
            metric=f"bytes written per hour idle (from a {idle_window_s:g} s window x"
            f" {3600 / idle_window_s:g})",
            unit="B/h",
            value=idle.bytes_per_unit,
            baseline=None,
            baseline_label="none",
            better="lower",
            target=f"<= {TARGET_IDLE_B_PER_H} B/h",
            passed=idle.bytes_per_unit <= TARGET_IDLE_B_PER_H,
            extra=extra(idle),
        ),
    ]


def main() -> int:
    quick = "--quick" in sys.argv
    results = run(steady=20, bursts=2, idle_window_s=30.0, quick=True) if quick else run()
    for r in results:
        print(f"{r.name}: {r.value:,.0f} {r.unit} (target {r.target}) {r.extra}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
