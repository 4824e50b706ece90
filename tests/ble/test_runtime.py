"""The shared BLE runtime: one scan for all drivers, and staged recovery from a stalled scanner."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.config import BleSection
from gateway.drivers.ble.runtime import BleRuntime
from gateway.errors import DriverError
from gateway.sim.ble import encode
from gateway.sim.ble.profiles import BloodPressureMonitor, Thermometer
from tests.ble.conftest import Air


async def test_one_scan_serves_several_waiting_drivers(air: Air) -> None:
    runtime = BleRuntime(BleSection(stack="bumble", transport=air.transport))
    bp = BloodPressureMonitor(air.air, "C0:00:00:00:01:01", "BP")
    thermo = Thermometer(air.air, "C0:00:00:00:01:02", "T")
    for device in (bp, thermo):
        await device.start()
    try:
        waits = [
            asyncio.create_task(runtime.wait_for_advertisement(d.address.lower()))
            for d in (bp, thermo)
        ]
        await bp.measure(encode.blood_pressure(120, 80, 93))
        await thermo.measure(encode.temperature(36.6))
        found = await asyncio.wait_for(asyncio.gather(*waits), 5)
        assert [d.address for d in found] == [bp.address, thermo.address]
    finally:
        await runtime.close()


async def test_a_stalled_scanner_is_restarted_reset_then_reported(
    air: Air, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = BleRuntime(BleSection(stack="bumble", transport=air.transport, scan_stall_s=0.4))
    try:
        with (
            caplog.at_level(logging.WARNING, logger="gateway.drivers.ble.runtime"),
            pytest.raises(DriverError, match="no advertisement"),
        ):
            await asyncio.wait_for(runtime.wait_for_advertisement("C0:00:00:00:09:09"), 5)
        messages = [r.getMessage() for r in caplog.records]
        stages = [m for m in messages if "restarting the scan" in m or "resetting the adapter" in m]
        assert len(stages) == 2 and "restarting" in stages[0] and "resetting" in stages[1]
        assert any("reporting the devices failing" in m for m in messages)
    finally:
        await runtime.close()
