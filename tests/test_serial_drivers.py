"""Serial drivers against simulators on real pseudo-terminals (no mock of serial.Serial)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import SystemClock
from gateway.config import HubConfig, validate_config
from gateway.daemon import Hub
from gateway.drivers.base import Driver, DriverContext, StoredReading
from gateway.drivers.registry import DriverRegistry
from gateway.drivers.serial.contec_cms50 import ContecCms50Driver
from gateway.drivers.serial.line import LineDriver
from gateway.drivers.serial.nonin import NoninDriver
from gateway.errors import ConfigError
from gateway.events import DeviceFailing, DeviceRecovered, Event, EventBus
from gateway.reading import Reading
from gateway.sim.pty import PtyLink
from gateway.sim.serial import (
    ALL_SIMS,
    SIM_CONFIG,
    ContecV7Sim,
    DeviceSim,
    Phase,
    RunningSim,
    Scenario,
)
from gateway.status import DeviceStatus

FAST = {"window_s": 1.0, "reopen_min_s": 0.05, "reopen_max_s": 0.2}
DRIVERS: dict[str, type[Driver]] = {
    "serial.contec_cms50": ContecCms50Driver,
    "serial.nonin": NoninDriver,
    "serial.line": LineDriver,
}


@dataclass
class Harness:
    """A driver with a context that collects what it emits and reports."""

    readings: asyncio.Queue[Reading] = field(default_factory=asyncio.Queue)
    problems: list[str | None] = field(default_factory=list)
    reported: asyncio.Event = field(default_factory=asyncio.Event)

    def driver(self, name: str, port: Path, **options: Any) -> Driver:
        cls = DRIVERS[name]
        opts = cls.Options.model_validate(
            {"id": "dev-1", "driver": name, "port": str(port), **options}
        )

        async def emit(reading: Reading) -> StoredReading:
            await self.readings.put(reading)
            return StoredReading(str(uuid.uuid4()), self.readings.qsize(), False)

        def report(problem: str | None) -> None:
            self.problems.append(problem)
            self.reported.set()

        context = DriverContext(
            "dev-1", SystemClock(), logging.getLogger("test.serial"), emit, report=report
        )
        return cls(opts, context)

    async def wait_problem(self, text: str, timeout_s: float = 5.0) -> str:
        """The first reported problem containing `text` (from any time), awaited."""
        async with asyncio.timeout(timeout_s):
            while True:
                for problem in self.problems:
                    if problem is not None and text in problem:
                        return problem
                self.reported.clear()
                await self.reported.wait()

    def drain(self) -> list[Reading]:
        out = []
        while not self.readings.empty():
            out.append(self.readings.get_nowait())
        return out


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def values(reading: Reading) -> dict[str, float | None]:
    return {v.code: v.value for v in reading.values}


def session(in_s: float = 1.4) -> Scenario:
    # Pulse above 127 (its top bit travels apart from the rest in every protocol).
    return Scenario(
        [
            Phase(0.1, "silent"),
            Phase(0.2, "searching"),
            Phase(in_s, "in", spo2=(96, 97, 98), pulse=(140, 150, 160)),
            Phase(0.3, "out"),
        ]
    )


def fast(sim: DeviceSim) -> DeviceSim:
    # Nonin #8 sends once a second; the tests play it faster (same bytes, same framing).
    sim.rate_hz = max(sim.rate_hz, 10.0)
    return sim


CASES = [
    ("contec-cms50-legacy", {"protocol": "legacy"}),
    ("contec-cms50-v7", {"protocol": "auto"}),
    ("nonin-df2", {"data_format": 2}),
    ("nonin-df8", {"data_format": 8}),
]


async def spot_case(tmp_path: Path, sim_name: str, extra: dict[str, Any]) -> None:
    sim = RunningSim(fast(ALL_SIMS[sim_name]()), PtyLink(tmp_path / sim_name), session())
    sim.link.appear()
    harness = Harness()
    driver_name = str(SIM_CONFIG[sim_name]["driver"])
    driver = harness.driver(driver_name, sim.link.link, **FAST, **extra)
    task = asyncio.create_task(driver.run())
    try:
        await asyncio.wait_for(sim.run(), 10)
        reading = await asyncio.wait_for(harness.readings.get(), 5)
        # The simulator's pty is gone: once the driver noticed, it has read everything.
        await harness.wait_problem("port lost")
    finally:
        task.cancel()
    got = values(reading)
    assert got == {"MDC_PULS_OXIM_SAT_O2": 97.0, "MDC_PULS_OXIM_PULS_RATE": 150.0}, sim_name
    assert reading.kind == "pulse_oximeter" and reading.measured_at_source == "hub"
    assert [v.unit for v in reading.values] == ["%", "/min"]
    assert harness.drain() == [], sim_name  # exactly one per session


async def test_spot_session_gives_one_reading_with_the_median(tmp_path: Path) -> None:
    # All four protocols at once (each on its own pty), to keep the suite fast.
    async with asyncio.TaskGroup() as group:
        for sim_name, extra in CASES:
            group.create_task(spot_case(tmp_path, sim_name, extra))


async def test_contec_auto_detects_the_legacy_protocol(
    tmp_path: Path, running: list[asyncio.Task[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.drivers.serial.contec_cms50.DETECT_S", 0.3)
    sim = RunningSim(ALL_SIMS["contec-cms50-legacy"](), PtyLink(tmp_path / "oxi"), session(1.8))
    sim.link.appear()
    harness = Harness()
    driver = harness.driver("serial.contec_cms50", sim.link.link, **FAST)
    running.append(asyncio.create_task(driver.run()))
    await asyncio.wait_for(sim.run(), 10)
    reading = await asyncio.wait_for(harness.readings.get(), 5)
    assert values(reading)["MDC_PULS_OXIM_PULS_RATE"] == 150.0
    assert "legacy" in driver.protocol_name  # type: ignore[attr-defined]


async def test_v7_driver_starts_the_stream_and_keeps_it_alive(
    tmp_path: Path, running: list[asyncio.Task[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.drivers.serial.contec_cms50.KEEPALIVE_S", 0.3)
    device = ContecV7Sim()
    sim = RunningSim(device, PtyLink(tmp_path / "v7"), session())
    sim.link.appear()
    harness = Harness()
    driver = harness.driver("serial.contec_cms50", sim.link.link, protocol="v7", **FAST)
    running.append(asyncio.create_task(driver.run()))
    await asyncio.wait_for(sim.run(), 10)
    assert device.commands[0] == 0xA1  # start real-time data
    assert 0xAF in device.commands  # keep-alive
    await asyncio.wait_for(harness.readings.get(), 5)


async def test_continuous_mode_gives_one_reading_per_interval(
    tmp_path: Path, running: list[asyncio.Task[None]]
) -> None:
    scenario = Scenario([Phase(2.4, "in", spo2=(95,), pulse=(130,)), Phase(0.2, "out")])
    sim = RunningSim(ALL_SIMS["contec-cms50-legacy"](), PtyLink(tmp_path / "oxi"), scenario)
    sim.link.appear()
    harness = Harness()
    driver = harness.driver(
        "serial.contec_cms50",
        sim.link.link,
        protocol="legacy",
        mode="continuous",
        interval_s=1.0,
        **FAST,
    )
    running.append(asyncio.create_task(driver.run()))
    await asyncio.wait_for(sim.run(), 10)
    await harness.wait_problem("port lost")  # so it has read all the simulator wrote
    readings = harness.drain()
    assert len(readings) == 2
    assert all(values(r)["MDC_PULS_OXIM_PULS_RATE"] == 130.0 for r in readings)


async def test_all_garbage_is_reported_and_never_a_reading(
    tmp_path: Path, running: list[asyncio.Task[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.drivers.serial.base.GARBAGE_WINDOW_S", 0.4)
    sim = RunningSim(
        ALL_SIMS["contec-cms50-legacy"](),
        PtyLink(tmp_path / "oxi"),
        Scenario([Phase(1.5, "noise")]),
    )
    sim.link.appear()
    harness = Harness()
    driver = harness.driver("serial.nonin", sim.link.link, **FAST)  # the wrong driver
    running.append(asyncio.create_task(driver.run()))
    noise = asyncio.create_task(sim.run())
    await asyncio.wait_for(harness.reported.wait(), 5)
    problem = harness.problems[-1]
    assert problem is not None and "wrong baud rate, wrong driver or wrong port" in problem
    await asyncio.wait_for(noise, 10)
    assert harness.drain() == []


async def test_port_closed_and_reopened_mid_session_recovers(
    tmp_path: Path, running: list[asyncio.Task[None]]
) -> None:
    link = PtyLink(tmp_path / "oxi")
    link.appear()
    harness = Harness()
    driver = harness.driver("serial.contec_cms50", link.link, protocol="legacy", **FAST)
    running.append(asyncio.create_task(driver.run()))
    # Mid-session, after more than a window of steady values, the cable is pulled.
    cut = Scenario([Phase(1.3, "in", spo2=(90,), pulse=(60,))])
    await asyncio.wait_for(RunningSim(ALL_SIMS["contec-cms50-legacy"](), link, cut).run(), 10)
    await harness.wait_problem("port lost")
    await harness.wait_problem("cannot open")  # it retries while the port is gone
    assert harness.drain() == []  # a session cut by a pulled cable is no measurement
    # Plugged back in: a new session, a reading.
    sim = RunningSim(ALL_SIMS["contec-cms50-legacy"](), link, session())
    await asyncio.wait_for(sim.run(), 10)
    reading = await asyncio.wait_for(harness.readings.get(), 5)
    assert values(reading)["MDC_PULS_OXIM_SAT_O2"] == 97.0
    assert harness.problems[-1] is None  # recovered, and said so


async def test_line_driver_reads_a_scale(tmp_path: Path, running: list[asyncio.Task[None]]) -> None:
    scenario = Scenario(
        [Phase(0.5, "searching"), Phase(0.5, "in", spo2=(96,), pulse=(4,)), Phase(0.1, "out")]
    )
    sim = RunningSim(fast(ALL_SIMS["scale-line"]()), PtyLink(tmp_path / "scale"), scenario)
    sim.link.appear()
    harness = Harness()
    config = {k: v for k, v in SIM_CONFIG["scale-line"].items() if k != "driver"}
    driver = harness.driver("serial.line", sim.link.link, reopen_min_s=0.05, **config)
    running.append(asyncio.create_task(driver.run()))
    await asyncio.wait_for(sim.run(), 10)
    reading = await asyncio.wait_for(harness.readings.get(), 5)
    await harness.wait_problem("port lost")
    assert reading.kind == "weight"
    assert [(v.code, v.value, v.unit) for v in reading.values] == [
        ("MDC_MASS_BODY_ACTUAL", 82.4, "kg")
    ]
    assert harness.drain() == []  # the unstable (US) lines were not readings


def test_line_config_errors_name_the_field() -> None:
    registry = DriverRegistry.from_entry_points()
    base = {"gateway": {"id": "hub-1"}}
    device = {"id": "scale-1", "driver": "serial.line", "port": "/dev/ttyUSB0", "kind": "weight"}
    cases = [
        (
            {
                "pattern": "(?P<w>[0-9.]+",
                "values": {"w": {"code": "MDC_MASS_BODY_ACTUAL", "unit": "kg"}},
            },
            "devices[0].pattern: not a valid regular expression",
        ),
        (
            {
                "pattern": "(?P<w>[0-9.]+)",
                "values": {"x": {"code": "MDC_MASS_BODY_ACTUAL", "unit": "kg"}},
            },
            "every named group of pattern needs an entry in values",
        ),
        (
            {"pattern": "(?P<w>[0-9.]+)", "values": {"w": {"code": "MDC_NOPE", "unit": "kg"}}},
            "devices[0].values.w.code: unknown MDC code 'MDC_NOPE'",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError) as caught:
            validate_config({**base, "devices": [{**device, **extra}]}, registry)
        assert any(message in p for p in caught.value.problems), caught.value.problems
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {
                **base,
                "devices": [
                    {
                        "id": "o",
                        "driver": "serial.contec_cms50",
                        "port": "/x",
                        "protocol": "v7",
                        "baudrate": 19200,
                    }
                ],
            },
            registry,
        )
    assert caught.value.problems == ["devices[0]: protocol v7 runs at 115200 baud"]


async def test_a_reported_problem_shows_in_the_hub_status() -> None:
    registry = DriverRegistry.from_entry_points()
    config = validate_config(
        {
            "gateway": {"id": "hub-1"},
            "devices": [{"id": "oxi-1", "driver": "serial.nonin", "port": "/dev/null"}],
        },
        registry,
    )
    assert isinstance(config, HubConfig)
    events = EventBus()
    seen: list[Event] = []
    events.subscribe(seen.append)
    hub = Hub(config, registry, events=events)
    hub.status.devices["oxi-1"] = DeviceStatus(driver="serial.nonin")
    context = hub._context(config.devices[0])
    context.report("port lost")
    context.report("port lost")  # the same problem again: no new event
    device = hub.status.devices["oxi-1"]
    assert (device.state, device.last_error, device.restarts) == ("failing", "port lost", 0)
    context.report(None)
    assert (device.state, device.last_error) == ("ok", None)
    assert [type(e) for e in seen] == [DeviceFailing, DeviceRecovered]
