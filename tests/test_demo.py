"""`homehub demo` (issue 9 part 3): hub -> mosquitto -> homehub-backend ingest -> PostgreSQL,
each reading printed when the hub has its confirmation, the fleet table at the end; the
stand-in confirmer when PostgreSQL cannot start; nothing left behind, also on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import LineReader

CONFIRMED_OXI = "confirmed "  # then the listener's format: "<time> demo-hub/oxi-1 ..."
OXI_LINE = "demo-hub/oxi-1 pulse_oximeter: PULS_OXIM_SAT_O2="


@pytest.fixture
def demo_tmp() -> Iterator[Path]:
    """TMPDIR for the demo, reachable by `nobody` (the sandbox's postgres when we are root):
    pytest's own tmp_path is under a 0700 directory."""
    path = Path(tempfile.mkdtemp(prefix="homehub-demo-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo(tmp: Path, *args: str, merged: bool = False, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", **env},
    )


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (the sandbox, postgres, ...)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def test_demo_runs_the_backend_prints_confirmed_readings_and_cleans_up_on_ctrl_c(
    demo_tmp: Path,
) -> None:
    process = demo(demo_tmp, merged=True)
    out = LineReader(process)
    try:
        # A line only once PostgreSQL holds it and the hub recorded the confirmation.
        line = out.wait_for(OXI_LINE, timeout_s=60)
        assert line.startswith(CONFIRMED_OXI)
        assert processes_under(demo_tmp), "the sandbox and postgres run under TMPDIR"
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the demo
        process.wait(timeout=60)
        out.wait_for("reading(s) confirmed", timeout_s=5)
        out.wait_for("need attention", timeout_s=30)  # the fleet table's last line
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, out.all[-10:]
    assert any("homehub-backend ingest subscribed" in line for line in out.all)
    assert not any("no backend" in line for line in out.all)
    # The fleet table from `homehub-backend fleet`, after the hub's offline status.
    table = [line for line in out.all if line.startswith(("HUB ", "demo-hub "))]
    assert table[0].split()[:2] == ["HUB", "STATE"], out.all[-5:]
    assert table[1].split()[:2] == ["demo-hub", "OFFLINE"], out.all[-5:]
    # Every process and directory it started is gone: the demo's and PostgreSQL's.
    assert processes_under(demo_tmp) == []
    assert list(demo_tmp.iterdir()) == []


def test_demo_without_postgresql_says_so_and_falls_back_to_the_stand_in(
    demo_tmp: Path,
) -> None:
    process = demo(demo_tmp, "--seconds", "4", HOMEHUB_PG_BIN=str(demo_tmp / "no-such-dir"))
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, err
    reasons = [line for line in err.splitlines() if "no backend" in line]
    assert len(reasons) == 1, err
    assert "no initdb in HOMEHUB_PG_BIN" in reasons[0]
    assert "stand-in" in reasons[0]
    # Still confirmed (by the stand-in), so still printed; no fleet without a database.
    assert any(line.startswith(CONFIRMED_OXI) and OXI_LINE in line for line in out.splitlines())
    assert "HUB " not in out
    assert processes_under(demo_tmp) == []
    assert list(demo_tmp.iterdir()) == []
