"""Across processes: `homehub simulate --ble tcp-server:...`, `homehub scan`, and
`homehub run` with stack = "bumble" reading the virtual devices into a real mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.sim.ble.fleet import FLEET, devices_toml
from gateway.sim.broker import MosquittoBroker, free_port
from tests.helpers import LineReader, Listener, hub_process


@pytest.fixture
def simulator() -> Iterator[str]:
    """`homehub simulate` in its own process; yields the hub's transport spec."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "simulate",
            "--ble",
            f"tcp-server:127.0.0.1:{port}",
            "--interval",
            "3600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = LineReader(process)
    try:
        lines.wait_for("virtual BLE devices ready", 20)
        yield f"tcp-client:127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=10) == 0, lines.all[-10:]
        finally:
            if process.poll() is None:
                process.kill()


def test_scan_lists_every_virtual_device_with_a_devices_table(simulator: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "scan", "--transport", simulator, "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for entry in FLEET:
        assert f'address = "{entry.address}"' in result.stdout
        assert f'driver = "{entry.driver}"' in result.stdout
        assert entry.name in result.stdout


def test_hub_process_reads_the_simulator(
    tmp_path: Path,
    simulator: str,
    broker: MosquittoBroker,
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(broker.port)
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[gateway]\nid = "hub-sim"\nstate_dir = "{tmp_path / "state"}"\n\n'
        # unsynced_hold_s 0: this machine's clock may be unsynchronised; the hub would
        # hold its hub-stamped readings for minutes (issue 13, tests/test_clock_hold.py).
        f"[mqtt]\nport = {broker.port}\nunsynced_hold_s = 0.0\n\n"
        # No button (issue 12): nobody can open the pairing window, so it stays open and
        # the virtual glucose meter pairs when met.
        f'[panel]\nbackend = "none"\n\n'
        f'[ble]\nstack = "bumble"\ntransport = "{simulator}"\n\n{devices_toml()}'
    )
    hub = hub_process(config)
    output = LineReader(hub)
    try:
        docs = listener.wait_for(7, timeout_s=30)
    finally:
        hub.send_signal(signal.SIGTERM)
        code = hub.wait(timeout=15)
    assert code == 0, output.all[-20:]
    kinds = {d["device"]["driver"]: d["kind"] for d in docs}
    assert set(kinds) >= {e.driver for e in FLEET}, (kinds, output.all[-20:])


def test_demo_with_ble_shows_every_virtual_device() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--ble", "--seconds", "6"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for entry in FLEET:
        assert f"demo-hub/ble-{entry.device_id} " in result.stdout, result.stdout[-3000:]
