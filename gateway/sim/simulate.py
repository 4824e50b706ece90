"""`homehub simulate`: run virtual devices until Ctrl-C (or for `seconds`).

Each kind of virtual device is one *part* (`--serial DIR`, `--ble TRANSPORT`):
a coroutine that runs until cancelled. They all run in one event loop and
stop together, removing what they created.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway.sim.serial import ALL_SIMS, SIM_CONFIG, run_serial_simulators


def serial_config_hint(directory: Path) -> str:
    """The `[[devices]]` tables that read the simulated serial devices in `directory`."""
    lines = []
    for name in ALL_SIMS:
        lines += ["[[devices]]", f'id = "{name}"', f"port = {json.dumps(str(directory / name))}"]
        for key, value in SIM_CONFIG[name].items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return "'" + value + "'" if "\\" in value else json.dumps(value)
    return json.dumps(value)


def _ble_ready(spec: str) -> None:
    from gateway.sim.ble.fleet import devices_toml

    print('virtual BLE devices ready; in the hub\'s config:\n\n[ble]\nstack = "bumble"')
    print(f'transport = "{spec}"\n\n{devices_toml()}', flush=True)


async def simulate(
    *,
    serial_dir: Path | None,
    ble: str | None = None,
    ble_interval_s: float = 60.0,
    seconds: float = 0.0,
) -> None:
    parts: list[Coroutine[Any, Any, None]] = []
    if ble is not None:
        from gateway.sim.ble.fleet import run_fleet

        parts.append(run_fleet(ble, interval_s=ble_interval_s, ready=_ble_ready))
    if serial_dir is not None:
        parts.append(run_serial_simulators(serial_dir))
        print(
            f"simulate: serial devices in {serial_dir}; read them with:\n",
            file=sys.stderr,
        )
        print(serial_config_hint(serial_dir), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if seconds > 0:
        loop.call_later(seconds, stop.set)
    tasks = [asyncio.create_task(part) for part in parts]
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [waiter, *tasks]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result
