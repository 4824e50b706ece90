"""Shared test helpers: real processes, real broker, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import HubConfig, validate_config
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import Event, EventBus
from gateway.sim.broker import MosquittoBroker


def write_config(
    path: Path,
    *,
    broker: MosquittoBroker | None,
    state_dir: Path,
    gateway_id: str = "hub-test",
    devices: list[dict[str, Any]] | None = None,
    mqtt: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
) -> Path:
    """Write a TOML config file (by hand: no TOML writer in the stdlib)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        return repr(v)

    lines = ["[gateway]", f"id = {value(gateway_id)}", f"state_dir = {value(state_dir)}", ""]
    # unsynced_hold_s 0: the test machine's clock may well be unsynchronised (a
    # container's often is), and the hub would hold its hub-stamped readings for
    # minutes (issue 13); tests/test_clock_hold.py sets it and simulates the sync.
    mqtt_items = {
        "host": "127.0.0.1",
        "unsynced_hold_s": 0.0,
        **({"port": broker.port} if broker else {}),
        **(mqtt or {}),
    }
    lines += ["[mqtt]", *(f"{k} = {value(v)}" for k, v in mqtt_items.items()), ""]
    if store:
        lines += ["[store]", *(f"{k} = {value(v)}" for k, v in store.items()), ""]
    for device in devices or []:
        lines += ["[[devices]]", *(f"{k} = {value(v)}" for k, v in device.items()), ""]
    path.write_text("\n".join(lines))
    return path


def load(path: Path) -> HubConfig:
    return validate_config(tomllib.loads(path.read_text()), DriverRegistry.from_entry_points())


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.02
) -> None:
    """Poll a condition that has no event to await (e.g. another process's file)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(step_s)


@dataclass
class Listener:
    """`homehub listen --json` in a subprocess; collects what it prints."""

    port: int
    session: str | None = None
    process: subprocess.Popen[str] | None = None
    readings: list[dict[str, Any]] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _subscribed: threading.Event = field(default_factory=threading.Event)

    def start(self, timeout_s: float = 10.0) -> Listener:
        cmd = [sys.executable, "-m", "gateway", "listen", "--json", "--port", str(self.port)]
        if self.session:
            cmd += ["--session", self.session]
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise AssertionError(f"listener did not subscribe: {self.stderr_lines[-5:]}")
        return self

    def _read_stdout(self) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            doc = json.loads(line)
            with self._cond:
                self.readings.append(doc)
                self._cond.notify_all()
        self.process.stdout.close()

    def _read_stderr(self) -> None:
        assert self.process and self.process.stderr
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip())
            if "subscribed on" in line:
                self._subscribed.set()
        self.process.stderr.close()

    def wait_for(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.readings) >= count, timeout_s)
            if not ok:
                raise AssertionError(
                    f"listener got {len(self.readings)} of {count} readings in {timeout_s} s"
                )
            return list(self.readings)

    def ids(self) -> list[str]:
        with self._cond:
            return [r["id"] for r in self.readings]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def hub_process(config: Path, *extra: str, log_level: str = "INFO") -> subprocess.Popen[str]:
    """`homehub run` in a subprocess (its own process group)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--log-level",
            log_level,
            "run",
            "--config",
            str(config),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


class LineReader:
    """Reads a process's output on a thread; lets a test await a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []
        self._process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout
        for line in self._process.stdout:
            self.all.append(line.rstrip())
            self.lines.put(line.rstrip())
        self._process.stdout.close()

    def wait_for(self, needle: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line containing {needle!r} in {timeout_s} s: {self.all[-10:]}"
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if needle in line:
                return line


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 whose forwarding can be frozen and thawed.

    Frozen, it reads nothing from either side: bytes wait in the kernel, as on a
    link that has gone quiet. Thawed, it carries on; when one side closes, it
    closes the other.
    """

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Condition()
        self._pumps = 0
        self._parked = 0
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        import socket

        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                downstream.close()
                continue
            threading.Thread(
                target=self._pump, args=(downstream, upstream), daemon=True, name="proxy-pump"
            ).start()

    def _pump(self, a: Any, b: Any) -> None:
        import select

        with self._lock:
            self._pumps += 1
        try:
            while not self._closed.is_set():
                if not self._flowing.is_set():
                    with self._lock:
                        self._parked += 1
                        self._lock.notify_all()
                    self._flowing.wait()
                    with self._lock:
                        self._parked -= 1
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for source in ready:
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    try:
                        (b if source is a else a).sendall(data)
                    except OSError:
                        return
        finally:
            with self._lock:
                self._pumps -= 1
                self._lock.notify_all()
            a.close()
            b.close()

    def freeze(self, timeout_s: float = 5.0) -> None:
        """Stop forwarding; returns once every connection has stopped moving bytes."""
        self._flowing.clear()
        with self._lock:
            if not self._lock.wait_for(lambda: self._parked == self._pumps, timeout_s):
                raise AssertionError("the proxy did not freeze")

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()


@contextlib.asynccontextmanager
async def running_hub(config_path: Path, events: EventBus) -> AsyncIterator[Hub]:
    hub = Hub(load(config_path), DriverRegistry.from_entry_points(), events=events)
    task = asyncio.create_task(hub.run())
    try:
        yield hub
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)


async def next_event(
    queue: asyncio.Queue[Event], kind: type[Event], timeout_s: float
) -> tuple[Event, float]:
    """The next event of `kind`, and the monotonic time it arrived."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await queue.get()
            if isinstance(event, kind):
                return event, time.monotonic()


def sim_device(device_id: str, kind: str, **options: Any) -> dict[str, Any]:
    """A `[[devices]]` table for the simulated driver."""
    return {"id": device_id, "driver": "simulated", "kind": kind, **options}
