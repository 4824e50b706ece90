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


def run_demo(config_path: Path | None, *, seconds: float = 0.0) -> int:
    from gateway.daemon import Hub

    registry = DriverRegistry.from_entry_points()
    with tempfile.TemporaryDirectory(prefix="homehub-demo-") as tmp:
        workdir = Path(tmp)
        broker = MosquittoBroker(workdir / "broker")
        data = tomllib.loads(_demo_config_text(config_path))
        data.setdefault("gateway", {})["state_dir"] = str(workdir / "state")
        data.setdefault("mqtt", {}).update(host="127.0.0.1", port=broker.port)
        try:
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
                await hub.run()

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
            broker.stop()
    return 0
