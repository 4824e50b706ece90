"""The daemon: supervised drivers, a full disk, a full store, clean stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tomllib
from pathlib import Path

import pytest

from gateway.config import validate_config
from gateway.daemon import Hub
from gateway.drivers.base import Driver, DriverOptions
from gateway.drivers.registry import DriverRegistry
from gateway.drivers.simulated import SimulatedDriver
from gateway.events import (
    DeviceFailing,
    DeviceRecovered,
    DiskFull,
    DiskOk,
    Event,
    EventBus,
    ReadingsDropped,
    ReadingStored,
)
from gateway.reading import Kind, Reading, Value
from gateway.sim.broker import MosquittoBroker, free_port
from tests.helpers import LineReader, hub_process, sim_device, write_config


class FlakyOptions(DriverOptions):
    failures: int = 2


class FlakyDriver(Driver):
    """Fails `failures` times (across restarts), then emits one reading."""

    Options = FlakyOptions
    attempts = 0

    async def run(self) -> None:
        assert isinstance(self.options, FlakyOptions)
        FlakyDriver.attempts += 1
        if FlakyDriver.attempts <= self.options.failures:
            raise RuntimeError(f"simulated failure {FlakyDriver.attempts}")
        from gateway import mdc

        await self.context.emit(
            Reading(
                device_id=self.options.id,
                driver=self.options.driver,
                kind=Kind.TEMPERATURE,
                measured_at=self.context.clock.now(),
                measured_at_source="hub",
                values=(Value.of(mdc.TEMP_BODY, 37.0, "Cel"),),
            )
        )
        await asyncio.Event().wait()


def registry_with_flaky() -> DriverRegistry:
    return DriverRegistry({"simulated": SimulatedDriver, "flaky": FlakyDriver})


def config_for(path: Path, registry: DriverRegistry):  # type: ignore[no-untyped-def]
    return validate_config(tomllib.loads(path.read_text()), registry)


async def collect_until(queue: asyncio.Queue[Event], kind: type[Event], timeout_s: float) -> Event:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await queue.get()
            if isinstance(event, kind):
                return event


async def test_failing_driver_is_restarted_with_backoff_and_reported(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.daemon.DRIVER_BACKOFF_INITIAL_S", 0.05)
    FlakyDriver.attempts = 0
    registry = registry_with_flaky()
    path = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[
            {"id": "flaky-1", "driver": "flaky", "failures": 2},
            sim_device("ok-1", "weight", interval_s=0.05),
        ],
    )
    events = EventBus()
    queue, _ = events.queue()
    hub = Hub(config_for(path, registry), registry, events=events)
    task = asyncio.create_task(hub.run())
    try:
        first = await collect_until(queue, DeviceFailing, 5)
        assert isinstance(first, DeviceFailing) and first.device_id == "flaky-1"
        assert "simulated failure 1" in first.error
        await collect_until(queue, DeviceRecovered, 10)
        device = hub.status.devices["flaky-1"]
        assert device.restarts == 2 and device.state == "ok"
        # The other device never stopped producing.
        assert hub.status.devices["ok-1"].state == "ok"
        assert not task.done()
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)


async def test_full_disk_keeps_the_daemon_alive_and_the_file_sound(
    tmp_path: Path,
    broker: MosquittoBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Default backoffs: the restart after space comes back must not wait for them.
    registry = DriverRegistry.from_entry_points()
    path = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0)],
        store={"retention_hours": 24.0},
    )
    events = EventBus()
    queue, _ = events.queue()
    # A tiny page budget: SQLite answers SQLITE_FULL exactly as on a full SD card.
    hub = Hub(config_for(path, registry), registry, events=events, max_page_count=40)
    task = asyncio.create_task(hub.run())
    try:
        with caplog.at_level(logging.ERROR):
            await collect_until(queue, DiskFull, 20)
        assert hub.status.disk_full
        assert not task.done(), "the daemon died of a full disk"
        assert any("disk full" in r.getMessage() for r in caplog.records)
        # Space again (issue 11): storing resumes within seconds, not after the
        # driver's restart backoff (up to 120 s without the patch above).
        assert hub.store is not None
        await hub.store.set_max_page_count(100_000)
        freed = time.monotonic()
        await collect_until(queue, DiskOk, 5)
        await collect_until(queue, ReadingStored, 5)
        assert time.monotonic() - freed < 5 and not hub.status.disk_full
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)
    import sqlite3

    db = sqlite3.connect(tmp_path / "state" / "readings.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] > 0
    db.close()


async def test_store_bound_drops_oldest_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = DriverRegistry.from_entry_points()
    # No broker listens on this port: nothing is delivered, the store fills up.
    path = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        devices=[sim_device("oxi-1", "pulse_oximeter", interval_s=0.0, count=150)],
        mqtt={"port": free_port(), "reconnect_min_s": 0.5},
        store={"max_readings": 100},
    )
    events = EventBus()
    queue, _ = events.queue()
    hub = Hub(config_for(path, registry), registry, events=events)
    task = asyncio.create_task(hub.run())
    try:
        stored = 0
        dropped_events: list[ReadingsDropped] = []
        with caplog.at_level(logging.ERROR):
            async with asyncio.timeout(20):
                while stored < 150:
                    event = await queue.get()
                    stored += isinstance(event, ReadingStored)
                    if isinstance(event, ReadingsDropped):
                        dropped_events.append(event)
        assert dropped_events and sum(e.count for e in dropped_events) == 50
        assert hub.status.store_full
        assert any("bound" in r.getMessage() for r in caplog.records)
        assert hub.store is not None
        stats = await hub.store.stats()
        assert stats.total == 100
        assert stats.unsent == 100
        assert stats.dropped == 50
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)


def test_sigterm_while_broker_unreachable_exits_zero_within_5s(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        devices=[sim_device("g-1", "glucose", interval_s=0.1)],
        mqtt={"port": free_port()},
    )
    hub = hub_process(path)
    out = LineReader(hub)
    try:
        out.wait_for("cannot connect", 15)
        started = time.monotonic()
        hub.terminate()
        assert hub.wait(timeout=10) == 0
        assert time.monotonic() - started < 5.0
    finally:
        if hub.poll() is None:
            hub.kill()


def test_describe_error_names_fields_but_never_values() -> None:
    from pydantic import ValidationError

    from gateway.daemon import describe_error

    try:
        Value(mdc=150021, code="MDC_PRESS_BLD_NONINV_SYS", value="one-hundred-and-87", unit="")
    except ValidationError as exc:
        text = describe_error(exc)
    else:
        raise AssertionError("the Value was accepted")
    assert "one-hundred-and-87" not in text
    assert "value" in text and "unit" in text
    assert describe_error(RuntimeError("port vanished")) == "RuntimeError: port vanished"


def test_sigterm_while_connecting_into_a_black_hole_exits_within_5s(tmp_path: Path) -> None:
    import socket

    # A listener whose accept queue is full: the kernel drops further SYNs, as a
    # dead mobile link does, so the hub's connect() hangs until its timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    path = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        devices=[sim_device("w-1", "weight", interval_s=1.0)],
        mqtt={"port": port, "connect_timeout_s": 30.0},
    )
    hub = hub_process(path, log_level="DEBUG")
    out = LineReader(hub)
    try:
        out.wait_for("started", 15)
        out.wait_for("mqtt: connecting to", 15)
        started = time.monotonic()
        hub.terminate()
        assert hub.wait(timeout=20) == 0
        assert time.monotonic() - started < 5.0
    finally:
        if hub.poll() is None:
            hub.kill()
        for s in [listener, *fillers]:
            s.close()


async def test_an_implausible_clock_is_reported_and_cleared(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.clock import SystemClock
    from gateway.events import ClockOk, ClockWrong

    class StoppedAt1970(SystemClock):
        """A Pi before NTP answered: no battery clock."""

        offset = datetime(1970, 1, 1, tzinfo=UTC) - datetime.now(UTC)

        def now(self) -> datetime:
            return super().now() + self.offset

    clock = StoppedAt1970()
    path = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        mqtt={"port": free_port()},
    )
    registry = DriverRegistry.from_entry_points()
    events = EventBus()
    queue, _ = events.queue()
    hub = Hub(config_for(path, registry), registry, events=events, clock=clock)
    task = asyncio.create_task(hub.run())
    try:
        wrong = await collect_until(queue, ClockWrong, 5)
        assert isinstance(wrong, ClockWrong) and "1970-01-01" in wrong.reason
        assert hub.status.clock_wrong
        clock.offset = timedelta(0)  # NTP answered
        hub._check_clock()
        await collect_until(queue, ClockOk, 5)
        assert not hub.status.clock_wrong
    finally:
        hub.stop()
        await asyncio.wait_for(task, 6)


async def test_a_driver_that_ignores_cancellation_does_not_hang_the_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.daemon.DRIVER_STOP_S", 0.2)

    class StubbornDriver(Driver):
        """Swallows every cancel, as a lost cancellation inside a library would."""

        released = False

        async def run(self) -> None:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if StubbornDriver.released:
                        raise

    registry = DriverRegistry({"simulated": SimulatedDriver, "stubborn": StubbornDriver})
    path = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        devices=[{"id": "s-1", "driver": "stubborn"}],
        mqtt={"port": free_port()},
    )
    hub = Hub(config_for(path, registry), registry, events=EventBus())
    task = asyncio.create_task(hub.run())
    async with asyncio.timeout(5):
        while "s-1" not in hub._driver_tasks:
            await asyncio.sleep(0.01)
    started = time.monotonic()
    hub.stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 3.0
    stubborn = hub._driver_tasks["s-1"]
    assert not stubborn.done()
    StubbornDriver.released = True  # the test's own clean-up
    stubborn.cancel()
    await asyncio.gather(stubborn, return_exceptions=True)
