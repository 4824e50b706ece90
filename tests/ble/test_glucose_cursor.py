"""The glucose cursor moves on only after a record is committed, and lives in the store."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path

import pytest

from gateway.clock import SystemClock
from gateway.config import BleSection
from gateway.drivers.base import DriverContext, StoredReading
from gateway.drivers.ble.glucose import CURSOR, GlucoseDriver, GlucoseOptions
from gateway.drivers.ble.runtime import BleRuntime
from gateway.errors import StoreFullError
from gateway.reading import Reading
from gateway.sim.ble.profiles import GlucoseMeter
from gateway.store import SqliteOutbox, Store
from gateway.windows import CommandWindow
from tests.ble.conftest import Air

WHEN = datetime(2026, 11, 22, 9, 0, 0)


def test_cursor_table_round_trip(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "s.sqlite3")
    try:
        assert outbox.get_cursor("glu", CURSOR) is None
        outbox.set_cursor("glu", CURSOR, 7, 1.0)
        outbox.set_cursor("glu", CURSOR, 9, 2.0)
        outbox.set_cursor("other", CURSOR, 1, 2.0)
        assert outbox.get_cursor("glu", CURSOR) == 9
    finally:
        outbox.close()
    reopened = SqliteOutbox(tmp_path / "s.sqlite3")
    try:
        assert reopened.get_cursor("glu", CURSOR) == 9
    finally:
        reopened.close()


async def test_cursor_stays_put_when_the_store_refuses_a_record(tmp_path: Path, air: Air) -> None:
    meter = GlucoseMeter(air.air, "C0:00:00:00:00:0B", "Glucose")
    await meter.start()
    for i in range(10):
        await meter.measure(WHEN.replace(minute=i), 100.0 + i)
    store = await Store.open(tmp_path / "s.sqlite3", gateway_id="hub")
    runtime = BleRuntime(BleSection(stack="bumble", transport=air.transport))
    accepted = 0

    async def emit(reading: Reading) -> StoredReading:
        nonlocal accepted
        if accepted == 6:
            raise StoreFullError("disk full (test)")
        accepted += 1
        return await store.add(reading, SystemClock().now())

    options = GlucoseOptions(id="glu", driver="ble.glucose", address=meter.address)
    pairing = CommandWindow("pairing", 60)
    pairing.open()  # the installer's long press: the meter pairs (issue 12)
    context = DriverContext(
        device_id="glu",
        clock=SystemClock(),
        logger=logging.getLogger("test.glu"),
        emit=emit,
        cursors=store,
        pairing=pairing,
        services={BleRuntime: runtime},
    )
    try:
        with pytest.raises(StoreFullError):
            await asyncio.wait_for(GlucoseDriver(options, context).run(), 10)
        # Six records committed: the cursor says 6, not 7 (the refused one).
        assert await store.get_cursor("glu", CURSOR) == 6
        assert (await store.stats()).total == 6
    finally:
        await runtime.close()
        await store.close()
