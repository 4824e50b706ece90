"""The care plan in a real hub process: set, SIGKILL, restart, still in force; status (issue 10)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from homehub_contract import validator

from gateway.careplan import CarePlanService, parse_plan
from gateway.events import EventBus, MeasurementDue, PanelShows, ReadingStored
from gateway.sim.broker import MosquittoBroker, free_port
from tests.helpers import (
    LineReader,
    Listener,
    hub_process,
    next_event,
    running_hub,
    sim_device,
    write_config,
)

FAST_MQTT = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5}

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


async def _store_offline(config: Path, count: int) -> None:
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events):
        stored = 0
        async with asyncio.timeout(30):
            while stored < count:
                event = await queue.get()
                if isinstance(event, ReadingStored) and not event.duplicate:
                    stored += 1


def test_flagged_readings_are_published_before_the_backlog(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Callable[..., Listener]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    plans = CarePlanService(state, now=lambda: datetime.now(UTC))
    plans.set({"thresholds": [{"mdc": 150021, "above": 140, "unit": "mm[Hg]"}]})
    # An outage: 200 readings stored with no broker to reach.
    offline = write_config(
        tmp_path / "offline.toml",
        broker=None,
        state_dir=state,
        mqtt={"port": free_port(), **FAST_MQTT},
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=200, seed=10)],
    )
    asyncio.run(_store_offline(offline, 200))
    listener = listener_factory(broker.port)
    online = write_config(tmp_path / "online.toml", broker=broker, state_dir=state, mqtt=FAST_MQTT)
    hub = hub_process(online)
    try:
        readings = listener.wait_for(200, timeout_s=30)
    finally:
        hub.terminate()
        hub.wait(timeout=10)
    assert len({r["id"] for r in readings}) == 200
    systolic = [next(v["value"] for v in r["values"] if v["mdc"] == 150021) for r in readings]
    flagged = ["flags" in r for r in readings]
    # The right readings carry the flag, and only they.
    assert flagged == [s > 140 for s in systolic]
    assert all(r["flags"] == ["above:150021"] for r in readings if "flags" in r)
    n = sum(flagged)
    assert 3 <= n <= 40, n  # seed 10: a handful above 140 among 200
    # Every flagged reading arrived before every unflagged one, each group in seq order.
    assert flagged == [True] * n + [False] * (200 - n)
    measured = [r["measured_at"] for r in readings]
    assert measured[:n] == sorted(measured[:n]) and measured[n:] == sorted(measured[n:])


async def _due_in_hub(config: Path) -> None:
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events) as hub:
        async with asyncio.timeout(20):
            kinds: set[str] = set()
            due: MeasurementDue | None = None
            # The blood pressure reading (stored at start) does not end the weight window.
            while "bp-1" not in kinds or due is None:
                event = await queue.get()
                if isinstance(event, ReadingStored):
                    kinds.add(event.device_id)
                elif isinstance(event, MeasurementDue):
                    due = event
            assert due.kinds == ("weight",)
            assert hub.care_plan.due == ("weight",)
            hub.measure.open()  # the scale's reading (trigger = "measure")
            while True:
                event = await queue.get()
                if isinstance(event, MeasurementDue):
                    assert event.kinds == ()
                    break
        doc = json.loads(await hub._status_payload())
        validator("status-1").validate(doc)
        block = doc["care_plan"]
        assert block["due"] == [] and block["missed"] == [] and block["windows"] == 1


def test_hub_shows_measurement_due_until_a_reading_of_its_kind(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    window = {"kind": "weight", "start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}
    CarePlanService(state, now=lambda: now).set({"timezone": "UTC", "schedule": [window]})
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=state,
        mqtt=FAST_MQTT,
        devices=[
            sim_device("bp-1", "blood_pressure", interval_s=0.0, count=1),
            sim_device("scale-1", "weight", trigger="measure", interval_s=0.0, count=1),
        ],
    )
    asyncio.run(_due_in_hub(config))


async def _broken_plan(config: Path) -> None:
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events) as hub:

        def broken(*_: object) -> None:
            raise RuntimeError("a bug in the care plan")

        # Before the hub's task first runs: the device's one reading meets the bug.
        hub.care_plan.flags = broken  # type: ignore[assignment,method-assign]
        hub.care_plan.stored = broken  # type: ignore[method-assign]
        _, _ = await next_event(queue, ReadingStored, timeout_s=10)
        assert hub.store is not None
        assert (await hub.store.stats()).total == 1


def test_a_failing_care_plan_never_costs_a_reading(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        mqtt=FAST_MQTT,
        devices=[sim_device("scale-1", "weight", interval_s=0.0, count=1)],
    )
    asyncio.run(_broken_plan(config))


async def _outside_plan_in_hub(config: Path) -> None:
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events):
        stored, _ = await next_event(queue, ReadingStored, timeout_s=10)
        assert stored.show_flag is True
        async with asyncio.timeout(20):
            while True:
                shown, _ = await next_event(queue, PanelShows, timeout_s=10)
                assert shown.state != "sent", "a flagged reading must not show plain 'sent'"
                if shown.state == "sent, outside your plan":
                    break


def test_show_on_panel_shows_a_sent_flagged_reading_as_outside_the_plan(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    # Every simulated systolic value is above 10 mmHg: the reading is flagged.
    plan = {"thresholds": [{"mdc": 150021, "above": 10}], "show_on_panel": True}
    CarePlanService(state, now=lambda: datetime.now(UTC)).set(plan)
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=state,
        mqtt=FAST_MQTT,
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=1)],
    )
    asyncio.run(_outside_plan_in_hub(config))
