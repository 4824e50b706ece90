"""BLE idle CPU (issue 12 part 3): a hub with 5 BLE devices configured and nothing advertising.

Three processes against one private mosquitto and one virtual radio:

- the radio: `gateway.sim.ble.air.VirtualAir` exposing a Bumble controller on
  `tcp-server:127.0.0.1:PORT`, with no virtual device on it (a quiet home: cuffs and
  scales advertise only while they are used);
- the BLE hub: `python -m gateway run` with `[ble] stack = "bumble"` on that transport,
  the default scan duty (`idle_scan_s` 10 of every `idle_period_s` 30) and five BLE
  devices (blood pressure, thermometer, scale, oximeter, glucose meter) whose addresses
  never advertise;
- the baseline: the same hub config with no devices at all (what the hub costs with
  nothing to scan for), measured in the same window.

Each process's utime+stime from /proc/PID/stat over `cpu_window_s`, starting `settle_s`
after the hub connected to the broker, as % of one core. Target < 1 % for the BLE hub.

What it does not measure: BlueZ. On a Pi, `stack = "bluez"` puts the scanning in
bluetoothd and the kernel (the hub receives D-Bus signals only for advertisements,
none in a quiet home), so the Bumble figure, where the hub's own process runs the
whole host stack and every HCI event of a scan, is the pessimistic one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Result, private_broker, scratch_dir, toml_text
from bench.footprint import Child, cpu_seconds
from gateway.sim.broker import free_port

TARGET_CPU_PERCENT = 1.0

_RADIO = """\
import asyncio, sys
from bumble.controller import Controller
from gateway.sim.ble.air import VirtualAir

# Count the hub's scan switches, to know it really scanned (and at what duty).
for name in ("on_hci_le_set_scan_enable_command", "on_hci_le_set_extended_scan_enable_command"):
    original = getattr(Controller, name)
    def wrapped(self, command, original=original):
        result = original(self, command)
        print("radio: scan", "on" if self.le_scan_enable else "off", flush=True)
        return result
    setattr(Controller, name, wrapped)

async def main() -> None:
    air = VirtualAir()
    await air.expose(f"tcp-server:127.0.0.1:{sys.argv[1]}")
    print("radio: ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

#: five BLE devices, none of which exists on the radio
QUIET_DEVICES: tuple[tuple[str, str], ...] = (
    ("ble.blood_pressure", "C0:99:00:00:00:01"),
    ("ble.thermometer", "C0:99:00:00:00:02"),
    ("ble.weight_scale", "C0:99:00:00:00:03"),
    ("ble.pulse_oximeter", "C0:99:00:00:00:04"),
    ("ble.glucose", "C0:99:00:00:00:05"),
)


def hub_config(state_dir: Path, broker_port: int, radio_port: int, *, ble: bool) -> str:
    data: dict[str, Any] = {
        "gateway": {"id": "bench-ble-idle" if ble else "bench-no-ble", "state_dir": str(state_dir)},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "panel": {"backend": "none"},
        "ble": {"stack": "bumble", "transport": f"tcp-client:127.0.0.1:{radio_port}"},
        "devices": [
            {"id": f"dev-{n}", "driver": driver, "address": address}
            for n, (driver, address) in enumerate(QUIET_DEVICES, 1)
        ]
        if ble
        else [],
    }
    return toml_text(data)


def run(*, settle_s: float = 5.0, cpu_window_s: float = 30.0) -> list[Result]:
    with scratch_dir("ble-idle") as work, private_broker(work) as broker:
        radio_port = free_port()
        radio = Child(
            "radio", [sys.executable, "-c", _RADIO, str(radio_port)], ready_text="radio: ready"
        )
        hubs: dict[str, Child] = {}
        for name, ble in (("ble hub", True), ("hub without devices", False)):
            config = work / f"{'ble' if ble else 'none'}.toml"
            config.write_text(
                hub_config(
                    work / f"state-{'ble' if ble else 'none'}", broker.port, radio_port, ble=ble
                )
            )
            hubs[name] = Child(
                name,
                [sys.executable, "-m", "gateway", "run", "--config", str(config)],
                ready_text="mqtt: connected",
            )
        children = [radio, *hubs.values()]
        try:
            radio.start()
            radio.wait_ready(30)
            for hub in hubs.values():
                hub.start()
            for hub in hubs.values():
                hub.wait_ready(30)
            ready = max(h.ready_at or 0.0 for h in hubs.values())
            time.sleep(max(0.0, ready + settle_s - time.monotonic()))
            cpu0 = {h.name: cpu_seconds(h.pid) for h in hubs.values()}
            t0 = time.monotonic()
            time.sleep(cpu_window_s)
            window = time.monotonic() - t0
            cpu = {
                h.name: (cpu_seconds(h.pid) - cpu0[h.name]) / window * 100 for h in hubs.values()
            }
            for child in children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited early: {child.lines[-8:]}")
            switches = [line for line in radio.lines if line.startswith("radio: scan")]
            scan_on = sum(line.endswith(" on") for line in switches)
            if scan_on == 0:
                raise RuntimeError(
                    "the BLE hub never started a scan: the figure would mean nothing"
                )
        finally:
            for child in reversed(children):
                with contextlib.suppress(Exception):
                    child.stop()
    value, baseline = cpu["ble hub"], cpu["hub without devices"]
    return [
        Result(
            name="ble_idle_cpu",
            metric=(
                f"CPU of `homehub run`, 5 BLE devices, none advertising, over {cpu_window_s:g} s"
            ),
            unit="% of one core",
            value=value,
            baseline=baseline,
            baseline_label="the same hub with no devices",
            better="lower",
            target=f"< {TARGET_CPU_PERCENT:g} %",
            passed=value < TARGET_CPU_PERCENT,
            extra={
                "window_s": round(window, 2),
                "settle_s": settle_s,
                "stack": "bumble (virtual controller over tcp)",
                "scan_starts_seen_by_the_radio": scan_on,
                "scan_switches": len(switches),
            },
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
