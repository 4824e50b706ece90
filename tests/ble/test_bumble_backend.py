"""bleak's own BleakScanner/BleakClient over the project's Bumble backend, on virtual devices."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from gateway.drivers.ble.bumble import BumbleAdapter, BumbleClient, BumbleScanner
from gateway.drivers.ble.profiles import blood_pressure, glucose, racp
from gateway.drivers.ble.profiles.date_time import CURRENT_TIME_UUID, encode_current_time
from gateway.sim.ble import encode
from gateway.sim.ble.profiles import BloodPressureMonitor, GlucoseMeter
from tests.ble.conftest import Air

BP_ADDRESS = "C0:11:22:33:44:55"
WHEN = datetime(2026, 11, 22, 9, 14, 3)


async def find(
    adapter: BumbleAdapter, address: str, service: str | None = None, timeout_s: float = 5
) -> BLEDevice:
    found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

    def seen(device: BLEDevice, _adv: object) -> None:
        if device.address == address and not found.done():
            found.set_result(device)

    async with BleakScanner(
        seen, [service] if service else None, backend=BumbleScanner, bumble=adapter
    ):
        return await asyncio.wait_for(found, timeout_s)


async def test_scan_connect_time_write_and_indication(air: Air, adapter: BumbleAdapter) -> None:
    bp = BloodPressureMonitor(air.air, BP_ADDRESS, "BP-sim")
    await bp.start()
    await bp.measure(encode.blood_pressure(120, 80, 93, pulse=72, when=WHEN))
    device = await find(adapter, BP_ADDRESS, blood_pressure.SERVICE_UUID)
    assert device.name == "BP-sim"
    received: asyncio.Queue[bytearray] = asyncio.Queue()
    dropped = asyncio.Event()
    async with BleakClient(
        device,
        backend=BumbleClient,
        bumble=adapter,
        timeout=5,
        disconnected_callback=lambda _c: dropped.set(),
    ) as client:
        assert client.services.get_service(blood_pressure.SERVICE_UUID) is not None
        feature = await client.read_gatt_char(blood_pressure.FEATURE_UUID)
        assert feature == bytearray(2)
        await client.write_gatt_char(CURRENT_TIME_UUID, encode_current_time(WHEN), response=True)
        await client.start_notify(
            blood_pressure.MEASUREMENT_UUID, lambda _c, d: received.put_nowait(d)
        )
        m = blood_pressure.decode_measurement(await asyncio.wait_for(received.get(), 5))
        assert (m.systolic, m.diastolic, m.pulse_rate, m.timestamp) == (120.0, 80.0, 72.0, WHEN)
        await asyncio.wait_for(dropped.wait(), 5)  # the cuff leaves when done
        assert not client.is_connected
    assert bp.time_written is not None and bp.time_written.time == WHEN
    assert bp.pending == [] and len(bp.delivered) == 1


async def test_scanner_service_filter(air: Air, adapter: BumbleAdapter) -> None:
    bp = BloodPressureMonitor(air.air, BP_ADDRESS, "BP-sim")
    await bp.start()
    await bp.measure(encode.blood_pressure(120, 80, 93))
    # It advertises, and a scan for its own service finds it ...
    await find(adapter, BP_ADDRESS, blood_pressure.SERVICE_UUID)
    # ... but not a scan for another service.
    with pytest.raises(TimeoutError):
        await find(adapter, BP_ADDRESS, glucose.SERVICE_UUID, timeout_s=0.5)


async def test_pairing_required_for_racp(air: Air, adapter: BumbleAdapter) -> None:
    meter = GlucoseMeter(air.air, "C0:22:33:44:55:66", "Glucose-sim")
    await meter.start()
    await meter.measure(WHEN, 95.0)
    device = await find(adapter, meter.address)
    async with BleakClient(device, backend=BumbleClient, bumble=adapter, timeout=5) as client:
        with pytest.raises(BleakError):
            await client.write_gatt_char(racp.RACP_UUID, racp.report_all_records(), response=True)
    responses: asyncio.Queue[bytearray] = asyncio.Queue()
    records: asyncio.Queue[bytearray] = asyncio.Queue()
    async with BleakClient(
        device, backend=BumbleClient, bumble=adapter, timeout=5, pair=True
    ) as client:
        await client.start_notify(glucose.MEASUREMENT_UUID, lambda _c, d: records.put_nowait(d))
        await client.start_notify(racp.RACP_UUID, lambda _c, d: responses.put_nowait(d))
        await client.write_gatt_char(racp.RACP_UUID, racp.report_records_from(1), response=True)
        response = racp.decode_response(await asyncio.wait_for(responses.get(), 5))
        assert response == racp.Response(
            racp.OpCode.REPORT_STORED_RECORDS, racp.ResponseCode.SUCCESS
        )
        record = glucose.decode_measurement(records.get_nowait())
        assert (record.sequence, record.concentration, record.unit) == (1, 95.0, "mg/dL")


async def test_bonds_are_kept_in_the_keystore_file(air: Air, tmp_path: Path) -> None:
    keys = tmp_path / "state" / "ble-bonds.json"
    adapter = BumbleAdapter(air.transport, keystore_path=keys)
    meter = GlucoseMeter(air.air, "C0:22:33:44:55:77", "Glucose-sim")
    await meter.start()
    await meter.measure(WHEN, 95.0)
    try:
        device = await find(adapter, meter.address)
        async with BleakClient(device, backend=BumbleClient, bumble=adapter, timeout=5, pair=True):
            pass
    finally:
        await adapter.close()
    assert meter.address in keys.read_text()


async def test_connect_to_an_unknown_address_fails_cleanly(adapter: BumbleAdapter) -> None:
    client = BleakClient("C0:00:00:00:00:99", backend=BumbleClient, bumble=adapter, timeout=1)
    with pytest.raises(BleakError):
        await client.connect()


async def test_a_stored_bond_re_encrypts_without_pairing_again(air: Air, tmp_path: Path) -> None:
    """Issue 12: after a hub restart (a new host on the same keystore file) a bonded meter's
    link is encrypted with the stored key; the meter sees no second pairing."""
    keys = tmp_path / "state" / "ble-bonds.json"
    meter = GlucoseMeter(air.air, "C0:22:33:44:55:88", "Glucose-sim")
    await meter.start()
    await meter.measure(WHEN, 95.0)
    first = BumbleAdapter(air.transport, keystore_path=keys)
    try:
        device = await find(first, meter.address)
        assert not await first.bonded(device.details)
        async with BleakClient(device, backend=BumbleClient, bumble=first, timeout=5, pair=True):
            pass
    finally:
        await first.close()
    assert (meter.pairings, meter.encryptions) == (1, 1)
    second = BumbleAdapter(air.transport, keystore_path=keys)
    try:
        device = await find(second, meter.address)
        assert await second.bonded(device.details)
        async with BleakClient(
            device, backend=BumbleClient, bumble=second, timeout=5, pair=True
        ) as client:
            # The Record Access Control Point needs an encrypted link: it takes the write.
            await client.write_gatt_char(racp.RACP_UUID, racp.report_all_records(), response=True)
    finally:
        await second.close()
    assert (meter.pairings, meter.encryptions) == (1, 2)


async def test_a_bond_the_device_lost_fails_the_connection(air: Air, tmp_path: Path) -> None:
    """The meter forgot the hub (reset): encryption with the stored key fails as a BleakError,
    never a link used unencrypted."""
    keys = tmp_path / "ble-bonds.json"
    meter = GlucoseMeter(air.air, "C0:22:33:44:55:99", "Glucose-sim")
    await meter.start()
    await meter.measure(WHEN, 95.0)
    adapter = BumbleAdapter(air.transport, keystore_path=keys)
    try:
        device = await find(adapter, meter.address)
        async with BleakClient(device, backend=BumbleClient, bumble=adapter, timeout=5, pair=True):
            pass
        assert meter.device.keystore is not None
        for name in list(await meter.device.keystore.get_all()):
            await meter.device.keystore.delete(name[0])
        device = await find(adapter, meter.address)
        client = BleakClient(device, backend=BumbleClient, bumble=adapter, timeout=5, pair=True)
        with pytest.raises(BleakError, match="stored bond"):
            await client.connect()
        assert not client.is_connected
    finally:
        await adapter.close()
    assert meter.pairings == 1
