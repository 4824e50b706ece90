"""End to end: serial simulators on ptys -> `homehub run` -> real mosquitto -> `homehub listen`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import jsonschema
from homehub_contract import load_schema

from gateway.sim.broker import MosquittoBroker
from gateway.sim.pty import PtyLink
from gateway.sim.serial import ALL_SIMS, SIM_CONFIG, Phase, RunningSim, Scenario
from gateway.sim.simulate import toml_value
from tests.helpers import LineReader, Listener, hub_process, wait_until, write_config

SIMS = ["contec-cms50-v7", "nonin-df2", "scale-line"]


async def test_serial_devices_to_the_backend(
    tmp_path: Path,
    broker: MosquittoBroker,
    listener_factory: Callable[..., Listener],
) -> None:
    links = {name: PtyLink(tmp_path / name) for name in SIMS}
    for link in links.values():
        link.appear()
    devices: list[dict[str, object]] = []
    for name in SIMS:
        device: dict[str, object] = {"id": name, "port": str(links[name].link)}
        device.update(SIM_CONFIG[name])
        if device["driver"] != "serial.line":
            device["window_s"] = 1.0
        devices.append(device)
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        mqtt={"reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
    )
    with config.open("a") as out:
        for device in devices:
            out.write("\n[[devices]]\n")
            out.writelines(f"{k} = {toml_value(v)}\n" for k, v in device.items())
    listener = listener_factory(broker.port)
    hub = hub_process(config)
    output = LineReader(hub)
    try:

        def all_open() -> bool:
            opened = [line for line in output.all if " port open (" in line]
            return all(any(f"device {n}: " in line for line in opened) for n in SIMS)

        await asyncio.to_thread(wait_until, all_open, 15, "the hub to open every port")
        scenario = Scenario(
            [
                Phase(0.2, "searching"),
                Phase(1.5, "in", spo2=(97,), pulse=(150,)),
                Phase(0.8, "out"),
            ]
        )
        async with asyncio.TaskGroup() as group:
            for name in SIMS:
                group.create_task(RunningSim(ALL_SIMS[name](), links[name], scenario).run())
        try:
            readings = await asyncio.to_thread(listener.wait_for, 3, 15)
        except AssertionError:
            print("\n".join(output.all), [r["device"] for r in listener.readings])
            raise
    finally:
        hub.terminate()
        code = hub.wait(timeout=10)
    assert code == 0, "the hub did not stop cleanly with its serial ports open"
    validator = jsonschema.Draft202012Validator(load_schema("reading-1"))
    by_device = {}
    for doc in readings:
        validator.validate(doc)
        by_device[doc["device"]["id"]] = {v["code"]: v["value"] for v in doc["values"]}
    oximeter = {"MDC_PULS_OXIM_SAT_O2": 97.0, "MDC_PULS_OXIM_PULS_RATE": 150.0}
    assert by_device == {
        "contec-cms50-v7": oximeter,
        "nonin-df2": oximeter,
        "scale-line": {"MDC_MASS_BODY_ACTUAL": 83.0},
    }
    # The logging rule: no patient values at INFO or above.
    values = ("97.0", "150.0", "83.0", "=97", "=150")
    assert not [line for line in output.all if any(v in line for v in values)]


def test_simulate_command_makes_one_linked_pty_per_device(tmp_path: Path) -> None:
    directory = tmp_path / "serial"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "simulate",
            "--serial",
            str(directory),
            "--seconds",
            "1.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(list(directory.glob("*"))) == len(ALL_SIMS), 10, "the links")
        for name in ALL_SIMS:
            target = os.readlink(directory / name)
            assert target.startswith("/dev/pts/"), target
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    # It prints the [[devices]] tables that read its devices, valid for the hub.
    devices = tomllib.loads(out)["devices"]
    assert [d["id"] for d in devices] == list(ALL_SIMS)
    assert not list(directory.glob("*")), err  # it cleans up after itself
