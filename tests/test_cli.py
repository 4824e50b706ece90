"""The installer's and the newcomer's commands: status, listen (the demo: test_demo.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.sim.broker import MosquittoBroker
from tests.helpers import LineReader, Listener, hub_process, sim_device, write_config


def homehub(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_status_reads_the_store_while_the_hub_runs(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Callable[..., Listener]
) -> None:
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=state,
        devices=[
            sim_device("bp-1", "blood_pressure", interval_s=0.0, count=20),
            sim_device("idle-1", "weight", interval_s=3600.0, count=0),
        ],
    )
    listener = listener_factory(broker.port)
    hub = hub_process(config)
    try:
        # idle-1 makes one reading at start, then waits an hour: 21 in all.
        listener.wait_for(21, timeout_s=30)
        result = homehub("status", "--config", str(config), "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["gateway"] == "hub-test"
        assert doc["stored"] == 21
        assert doc["devices"]["bp-1"]["last_reading_at"] is not None
        assert doc["devices"]["idle-1"]["driver"] == "simulated"
        human = homehub("status", "--config", str(config))
        assert human.returncode == 0
        assert "unsent" in human.stdout and "bp-1" in human.stdout
        # The daemon is unharmed by a reader: it still stops cleanly.
        hub.terminate()
        assert hub.wait(timeout=10) == 0
    finally:
        if hub.poll() is None:
            hub.kill()


def test_status_without_a_store_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path / "hub.toml", broker=None, state_dir=tmp_path / "nothing")
    result = homehub("status", "--config", str(config))
    assert result.returncode == 1
    assert "no store" in result.stderr


def test_listen_count_exits_after_n_unique_readings(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("t-1", "temperature", interval_s=0.05, count=0)],
    )
    listen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "listen",
            "--port",
            str(broker.port),
            "--count",
            "5",
            "--timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = LineReader(listen)
    lines.wait_for("subscribed on", 10)
    hub = hub_process(config)
    try:
        assert listen.wait(timeout=30) == 0
    finally:
        hub.terminate()
        hub.wait(timeout=10)
        if listen.poll() is None:
            listen.kill()
    readings = [line for line in lines.all if "t-1 temperature: TEMP_BODY=" in line]
    assert len(readings) == 5
    assert any("5 unique readings" in line for line in lines.all)


def test_listen_times_out_with_exit_1(broker: MosquittoBroker) -> None:
    result = homehub("listen", "--port", str(broker.port), "--count", "1", "--timeout", "1")
    assert result.returncode == 1
    assert "timed out" in result.stderr
