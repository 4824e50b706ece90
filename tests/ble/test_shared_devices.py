"""Shared cuffs and scales (issue 12): with `user_id = N` only user N's records are
published; the others' are counted in the status and never published as this patient's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jsonschema
from homehub_contract import load_schema

from gateway.sim.ble import encode
from gateway.sim.ble.profiles import BloodPressureMonitor, WeightScale
from gateway.sim.broker import MosquittoBroker
from tests.ble.conftest import Air
from tests.ble.test_e2e_ble import WHEN, running_hub, values, wait_readings
from tests.helpers import Listener


async def test_a_couple_sharing_a_cuff_and_a_scale(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(broker.port)
    cuff = BloodPressureMonitor(air.air, "C0:00:00:00:00:31", "BP")
    scale = WeightScale(air.air, "C0:00:00:00:00:32", "Scale")
    for device in (cuff, scale):
        await device.start()
    # User 2 measured twice, an unknown user (255) once, then user 1, the patient.
    await cuff.measure(encode.blood_pressure(150, 95, 113, when=WHEN.replace(hour=7), user=2))
    await cuff.measure(encode.blood_pressure(151, 96, 114, when=WHEN.replace(hour=8), user=2))
    await cuff.measure(encode.blood_pressure(152, 97, 115, when=WHEN.replace(hour=9), user=255))
    await cuff.measure(encode.blood_pressure(121, 79, 93, when=WHEN.replace(hour=10), user=1))
    await scale.measure(encode.weight(95.0, when=WHEN.replace(hour=7), user=2))
    await scale.measure(encode.weight(64.5, when=WHEN.replace(hour=8), user=1))
    devices = [
        {"id": "bp", "driver": "ble.blood_pressure", "address": cuff.address, "user_id": 1},
        {"id": "scale", "driver": "ble.weight_scale", "address": scale.address, "user_id": 1},
    ]
    async with running_hub(tmp_path, broker, air, devices) as hub:
        docs = await wait_readings(listener, 2)
        # The patient's record was each device's last: the others were handled before it.
        assert hub.store is not None
        status = hub.status.document(await hub.store.stats())
    jsonschema.validate(status, load_schema("status-1"))
    assert status["devices"]["bp"]["counts"] == {
        "skipped_other_user": 2,
        "skipped_unknown_user": 1,
    }
    assert status["devices"]["scale"]["counts"] == {"skipped_other_user": 1}
    by_device = {d["device"]["id"]: d for d in docs}
    assert values(by_device["bp"])["MDC_PRESS_BLD_NONINV_SYS"] == (121.0, "mm[Hg]")
    assert values(by_device["scale"])["MDC_MASS_BODY_ACTUAL"] == (64.5, "kg")
    # Every record left the devices (confirmed), but only the patient's were published.
    assert cuff.pending == [] and scale.pending == []


async def test_without_user_id_every_record_is_kept(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(broker.port)
    cuff = BloodPressureMonitor(air.air, "C0:00:00:00:00:33", "BP")
    await cuff.start()
    await cuff.measure(encode.blood_pressure(150, 95, 113, when=WHEN.replace(hour=7), user=2))
    await cuff.measure(encode.blood_pressure(121, 79, 93, when=WHEN.replace(hour=8), user=1))
    devices = [{"id": "bp", "driver": "ble.blood_pressure", "address": cuff.address}]
    async with running_hub(tmp_path, broker, air, devices) as hub:
        docs = await wait_readings(listener, 2)
        assert hub.status.devices["bp"].counts == {}
    assert sorted(values(d)["MDC_PRESS_BLD_NONINV_SYS"][0] for d in docs) == [121.0, 150.0]
