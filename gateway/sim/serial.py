"""Virtual serial medical devices: each writes its protocol's real frames to a pty.

A `Scenario` is a list of phases (finger out, searching, steady values, noise);
a device simulator turns the phase at each moment into its protocol's bytes,
at the device's rate. `homehub simulate --serial DIR` runs one of each, and the
tests run them with short scenarios.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.drivers.serial import contec_proto, nonin_proto
from gateway.sim.pty import PtyLink

State = Literal["out", "searching", "in", "noise", "silent"]


@dataclass(frozen=True)
class Phase:
    seconds: float
    state: State
    spo2: Sequence[int] = (97,)  # cycled through, one value per sample
    pulse: Sequence[int] = (72,)


@dataclass(frozen=True)
class SimSample:
    state: State
    spo2: int
    pulse: int


class Scenario:
    """Phases played in order (and again, when `repeat`)."""

    def __init__(self, phases: Iterable[Phase], *, repeat: bool = False) -> None:
        self.phases = list(phases)
        self.repeat = repeat
        self.length = sum(p.seconds for p in self.phases)

    def at(self, elapsed: float, index: int) -> SimSample | None:
        """The sample at `elapsed` seconds (the index-th sample); None once it is over."""
        if self.repeat and self.length > 0:
            elapsed %= self.length
        for phase in self.phases:
            if elapsed < phase.seconds:
                return SimSample(
                    phase.state,
                    phase.spo2[index % len(phase.spo2)],
                    phase.pulse[index % len(phase.pulse)],
                )
            elapsed -= phase.seconds
        return None


def demo_scenario() -> Scenario:
    """Finger in, steady values, finger out, a burst of noise; again and again."""
    return Scenario(
        [
            Phase(3, "silent"),
            Phase(2, "searching"),
            Phase(14, "in", spo2=(95, 96, 96, 97, 96), pulse=(71, 73, 72, 74, 72)),
            Phase(3, "out"),
            Phase(0.5, "noise"),
            Phase(2.5, "silent"),
        ],
        repeat=True,
    )


class DeviceSim:
    """Base: a device that sends `rate_hz` times a second what the phase asks for."""

    name = "device"
    rate_hz = 1.0
    noise_bytes = 64

    def __init__(self) -> None:
        self.rng = random.Random(self.name)  # noqa: S311 (noise, not secrets)

    def frame(self, sample: SimSample) -> bytes:
        raise NotImplementedError

    def on_input(self, data: bytes) -> None:
        """Bytes from the hub (commands)."""

    @property
    def streaming(self) -> bool:
        return True

    def bytes_for(self, sample: SimSample) -> bytes:
        if sample.state == "silent" or not self.streaming:
            return b""
        if sample.state == "noise":
            return self.rng.randbytes(self.noise_bytes)
        return self.frame(sample)


class ContecLegacySim(DeviceSim):
    name = "contec-cms50-legacy"
    rate_hz = 60.0
    noise_bytes = 8

    def frame(self, sample: SimSample) -> bytes:
        if sample.state == "out":
            return contec_proto.encode_legacy_frame(127, 255, finger_out=True, signal=0)
        if sample.state == "searching":
            return contec_proto.encode_legacy_frame(0, 0, searching=True, signal=1)
        return contec_proto.encode_legacy_frame(sample.spo2, sample.pulse)


class ContecV7Sim(DeviceSim):
    """Streams only after the start command; stops after STOP."""

    name = "contec-cms50-v7"
    rate_hz = 60.0
    noise_bytes = 8

    def __init__(self) -> None:
        super().__init__()
        self._decoder = contec_proto.V7Decoder()
        self._streaming = False

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def commands(self) -> list[int]:
        return self._decoder.commands

    def on_input(self, data: bytes) -> None:
        seen = len(self._decoder.commands)
        self._decoder.feed(data)
        for command in self._decoder.commands[seen:]:
            if command == contec_proto.CMD_START_REALTIME:
                self._streaming = True
            elif command == contec_proto.CMD_STOP_REALTIME:
                self._streaming = False

    def frame(self, sample: SimSample) -> bytes:
        if sample.state == "out":
            return contec_proto.encode_v7_realtime(127, 255, finger_out=True, signal=0)
        if sample.state == "searching":
            return contec_proto.encode_v7_realtime(0, 0, searching=True, signal=1)
        return contec_proto.encode_v7_realtime(sample.spo2, sample.pulse)


class NoninFormat2Sim(DeviceSim):
    name = "nonin-df2"
    rate_hz = 3.0  # one 25-frame packet per 1/3 s

    def frame(self, sample: SimSample) -> bytes:
        if sample.state == "out":
            return nonin_proto.encode_format2_packet(None, None, sensor_off=True)
        if sample.state == "searching":
            return nonin_proto.encode_format2_packet(None, None, perfusion="red")
        return nonin_proto.encode_format2_packet(sample.spo2, sample.pulse)


class NoninFormat8Sim(DeviceSim):
    name = "nonin-df8"
    rate_hz = 1.0

    def frame(self, sample: SimSample) -> bytes:
        if sample.state == "out":
            return nonin_proto.encode_format8(None, None, sensor_off=True)
        if sample.state == "searching":
            return nonin_proto.encode_format8(None, None)
        return nonin_proto.encode_format8(sample.spo2, sample.pulse)


class ScaleLineSim(DeviceSim):
    """A weighing scale printing A&D-style lines: `US,...` while settling, `ST,...` once stable."""

    name = "scale-line"
    rate_hz = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._printed = False

    def frame(self, sample: SimSample) -> bytes:
        if sample.state == "in":
            if self._printed:
                return b""
            self._printed = True
            return f"ST,+{sample.spo2 - 14:04d}.{sample.pulse % 10}0 kg\r\n".encode()
        self._printed = False
        if sample.state == "searching":
            return f"US,+{self.rng.randrange(20, 90):04d}.00 kg\r\n".encode()
        return b""


#: What `homehub simulate --serial` runs, and the config each needs.
ALL_SIMS: dict[str, type[DeviceSim]] = {
    sim.name: sim
    for sim in (ContecLegacySim, ContecV7Sim, NoninFormat2Sim, NoninFormat8Sim, ScaleLineSim)
}

#: The `[[devices]]` keys (besides id and port) that read each simulated device.
SIM_CONFIG: dict[str, dict[str, object]] = {
    "contec-cms50-legacy": {"driver": "serial.contec_cms50", "protocol": "legacy"},
    "contec-cms50-v7": {"driver": "serial.contec_cms50"},
    "nonin-df2": {"driver": "serial.nonin", "data_format": 2},
    "nonin-df8": {"driver": "serial.nonin", "data_format": 8},
    "scale-line": {
        "driver": "serial.line",
        "kind": "weight",
        "pattern": r"^ST,\+?(?P<weight>[0-9.]+) ?kg",
        "values": {"weight": {"code": "MDC_MASS_BODY_ACTUAL", "unit": "kg"}},
    },
}


@dataclass
class RunningSim:
    """One simulator on one pty; `run()` plays the scenario until it ends or is cancelled."""

    sim: DeviceSim
    link: PtyLink
    scenario: Scenario

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.link.appear()
        start = loop.time()
        period = 1.0 / self.sim.rate_hz
        tick = 0
        try:
            while True:
                self.sim.on_input(self.link.read())
                sample = self.scenario.at(loop.time() - start, tick)
                if sample is None:
                    return
                self.link.write(self.sim.bytes_for(sample))
                tick += 1
                # A device sends on its own clock: the schedule is the event here.
                await asyncio.sleep(max(0.0, start + tick * period - loop.time()))
        finally:
            self.link.vanish()


async def run_serial_simulators(
    directory: Path, names: Sequence[str] | None = None, scenario: Scenario | None = None
) -> None:
    """Run the named simulators (default: all), one pty each, symlinked in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start)
    running = [
        RunningSim(ALL_SIMS[name](), PtyLink(directory / name), scenario or demo_scenario())
        for name in (names or list(ALL_SIMS))
    ]
    async with asyncio.TaskGroup() as group:
        for item in running:
            group.create_task(item.run(), name=f"sim-{item.sim.name}")
