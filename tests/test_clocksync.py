"""Is the clock synchronised? `clock.synced` in the status (issue 13, part 2)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.clocksync import FileSync, KernelSync, SystemSync
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import Event, EventBus, ReadingStored
from gateway.sim.broker import MosquittoBroker, free_port
from tests.helpers import load, next_event, sim_device, write_config
from tests.test_payload import READING_V, STATUS_V
from tests.test_uplink import StatusWatcher


def test_the_kernel_says_synchronised_or_not() -> None:
    # adjtimex(2) with no modes needs no privilege; on Linux it always answers.
    assert KernelSync().synced() in (True, False)


def test_a_flag_file_says_synchronised_once_it_exists(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    source = FileSync(flag)
    assert source.synced() is False
    flag.touch()
    assert source.synced() is True


async def test_the_status_says_when_the_clock_becomes_synchronised(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    flag = tmp_path / "synchronized"
    config = write_config(tmp_path / "hub.toml", broker=broker, state_dir=tmp_path / "state")
    hub = Hub(
        load(config),
        DriverRegistry.from_entry_points(),
        events=EventBus(),
        clock_sync=FileSync(flag),
    )
    hub.clock_sync_interval_s = 0.02
    watcher = StatusWatcher(broker.port, "homehub/hub-test/status")
    caplog.set_level(logging.INFO, logger="gateway.daemon")
    task = asyncio.create_task(hub.run())
    try:

        def clock(doc: dict[str, Any]) -> Any:
            return doc.get("clock", {}).get("synced")

        unsynced = await watcher.wait_for(lambda d: clock(d) is False, 10)
        STATUS_V.validate(unsynced)
        assert unsynced["clock"]["since"] is not None
        assert "clock: not synchronised (file)" in caplog.text
        flag.touch()
        synced = await watcher.wait_for(lambda d: clock(d) is True, 10)
        STATUS_V.validate(synced)
        assert synced["clock"]["since"] >= unsynced["clock"]["since"]
        assert "clock: synchronised after" in caplog.text
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
        watcher.close()


async def test_each_reading_says_whether_the_clock_was_synchronised(tmp_path: Path) -> None:
    """measured_at_quality: "unsynced" until the sync source says so, then "synced"."""
    flag = tmp_path / "synchronized"
    config = write_config(
        tmp_path / "hub.toml",
        broker=None,  # nothing delivered: every reading stays in the store to look at
        state_dir=tmp_path / "state",
        devices=[sim_device("t-1", "temperature", interval_s=0.05, seed=1)],
        mqtt={"port": free_port()},
    )
    events = EventBus()
    stored: asyncio.Queue[Event] = asyncio.Queue()
    events.subscribe(lambda e: stored.put_nowait(e) if isinstance(e, ReadingStored) else None)
    hub = Hub(
        load(config), DriverRegistry.from_entry_points(), events=events, clock_sync=FileSync(flag)
    )
    hub.clock_sync_interval_s = 0.02
    task = asyncio.create_task(hub.run())
    try:
        await next_event(stored, ReadingStored, 10)
        flag.touch()
        async with asyncio.timeout(10):
            while hub.status.clock_synced is not True:
                await asyncio.sleep(0.01)
        await next_event(stored, ReadingStored, 10)
        await next_event(stored, ReadingStored, 10)
        assert hub.store is not None
        rows = await hub.store.fetch_unsent(0, 100)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    qualities = [json.loads(row.payload)["measured_at_quality"] for row in rows]
    assert qualities[0] == "unsynced" and qualities[-1] == "synced"
    # Once synced, never "unsynced" again (the state only moved forward here).
    first_synced = qualities.index("synced")
    assert set(qualities[first_synced:]) == {"synced"}
    for row in rows:
        READING_V.validate(json.loads(row.payload))


class Refused:
    """A kernel source that cannot answer (adjtimex filtered by ProtectClock=yes)."""

    name = "kernel"

    def synced(self) -> bool | None:
        return None


def test_the_default_falls_back_to_timesyncds_flag(tmp_path: Path) -> None:
    state = tmp_path / "timesync"
    flag = state / "synchronized"
    assert SystemSync(Refused(), flag).synced() is None  # no timesyncd: cannot tell
    state.mkdir()
    source = SystemSync(Refused(), flag)
    assert source.synced() is False
    flag.touch()
    assert source.synced() is True and source.name == "systemd-timesyncd"
    # The kernel, when it answers, is the source.
    assert SystemSync(FileSync(flag), tmp_path / "absent" / "x").synced() is True
