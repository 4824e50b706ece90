"""Multi-user scales' User Data Service consent (issue 12, shared devices): the hub gives
user `user_id`'s `consent_code` through the User Control Point before reading; a refused
consent reads nothing and says so; a UDS scale without `consent_code` gets a status hint."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import validate_config
from gateway.daemon import Hub
from gateway.drivers.ble import uds as consent
from gateway.drivers.ble.profiles import uds
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError, DecodeError
from gateway.events import DeviceFailing
from gateway.sim.ble import encode
from gateway.sim.ble.profiles import BloodPressureMonitor, WeightScale
from gateway.sim.ble.uds import VirtualUds
from gateway.sim.broker import MosquittoBroker
from tests.ble.conftest import Air
from tests.ble.test_e2e_ble import WHEN, running_hub, values, wait_readings
from tests.helpers import Listener

CODE = 1234


def test_consent_bytes_follow_the_uds_layout() -> None:
    # Op Code 0x02, User Index uint8, Consent Code uint16 little-endian (1234 = 0x04D2).
    assert uds.encode_consent(1, 1234) == bytes.fromhex("02 01 D2 04")
    assert uds.encode_consent(254, 9999) == bytes.fromhex("02 FE 0F 27")
    assert uds.encode_register_new_user(0) == bytes.fromhex("01 00 00")
    with pytest.raises(ValueError, match=r"0\.\.9999"):
        uds.encode_consent(1, 10000)
    # Response Code 0x20, Request Op Code, Response Value (+ the procedure's parameter).
    refused = uds.decode_response(bytes.fromhex("20 02 05"))
    assert refused == uds.Response(uds.OpCode.CONSENT, uds.ResponseValue.USER_NOT_AUTHORIZED, b"")
    assert refused.describe() == "user not authorized"
    registered = uds.decode_response(bytes.fromhex("20 01 01 03"))
    assert (registered.value, registered.parameter) == (uds.ResponseValue.SUCCESS, b"\x03")
    assert uds.decode_response(bytes.fromhex("20 02 09")).describe() == "response value 0x09"
    with pytest.raises(DecodeError):
        uds.decode_response(bytes.fromhex("02 01 D2 04"))  # a request, not a response
    with pytest.raises(DecodeError):
        uds.decode_response(bytes.fromhex("20 02"))  # no response value


def _devices(**options: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "h", "state_dir": "/nonexistent"},
        "mqtt": {"host": "127.0.0.1"},
        "devices": [
            {"id": "scale", "driver": "ble.weight_scale", "address": "C0:00:00:00:00:41"} | options
        ],
    }


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"consent_code": 1234}, "devices[0].consent_code: consent_code is for one user"),
        ({"user_id": 1, "consent_code": 10000}, "devices[0].consent_code: Input should be"),
    ],
)
def test_consent_code_needs_a_user_and_four_digits(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(_devices(**options), DriverRegistry.from_entry_points())
    assert [p for p in info.value.problems if p.startswith(problem)], info.value.problems


def test_the_blood_pressure_cuff_takes_a_consent_code_too() -> None:
    data = _devices(user_id=2, consent_code=0)
    data["devices"][0]["driver"] = "ble.blood_pressure"
    config = validate_config(data, DriverRegistry.from_entry_points())
    assert config.devices[0].consent_code == 0  # type: ignore[attr-defined]


async def _scale(air: Air, address: str, users: VirtualUds) -> WeightScale:
    scale = WeightScale(air.air, address, "Scale", uds=users)
    await scale.start()
    await scale.measure(encode.weight(64.5, when=WHEN.replace(hour=8), user=1))
    return scale


async def _failing(hub: Hub, device_id: str, timeout_s: float = 15.0) -> str:
    """The device's last_error once the status shows it failing."""
    events, unsubscribe = hub.events.queue()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                # The status has the device only once the hub started its drivers.
                device = hub.status.devices.get(device_id)
                if device is not None and device.last_error is not None:
                    return device.last_error
                event = await events.get()
                if isinstance(event, DeviceFailing) and event.device_id == device_id:
                    return event.error
    finally:
        unsubscribe()


async def test_the_right_consent_code_gives_the_readings(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
    listener_factory: Callable[..., Listener],
) -> None:
    listener = listener_factory(broker.port)
    users = VirtualUds({1: CODE, 2: 42})
    scale = await _scale(air, "C0:00:00:00:00:42", users)
    device = {"id": "scale", "driver": "ble.weight_scale", "address": scale.address}
    async with running_hub(tmp_path, broker, air, [device | {"user_id": 1, "consent_code": CODE}]):
        docs = await wait_readings(listener, 1)
    assert users.requests == [(1, CODE)]
    assert values(docs[0])["MDC_MASS_BODY_ACTUAL"] == (64.5, "kg")
    assert scale.pending == []


async def test_a_refused_consent_reads_nothing_and_says_so(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
    caplog: pytest.LogCaptureFixture,
) -> None:
    users = VirtualUds({1: CODE})
    scale = await _scale(air, "C0:00:00:00:00:43", users)
    device = {"id": "scale", "driver": "ble.weight_scale", "address": scale.address}
    caplog.set_level(logging.DEBUG)
    async with running_hub(
        tmp_path, broker, air, [device | {"user_id": 1, "consent_code": 4321}]
    ) as hub:
        error = await _failing(hub, "scale")
        # The hub left at once (it held off a new visit): the scale saw one Consent.
        await asyncio.wait_for(scale.disconnected.wait(), 5)
        assert hub.store is not None
        stats = await hub.store.stats()
    assert error == "the scale refused consent for user 1: check consent_code"
    assert users.requests == [(1, 4321)]
    # Nothing was read: the record is still on the scale, nothing reached the store.
    assert len(scale.pending) == 1 and scale.delivered == []
    assert stats.total == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings if "consent" in r.getMessage()] == [error]
    # The consent code is never logged, at any level.
    assert not [r for r in caplog.records if "4321" in r.getMessage()]


async def test_a_uds_scale_without_consent_code_gets_a_hint(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
) -> None:
    users = VirtualUds({1: CODE})
    scale = await _scale(air, "C0:00:00:00:00:44", users)
    device = {"id": "scale", "driver": "ble.weight_scale", "address": scale.address}
    async with running_hub(tmp_path, broker, air, [device | {"user_id": 1}]) as hub:
        error = await _failing(hub, "scale")
    assert error == (
        "this scale uses the User Data Service and may need consent: set user_id and "
        "consent_code (README: Shared cuffs and scales)"
    )
    assert users.requests == []  # no consent was tried without a code


async def test_a_uds_scale_that_needs_no_consent_is_read_without_a_code(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
    listener_factory: Callable[..., Listener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = listener_factory(broker.port)
    users = VirtualUds({}, requires_consent=False)
    scale = await _scale(air, "C0:00:00:00:00:45", users)
    device = {"id": "scale", "driver": "ble.weight_scale", "address": scale.address}
    async with running_hub(tmp_path, broker, air, [device]) as hub:
        docs = await wait_readings(listener, 1)
        # The hint was shown, then the stored reading cleared the device's problem.
        assert hub.status.devices["scale"].last_error is None
    hints = [r for r in caplog.records if "uses the User Data Service" in r.getMessage()]
    assert [r.levelno for r in hints] == [logging.WARNING]
    assert values(docs[0])["MDC_MASS_BODY_ACTUAL"] == (64.5, "kg")


async def test_after_a_refusal_the_hub_holds_off_then_recovers(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
    listener_factory: Callable[..., Listener],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A short hold-off (the real one is minutes), no cooldown: the gap between the two
    # visits is the hold-off's.
    monkeypatch.setattr(consent, "REFUSED_HOLD_OFF_S", 1.0)
    monkeypatch.setattr(consent, "REFUSED_HOLD_OFF_MAX_S", 1.0)
    listener = listener_factory(broker.port)
    users = VirtualUds({1: 1111})
    scale = await _scale(air, "C0:00:00:00:00:46", users)
    device = {"id": "scale", "driver": "ble.weight_scale", "address": scale.address}
    options = {"user_id": 1, "consent_code": CODE, "cooldown_s": 0.0}
    async with running_hub(tmp_path, broker, air, [device | options]) as hub:
        error = await _failing(hub, "scale")
        # The user is registered again on the scale, now with the configured code.
        users.consent_codes[1] = CODE
        await asyncio.wait_for(users.consent_given.wait(), 10)
        docs = await wait_readings(listener, 1)
        assert hub.status.devices["scale"].last_error is None
    assert error.startswith("the scale refused consent")
    # Refused until the code matched (once, or more if the test ran late), then given;
    # never sooner than the hold-off apart (a lower bound: load cannot make it flaky).
    assert len(users.requests) >= 2 and set(users.requests) == {(1, CODE)}
    times = users.request_times
    # (0.95: asyncio may wake a timer within its clock resolution of the deadline)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.95
    assert values(docs[0])["MDC_MASS_BODY_ACTUAL"] == (64.5, "kg")


async def test_a_shared_cuff_with_uds_gives_only_its_users_readings(
    tmp_path: Path,
    broker: MosquittoBroker,
    air: Air,
    listener_factory: Callable[..., Listener],
) -> None:
    # The cuff (BLS with UDS) takes consent for user 2, the patient; it still sends user 1's
    # record too, which the user_id filter counts and skips.
    listener = listener_factory(broker.port)
    users = VirtualUds({1: 1111, 2: CODE})
    cuff = BloodPressureMonitor(air.air, "C0:00:00:00:00:47", "BP", uds=users)
    await cuff.start()
    await cuff.measure(encode.blood_pressure(150, 95, 113, when=WHEN.replace(hour=7), user=1))
    await cuff.measure(encode.blood_pressure(121, 79, 93, when=WHEN.replace(hour=8), user=2))
    device = {"id": "bp", "driver": "ble.blood_pressure", "address": cuff.address}
    async with running_hub(
        tmp_path, broker, air, [device | {"user_id": 2, "consent_code": CODE}]
    ) as hub:
        docs = await wait_readings(listener, 1)
        assert hub.status.devices["bp"].counts == {"skipped_other_user": 1}
    assert users.requests == [(2, CODE)]
    assert [values(d)["MDC_PRESS_BLD_NONINV_SYS"] for d in docs] == [(121.0, "mm[Hg]")]
