"""Is the clock synchronised? `clock.synced` in the status (issue 13, part 2)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.clocksync import FileSync, KernelSync
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import EventBus
from gateway.sim.broker import MosquittoBroker
from tests.helpers import load, write_config
from tests.test_payload import STATUS_V
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
