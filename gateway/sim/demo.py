"""`homehub demo`: the whole loop on a laptop, with private parts only (issue 9 part 3).

drivers -> store -> MQTT 5 (a private mosquitto) -> `homehub-backend ingest` ->
PostgreSQL (a private cluster) -> confirmation -> the hub's store. The demo prints
each reading when the hub records its confirmation, and `homehub-backend fleet`
at the end.

The hub never imports the backend (it is another distribution, with a database
driver the Pi never installs): the demo runs it as processes,
`python -m homehub_backend.sandbox` (PostgreSQL, migrated, and a backend config)
and `python -m homehub_backend ingest` / `fleet`. Where that cannot start (no
homehub-backend, no PostgreSQL binaries, initdb fails) the demo says so in one
line and the in-memory stand-in confirmer (confirmer.py) confirms instead.

Bounded: `--seconds` or Ctrl-C stops it; every process it started and every
temporary directory goes with it (the sandbox also removes itself when its
stdin closes, i.e. when the demo dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, TextIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import EX_CONFIG, validate_config
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError, GatewayError
from gateway.events import Event, ReadingsConfirmed
from gateway.listen import format_reading
from gateway.sim.broker import MosquittoBroker
from gateway.sim.confirmer import Confirmer
from gateway.sim.serial import ALL_SIMS, run_serial_simulators

#: A device port "sim:NAME" in the demo config is the demo's own virtual serial
#: device NAME (see `homehub simulate`); the demo runs it and puts its pty here.
SIM_PORT = "sim:"


def _virtual_serial_devices(data: dict[str, object], directory: Path) -> list[str]:
    """Point "sim:NAME" ports at the ptys the demo will create; return the NAMEs."""
    names: list[str] = []
    devices = data.get("devices", [])
    for device in devices if isinstance(devices, list) else []:
        port = device.get("port") if isinstance(device, dict) else None
        if isinstance(port, str) and port.startswith(SIM_PORT):
            name = port.removeprefix(SIM_PORT)
            if name not in ALL_SIMS:
                known = ", ".join(ALL_SIMS)
                raise ConfigError([f"port {port!r}: no such virtual device ({known})"])
            device["port"] = str(directory / name)
            names.append(name)
    return names


def _demo_config_text(path: Path | None) -> str:
    if path is not None:
        return path.read_text("utf-8")
    return resources.files("gateway").joinpath("data/demo.toml").read_text("utf-8")


def _start_ble_simulator(data: dict[str, object]) -> subprocess.Popen[str]:
    """`homehub simulate --ble` on a free port; the hub reads it with stack = "bumble"."""
    from gateway.sim.ble.fleet import FLEET
    from gateway.sim.broker import free_port

    port = free_port()
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--log-level",
            "WARNING",
            "simulate",
            "--ble",
            f"tcp-server:127.0.0.1:{port}",
            "--interval",
            "10",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert simulator.stdout is not None
    for line in simulator.stdout:
        if "virtual BLE devices ready" in line:
            break
    else:
        raise GatewayError("the virtual BLE devices did not start")
    threading.Thread(target=simulator.stdout.read, daemon=True).start()  # drain
    data["ble"] = {"stack": "bumble", "transport": f"tcp-client:127.0.0.1:{port}"}
    devices = data.setdefault("devices", [])
    assert isinstance(devices, list)
    for entry in FLEET:
        device: dict[str, object] = {"id": f"ble-{entry.device_id}", "driver": entry.driver}
        device["address"] = entry.address
        if entry.driver == "ble.heart_rate":
            device["interval_s"] = 10.0
        devices.append(device)
    return simulator


def _stop(process: subprocess.Popen[str] | None, timeout_s: float = 5.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout_s)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=timeout_s)


class ConfirmedPrinter:
    """One console line per reading when the hub records its confirmation.

    The values come from the reading as it went over the wire (a subscription to
    the hub's readings); the moment is the hub's own ReadingsConfirmed event, so a
    line means "the backend has it and the hub knows". Either may come first.
    This is the demo's console, not the hub's log: values are shown.
    """

    def __init__(self, port: int, prefix: str, gateway: str, out: TextIO = sys.stdout) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._lines: dict[str, str] = {}  # id -> line, seen on the wire, not yet confirmed
        self._confirmed: set[str] = set()  # confirmed, line not seen (yet)
        self._printed: set[str] = set()
        self.printed = 0
        self._subscribed = threading.Event()
        self._topic = f"{prefix}/{gateway}/readings/#"
        self._port = port
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="homehub-demo-console", protocol=paho.MQTTv5
        )
        self.client.on_connect = lambda c, *_: c.subscribe(self._topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self, timeout_s: float = 10.0) -> ConfirmedPrinter:
        self.client.connect("127.0.0.1", self._port)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise GatewayError("the demo console did not subscribe to the broker")
        return self

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            doc = json.loads(message.payload)
            reading_id = str(doc["id"])
            line = format_reading(doc)
        except (ValueError, KeyError, TypeError):
            return  # not a native reading (e.g. payload = "fhir"): nothing to show
        with self._lock:
            if reading_id in self._printed:
                return  # a resend
            if reading_id in self._confirmed:
                self._emit(reading_id, line)
            else:
                self._lines[reading_id] = line

    def on_event(self, event: Event) -> None:
        """The hub's EventBus subscriber (event loop thread; never blocks long)."""
        if not isinstance(event, ReadingsConfirmed):
            return
        with self._lock:
            for reading_id in event.reading_ids:
                line = self._lines.pop(reading_id, None)
                if line is not None:
                    self._emit(reading_id, line)
                elif reading_id not in self._printed:
                    self._confirmed.add(reading_id)

    def _emit(self, reading_id: str, line: str) -> None:
        self._confirmed.discard(reading_id)
        self._printed.add(reading_id)
        self.printed += 1
        print(f"confirmed {line}", file=self._out, flush=True)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()


@dataclass
class Backend:
    """The real backend as processes: the sandbox (PostgreSQL) and one ingest worker."""

    config: Path
    sandbox: subprocess.Popen[str]
    ingest: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)

    def stop_ingest(self) -> None:
        # SIGTERM: it commits, confirms and acknowledges the batch in hand, then exits.
        _stop(self.ingest, timeout_s=10)

    def fleet(self) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "homehub_backend", "fleet", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout if result.returncode == 0 else f"fleet: {result.stderr.strip()}\n"

    def stop(self) -> None:
        self.stop_ingest()
        # The sandbox stops PostgreSQL and removes its directory on SIGTERM.
        _stop(self.sandbox, timeout_s=30)


def _lines_until(
    stream: IO[str],
    marker: str,
    timeout_s: float,
    forward: TextIO | None = None,
) -> tuple[bool, list[str]]:
    """Read `stream` on a thread until a line holds `marker` (True) or it ends (False);
    afterwards keep draining it (to `forward`, WARNING and ERROR lines only)."""
    seen: list[str] = []
    found = threading.Event()
    settled = threading.Event()  # the marker came, or the stream ended

    def read() -> None:
        for line in stream:
            if not found.is_set():
                seen.append(line.rstrip())
                if marker in line:
                    found.set()
                    settled.set()
            elif forward is not None and line.startswith(("WARNING", "ERROR")):
                forward.write(f"backend: {line}")
        settled.set()

    threading.Thread(target=read, daemon=True, name="demo-backend-log").start()
    if not settled.wait(timeout_s):
        seen.append(f"no {marker!r} within {timeout_s:g} s")
    return found.is_set(), list(seen)


def _why(lines: list[str]) -> str:
    text = "\n".join(lines)
    if "No module named homehub_backend" in text or "No module named 'homehub_backend'" in text:
        return "homehub-backend is not installed (make install-deps installs it)"
    for line in reversed(lines):
        if line.strip():
            return line.strip().removeprefix("sandbox: ")
    return "it exited without saying why"


def start_backend(workdir: Path, port: int, prefix: str) -> Backend | str:
    """PostgreSQL + migrate + one ingest worker subscribed; else the one-line reason."""
    config = workdir / "backend.toml"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "homehub_backend.sandbox",
            "--config-out",
            str(config),
            "--broker-port",
            str(port),
            "--prefix",
            prefix,
        ],
        # Its stdin is our pipe: if the demo dies, it sees the end and removes the cluster.
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # Its own session: Ctrl-C is for the demo, which then stops it in order.
        start_new_session=True,
    )
    assert sandbox.stdout is not None
    try:
        ready, lines = _lines_until(sandbox.stdout, "sandbox ready", timeout_s=120)
    except BaseException:  # Ctrl-C while initdb runs: the caller's cleanup does not know it
        _stop(sandbox, timeout_s=30)
        raise
    if not ready:
        _stop(sandbox, timeout_s=30)
        return _why(lines)
    backend = Backend(config=config, sandbox=sandbox)
    try:
        return _start_ingest(backend, env)
    except BaseException:
        backend.stop()
        raise


def _start_ingest(backend: Backend, env: dict[str, str]) -> Backend | str:
    config = backend.config
    backend.ingest = subprocess.Popen(
        [sys.executable, "-m", "homehub_backend", "ingest", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert backend.ingest.stderr is not None
    subscribed, lines = _lines_until(
        backend.ingest.stderr, "ingest: subscribed", 30, forward=sys.stderr
    )
    if not subscribed:
        backend.stop()
        return f"the ingest worker did not start: {_why(lines)}"
    return backend


def run_demo(config_path: Path | None, *, seconds: float = 0.0, ble: bool = False) -> int:
    try:
        return _run_demo(config_path, seconds=seconds, ble=ble)
    except KeyboardInterrupt:  # Ctrl-C before the hub ran: everything is stopped already
        print("demo: interrupted", file=sys.stderr)
        return 130


def _run_demo(config_path: Path | None, *, seconds: float, ble: bool) -> int:
    from gateway.daemon import Hub

    registry = DriverRegistry.from_entry_points()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="homehub-demo-")))
        broker = MosquittoBroker(workdir / "broker")
        data = tomllib.loads(_demo_config_text(config_path))
        data.setdefault("gateway", {})["state_dir"] = str(workdir / "state")
        # The demo shows the whole loop: "sent" means the backend confirmed it (issue 9).
        data.setdefault("mqtt", {}).update(host="127.0.0.1", port=broker.port, confirm=True)
        # A demo lasts seconds: on a machine whose clock is not synchronised a hold of
        # hub-stamped readings (issue 13) would hide them all; a config may still set one.
        data["mqtt"].setdefault("unsynced_hold_s", 0.0)
        simulator = _start_ble_simulator(data) if ble else None
        stack.callback(_stop, simulator)
        try:
            serial_sims = _virtual_serial_devices(data, workdir / "serial")
            config = validate_config(data, registry)
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"demo config: {problem}", file=sys.stderr)
            return EX_CONFIG
        try:
            broker.start()
        except GatewayError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        stack.callback(broker.stop)
        prefix, gateway = config.mqtt.topic_prefix, config.gateway.id
        print(
            f"demo: mosquitto on 127.0.0.1:{broker.port}, store in {workdir / 'state'}; "
            "starting PostgreSQL and homehub-backend ingest...",
            file=sys.stderr,
            flush=True,
        )
        backend = start_backend(workdir, broker.port, prefix)
        if isinstance(backend, str):
            print(
                f"demo: no backend ({backend}); an in-memory stand-in confirms the readings "
                "instead (nothing is stored, no fleet table).",
                file=sys.stderr,
                flush=True,
            )
            confirmer = Confirmer(broker.port, prefix=prefix).start()
            stack.callback(confirmer.stop)
        else:
            stack.callback(backend.stop)
            print(
                "demo: homehub-backend ingest subscribed, PostgreSQL migrated; each reading "
                "below is printed once the backend has committed it and the hub has its "
                "confirmation. Ctrl-C stops.",
                file=sys.stderr,
                flush=True,
            )
        # Start the hub only once its readings have a subscriber: a reading the
        # broker answers with "no matching subscribers" is retried, not lost, but a
        # newcomer should see every one at once.
        printer = ConfirmedPrinter(broker.port, prefix, gateway).start()
        stack.callback(printer.stop)

        async def main() -> None:
            hub = Hub(config, registry)
            hub.events.subscribe(printer.on_event)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, hub.stop)
            if seconds > 0:
                loop.call_later(seconds, hub.stop)
            sims = None
            if serial_sims:
                sims = asyncio.create_task(run_serial_simulators(workdir / "serial", serial_sims))
            try:
                await hub.run()
            finally:
                if sims is not None:
                    sims.cancel()
                    await asyncio.gather(sims, return_exceptions=True)

        try:
            asyncio.run(main())
        except GatewayError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        print(f"demo: {printer.printed} reading(s) confirmed", file=sys.stderr, flush=True)
        if not isinstance(backend, str):
            backend.stop_ingest()  # it commits what it holds (the hub's last status too)
            sys.stdout.write(backend.fleet())
            sys.stdout.flush()
    return 0
