"""Issue 13: the hub writes the time to a device only while its own clock is synchronised."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.clocksync import FileSync
from gateway.config import validate_config
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import Event, EventBus, ReadingStored
from gateway.sim.ble import encode
from gateway.sim.ble.profiles import BloodPressureMonitor, GlucoseMeter
from gateway.sim.broker import MosquittoBroker, free_port
from tests.ble.conftest import Air
from tests.ble.test_e2e_ble import running_hub, wait_readings
from tests.helpers import Listener, next_event
from tests.test_payload import READING_V

WHEN = datetime(2026, 11, 22, 9, 14, 3)


async def test_no_time_written_while_unsynchronised_then_written(tmp_path: Path, air: Air) -> None:
    bp = BloodPressureMonitor(air.air, "C0:00:00:00:00:21", "BP")
    await bp.start()
    await bp.measure(encode.blood_pressure(120, 80, 93, when=WHEN))
    flag = tmp_path / "synchronized"
    config = validate_config(
        {
            "gateway": {"id": "hub-clock", "state_dir": str(tmp_path / "state")},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # no broker needed
            "ble": {"stack": "bumble", "transport": air.transport, "connect_timeout_s": 5.0},
            "devices": [
                {"id": "bp", "driver": "ble.blood_pressure", "address": bp.address, "idle_s": 0.5}
            ],
        },
        DriverRegistry.from_entry_points(),
    )
    events = EventBus()
    stored: asyncio.Queue[Event] = asyncio.Queue()
    events.subscribe(lambda e: stored.put_nowait(e) if isinstance(e, ReadingStored) else None)
    hub = Hub(config, DriverRegistry.from_entry_points(), events=events, clock_sync=FileSync(flag))
    hub.clock_sync_interval_s = 0.02
    task = asyncio.create_task(hub.run())
    try:
        # The visit writes the time (or not) before it reads the record.
        await next_event(stored, ReadingStored, 20)
        assert not bp.time_set.is_set()
        flag.touch()
        async with asyncio.timeout(5):
            while hub.status.clock_synced is not True:
                await asyncio.sleep(0.01)
        await bp.measure(encode.blood_pressure(121, 81, 94, when=WHEN.replace(minute=20)))
        await asyncio.wait_for(bp.time_set.wait(), 20)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 8)


@pytest.mark.parametrize("synced", [True, False])
async def test_a_device_six_minutes_behind_is_moved_six_minutes_forward(
    tmp_path: Path, air: Air, synced: bool
) -> None:
    """The PHD IG's own example: the coincident timestamp says the cuff's clock is 6
    minutes behind; its record's time moves 6 minutes forward, and says by how much.
    Not while the hub's clock is unsynchronised: then the offset means nothing."""
    behind = timedelta(minutes=6)
    bp = BloodPressureMonitor(air.air, "C0:00:00:00:00:22", "BP")
    bp.clock_offset = -behind
    await bp.start()
    taken = datetime.now().replace(microsecond=0)  # local, as the cuff keeps it
    await bp.measure(encode.blood_pressure(120, 80, 93, when=taken - behind))
    # Issue 13: and one stamped before its clock was ever set (counting from 2000).
    unset = datetime(2000, 1, 1, 0, 5)
    await bp.measure(encode.blood_pressure(118, 79, 92, when=unset))
    flag = tmp_path / "synchronized"
    if synced:
        flag.touch()  # the hub's clock is synchronised: the offset can be trusted
    config = validate_config(
        {
            "gateway": {"id": "hub-clock", "state_dir": str(tmp_path / "state")},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # no broker needed
            "ble": {"stack": "bumble", "transport": air.transport, "connect_timeout_s": 5.0},
            "devices": [
                {"id": "bp", "driver": "ble.blood_pressure", "address": bp.address, "idle_s": 0.5}
            ],
        },
        DriverRegistry.from_entry_points(),
    )
    events = EventBus()
    stored: asyncio.Queue[Event] = asyncio.Queue()
    events.subscribe(lambda e: stored.put_nowait(e) if isinstance(e, ReadingStored) else None)
    hub = Hub(config, DriverRegistry.from_entry_points(), events=events, clock_sync=FileSync(flag))
    task = asyncio.create_task(hub.run())
    try:
        await next_event(stored, ReadingStored, 20)
        await next_event(stored, ReadingStored, 20)
        assert hub.store is not None
        rows = await hub.store.fetch_unsent(0, 10)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 8)
    doc, old = (json.loads(row.payload) for row in rows)
    READING_V.validate(old)
    # Kept at its device time, flagged, never shifted (not even by the offset).
    assert datetime.fromisoformat(old["measured_at"]) == unset.astimezone()
    assert "device_clock_unset" in old["status"]
    READING_V.validate(doc)
    assert doc["measured_at_source"] == "device"
    measured = datetime.fromisoformat(doc["measured_at"])
    if not synced:
        assert "device_clock_offset_s" not in doc
        assert measured == (taken - behind).astimezone()  # the cuff's time, as it is
        assert not bp.time_set.is_set()
        return
    assert -362 < doc["device_clock_offset_s"] < -358
    # Moved forward by the offset measured (a second or so of radio time aside).
    assert abs((measured - taken.astimezone()).total_seconds()) < 3
    # Then the time was written: the cuff's clock is right again.
    assert bp.clock_offset is not None and abs(bp.clock_offset.total_seconds()) < 3


async def test_a_glucose_record_with_a_time_fault_is_never_shifted(
    tmp_path: Path, broker: MosquittoBroker, air: Air, listener_factory: Callable[..., Listener]
) -> None:
    """A meter 6 minutes behind: its records move 6 minutes forward, except the one whose
    own flags say its time may be wrong (Sensor Status Annunciation bit 11)."""
    listener = listener_factory(broker.port)
    behind = timedelta(minutes=6)
    meter = GlucoseMeter(air.air, "C0:00:00:00:00:23", "Glucose")
    meter.clock_offset = -behind
    await meter.start()
    taken = datetime.now().replace(microsecond=0)
    await meter.measure(taken - behind, 101.0)
    await meter.measure(taken - behind, 102.0, status=1 << 11)  # time fault
    devices = [{"id": "glu", "driver": "ble.glucose", "address": meter.address}]
    async with running_hub(tmp_path, broker, air, devices, pairing=True):
        docs = await wait_readings(listener, 2)
    by_value = {d["values"][0]["value"]: d for d in docs}
    corrected, faulty = by_value[101.0], by_value[102.0]
    for doc in (corrected, faulty):
        READING_V.validate(doc)
        assert -362 < doc["device_clock_offset_s"] < -358
    moved = datetime.fromisoformat(corrected["measured_at"]) - taken.astimezone()
    assert abs(moved.total_seconds()) < 3
    assert datetime.fromisoformat(faulty["measured_at"]) == (taken - behind).astimezone()
    assert "time_fault" in faulty["status"]
