"""The log canary (issue 14 part 5): no patient data in what the hub prints, proved.

One `homehub run` at the production log level (INFO) reads every kind of device the
hub has: simulated, serial on pseudo-terminals (`homehub simulate --serial`), Bluetooth
LE on a Bumble virtual radio (`homehub simulate --ble`), plus a serial cable that is not
there and a BLE device that never advertises. The broker takes most readings, refuses
one device's (ACL), then goes away. Everything the hub printed is then searched for
every value it stored (the store holds exactly what it publishes) and for every device
address and serial port path in its config: none may appear (README, "Logging rule").
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.sim.ble.fleet import FLEET
from gateway.sim.broker import MosquittoBroker
from gateway.sim.serial import ALL_SIMS, SIM_CONFIG
from gateway.sim.simulate import toml_value
from gateway.store import codec
from tests.helpers import LineReader, Listener, wait_until

GATEWAY = "hub-canary"
REFUSED_DEVICE = "sim-refused"
MISSING_PORT = "/dev/serial/by-id/usb-Canary_Cable_0042-if00-port0"
SILENT_ADDRESS = "C0:48:48:00:99:42"
OXIMETERS = ("contec-cms50-legacy", "contec-cms50-v7", "nonin-df2", "nonin-df8")

# The hub's own numbers that a log line may carry next to a value's digits: durations
# ("retrying in 36.4 s"), host:port, errno, restart numbers, the broker's Receive Maximum,
# a traceback's line numbers and counts ("60 samples", "3 device(s)"). A value printed
# as "36.4 s" would slip through; no log line formats a value that way.
_OWN_NUMBERS = re.compile(
    r"\d+(?:\.\d+)?\s*m?s\b|:\d+\b|\b(?:[Ee]rrno|restart|line|Receive Maximum is) \d+"
    r"|\b\d+ (?:of \d+ )?(?:[a-z]+\(s\)|samples|readings|records|bytes|frames|tasks)\b"
)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def published_values(store: Path) -> set[float]:
    """Every value of every stored reading (what the hub publishes, byte for byte)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        payloads = [row[0] for row in db.execute("SELECT payload FROM readings")]
    found: set[float] = set()
    for payload in payloads:
        doc = json.loads(codec.decode(payload))  # schema 5 stores payloads deflated
        found.update(float(v["value"]) for v in doc["values"] if v["value"] is not None)
    return found


def leaked_values(lines: Iterable[str], values: set[float]) -> list[tuple[str, float]]:
    """(line, value) for each value that appears as a number in a line.

    Integers below 10 are left out: counts and restart numbers are the hub's own,
    and no vital sign the hub reads is a single digit.
    """
    wanted = {v for v in values if not (v == int(v) and abs(v) < 10)}
    leaks = []
    for line in lines:
        for token in _NUMBER.findall(_OWN_NUMBERS.sub(" ", line)):
            if float(token) in wanted:
                leaks.append((line, float(token)))
    return leaks


def test_the_canary_finds_a_value_and_ignores_the_hubs_own_numbers() -> None:
    values = {82.4, 97.0, 120.0, 3.0}
    assert leaked_values(["device scale-1: weight 82.4 kg"], values) == [
        ("device scale-1: weight 82.4 kg", 82.4)
    ]
    assert leaked_values(["SpO2=97 pulse=72"], values) == [("SpO2=97 pulse=72", 97.0)]
    assert leaked_values(["values [120, 80]"], values) == [("values [120, 80]", 120.0)]
    own = [
        "mqtt: cannot connect to 127.0.0.1:120 (refused); retrying in 97.0 s",
        "device bp-1: driver simulated failed; restart 3 in 82.4 s",
        "homehub 0.1.0 started: gateway hub-0001, 3 device(s)",
        "device oxi-1: reading stored (97 samples)",
        "mqtt: cannot connect to 127.0.0.1:1 ([Errno 120] Connection refused)",
        "mqtt: the broker's Receive Maximum is 120: at most 97 readings in flight",
        '  File "/usr/lib/python3/dist-packages/pyee/asyncio.py", line 97, in emit',
    ]
    assert leaked_values(own, values) == []


def start_simulators(serial_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`homehub simulate --serial DIR --ble tcp-server:...`; returns it and the hub's transport."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--log-level",
            "WARNING",
            "simulate",
            "--serial",
            str(serial_dir),
            "--ble",
            "tcp-server:127.0.0.1:0",
            "--interval",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    transport = None
    for line in process.stdout:
        match = re.match(r'transport = "(tcp-client:[^"]+)"', line)
        if match:
            transport = match.group(1)
            break
    assert transport is not None, "the virtual BLE devices did not start"
    threading.Thread(target=process.stdout.read, daemon=True).start()  # drain
    return process, transport


def hub_config(path: Path, state: Path, port: int, serial_dir: Path, transport: str) -> Path:
    def table(items: dict[str, Any]) -> list[str]:
        return ["[[devices]]", *(f"{k} = {toml_value(v)}" for k, v in items.items()), ""]

    lines = [
        "[gateway]",
        f'id = "{GATEWAY}"',
        f"state_dir = {json.dumps(str(state))}",
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 0.5",
        # the machine's clock may be unsynchronised: no hold of hub-stamped readings (issue 13)
        "unsynced_hold_s = 0.0",
        "",
        "[ble]",
        'stack = "bumble"',
        f'transport = "{transport}"',
        "connect_timeout_s = 3.0",
        "",
        "[panel]",
        'backend = "none"',
        "",
    ]
    simulated = {"driver": "simulated", "interval_s": 0.5}
    lines += table({"id": "sim-bp", "kind": "blood_pressure", "count": 6, **simulated})
    lines += table({"id": REFUSED_DEVICE, "kind": "weight", "count": 3, **simulated})
    for name in ALL_SIMS:
        options: dict[str, Any] = {"id": name, "port": str(serial_dir / name), **SIM_CONFIG[name]}
        if name in OXIMETERS:
            # a reading every second while the finger is in, not one per session
            options.update(mode="continuous", interval_s=1.0, window_s=1.0)
        lines += table(options)
    lines += table({"id": "serial-missing", "driver": "serial.nonin", "port": MISSING_PORT})
    for entry in FLEET:
        options = {"id": f"ble-{entry.device_id}", "driver": entry.driver}
        options["address"] = entry.address
        lines += table(options)
    lines += table({"id": "ble-silent", "driver": "ble.thermometer", "address": SILENT_ADDRESS})
    path.write_text("\n".join(lines))
    return path


def watch_status(port: int) -> tuple[paho.Client, list[str]]:
    """Every status message the hub publishes (it is printed to the broker, too)."""
    seen: list[str] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda _c, _u, msg: seen.append(msg.payload.decode())
    client.on_connect = lambda c, *_: c.subscribe(f"homehub/{GATEWAY}/status", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, seen


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.mark.slow
def test_nothing_the_hub_prints_names_a_value_an_address_or_a_port(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    listener_factory: Callable[..., Listener],
) -> None:
    acl = f"topic deny homehub/+/readings/{REFUSED_DEVICE}\ntopic readwrite #\n"
    broker = broker_factory(acl=acl)
    listener = listener_factory(broker.port)
    status_client, statuses = watch_status(broker.port)
    serial_dir = tmp_path / "serial"
    simulators, transport = start_simulators(serial_dir)
    state = tmp_path / "state"
    config = hub_config(tmp_path / "hub.toml", state, broker.port, serial_dir, transport)
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    # journald's format, as on a hub: no timestamps whose digits could match a value.
    env["JOURNAL_STREAM"] = "8:4242"
    hub = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-level", "INFO", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    output = LineReader(hub)
    ptys: set[str] = set()
    try:
        ble_ids = {f"ble-{entry.device_id}" for entry in FLEET}
        kinds = {"simulated": {"sim-bp"}, "serial": set(ALL_SIMS), "BLE": ble_ids}

        def missing() -> list[str]:
            """The kinds of device that have delivered nothing yet."""
            with listener._cond:
                seen = {doc["device"]["id"] for doc in listener.readings}
            for name in ALL_SIMS:
                link = serial_dir / name
                if link.is_symlink():
                    ptys.add(os.readlink(link))
            return [kind for kind, ids in kinds.items() if not ids & seen]

        # Generous: the scenario needs ~10 s, but a loaded CI machine is slow.
        deadline = time.monotonic() + 90
        while missing():
            assert time.monotonic() < deadline, f"no reading from {missing()}: {output.all[-15:]}"
            time.sleep(0.1)
        output.wait_for(f"broker refused a reading of device {REFUSED_DEVICE}", 10)
        wait_until(
            lambda: any("cannot open the port" in s for s in statuses),
            10,
            "a status naming the missing cable's problem",
        )
        status_client.disconnect()
        status_client.loop_stop()
        broker.stop()
        output.wait_for("cannot connect", 10)
    finally:
        stop(hub)
        stop(simulators)
    assert hub.returncode == 0, output.all[-20:]
    lines = output.all
    assert any("started" in line for line in lines)  # it did print at INFO

    values = published_values(state / "readings.sqlite3")
    assert len(values) > 20, values
    leaks = leaked_values(lines, values)
    assert leaks == [], "\n".join(f"{value}: {line}" for line, value in leaks)

    addresses = [entry.address for entry in FLEET] + [SILENT_ADDRESS]
    secrets = [
        *addresses,
        *(a.lower() for a in addresses),
        *(a.replace(":", "") for a in addresses),
        *(a.replace(":", "_") for a in addresses),  # BlueZ's dev_C0_48_... object paths
        str(serial_dir),
        MISSING_PORT,
        "usb-Canary_Cable",
        "/dev/pts/",
        *ptys,
    ]
    named = [
        (s, line) for line in [*lines, *statuses] for s in secrets if s.lower() in line.lower()
    ]
    assert named == [], "\n".join(f"{s}: {line}" for s, line in named)
