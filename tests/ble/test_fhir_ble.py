"""FHIR payload end to end from the virtual BLE devices (issue 13): status bits, a NaN,
measurement status, through the hub and a real mosquitto to a plain MQTT 5 subscriber."""

from __future__ import annotations

import asyncio
import json
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from fhir.resources.R4B.bundle import Bundle
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import validate_config
from gateway.daemon import Hub
from gateway.drivers.ble.profiles.date_time import encode_date_time
from gateway.drivers.registry import DriverRegistry
from gateway.sim.ble import encode
from gateway.sim.ble.profiles import (
    BloodPressureMonitor,
    HeartRateSensor,
    Nonin3230,
    PulseOximeter,
    Thermometer,
    WeightScale,
)
from gateway.sim.broker import MosquittoBroker
from tests.ble.conftest import Air

WHEN = datetime(2026, 11, 22, 9, 14, 3)
IG = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
BITS = IG + "PhdBitsEnumerationObservation"
MDC = "urn:iso:std:iso:11073:10101"


def plx_spot_check_with_status(spo2: int, pulse: int) -> bytes:
    """GSS PLX spot-check with timestamp, Measurement Status (bit 14 questionable) and
    Device and Sensor Status (bit 5 low perfusion)."""
    flags = 0x01 | 0x02 | 0x04
    out = bytes([flags]) + struct.pack("<HH", spo2, pulse) + encode_date_time(WHEN)
    return out + struct.pack("<H", 1 << 14) + (1 << 5).to_bytes(3, "little")


def resources(bundle: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["meta"]["profile"] == [profile]]


def mdc_codes(concept: dict[str, Any]) -> set[str]:
    return {c["code"] for c in concept["coding"] if c["system"] == MDC}


async def test_ble_devices_as_fhir_bundles_through_mosquitto(
    tmp_path: Path, broker: MosquittoBroker, air: Air
) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
    subscribed = asyncio.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe("homehub/hub-ble/readings/#", qos=1)
    client.on_subscribe = lambda *_: loop.call_soon_threadsafe(subscribed.set)
    client.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(got.put_nowait, m)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    bp = BloodPressureMonitor(air.air, "C0:00:00:00:00:11", "BP")
    thermo = Thermometer(air.air, "C0:00:00:00:00:12", "Thermo")
    scale = WeightScale(air.air, "C0:00:00:00:00:13", "Scale")
    plx = PulseOximeter(air.air, "C0:00:00:00:00:14", "PLX")
    hr = HeartRateSensor(air.air, "C0:00:00:00:00:15", "HR")
    oxi = Nonin3230(air.air, "C0:00:00:00:00:16", "Nonin3230_1")
    for device in (bp, thermo, scale, plx, hr, oxi):
        await device.start()
    # body movement, irregular pulse, improper position; then kPa with a NaN MAP.
    await bp.measure(encode.blood_pressure(120, 80, 93, pulse=72, when=WHEN, status=0x0025))
    await bp.measure(encode.blood_pressure(16.0, 10.6, None, kpa=True))
    await thermo.measure(encode.temperature(36.4, when=WHEN, site=3))
    await scale.measure(encode.weight(82.0, when=WHEN, bmi=24.5, height_m=1.83))
    await plx.measure(plx_spot_check_with_status(97, 72))
    await oxi.measure(96, 70)
    config = validate_config(
        {
            "gateway": {"id": "hub-ble", "state_dir": str(tmp_path / "state")},
            # unsynced_hold_s 0: this machine's clock may be unsynchronised, and the
            # hub-stamped readings would be held for minutes (issue 13).
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "payload": "fhir",
                "unsynced_hold_s": 0.0,
            },
            "ble": {"stack": "bumble", "transport": air.transport, "connect_timeout_s": 5.0},
            "devices": [
                {"id": "bp", "driver": "ble.blood_pressure", "address": bp.address, "idle_s": 2.0},
                {"id": "thermo", "driver": "ble.thermometer", "address": thermo.address},
                {"id": "scale", "driver": "ble.weight_scale", "address": scale.address},
                {"id": "plx", "driver": "ble.pulse_oximeter", "address": plx.address},
                {"id": "hr", "driver": "ble.heart_rate", "address": hr.address},
                {"id": "oxi", "driver": "ble.nonin_3230", "address": oxi.address},
            ],
        },
        DriverRegistry.from_entry_points(),
    )
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        hub = Hub(config, DriverRegistry.from_entry_points())
        task = asyncio.create_task(hub.run())
        try:
            messages = [await asyncio.wait_for(got.get(), 20) for _ in range(7)]
        finally:
            hub.stop()
            await asyncio.wait_for(task, 8)
    finally:
        client.disconnect()
        client.loop_stop()
    by_device: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        assert message.properties.ContentType == "application/fhir+json"
        assert message.properties.PayloadFormatIndicator == 1
        Bundle.model_validate_json(message.payload)
        by_device.setdefault(message.topic.rsplit("/", 1)[1], []).append(
            json.loads(message.payload)
        )
    assert sorted(by_device) == ["bp", "hr", "oxi", "plx", "scale", "thermo"]

    with_bits, kpa = sorted(by_device["bp"], key=lambda b: not resources(b, BITS))
    (bits,) = resources(with_bits, BITS)
    assert [c["code"]["coding"][0]["code"] for c in bits["component"]] == [
        "8410608.0",
        "8410608.2",
        "8410608.5",
    ]
    (compound,) = resources(kpa, IG + "PhdCompoundNumericObservation")
    mean = compound["component"][2]
    assert mdc_codes(mean["code"]) == {"150023"} and "valueQuantity" not in mean
    assert mean["dataAbsentReason"]["coding"][0]["code"] == "error"  # NaN: never 2047
    assert compound["component"][0]["valueQuantity"]["code"] == "kPa"

    (thermo_obs,) = resources(by_device["thermo"][0], IG + "PhdNumericObservation")
    assert mdc_codes(thermo_obs["code"]) == {"188428"}  # MDC_TEMP_EAR
    scale_obs = resources(by_device["scale"][0], IG + "PhdNumericObservation")
    assert [mdc_codes(o["code"]) for o in scale_obs] == [{"188736"}, {"188752"}, {"188740"}]

    plx_bundle = by_device["plx"][0]
    spo2, _pulse = resources(plx_bundle, IG + "PhdNumericObservation")
    assert spo2["interpretation"][0]["coding"][0]["code"] == "questionable"
    (plx_bits,) = resources(plx_bundle, BITS)
    assert plx_bits["component"][0]["code"]["coding"][0]["code"] == "150604.10"
    hr_obs = resources(by_device["hr"][0], IG + "PhdNumericObservation")
    assert mdc_codes(hr_obs[0]["code"]) == {"147842"}
    oxi_obs = resources(by_device["oxi"][0], IG + "PhdNumericObservation")
    assert [o["valueQuantity"]["value"] for o in oxi_obs] == [96.0, 70.0]
    (oxi_device,) = resources(by_device["oxi"][0], IG + "PhdDevice")
    assert (oxi_device["manufacturer"], oxi_device["modelNumber"]) == (
        "Nonin Medical, Inc.",
        "3230",
    )
