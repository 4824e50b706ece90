"""Issue 10: the command channel, over the real mosquitto, with the real hub.

The care team's side is a plain paho MQTT 5 client (`Backend` below): it publishes
`homehub.command/1` with a Response Topic and Correlation Data and collects the
`homehub.response/1` answers by their correlation data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from homehub_contract import MAX_COMMAND_BYTES, validator
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.commands import CommandChannel, CommandRegistry, TokenBucket
from gateway.daemon import Hub
from gateway.events import Event, EventBus, PanelShows, ReadingStored
from gateway.sim.broker import MosquittoBroker
from gateway.uplink.inbox import InboundMessage
from tests.helpers import LineReader, hub_process, next_event, running_hub, sim_device
from tests.helpers import write_config as _write_config

GW = "hub-test"
RESPONSES = f"homehub/{GW}/response"


class Backend:
    """Publishes commands to one hub and collects its responses (paho's thread)."""

    def __init__(self, port: int, gateway: str = GW) -> None:
        self.gateway = gateway
        self.responses: dict[bytes, list[tuple[bytes, Properties | None]]] = {}
        self._cond = threading.Condition()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-backend-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"homehub/{gateway}/response/#", qos=1)
        if not subscribed.wait(5):
            raise AssertionError("the test backend did not subscribe")

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None) or b""
        with self._cond:
            self.responses.setdefault(bytes(correlation), []).append(
                (bytes(message.payload), message.properties)
            )
            self._cond.notify_all()

    def send(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        body: bytes | None = None,
        response_topic: str | None = f"{RESPONSES}/test",
        expiry_s: int | None = 60,
        **extra: Any,
    ) -> bytes:
        """Publish one command; its correlation data (to await the response with)."""
        correlation = uuid.uuid4().bytes
        if body is None:
            doc: dict[str, Any] = {
                "schema": "homehub.command/1",
                "id": request_id or uuid.uuid4().hex,
                "gateway": self.gateway,
                **({} if args is None else {"args": args}),
                **extra,
            }
            body = json.dumps(doc).encode()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        info = self.client.publish(
            f"homehub/{self.gateway}/command/{name}", body, qos=1, properties=props
        )
        info.wait_for_publish(5)
        return correlation

    def wait_raw(self, correlation: bytes, timeout_s: float = 10.0, count: int = 1) -> list[bytes]:
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self.responses.get(correlation, [])) >= count, timeout_s
            ):
                raise AssertionError(f"no response in {timeout_s} s")
            return [payload for payload, _ in self.responses[correlation]]

    async def raw(self, correlation: bytes, timeout_s: float = 10.0) -> bytes:
        """The first response's bytes (awaited off the loop: the hub runs on it)."""
        return (await asyncio.to_thread(self.wait_raw, correlation, timeout_s))[0]

    async def response(self, correlation: bytes, timeout_s: float = 10.0) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await self.raw(correlation, timeout_s))
        errors = list(validator("response-1").iter_errors(doc))
        assert not errors, errors
        return doc

    async def call(self, name: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        return await self.response(self.send(name, args, **kw))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def backend_for(broker: MosquittoBroker) -> Iterator[Backend]:
    backend = Backend(broker.port)
    try:
        yield backend
    finally:
        backend.close()


async def until_answered(backend: Backend, timeout_s: float = 10.0) -> None:
    """The hub subscribes as it connects: ask for its status until it answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        correlation = backend.send("status")
        try:
            await backend.response(correlation, 0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def write_config(tmp_path: Path, broker: MosquittoBroker, **kw: Any) -> Path:
    return _write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        mqtt={"reconnect_min_s": 0.1},
        **kw,
    )


@contextlib.asynccontextmanager
async def hub_and_backend(
    tmp_path: Path, broker: MosquittoBroker, **kw: Any
) -> AsyncIterator[tuple[Hub, Backend, asyncio.Queue[Event]]]:
    """A running hub that answers, a backend, and every event since the hub started."""
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(write_config(tmp_path, broker, **kw), events) as hub:
        with backend_for(broker) as backend:
            await until_answered(backend)
            yield hub, backend, queue


def state_of(hub: Hub) -> dict[str, Any]:
    """Everything a command could change, for before/after comparisons."""
    state_dir = hub.config.gateway.state_dir
    files = {
        name: (state_dir / name).read_bytes() if (state_dir / name).exists() else None
        for name in ("remote-devices.json", "commands-seen.json")
    }
    assert hub.command_channel is not None
    return {
        "files": files,
        "devices": sorted(hub._driver_tasks),
        "tasks": {k: id(v) for k, v in hub._driver_tasks.items()},
        "applied": hub.command_channel.applied,
        "seen": len(hub.command_channel.seen),
        "panel": hub.panel.state if hub.panel else None,
    }


# -- round trips ------------------------------------------------------------------------


async def test_status_round_trips_with_the_correlation_data_and_the_panel_state(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_backend(tmp_path, broker) as (_hub, backend, _):
        correlation = backend.send("status", request_id="st-1")
        response = await backend.response(correlation)
        assert response["ok"] is True and response["error"] is None
        assert response["id"] == "st-1" and response["command"] == "status"
        assert response["gateway"] == GW
        status = response["result"]
        assert not list(validator("status-1").iter_errors(status))
        assert status["gateway"] == GW and status["state"] == "online"
        assert status["panel"]["state"] == "ready"
        # MQTT 5 §4.10: the same Correlation Data, on the Response Topic asked for.
        _, props = backend.responses[correlation][0]
        assert getattr(props, "CorrelationData", None) == correlation
        assert getattr(props, "ContentType", None) == "application/json"


async def test_identify_shows_here_i_am_for_its_seconds_then_what_was_before(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_backend(tmp_path, broker) as (hub, backend, _):
        queue, _ = hub.events.queue()
        response = await backend.call("identify", {"seconds": 1})
        assert response["ok"] and response["result"]["seconds"] == 1
        shown, at = await next_event(queue, PanelShows, 5)
        assert shown == PanelShows("here I am")
        status = (await backend.call("status"))["result"]
        assert status["panel"]["state"] == "here I am"
        back, back_at = await next_event(queue, PanelShows, 5)
        assert back == PanelShows("ready")
        # About its 1 s (exact timings: test_panel_states.py, on virtual time).
        assert 0.8 <= back_at - at <= 6.0
        # 0 ends it early.
        await backend.call("identify", {"seconds": 300})
        assert (await next_event(queue, PanelShows, 5))[0] == PanelShows("here I am")
        await backend.call("identify", {"seconds": 0})
        assert (await next_event(queue, PanelShows, 5))[0] == PanelShows("ready")
        assert hub.panel is not None and hub.panel.state is not None


# -- bad input changes nothing ------------------------------------------------------------


def _doc(**fields: Any) -> bytes:
    return json.dumps(
        {"schema": "homehub.command/1", "id": "bad-1", "gateway": GW, **fields}
    ).encode()


BAD: list[tuple[str, str, bytes | None, dict[str, Any] | None, str, str | None]] = [
    # (case, command, raw body or None, args, error code, a field path)
    ("not json", "devices/set", b"{not json", None, "malformed", None),
    ("not utf-8", "status", b"\xff\xfe", None, "malformed", None),
    ("no id", "status", json.dumps({"schema": "homehub.command/1", "gateway": GW}).encode(),
     None, "malformed", "(document)"),
    ("wrong schema", "status", _doc(schema="homehub.command/2"), None, "malformed", "schema"),
    ("args not an object", "devices/set", _doc(args=[1]), None, "malformed", "args"),
    ("another hub", "devices/set", _doc(gateway="hub-other", args={"devices": []}), None,
     "wrong_gateway", "gateway"),
    ("unknown command", "reboot", None, {}, "unknown_command", "command"),
    ("wrong type", "identify", None, {"seconds": "ten"}, "invalid_args", "args.seconds"),
    ("out of range", "identify", None, {"seconds": 3601}, "invalid_args", "args.seconds"),
    ("unknown arg", "status", None, {"verbose": True}, "invalid_args", "args.verbose"),
    ("devices not a list", "devices/set", None, {"devices": {"id": "x"}}, "invalid_args",
     "args.devices"),
    ("unknown driver", "devices/set", None,
     {"devices": [{"id": "x-1", "driver": "ble.toaster"}]}, "invalid_args",
     "args.devices[0].driver"),
    ("bad key", "devices/set", None,
     {"devices": [sim_device("wt-1", "weight", interval_s="often")]}, "invalid_args",
     "args.devices[0].interval_s"),
    ("typo key", "devices/set", None,
     {"devices": [sim_device("wt-1", "weight", intervall_s=1.0)]}, "invalid_args",
     "args.devices[0].intervall_s"),
    ("duplicate id", "devices/set", None,
     {"devices": [sim_device("wt-1", "weight"), sim_device("wt-1", "weight")]}, "invalid_args",
     "args.devices[1].id"),
    ("null", "devices/set", None, {"devices": [sim_device("wt-1", "weight", count=None)]},
     "invalid_args", "args.devices[0].count"),
    ("installer's id", "devices/set", None, {"devices": [sim_device("bp-1", "weight")]},
     "invalid_args", "args.devices[0].id"),
    ("gateway smuggled", "devices/set", None,
     {"devices": [], "mqtt": {"host": "evil.example"}}, "invalid_args", "args.mqtt"),
    ("oversize", "devices/set", b" " * (MAX_COMMAND_BYTES + 1), None, "too_large", "(document)"),
    ("expired body", "devices/set", _doc(args={"devices": []}, expires_at="2020-01-01T00:00:00Z"),
     None, "expired", "expires_at"),
]  # fmt: skip


async def test_every_bad_input_gets_its_error_naming_the_field_and_changes_nothing(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    devices = [sim_device("bp-1", "blood_pressure", interval_s=3600.0)]
    async with hub_and_backend(tmp_path, broker, devices=devices) as (hub, backend, _):
        # A remote device in place, so a change would show.
        ok = await backend.call("devices/set", {"devices": [sim_device("wt-1", "weight")]})
        assert ok["ok"], ok
        assert hub.command_channel is not None
        hub.command_channel.bucket = TokenBucket(1000, 100.0)
        before = state_of(hub)
        caplog.set_level(logging.WARNING, logger="gateway.commands")
        for case, name, body, args, code, path in BAD:
            caplog.clear()
            response = await backend.response(backend.send(name, args, body=body))
            assert response["ok"] is False and response["result"] is None, case
            assert response["error"]["code"] == code, (case, response)
            if path is not None:
                paths = [f["path"] for f in response["error"]["fields"]]
                assert path in paths, (case, paths)
            assert state_of(hub) == before, case
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1, (case, [r.getMessage() for r in warnings])
            text = warnings[0].getMessage()
            assert code in text and "often" not in text and "evil" not in text, text
        # No Response Topic, or one the hub may not answer on: a WARNING, nothing else.
        for topic in (None, "homehub/hub-other/response/x", f"{RESPONSES}/+"):
            caplog.clear()
            correlation = backend.send("devices/set", {"devices": []}, response_topic=topic)
            await asyncio.to_thread(
                lambda: _wait(
                    lambda: any("ignored command" in r.getMessage() for r in caplog.records)
                )
            )
            assert correlation not in backend.responses
            assert state_of(hub) == before


def _wait(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


async def test_a_repeated_request_id_gets_the_first_response_and_is_not_applied_again(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_backend(tmp_path, broker) as (hub, backend, _):
        assert hub.command_channel is not None
        add = {"devices": [sim_device("wt-1", "weight", interval_s=3600.0)]}
        first_corr = backend.send("devices/set", add, request_id="set-1")
        first = await backend.raw(first_corr)
        applied = hub.command_channel.applied
        task = hub._driver_tasks["wt-1"]
        # The same id again, even with other args: the first response, byte for byte.
        again = backend.send("devices/set", {"devices": []}, request_id="set-1")
        assert await backend.raw(again) == first
        assert hub.command_channel.applied == applied
        assert hub._driver_tasks["wt-1"] is task


async def test_a_rate_limited_command_is_refused_with_its_retry_time_and_not_applied(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_backend(tmp_path, broker) as (hub, backend, _):
        assert hub.command_channel is not None
        hub.command_channel.bucket = TokenBucket(3, 0.01)
        answers = [await backend.call("status") for _ in range(3)]
        assert all(a["ok"] for a in answers)
        before = state_of(hub)
        refused = await backend.call("devices/set", {"devices": [sim_device("wt-1", "weight")]})
        assert refused["error"]["code"] == "rate_limited"
        assert refused["error"]["retry_after_s"] > 0
        assert state_of(hub) == before


# -- expiry -------------------------------------------------------------------------------


async def test_a_command_that_expired_while_queued_on_the_hub_is_not_applied(
    tmp_path: Path,
) -> None:
    sent: list[tuple[str, bytes, bytes | None]] = []
    registry = CommandRegistry()
    calls: list[dict[str, Any]] = []

    def poke(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {}

    def publish(topic: str, payload: bytes, correlation: bytes | None) -> bool:
        sent.append((topic, payload, correlation))
        return True

    registry.register("poke", poke, mutates=True)
    channel = CommandChannel(
        registry, gateway_id=GW, prefix="homehub", state_dir=tmp_path, publish=publish
    )
    body = _doc(args={})
    # The broker passed 5 s of expiry on; the hub received it 6 s ago (queued behind others).
    late = InboundMessage(
        f"homehub/{GW}/command/poke",
        body,
        response_topic=f"{RESPONSES}/x",
        correlation_data=b"c1",
        expiry_s=5,
        received_at=time.monotonic() - 6,
    )
    await channel(late)
    assert calls == [] and json.loads(sent[-1][1])["error"]["code"] == "expired"
    assert sent[-1][2] == b"c1"
    fresh = InboundMessage(
        late.topic, body, response_topic=late.response_topic, correlation_data=b"c2",
        expiry_s=5, received_at=time.monotonic(),
    )  # fmt: skip
    await channel(fresh)
    assert calls == [{}] and json.loads(sent[-1][1])["ok"] is True
    # The expiry by the body's expires_at is checked only while the hub's clock is plausible.
    channel._clock_trusted = lambda: False
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    stale = InboundMessage(
        late.topic, _doc(id="bad-2", args={}, expires_at=past),
        response_topic=late.response_topic, correlation_data=b"c3",
    )  # fmt: skip
    await channel(stale)
    assert len(calls) == 2


async def test_a_command_whose_message_expiry_passed_while_the_hub_was_offline_is_never_applied(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(tmp_path, broker)
    events = EventBus()
    async with running_hub(config, events):
        with backend_for(broker) as backend:
            await until_answered(backend)  # the hub's persistent session has its subscription
    with backend_for(broker) as backend:
        # As the backend's `command` sends it: a Message Expiry Interval and expires_at.
        expires_at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        add = {"devices": [sim_device("wt-1", "weight")]}
        stale = backend.send("devices/set", add, expiry_s=1, expires_at=expires_at)
        kept = backend.send("status", expiry_s=3600)
        await asyncio.sleep(1.6)  # the stale one's expiry runs out while the hub is away
        async with running_hub(config, events) as hub:
            assert (await backend.response(kept))["ok"]
            # mosquitto 2.0.11 was seen delivering it anyway, without its Message Expiry
            # Interval: then the hub refuses it by its expires_at.
            if stale in backend.responses:
                refused = await backend.response(stale)
                assert refused["error"]["code"] == "expired", refused
            assert "wt-1" not in hub._driver_tasks
            assert not (tmp_path / "state" / "remote-devices.json").exists()


# -- devices/get, devices/set -------------------------------------------------------------


def _rows(store: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT device_id, count(*) FROM readings GROUP BY device_id"))


async def test_devices_set_adds_and_removes_a_device_while_readings_flow_with_no_reading_lost(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    count = 250
    installer = [sim_device("bp-1", "blood_pressure", interval_s=0.02, count=count)]
    async with hub_and_backend(tmp_path, broker, devices=installer) as (hub, backend, queue):
        stored: dict[str, int] = {}
        got = await backend.call("devices/get")
        assert got["ok"] and [d["id"] for d in got["result"]["installer"]] == ["bp-1"]
        assert got["result"]["remote"] == []
        bp_task = hub._driver_tasks["bp-1"]
        remote = sim_device("wt-1", "weight", interval_s=0.02)
        added = await backend.call("devices/set", {"devices": [remote]})
        assert added["ok"], added
        assert added["result"] == {"remote": ["wt-1"], "running": ["bp-1", "wt-1"]}
        assert (await backend.call("devices/get"))["result"]["remote"] == [remote]
        # Readings of both flow...
        while stored.get("wt-1", 0) < 20:
            event, _ = await next_event(queue, ReadingStored, 10)
            assert isinstance(event, ReadingStored)
            stored[event.device_id] = stored.get(event.device_id, 0) + 1
        removed = await backend.call("devices/set", {"devices": []})
        assert removed["result"] == {"remote": [], "running": ["bp-1"]}
        assert "wt-1" not in hub._driver_tasks
        # ...and the installer's device was never restarted.
        assert hub._driver_tasks["bp-1"] is bp_task
        assert hub.status.devices["bp-1"].restarts == 0
        assert 0 < stored.get("bp-1", 0) < count, "bp-1 was to be measuring all along"
        while stored.get("bp-1", 0) < count:
            event, _ = await next_event(queue, ReadingStored, 10)
            assert isinstance(event, ReadingStored)
            stored[event.device_id] = stored.get(event.device_id, 0) + 1
        # Every reading any driver handed over is in the store, none twice, none lost.
        assert hub.store is not None and hub.uplink is not None
        rows = _rows(hub.config.store_path)
        assert rows == stored, (rows, stored)
        async with asyncio.timeout(10):
            while (await hub.store.stats()).unsent:
                await hub.uplink.flush_deliveries()
                await asyncio.sleep(0.05)


async def test_devices_survive_a_sigkill_and_a_repeated_id_after_the_restart_is_not_applied(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(tmp_path, broker)
    process = hub_process(config)
    reader = LineReader(process)
    try:
        reader.wait_for("started: gateway", 15)
        with backend_for(broker) as backend:
            await until_answered(backend)
            add = {"devices": [sim_device("wt-1", "weight", interval_s=3600.0)]}
            first = await backend.raw(backend.send("devices/set", add, request_id="keep-1"))
            assert json.loads(first)["ok"], first
            process.send_signal(signal.SIGKILL)  # right after the ok: it must be on disk
            process.wait(5)
            process = hub_process(config)
            reader = LineReader(process)
            reader.wait_for("1 device(s)", 15)
            await until_answered(backend)
            status = (await backend.call("status"))["result"]
            assert list(status["devices"]) == ["wt-1"]
            got = (await backend.call("devices/get"))["result"]
            assert got["remote"] == add["devices"]
            again = backend.send("devices/set", {"devices": []}, request_id="keep-1")
            assert await backend.raw(again) == first
            status = (await backend.call("status"))["result"]
            assert list(status["devices"]) == ["wt-1"]
            # `homehub status` on the hub lists the remote device too.
            local = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway", "status", "--config", str(config), "--json"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert local.returncode == 0, local.stderr
            assert list(json.loads(local.stdout)["devices"]) == ["wt-1"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(6)
        except Exception:
            process.kill()
            process.wait(5)


# -- homehub-backend command --------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def backend_cli(
    broker: MosquittoBroker, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "backend.toml"
    config.write_text(
        f'[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n\n'
        '[database]\ndsn = "postgresql://nobody@127.0.0.1:1/unused"\n'
    )
    # This tree's backend and contract, whatever the venv's editable installs point at.
    path = os.pathsep.join([str(ROOT / "backend"), str(ROOT / "contract"), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "homehub_backend", "command", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": path},
    )


async def test_backend_command_prints_the_response_and_exits_by_it(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_backend(tmp_path, broker):
        done = await asyncio.to_thread(backend_cli, broker, tmp_path, GW, "status")
        assert done.returncode == 0, done.stderr
        response = json.loads(done.stdout)
        assert response["ok"] and response["result"]["gateway"] == GW
        refused = await asyncio.to_thread(
            backend_cli, broker, tmp_path, GW, "identify", '{"seconds": 9999}'
        )
        assert refused.returncode == 1, refused.stderr
        assert json.loads(refused.stdout)["error"]["fields"][0]["path"] == "args.seconds"


async def test_backend_command_to_an_offline_hub_says_queued_and_the_hub_applies_it_on_return(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(tmp_path, broker)
    events = EventBus()
    async with running_hub(config, events):
        with backend_for(broker) as backend:
            await until_answered(backend)
    # The hub said "offline" (retained) as it stopped: no waiting out --wait.
    add = json.dumps({"devices": [sim_device("wt-1", "weight", interval_s=3600.0)]})
    started = time.monotonic()
    queued = await asyncio.to_thread(
        backend_cli, broker, tmp_path, GW, "devices/set", add, "--wait", "20", "--id", "q-1"
    )
    assert queued.returncode == 75, queued.stdout + queued.stderr
    assert time.monotonic() - started < 10
    assert "the hub is offline: the command is queued at the broker until" in queued.stderr
    assert f"homehub/{GW}/response/" in queued.stderr
    async with running_hub(config, events) as hub:
        with backend_for(broker) as backend:
            await until_answered(backend)
            assert "wt-1" in hub._driver_tasks


# -- how the installer's file and the remote file combine --------------------------------


def test_the_installers_devices_win_and_an_invalid_remote_file_never_stops_the_hub(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.commands import RemoteDevices
    from gateway.drivers.registry import DriverRegistry
    from tests.helpers import load

    state = tmp_path / "state"
    installer = load(
        _write_config(
            tmp_path / "hub.toml",
            broker=None,
            state_dir=state,
            devices=[sim_device("bp-1", "blood_pressure")],
        )
    )
    remote = RemoteDevices(state, DriverRegistry.from_entry_points())
    assert remote.merge(installer) is installer  # no remote file: the installer's config
    state.mkdir()
    (state / "remote-devices.json").write_text(
        json.dumps({"devices": [sim_device("bp-1", "weight"), sim_device("wt-1", "weight")]})
    )
    with caplog.at_level(logging.WARNING, logger="gateway.commands"):
        merged = remote.merge(installer)
    # An id in both (the installer added it later): the installer's table runs.
    assert [(d.id, d.model_dump()["kind"]) for d in merged.devices] == [
        ("bp-1", "blood_pressure"),
        ("wt-1", "weight"),
    ]
    assert any("installer's file, which wins" in r.getMessage() for r in caplog.records)
    # A remote table no longer valid (a driver uninstalled since): installer's devices only.
    (state / "remote-devices.json").write_text(
        json.dumps(
            {"devices": [{"id": "x-1", "driver": "ble.gone", "address": "C0:11:22:33:44:55"}]}
        )
    )
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="gateway.commands"):
        assert remote.merge(installer) is installer
    (message,) = [r.getMessage() for r in caplog.records]
    assert "devices[0].driver" in message and "C0:11" not in message
    (state / "remote-devices.json").write_text("{not json")
    assert remote.merge(installer) is installer


# -- the care plan over the channel ------------------------------------------------------


async def test_care_plan_set_and_get_round_trip_and_an_invalid_plan_changes_nothing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    plan = {
        "version": 4,
        "timezone": "UTC",
        "schedule": [{"kind": "weight", "start": "06:00", "end": "10:00"}],
        "thresholds": [{"mdc": 150021, "above": 160}],
    }
    async with hub_and_backend(tmp_path, broker) as (hub, backend, _):
        assert (await backend.call("care-plan/get"))["result"]["plan"] == {}
        response = await backend.call("care-plan/set", plan)
        assert response["ok"] is True, response
        assert response["result"]["version"] == 4
        saved = (hub.config.gateway.state_dir / "care-plan.json").read_bytes()
        got = (await backend.call("care-plan/get"))["result"]["plan"]
        assert got["version"] == 4 and got["schedule"][0]["kind"] == "weight"
        # An invalid plan: refused naming the field, the plan in force and its file unchanged.
        bad = dict(plan, version=5, schedule=[{"kind": "weight", "start": "25:00", "end": "10:00"}])
        refused = await backend.call("care-plan/set", bad)
        assert refused["ok"] is False
        assert any("schedule[0]" in f["path"] for f in refused["error"]["fields"]), refused
        assert (hub.config.gateway.state_dir / "care-plan.json").read_bytes() == saved
        assert (await backend.call("care-plan/get"))["result"]["version"] == 4
