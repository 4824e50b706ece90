"""The BlueZ path (`[ble] stack = "bluez"`, what the Pi runs): bleak's real BlueZ D-Bus backend
against python-dbusmock's `bluez5` template on a private bus.

Each test starts its own dbus-daemon and, on it, dbusmock's bluetoothd stand-in (Debian's
python3-dbusmock, run by the system Python: its D-Bus and GLib bindings come with it), then
points bleak at that bus with DBUS_SYSTEM_BUS_ADDRESS. The template gives the adapter and the
device; what it lacks is added here through dbusmock's own D-Bus API (AddObject, AddMethod,
UpdateProperties, Properties.Set): the adapter's Roles, advertisements while discovery runs,
Connect that resolves services, and the GATT objects of a blood pressure cuff with a Current
Time Service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gateway.clock import SystemClock
from gateway.config import BleSection
from gateway.drivers.base import DriverContext, StoredReading
from gateway.drivers.ble.profiles import blood_pressure
from gateway.drivers.ble.profiles.date_time import CURRENT_TIME_UUID
from gateway.drivers.ble.runtime import BleRuntime
from gateway.drivers.ble.stored import BloodPressureDriver, StoredOptions
from gateway.reading import Reading
from gateway.sim.ble import encode

#: the interpreter that runs the mock: it needs dbusmock, dbus-python and PyGObject
MOCK_PYTHON = os.environ.get("HOMEHUB_DBUSMOCK_PYTHON", "/usr/bin/python3")
IN_CI = os.environ.get("CI") == "true"
#: bound on every start-up step and every awaited D-Bus event
STEP_S = 10.0


def _missing() -> str | None:
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon not installed (Debian: dbus)"
    try:
        probe = subprocess.run(
            [MOCK_PYTHON, "-c", "import dbusmock, dbus, gi"],
            capture_output=True,
            timeout=20,
            env=_mock_env(""),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{MOCK_PYTHON} unusable: {exc}"
    if probe.returncode != 0:
        return f"{MOCK_PYTHON} cannot import dbusmock (Debian: python3-dbusmock)"
    return None


def _mock_env(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["DBUS_SYSTEM_BUS_ADDRESS"] = address
    return env


MISSING = _missing()
# Outside CI a machine without the tools skips; CI must run these (scripts/bootstrap.sh).
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=MISSING or "")

ADAPTER = "/org/bluez/hci0"
ADDRESS = "C0:00:00:00:00:21"
DEVICE = f"{ADAPTER}/dev_{ADDRESS.replace(':', '_')}"
BP_SERVICE = f"{DEVICE}/service000c"
BP_MEASUREMENT = f"{BP_SERVICE}/char000d"
BP_CCCD = f"{BP_MEASUREMENT}/desc000f"
BP_FEATURE = f"{BP_SERVICE}/char0010"
CTS_SERVICE = f"{DEVICE}/service0020"
CTS_CURRENT_TIME = f"{CTS_SERVICE}/char0021"
CTS_UUID = "00001805-0000-1000-8000-00805f9b34fb"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
WHEN = datetime(2026, 11, 22, 9, 14, 3)

MOCK_IFACE = "org.freedesktop.DBus.Mock"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
#: the cuff's test-only knob: records it indicates as soon as indications are on
CUFF_IFACE = "org.homehub.MockCuff"

# Method bodies run inside the mock (dbusmock's AddMethod): `self` is the D-Bus object,
# `objects` every object by path, `args` the call's arguments.
START_DISCOVERY = """
from gi.repository import GLib

def advertise(adapter=self):
    # While discovery runs, each device under the adapter advertises every 50 ms: BlueZ
    # reports that as a PropertiesChanged of the device's RSSI.
    if not adapter.props['org.bluez.Adapter1']['Discovering']:
        adapter.advertising = None
        return False
    for path in sorted(objects):
        if path.startswith(adapter.path + '/dev_') and '/' not in path[len(adapter.path) + 1:]:
            objects[path].UpdateProperties('org.bluez.Device1', {'RSSI': dbus.Int16(-58)})
    return True

self.UpdateProperties('org.bluez.Adapter1', {'Discovering': dbus.Boolean(True)})
if getattr(self, 'advertising', None) is None:
    self.advertising = GLib.timeout_add(50, advertise)
"""
CONNECT = """
self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(True)})
self.UpdateProperties('org.bluez.Device1', {'ServicesResolved': dbus.Boolean(True)})
"""
DISCONNECT = """
self.UpdateProperties(
    'org.bluez.Device1',
    {'ServicesResolved': dbus.Boolean(False), 'Connected': dbus.Boolean(False)},
)
"""
START_NOTIFY = """
self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(True)})
for record in getattr(self, 'stored', []):
    self.UpdateProperties(
        'org.bluez.GattCharacteristic1', {'Value': dbus.Array(record, signature='y')}
    )
"""
STOP_NOTIFY = """
self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(False)})
"""
STORE = "self.stored = [*getattr(self, 'stored', []), bytes(args[0])]"


class MockBluez:
    """The test's own connection to the private bus: drives dbusmock's API."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", *body: Any
    ) -> list[Any]:
        reply = await self.bus.call(
            Message(
                destination="org.bluez",
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise AssertionError(f"{path} {interface}.{member}: {reply.error_name} {reply.body}")
        return list(reply.body)

    async def add_object(
        self, path: str, interface: str, props: dict[str, Variant], methods: list[list[str]]
    ) -> None:
        # dbusmock's ObjectManager lists it at once; no InterfacesAdded (bleak is not
        # listening yet: every test builds the world before bleak starts).
        await self.call(
            "/", MOCK_IFACE, "AddObject", "ssa{sv}a(ssss)", path, interface, props, methods
        )

    async def add_method(
        self, path: str, interface: str, name: str, in_sig: str, out_sig: str, code: str
    ) -> None:
        await self.call(
            path, MOCK_IFACE, "AddMethod", "sssss", interface, name, in_sig, out_sig, code
        )

    async def update(self, path: str, interface: str, props: dict[str, Variant]) -> None:
        await self.call(path, MOCK_IFACE, "UpdateProperties", "sa{sv}", interface, props)

    async def calls(self, path: str, member: str) -> list[list[Any]]:
        """The arguments of each call of `member` on `path`, oldest first."""
        (found,) = await self.call(path, MOCK_IFACE, "GetMethodCalls", "s", member)
        return [[arg.value for arg in args] for _when, args in found]

    async def build_cuff(self) -> None:
        """Adapter hci0 and a blood pressure cuff with its GATT database (not yet connected)."""
        await self.call("/", "org.bluez.Mock", "AddAdapter", "ss", "hci0", "homehub")
        # bleak picks the first powered adapter whose Roles include "central".
        await self.call(
            ADAPTER,
            MOCK_IFACE,
            "AddProperty",
            "ssv",
            "org.bluez.Adapter1",
            "Roles",
            Variant("as", ["central", "peripheral"]),
        )
        await self.add_method(
            ADAPTER, "org.bluez.Adapter1", "StartDiscovery", "", "", START_DISCOVERY
        )
        await self.call("/", "org.bluez.Mock", "AddDevice", "sss", "hci0", ADDRESS, "BP-Cuff")
        await self.update(
            DEVICE, "org.bluez.Device1", {"UUIDs": Variant("as", [blood_pressure.SERVICE_UUID])}
        )
        # The template types these as arrays (aa{qv}, ...) where BlueZ sends dicts, and its
        # UpdateProperties cannot send a dict: Properties.Set can.
        for name, value in (
            ("ManufacturerData", Variant("a{qv}", {0x020E: Variant("ay", b"\x01")})),
            ("ServiceData", Variant("a{sv}", {})),
            ("AdvertisingData", Variant("a{yv}", {})),
            ("AdvertisingFlags", Variant("ay", b"\x06")),
        ):
            await self.call(
                DEVICE,
                "org.freedesktop.DBus.Properties",
                "Set",
                "ssv",
                "org.bluez.Device1",
                name,
                value,
            )
        await self.add_method(DEVICE, "org.bluez.Device1", "Connect", "", "", CONNECT)
        await self.add_method(DEVICE, "org.bluez.Device1", "Disconnect", "", "", DISCONNECT)

        await self.add_service(BP_SERVICE, blood_pressure.SERVICE_UUID)
        await self.add_characteristic(
            BP_MEASUREMENT, BP_SERVICE, blood_pressure.MEASUREMENT_UUID, ["indicate"]
        )
        await self.add_method(BP_MEASUREMENT, CUFF_IFACE, "Store", "ay", "", STORE)
        await self.add_object(
            BP_CCCD,
            "org.bluez.GattDescriptor1",
            {
                "UUID": Variant("s", CCCD_UUID),
                "Characteristic": Variant("o", BP_MEASUREMENT),
                "Value": Variant("ay", b""),
            },
            [],
        )
        await self.add_characteristic(
            BP_FEATURE, BP_SERVICE, blood_pressure.FEATURE_UUID, ["read"], read_value=b"\x04\x00"
        )
        await self.add_service(CTS_SERVICE, CTS_UUID)
        await self.add_characteristic(
            CTS_CURRENT_TIME, CTS_SERVICE, CURRENT_TIME_UUID, ["read", "write", "notify"]
        )

    async def add_service(self, path: str, uuid: str) -> None:
        props = {
            "UUID": Variant("s", uuid),
            "Device": Variant("o", DEVICE),
            "Primary": Variant("b", True),
        }
        await self.add_object(path, "org.bluez.GattService1", props, [])

    async def add_characteristic(
        self, path: str, service: str, uuid: str, flags: list[str], read_value: bytes = b""
    ) -> None:
        props = {
            "UUID": Variant("s", uuid),
            "Service": Variant("o", service),
            "Value": Variant("ay", b""),
            "Notifying": Variant("b", False),
            "Flags": Variant("as", flags),
            "MTU": Variant("q", 185),
        }
        await self.add_object(
            path,
            CHAR_IFACE,
            props,
            [
                ["ReadValue", "a{sv}", "ay", f"ret = dbus.ByteArray({read_value!r})"],
                ["WriteValue", "aya{sv}", "", ""],
                ["StartNotify", "", "", START_NOTIFY],
                ["StopNotify", "", "", STOP_NOTIFY],
            ],
        )

    async def indicate(self, path: str, value: bytes) -> None:
        """The device sends `value`: BlueZ's PropertiesChanged on the characteristic's Value."""
        await self.update(path, CHAR_IFACE, {"Value": Variant("ay", value)})


async def _wait_for_name(bus: MessageBus, name: str, proc: asyncio.subprocess.Process) -> None:
    owned = asyncio.get_running_loop().create_future()

    def on_message(msg: Message) -> None:
        owned_now = msg.member == "NameOwnerChanged" and msg.body[0] == name and msg.body[2]
        if owned_now and not owned.done():
            owned.set_result(None)

    bus.add_message_handler(on_message)
    rule = f"type='signal',member='NameOwnerChanged',arg0='{name}'"
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )
    has = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="NameHasOwner",
            signature="s",
            body=[name],
        )
    )
    assert has is not None
    if not has.body[0]:
        exited = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                {owned, exited}, timeout=STEP_S, return_when="FIRST_COMPLETED"
            )
        finally:
            exited.cancel()
        if owned not in done:
            raise AssertionError(f"dbusmock did not claim {name} (exit code {proc.returncode})")
    bus.remove_message_handler(on_message)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MockBluez]:
    """A private bus with dbusmock's bluez5 and the cuff on it; bleak's system bus points there."""
    if MISSING is not None:
        pytest.fail(f"CI must run the BlueZ tests: {MISSING}")
    daemon = await asyncio.create_subprocess_exec(
        "dbus-daemon",
        "--session",
        "--nofork",
        "--nopidfile",
        "--nosyslog",
        f"--address=unix:dir={tmp_path}",
        "--print-address=1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # e.g. "Failed to set fd limit" in containers
        stdin=asyncio.subprocess.DEVNULL,
    )
    mock: asyncio.subprocess.Process | None = None
    bus: MessageBus | None = None
    log = tmp_path / "dbusmock.log"
    try:
        assert daemon.stdout is not None
        async with asyncio.timeout(STEP_S):
            address = (await daemon.stdout.readline()).decode().strip()
        assert address.startswith("unix:"), address
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        bus = await MessageBus(bus_address=address).connect()
        with log.open("wb") as out:
            mock = await asyncio.create_subprocess_exec(
                MOCK_PYTHON,
                "-m",
                "dbusmock",
                "--template",
                "bluez5",
                env=_mock_env(address),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        await _wait_for_name(bus, "org.bluez", mock)
        mock_bluez = MockBluez(bus)
        async with asyncio.timeout(STEP_S):
            await mock_bluez.build_cuff()
        yield mock_bluez
    except BaseException:
        if log.exists():
            logging.getLogger(__name__).error("dbusmock said:\n%s", log.read_text())
        raise
    finally:
        if bus is not None:
            bus.disconnect()
        if mock is not None:
            await _stop(mock)
        await _stop(daemon)


async def test_scan_finds_the_cuff_by_its_advertised_service(bluez: MockBluez) -> None:
    found: asyncio.Future[tuple[BLEDevice, AdvertisementData]] = (
        asyncio.get_running_loop().create_future()
    )

    def seen(device: BLEDevice, adv: AdvertisementData) -> None:
        if not found.done():
            found.set_result((device, adv))

    async with BleakScanner(seen, [blood_pressure.SERVICE_UUID]):
        device, adv = await asyncio.wait_for(found, STEP_S)
    assert device.address == ADDRESS
    assert device.name == "BP-Cuff"
    assert adv.local_name == "BP-Cuff"
    assert adv.service_uuids == [blood_pressure.SERVICE_UUID]
    assert adv.rssi == -58
    assert adv.manufacturer_data == {0x020E: b"\x01"}
    # bleak's discovery filter reached bluetoothd: LE only, for the BP service.
    (filters,) = (await bluez.calls(ADAPTER, "SetDiscoveryFilter"))[0]
    assert filters["Transport"].value == "le"
    assert filters["UUIDs"].value == [blood_pressure.SERVICE_UUID]
    assert len(await bluez.calls(ADAPTER, "StopDiscovery")) == 1


async def test_connect_resolves_services_reads_and_disconnects(bluez: MockBluez) -> None:
    async with asyncio.timeout(STEP_S):
        client = BleakClient(ADDRESS, timeout=STEP_S)  # bleak scans for the address itself
        await client.connect()
        try:
            assert client.is_connected
            services = {s.uuid: s for s in client.services}
            assert set(services) == {blood_pressure.SERVICE_UUID, CTS_UUID}
            bp = services[blood_pressure.SERVICE_UUID]
            chars = {c.uuid: c for c in bp.characteristics}
            assert set(chars) == {blood_pressure.MEASUREMENT_UUID, blood_pressure.FEATURE_UUID}
            measurement = chars[blood_pressure.MEASUREMENT_UUID]
            assert measurement.properties == ["indicate"]
            assert measurement.handle == 0x000D
            assert [d.uuid for d in measurement.descriptors] == [CCCD_UUID]
            time_char = client.services.get_characteristic(CURRENT_TIME_UUID)
            assert time_char is not None and "write" in time_char.properties
            assert await client.read_gatt_char(blood_pressure.FEATURE_UUID) == b"\x04\x00"
        finally:
            await client.disconnect()
    assert not client.is_connected
    assert len(await bluez.calls(DEVICE, "Connect")) == 1
    assert len(await bluez.calls(DEVICE, "Disconnect")) == 1


async def test_indication_arrives_and_decodes(bluez: MockBluez) -> None:
    record = encode.blood_pressure(121, 79, 94, pulse=66, when=WHEN, status=0x0004)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_value(_char: Any, data: bytearray) -> None:
        if not received.done():
            received.set_result(bytes(data))

    async with asyncio.timeout(STEP_S):
        async with BleakClient(ADDRESS, timeout=STEP_S) as client:
            await client.start_notify(blood_pressure.MEASUREMENT_UUID, on_value)
            assert len(await bluez.calls(BP_MEASUREMENT, "StartNotify")) == 1
            await bluez.indicate(BP_MEASUREMENT, record)
            data = await received
            await client.stop_notify(blood_pressure.MEASUREMENT_UUID)
    assert data == record
    m = blood_pressure.decode_measurement(data)
    assert (m.unit, m.systolic, m.diastolic, m.mean_arterial) == ("mmHg", 121.0, 79.0, 94.0)
    assert m.pulse_rate == 66.0
    assert m.timestamp == WHEN
    assert m.status == ("irregular_pulse",)


class OneVisitBloodPressure(BloodPressureDriver):
    def finished(self) -> bool:
        return True


async def test_blood_pressure_driver_through_the_runtime(bluez: MockBluez) -> None:
    """ble.blood_pressure with stack = "bluez": advertisement, connect, time set, the cuff's
    stored record indicated, the cuff leaves; the driver emits the Reading."""
    record = encode.blood_pressure(132, 85, 101, pulse=71, when=WHEN)
    await bluez.call(BP_MEASUREMENT, CUFF_IFACE, "Store", "ay", record)
    runtime = BleRuntime(BleSection(stack="bluez", connect_timeout_s=STEP_S))
    emitted: list[Reading] = []

    async def emit(reading: Reading) -> StoredReading:
        emitted.append(reading)
        # Everything sent: the cuff drops the link, as real ones do.
        await bluez.update(
            DEVICE,
            "org.bluez.Device1",
            {"ServicesResolved": Variant("b", False), "Connected": Variant("b", False)},
        )
        return StoredReading(id=f"r{len(emitted)}", seq=len(emitted), duplicate=False)

    options = StoredOptions(id="bp", driver="ble.blood_pressure", address=ADDRESS, idle_s=STEP_S)
    context = DriverContext(
        device_id="bp",
        clock=SystemClock(),
        logger=logging.getLogger("test.bp"),
        emit=emit,
        clock_synced=lambda: True,  # issue 13: the time is written only when synchronised
        services={BleRuntime: runtime},
    )
    try:
        async with asyncio.timeout(STEP_S):
            await OneVisitBloodPressure(options, context).run()
    finally:
        await runtime.close()
    (reading,) = emitted
    values = {v.code: (v.value, v.unit) for v in reading.values}
    assert values == {
        "MDC_PRESS_BLD_NONINV_SYS": (132.0, "mm[Hg]"),
        "MDC_PRESS_BLD_NONINV_DIA": (85.0, "mm[Hg]"),
        "MDC_PRESS_BLD_NONINV_MEAN": (101.0, "mm[Hg]"),
        "MDC_PULS_RATE_NON_INV": (71.0, "/min"),
    }
    assert reading.measured_at == WHEN.astimezone()
    assert reading.measured_at_source == "device"
    assert reading.source_key == f"{ADDRESS}/{WHEN}/None"
    # The hub set the cuff's clock (Current Time, 10 bytes, with response) and subscribed.
    ((value, write_options),) = await bluez.calls(CTS_CURRENT_TIME, "WriteValue")
    assert len(value) == 10 and write_options["type"].value == "request"
    assert len(await bluez.calls(BP_MEASUREMENT, "StartNotify")) == 1
    # One scan, stopped once no driver waits.
    assert len(await bluez.calls(ADAPTER, "StartDiscovery")) == 1
    assert len(await bluez.calls(ADAPTER, "StopDiscovery")) == 1
