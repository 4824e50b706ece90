"""Running under systemd: sd_notify, the watchdog, SIGHUP reload, journald logs, the unit."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.sdnotify import SystemdNotifier
from gateway.sim.broker import MosquittoBroker
from tests.helpers import LineReader, Listener, load, sim_device, write_config

REPO = Path(__file__).resolve().parent.parent


class NotifyReceiver:
    """The service manager's end of $NOTIFY_SOCKET: records every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                for line in data.decode().splitlines():
                    self.messages.append((time.monotonic(), line))
                self._cond.notify_all()

    def wait_for(self, text: str, timeout_s: float, count: int = 1) -> float:
        """Time of the `count`-th message equal to `text`."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.times(text)) >= count, timeout_s)
            if not ok:
                raise AssertionError(f"no {count}x {text!r} in {timeout_s} s: {self.messages[-5:]}")
            return self.times(text)[count - 1]

    def times(self, text: str) -> list[float]:
        return [t for t, m in self.messages if m == text]

    def close(self) -> None:
        self._closed = True
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[NotifyReceiver]:
    r = NotifyReceiver(tmp_path / "notify.sock")
    yield r
    r.close()


def run_hub(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )


def test_ready_after_store_open_watchdog_at_rate_stopping_on_sigterm(
    tmp_path: Path, broker: MosquittoBroker, receiver: NotifyReceiver
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "hub.toml", broker=broker, state_dir=state)
    hub = run_hub(config, {"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "400000"})
    try:
        receiver.wait_for("READY=1", 15)
        # The store was open before READY=1 was sent.
        assert (state / "readings.sqlite3").exists()
        first = receiver.wait_for("WATCHDOG=1", 5)
        fifth = receiver.wait_for("WATCHDOG=1", 5, count=5)
        # Pinged every WATCHDOG_USEC / 2 = 0.2 s: four gaps take ~0.8 s.
        assert 0.6 <= fifth - first <= 2.0, f"4 watchdog gaps took {fifth - first:.2f} s"
        started = time.monotonic()
        hub.send_signal(signal.SIGTERM)
        receiver.wait_for("STOPPING=1", 5)
        assert hub.wait(timeout=10) == 0
        assert time.monotonic() - started < 5.0
    finally:
        if hub.poll() is None:
            hub.kill()


def test_bad_config_exits_78_without_ready(tmp_path: Path, receiver: NotifyReceiver) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[gateway]\nid = "no spaces allowed"\n')
    hub = run_hub(config, {"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "400000"})
    assert hub.wait(timeout=30) == 78
    assert hub.stdout is not None and "gateway.id" in hub.stdout.read()
    time.sleep(0.3)  # give a (wrong) stray datagram the chance to show up
    assert receiver.messages == []


async def test_blocked_event_loop_stops_the_watchdog_pings(
    tmp_path: Path, broker: MosquittoBroker, receiver: NotifyReceiver
) -> None:
    config = write_config(tmp_path / "hub.toml", broker=broker, state_dir=tmp_path / "state")
    notifier = SystemdNotifier(
        environ={"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "200000"}
    )
    hub = Hub(load(config), DriverRegistry.from_entry_points(), notifier=notifier)
    task = asyncio.create_task(hub.run())
    try:
        await asyncio.to_thread(receiver.wait_for, "WATCHDOG=1", 5, 2)
        blocked_from = time.monotonic()
        time.sleep(1.0)
        blocked_to = time.monotonic()
        resumed = await asyncio.to_thread(
            receiver.wait_for, "WATCHDOG=1", 5, len(receiver.times("WATCHDOG=1")) + 1
        )
        during = [t for t in receiver.times("WATCHDOG=1") if blocked_from + 0.05 < t < blocked_to]
        assert during == [], "the watchdog was petted while the loop was blocked"
        assert resumed >= blocked_to
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)


def test_sighup_adds_a_device_without_losing_a_reading_and_ignores_a_bad_config(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Callable[..., Listener]
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "hub.toml"
    device_a = sim_device("a-1", "weight", interval_s=0.01, count=300)
    device_b = sim_device("b-1", "temperature", interval_s=0.01, count=20)
    write_config(config, broker=broker, state_dir=state, devices=[device_a])
    listener = listener_factory(broker.port)
    hub = run_hub(config, {})
    out = LineReader(hub)
    try:
        listener.wait_for(50, timeout_s=30)
        write_config(config, broker=broker, state_dir=state, devices=[device_a, device_b])
        hub.send_signal(signal.SIGHUP)
        out.wait_for("reload: 2 device(s) now, 1 added, 0 removed", 10)
        readings = listener.wait_for(320, timeout_s=60)
        config.write_text(config.read_text() + '\n[[devices]]\nid = "a-1"\n')
        hub.send_signal(signal.SIGHUP)
        out.wait_for("keeping the running config", 10)
        assert hub.poll() is None, "an invalid reload took the hub down"
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=10) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
    by_device: dict[str, set[str]] = {}
    for doc in readings:
        by_device.setdefault(doc["device"]["id"], set()).add(doc["id"])
    # a-1 was not restarted by the reload: all of its 300 readings, once each.
    assert len(by_device["a-1"]) == 300
    assert len(by_device["b-1"]) == 20


def test_journald_lines_carry_priority_and_no_timestamp(tmp_path: Path) -> None:
    from gateway.sim.broker import free_port

    config = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        mqtt={"port": free_port()},
    )
    hub = run_hub(config, {"JOURNAL_STREAM": "8:12345"})
    out = LineReader(hub)
    try:
        warning = out.wait_for("cannot connect", 15)
        info = next(line for line in out.all if "started" in line)
    finally:
        hub.terminate()
        hub.wait(timeout=10)
    assert warning.startswith("<4>gateway.uplink.mqtt: ")
    assert info.startswith("<6>gateway.daemon: ")


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and os.environ.get("CI") != "true",
    reason="systemd-analyze not installed (CI installs it)",
)


@needs_systemd_analyze
def test_unit_verifies_with_the_program_path_resolvable(tmp_path: Path) -> None:
    unit = (REPO / "systemd" / "homehub.service").read_text()
    homehub = Path(sys.executable).with_name("homehub")
    assert homehub.exists()
    assert "/opt/homehub/venv/bin/homehub" in unit
    copy = tmp_path / "homehub.service"
    copy.write_text(unit.replace("/opt/homehub/venv/bin/homehub", str(homehub)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@needs_systemd_analyze
def test_unit_exposure_is_at_most_2_0() -> None:
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--threshold=20",
            str(REPO / "systemd" / "homehub.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level for homehub.service: " in result.stdout
    level = float(result.stdout.split("Overall exposure level for homehub.service: ")[1].split()[0])
    assert level <= 2.0
    # Devices and address families it must keep, whatever the hardening.
    unit = (REPO / "systemd" / "homehub.service").read_text()
    for needed in (
        "char-ttyUSB",
        "char-ttyACM",
        "char-gpiochip",
        "AF_BLUETOOTH",
        "RestartPreventExitStatus=78",
        "Type=notify",
        "WatchdogSec=",
    ):
        assert needed in unit
    assert "PrivateDevices=yes" not in unit and "DynamicUser=yes" not in unit


@pytest.mark.skipif(os.geteuid() != 0, reason="make install runs as root")
@pytest.mark.timeout(240)
def test_make_install_into_a_root_keeps_config_and_uninstall_keeps_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    # No dependencies: they are the project's, tested elsewhere; this is about the layout.
    env = {**os.environ, "ROOT": str(root), "PIP_NO_DEPS": "1"}

    def install() -> str:
        result = subprocess.run(
            ["bash", "scripts/install.sh"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
        return result.stdout

    assert "wrote /etc/homehub/homehub.toml" in install()
    config = root / "etc/homehub/homehub.toml"
    assert config.read_text() == (REPO / "config/example.toml").read_text()
    assert (root / "etc/systemd/system/multi-user.target.wants/homehub.service").is_symlink()
    assert (root / "opt/homehub/venv/bin/homehub").exists()
    assert "homehub:" in (root / "etc/passwd").read_text()
    state = root / "var/lib/homehub"
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o700
    assert (config.stat().st_mode & 0o777) == 0o640

    config.write_text(config.read_text() + "\n# the installer's own edit\n")
    (state / "readings.sqlite3").write_bytes(b"unsent readings")
    assert "kept the existing /etc/homehub/homehub.toml" in install()
    assert "the installer's own edit" in config.read_text()

    result = subprocess.run(
        ["bash", "scripts/uninstall.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not (root / "opt/homehub").exists()
    assert not (root / "etc/systemd/system/homehub.service").exists()
    assert "the installer's own edit" in config.read_text()
    assert (state / "readings.sqlite3").read_bytes() == b"unsent readings"


def _unit_values(key: str) -> list[str]:
    unit = (REPO / "systemd" / "homehub.service").read_text().splitlines()
    return [line.split("=", 1)[1].strip() for line in unit if line.startswith(f"{key}=")]


def test_unit_grants_the_gpio_of_the_chosen_pin_factory_and_nothing_more() -> None:
    """Issue 11: the panel's first pin factory is lgpio; the unit gives it its gpiochip
    devices, its group and a writable work directory, and nothing of the others'."""
    from gateway.panel import factory

    assert factory.CANDIDATES[0][0] == "lgpio"
    allowed = {value.split()[0]: value.split()[1:] for value in _unit_values("DeviceAllow")}
    assert _unit_values("DevicePolicy") == ["closed"]
    for device in factory.DEVICES["lgpio"]:
        assert allowed.get(device) == ["rw"], allowed
    gpio = {d for d in allowed if "gpio" in d or d.startswith("/dev/mem")}
    assert gpio == set(factory.DEVICES["lgpio"])  # no /dev/gpiomem, no /dev/mem
    for others in (v for k, v in factory.DEVICES.items() if k != "lgpio"):
        assert not set(others) & set(allowed)
    # The serial adapters, and nothing else.
    assert set(allowed) - gpio == {"char-ttyUSB", "char-ttyACM", "char-ttyAMA"}
    assert "gpio" in _unit_values("SupplementaryGroups")[0].split()
    # lgpio's FIFO goes in the state directory (Hub passes it), writable under strict.
    assert _unit_values("StateDirectory") == ["homehub"]
    assert _unit_values("ProtectSystem") == ["strict"]
    # /proc/cpuinfo is hidden; the revision is read where the unit leaves it visible.
    assert _unit_values("ProcSubset") == ["pid"]
    assert str(factory.DEVICETREE).startswith("/sys/")
    assert not any("/sys" in v for v in _unit_values("InaccessiblePaths"))


def test_unit_orders_after_bluetooth_and_time_sync_without_requiring_anything() -> None:
    after = " ".join(_unit_values("After")).split()
    wants = " ".join(_unit_values("Wants")).split()
    assert {"bluetooth.target", "time-sync.target", "network.target"} <= set(after)
    assert wants == ["bluetooth.target"]  # time-sync.target is passive: never pulled in
    # A late adapter, clock or network must not keep the hub from starting.
    assert _unit_values("Requires") == [] and _unit_values("BindsTo") == []
    assert "network-online.target" not in after + wants
