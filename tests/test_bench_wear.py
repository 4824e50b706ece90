"""The wear benchmark's measurement itself: the figure comes from the counters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import scratch_parent
from bench.wear import io_counters, per_unit

PAGES = 8


def test_per_unit_is_written_less_cancelled_over_units() -> None:
    before = {"write_bytes": 4096, "cancelled_write_bytes": 0}
    after = {"write_bytes": 4096 + 10 * 8192, "cancelled_write_bytes": 8192}
    assert per_unit(before, after, 9) == 8192
    with pytest.raises(ValueError):
        per_unit(before, after, 0)


def test_counters_of_a_child_that_fsyncs_known_pages(tmp_path: Path) -> None:
    # On a real block device (never tmpfs): each fsynced page is counted once.
    target = Path(scratch_parent()) / f"wear-test-{tmp_path.name}"
    code = (
        "import os, sys\n"
        "f = open(sys.argv[1], 'wb')\n"
        f"for i in range({PAGES}):\n"
        "    f.write(bytes(4096)); f.flush(); os.fsync(f.fileno())\n"
        "print('written', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        # The child says when its pages are fsynced, then waits on stdin while
        # its /proc/PID/io is read.
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n"
        counters = io_counters(child.pid)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
        target.unlink(missing_ok=True)
    zero = {"write_bytes": 0, "cancelled_write_bytes": 0}
    assert per_unit(zero, counters, PAGES) >= 4096


async def test_simulated_burst_hands_readings_over_together() -> None:
    import asyncio
    import logging

    from gateway.clock import SystemClock
    from gateway.drivers.base import DriverContext, StoredReading
    from gateway.drivers.simulated import SimulatedDriver, SimulatedOptions
    from gateway.reading import Reading

    waiting: list[Reading] = []
    batches: list[int] = []
    release = asyncio.Event()

    async def emit(reading: Reading) -> StoredReading:
        waiting.append(reading)
        if len(waiting) == 3 or sum(batches) + len(waiting) == 5:
            batches.append(len(waiting))
            waiting.clear()
            release.set()
        await release.wait()
        return StoredReading(reading.source_key, 0, False)

    options = SimulatedOptions(
        id="bp-1", driver="simulated", kind="blood_pressure", interval_s=0.0, count=5, burst=3
    )
    context = DriverContext("bp-1", SystemClock(), logging.getLogger("t"), emit)
    await asyncio.wait_for(SimulatedDriver(options, context).run(), 10)
    # All of a burst were waiting in emit at once (the store can commit them together).
    assert batches == [3, 2]
