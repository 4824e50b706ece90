"""Readings stamped on an unsynchronised clock: held, then corrected (issue 13, part 2)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import mdc
from gateway.clockfix import corrected_payload, needs_hold, plan_releases
from gateway.clocksync import FileSync
from gateway.config import load_config
from gateway.daemon import Hub
from gateway.drivers.base import Driver, DriverOptions
from gateway.drivers.registry import DriverRegistry
from gateway.reading import Kind, Reading, Value
from gateway.sim.broker import MosquittoBroker
from gateway.store import ClockStamp, HeldRow, NewRow, SqliteOutbox
from gateway.uplink.payload import encode_reading
from tests.helpers import Listener, write_config
from tests.test_payload import READING_V

#: what fake-hwclock restored: three days behind
BOOT_TIME = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class FakeBoot:
    """CLOCK_BOOTTIME and the boot id, moved by the test."""

    def __init__(self, boottime: float = 12.0, boot_id: str = "boot-a") -> None:
        self.now = boottime
        self.id = boot_id

    def boottime(self) -> float:
        return self.now

    def boot_id(self) -> str:
        return self.id


class JumpClock:
    """The hub's wall clock: wrong until the test lets NTP set it."""

    def __init__(self, start: datetime) -> None:
        self.offset = start - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def synchronise(self) -> None:
        self.offset = timedelta(0)


def hub_reading(at: datetime, n: int = 0) -> Reading:
    return Reading(
        device_id="scale-1",
        driver="hubstamp",
        kind=Kind.WEIGHT,
        measured_at=at,
        measured_at_source="hub",
        measured_at_quality="unsynced",
        values=(Value.of(mdc.MASS_BODY_ACTUAL, 80.0 + n, "kg"),),
        source_key=f"record-{n}",
    )


def stored_payload(reading: Reading, received_at: datetime) -> bytes:
    return encode_reading(reading, reading_id="r-1", gateway_id="hub-test", received_at=received_at)


# -- the store ---------------------------------------------------------------------


def test_a_held_reading_is_not_sent_until_released(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "r.sqlite3")
    try:
        stamp = ClockStamp(12.5, "boot-a")
        outbox.add_many(
            [
                NewRow("held", "d", b"old", 1.0, stamp=stamp),
                NewRow("free", "d", b"free", 2.0),
            ]
        )
        assert [r.id for r in outbox.fetch_unsent(0, 10)] == ["free"]
        held = outbox.held()
        assert held == [HeldRow(held[0].seq, b"old", stamp)]
        assert outbox.release_held([(held[0].seq, b"new")]) == 1
        assert outbox.release_held([(held[0].seq, b"again")]) == 0  # released once only
        rows = outbox.fetch_unsent(0, 10)
        assert [(r.id, r.payload) for r in rows] == [("held", b"new"), ("free", b"free")]
        assert outbox.held() == []
    finally:
        outbox.close()


def test_released_as_it_is_keeps_its_payload(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "r.sqlite3")
    try:
        outbox.add_many([NewRow("held", "d", b"as-is", 1.0, stamp=ClockStamp(1.0, "b"))])
        assert outbox.release_held([(outbox.held()[0].seq, None)]) == 1
        assert [r.payload for r in outbox.fetch_unsent(0, 10)] == [b"as-is"]
    finally:
        outbox.close()


def test_a_version_3_store_gets_the_hold_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    SqliteOutbox(path).close()
    db = sqlite3.connect(path)
    # Back to what version 3 had: no hold columns.
    for column in ("stamp_boot_id", "stamp_boottime", "clock_hold"):
        db.execute("DROP INDEX IF EXISTS readings_clock_hold")
        db.execute(f"ALTER TABLE readings DROP COLUMN {column}")
    db.execute(
        "INSERT INTO readings(id, device_id, payload, received_at) VALUES ('v3', 'd', x'7b7d', 1)"
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    outbox = SqliteOutbox(path)
    try:
        assert [r.id for r in outbox.fetch_unsent(0, 10)] == ["v3"]  # never held
        assert outbox.held() == []
    finally:
        outbox.close()


# -- the correction ----------------------------------------------------------------


def test_the_correction_is_now_less_the_boottime_since_the_stamp() -> None:
    wrong = BOOT_TIME + timedelta(minutes=5)
    payload = stored_payload(hub_reading(wrong), wrong + timedelta(seconds=1))
    rows = [HeldRow(7, payload, ClockStamp(100.0, "boot-a"))]
    now = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)  # NTP's time
    plan = plan_releases(rows, synced=True, now=now, boot=FakeBoot(100.0 + 240.0), hold_s=300.0)
    assert plan.corrected == 1 and plan.items[0][0] == 7
    corrected = plan.items[0][1]
    assert corrected is not None
    doc = json.loads(corrected)
    READING_V.validate(doc)
    assert doc["measured_at"] == "2026-03-04T09:26:00+00:00"  # 240 s before now
    assert doc["measured_at_quality"] == "corrected"
    assert doc["received_at"] == "2026-03-04T09:26:01.000Z"  # moved by the same jump
    assert doc["values"] == json.loads(payload)["values"]


def test_a_reboot_since_the_stamp_keeps_the_flag_and_the_time() -> None:
    payload = stored_payload(hub_reading(BOOT_TIME), BOOT_TIME)
    rows = [HeldRow(7, payload, ClockStamp(100.0, "boot-a")), HeldRow(8, payload, None)]
    now = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
    plan = plan_releases(rows, synced=True, now=now, boot=FakeBoot(5.0, "boot-b"), hold_s=300.0)
    assert plan.items == [(7, None), (8, None)]  # out as they are: "unsynced", original time
    assert plan.other_boot == 2 and plan.corrected == 0


def test_held_until_the_hold_time_then_sent_as_it_is() -> None:
    payload = stored_payload(hub_reading(BOOT_TIME), BOOT_TIME)
    rows = [HeldRow(7, payload, ClockStamp(100.0, "boot-a"))]
    now = BOOT_TIME
    waiting = plan_releases(rows, synced=False, now=now, boot=FakeBoot(399.0), hold_s=300.0)
    assert waiting.items == []
    expired = plan_releases(rows, synced=False, now=now, boot=FakeBoot(400.0), hold_s=300.0)
    assert expired.items == [(7, None)] and expired.expired == 1


def test_only_the_hubs_own_unsynced_stamp_is_held() -> None:
    reading = hub_reading(BOOT_TIME)
    assert needs_hold(reading)
    assert not needs_hold(reading.model_copy(update={"measured_at_source": "device"}))
    assert not needs_hold(reading.model_copy(update={"measured_at_quality": "unknown"}))
    assert not needs_hold(reading.model_copy(update={"measured_at_quality": "synced"}))


def test_the_correction_keeps_the_local_offset() -> None:
    zone = datetime(2026, 3, 4, 10, 0).astimezone().tzinfo
    at = datetime(2026, 3, 4, 10, 0, tzinfo=zone)
    payload = stored_payload(hub_reading(BOOT_TIME), BOOT_TIME)
    doc = json.loads(corrected_payload(payload, at))
    assert datetime.fromisoformat(doc["measured_at"]) == at


# -- the hub, end to end -------------------------------------------------------------


class HubStampOptions(DriverOptions):
    pass


class HubStampDriver(Driver):
    """A device without a clock: the hub stamps each reading; one now, one on demand."""

    Options = HubStampOptions
    more: asyncio.Queue[int]

    async def run(self) -> None:
        n = 0
        while True:
            await self.context.emit(
                Reading(
                    device_id=self.options.id,
                    driver=self.options.driver,
                    kind=Kind.WEIGHT,
                    measured_at=self.context.clock.now(),
                    measured_at_source="hub",
                    values=(Value.of(mdc.MASS_BODY_ACTUAL, 80.0 + n, "kg"),),
                    source_key=f"record-{n}",
                )
            )
            n += 1
            await HubStampDriver.more.get()


def make_hub(
    tmp_path: Path, broker: MosquittoBroker, boot: FakeBoot, clock: JumpClock, hold_s: float
) -> Hub:
    HubStampDriver.more = asyncio.Queue()
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[{"id": "scale-1", "driver": "hubstamp"}],
        mqtt={"unsynced_hold_s": hold_s, "reconnect_min_s": 0.1},
    )
    registry = DriverRegistry({"hubstamp": HubStampDriver})
    hub = Hub(
        load_config(config, registry),
        registry,
        clock=clock,
        clock_sync=FileSync(tmp_path / "synchronized"),
        boot_clock=boot,
    )
    hub.clock_sync_interval_s = 0.02
    return hub


async def wait_held(hub: Hub, count: int) -> None:
    async with asyncio.timeout(10):
        while hub.store is None or len(await hub.store.held()) < count:
            await asyncio.sleep(0.01)


async def test_held_while_unsynced_then_corrected_on_sync(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Any
) -> None:
    boot, clock = FakeBoot(), JumpClock(BOOT_TIME)
    listener: Listener = listener_factory(broker.port)
    hub = make_hub(tmp_path, broker, boot, clock, hold_s=300.0)
    task = asyncio.create_task(hub.run())
    try:
        await wait_held(hub, 1)
        assert listener.readings == []
        boot.now += 90.0  # a minute and a half until NTP answers
        clock.synchronise()
        (tmp_path / "synchronized").touch()
        async with asyncio.timeout(10):
            while hub.status.clock_synced is not True:
                await asyncio.sleep(0.01)
        HubStampDriver.more.put_nowait(1)  # a reading after the sync: not held
        docs = await asyncio.to_thread(listener.wait_for, 2, 10)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    first, second = sorted(docs, key=lambda d: d["values"][0]["value"])
    for doc in (first, second):
        READING_V.validate(doc)
    assert first["measured_at_quality"] == "corrected"
    measured = datetime.fromisoformat(first["measured_at"])
    expected = datetime.now(UTC) - timedelta(seconds=90)
    assert abs((measured - expected).total_seconds()) < 10  # not three days off
    assert second["measured_at_quality"] == "synced"
    assert datetime.fromisoformat(second["measured_at"]) > measured


@pytest.mark.parametrize("reboot", [True, False])
async def test_a_reboot_before_the_sync_keeps_the_flag(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Any, reboot: bool
) -> None:
    """A reboot between stamp and sync: no correction. A restart of the service only
    (same boot id): the hold survives it, and the correction is made."""
    boot, clock = FakeBoot(), JumpClock(BOOT_TIME)
    listener: Listener = listener_factory(broker.port)
    hub = make_hub(tmp_path, broker, boot, clock, hold_s=300.0)
    task = asyncio.create_task(hub.run())
    try:
        await wait_held(hub, 1)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    if reboot:  # power cut and boot again: a new boot id, the boottime from zero
        boot.id, boot.now = "boot-b", 3.0
    else:  # systemd restarts the service 30 s later
        boot.now += 30.0
    clock.synchronise()
    (tmp_path / "synchronized").touch()
    hub = make_hub(tmp_path, broker, boot, clock, hold_s=300.0)
    task = asyncio.create_task(hub.run())
    try:
        docs = await asyncio.to_thread(listener.wait_for, 1, 10)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    READING_V.validate(docs[0])
    measured = datetime.fromisoformat(docs[0]["measured_at"])
    if reboot:
        assert docs[0]["measured_at_quality"] == "unsynced"  # its original, wrong time
        assert abs((measured - BOOT_TIME).total_seconds()) < 10
    else:
        assert docs[0]["measured_at_quality"] == "corrected"
        expected = datetime.now(UTC) - timedelta(seconds=30)
        assert abs((measured - expected).total_seconds()) < 10


async def test_without_a_sync_it_goes_out_flagged_after_the_hold(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Any
) -> None:
    boot, clock = FakeBoot(), JumpClock(BOOT_TIME)
    listener: Listener = listener_factory(broker.port)
    hub = make_hub(tmp_path, broker, boot, clock, hold_s=60.0)
    task = asyncio.create_task(hub.run())
    try:
        await wait_held(hub, 1)
        assert listener.readings == []
        boot.now += 60.0
        docs = await asyncio.to_thread(listener.wait_for, 1, 10)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    assert docs[0]["measured_at_quality"] == "unsynced"
    assert abs((datetime.fromisoformat(docs[0]["measured_at"]) - BOOT_TIME).total_seconds()) < 10


async def test_hold_zero_sends_at_once(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Any
) -> None:
    boot, clock = FakeBoot(), JumpClock(BOOT_TIME)
    listener: Listener = listener_factory(broker.port)
    hub = make_hub(tmp_path, broker, boot, clock, hold_s=0.0)
    task = asyncio.create_task(hub.run())
    try:
        docs = await asyncio.to_thread(listener.wait_for, 1, 10)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    assert docs[0]["measured_at_quality"] == "unsynced"
