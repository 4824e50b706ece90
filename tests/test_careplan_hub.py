"""The care plan in a real hub process: set, SIGKILL, restart, still in force; status (issue 10)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.careplan import parse_plan
from gateway.sim.broker import MosquittoBroker
from tests.helpers import LineReader, hub_process, write_config

PLAN = {
    "version": 7,
    "schedule": [{"kind": "weight", "start": "06:00", "end": "10:00"}],
    "thresholds": [{"mdc": 150021, "above": 160}],
}

# The command channel (branch `commands`) calls hub.care_plan.set(doc); until it is
# merged, this stand-in does the same from inside a running hub process.
SETTER = textwrap.dedent(
    """
    import asyncio, json, sys, tomllib
    from pathlib import Path
    from gateway.config import validate_config
    from gateway.daemon import Hub
    from gateway.drivers.registry import DriverRegistry
    from gateway.events import EventBus, HubStarted

    async def main() -> None:
        registry = DriverRegistry.from_entry_points()
        config = validate_config(tomllib.loads(Path(sys.argv[1]).read_text()), registry)
        events = EventBus()
        hub = Hub(config, registry, events=events)

        def on(event: object) -> None:
            if isinstance(event, HubStarted):
                hub.care_plan.set(json.loads(sys.argv[2]))
                print("plan set", flush=True)

        events.subscribe(on)
        await hub.run()

    asyncio.run(main())
    """
)


def test_plan_set_survives_sigkill_and_restart(tmp_path: Path, broker: MosquittoBroker) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "hub.toml", broker=broker, state_dir=state)
    digest = parse_plan(PLAN).digest()
    setter = subprocess.Popen(
        [sys.executable, "-c", SETTER, str(config), json.dumps(PLAN)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        LineReader(setter).wait_for("plan set", timeout_s=20)
        # No clean shutdown: the plan was durable when set() returned.
        setter.send_signal(signal.SIGKILL)
        setter.wait(timeout=5)
    finally:
        if setter.poll() is None:
            setter.kill()
    hub = hub_process(config)
    try:
        LineReader(hub).wait_for(f"care plan {digest} in force", timeout_s=20)
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        block = json.loads(result.stdout)["care_plan"]
        assert (block["version"], block["hash"], block["windows"]) == (7, digest, 1)
        assert block["next_window"]["kind"] == "weight"
        human = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert f"care plan      version 7, {digest} (1 windows, 1 thresholds)" in human.stdout
        assert "next window    weight" in human.stdout
        hub.terminate()
        assert hub.wait(timeout=10) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
