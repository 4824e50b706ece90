"""`homehub demo`: a private mosquitto, the hub on simulated devices, and a listener.

So a newcomer sees readings flow end to end on a laptop: drivers -> store ->
MQTT 5 -> `homehub listen`. Ctrl-C stops all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from importlib import resources
from pathlib import Path

from gateway.config import EX_CONFIG, validate_config
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError, GatewayError
from gateway.sim.broker import MosquittoBroker
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


def _await_subscription(listener: subprocess.Popen[str], timeout_s: float = 15.0) -> None:
    subscribed = threading.Event()

    def forward() -> None:
        assert listener.stderr is not None
        for line in listener.stderr:
            sys.stderr.write(line)
            if "subscribed on" in line:
                subscribed.set()
        subscribed.set()

    threading.Thread(target=forward, daemon=True, name="demo-listener-log").start()
    if not subscribed.wait(timeout_s) or listener.poll() is not None:
        raise GatewayError("the demo listener did not subscribe to the broker")


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


def _stop(process: subprocess.Popen[str] | None) -> None:
    if process is None:
        return
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    if process.poll() is None:
        process.kill()


def run_demo(config_path: Path | None, *, seconds: float = 0.0, ble: bool = False) -> int:
    from gateway.daemon import Hub

    registry = DriverRegistry.from_entry_points()
    with tempfile.TemporaryDirectory(prefix="homehub-demo-") as tmp:
        workdir = Path(tmp)
        broker = MosquittoBroker(workdir / "broker")
        data = tomllib.loads(_demo_config_text(config_path))
        data.setdefault("gateway", {})["state_dir"] = str(workdir / "state")
        data.setdefault("mqtt", {}).update(host="127.0.0.1", port=broker.port)
        simulator = _start_ble_simulator(data) if ble else None
        try:
            serial_sims = _virtual_serial_devices(data, workdir / "serial")
            config = validate_config(data, registry)
        except ConfigError as exc:
            _stop(simulator)
            for problem in exc.problems:
                print(f"demo config: {problem}", file=sys.stderr)
            return EX_CONFIG
        try:
            broker.start()
        except GatewayError as exc:
            _stop(simulator)
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        print(
            f"demo: mosquitto on 127.0.0.1:{broker.port}, store in {workdir / 'state'}; "
            "readings below come back from the broker. Ctrl-C stops.",
            file=sys.stderr,
            flush=True,
        )
        listener = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--log-level",
                "WARNING",
                "listen",
                "--port",
                str(broker.port),
                "--prefix",
                config.mqtt.topic_prefix,
            ],
            stderr=subprocess.PIPE,
            text=True,
            # Its own process group: Ctrl-C reaches it through us, in order.
            start_new_session=True,
        )
        try:
            # Start the hub only once the listener is subscribed: a reading the
            # broker accepts with "no matching subscribers" is delivered, and a
            # newcomer should see every one.
            _await_subscription(listener)

            async def main() -> None:
                hub = Hub(config, registry)
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, hub.stop)
                if seconds > 0:
                    loop.call_later(seconds, hub.stop)
                sims = None
                if serial_sims:
                    sims = asyncio.create_task(
                        run_serial_simulators(workdir / "serial", serial_sims)
                    )
                try:
                    await hub.run()
                finally:
                    if sims is not None:
                        sims.cancel()
                        await asyncio.gather(sims, return_exceptions=True)

            asyncio.run(main())
        except GatewayError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        finally:
            listener.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                listener.wait(timeout=5)
            if listener.poll() is None:
                listener.kill()
            _stop(simulator)
            broker.stop()
    return 0
