"""What the Contec and Nonin drivers share: samples -> session -> Reading -> emit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

from gateway import mdc
from gateway.drivers.serial.base import GarbageMonitor, SerialDriver
from gateway.drivers.serial.framing import DecoderStats
from gateway.drivers.serial.options import OximeterOptions
from gateway.drivers.serial.port import SerialPort
from gateway.drivers.serial.session import OxiResult, OxiSample, SessionAggregator
from gateway.mdc import Ucum
from gateway.reading import Kind, Reading, Value


class OxiDecoder(Protocol):
    stats: DecoderStats

    def feed(self, data: bytes) -> list[OxiSample]: ...


class OximeterDriver(SerialDriver):
    """A streaming pulse oximeter on a serial port."""

    _aggregator: SessionAggregator | None = None

    @property
    def aggregator(self) -> SessionAggregator:
        if self._aggregator is None:
            options = self.options
            assert isinstance(options, OximeterOptions)
            self._aggregator = SessionAggregator(
                mode=options.mode,
                window_s=options.window_s,
                max_session_s=options.max_session_s,
                interval_s=options.interval_s,
            )
        return self._aggregator

    def port_lost(self) -> None:
        # A session cut by a pulled cable is not a measurement: no reading from it.
        self.aggregator.reset()

    async def pump(
        self,
        port: SerialPort,
        decoder: OxiDecoder,
        *,
        until: Callable[[], bool] | None = None,
        periodic: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Read, decode, aggregate and emit until `until()` is true (or forever)."""
        loop = asyncio.get_running_loop()
        monitor = GarbageMonitor(decoder.stats, loop.time())
        aggregator = self.aggregator
        log = self.context.logger
        while until is None or not until():
            data = await port.read()
            now = loop.time()
            results: list[OxiResult] = []
            too_short = aggregator.too_short
            for sample in decoder.feed(data) if data else ():
                was_active = aggregator.active
                results.extend(aggregator.feed(now, sample))
                if aggregator.active and not was_active:
                    log.info("device %s: finger in, measuring", self.options.id)
            results.extend(aggregator.tick(now))
            if aggregator.too_short > too_short:
                log.info(
                    "device %s: measurement ended before %.0f s of steady signal: no reading",
                    self.options.id,
                    aggregator.window_s,
                )
            for result in results:
                await self._emit(result, loop.time())
            verdict = monitor.check(now)
            if verdict is not None:
                self._garbage_verdict(*verdict)
            if periodic is not None:
                await periodic()

    def _garbage_verdict(self, bad: bool, total: int, unknown: int) -> None:
        stats = self.decoder_stats()
        self.context.logger.debug(
            "device %s: %d bytes, %d unrecognised; totals: %s",
            self.options.id,
            total,
            unknown,
            stats,
        )
        if bad:
            self.set_problem(
                f"receiving data but {unknown} of {total} bytes in {self.protocol_name} are not "
                "valid frames: wrong baud rate, wrong driver or wrong port?"
            )
        elif self._problem is not None and self._problem.startswith("receiving data"):
            self.set_problem(None)

    def decoder_stats(self) -> DecoderStats | None:
        return None

    async def _emit(self, result: OxiResult, now: float) -> None:
        options = self.options
        measured_at = self.context.clock.now() - timedelta(seconds=max(0.0, now - result.at))
        reading = Reading(
            device_id=options.id,
            driver=options.driver,
            kind=Kind.PULSE_OXIMETER,
            measured_at=measured_at,
            measured_at_source="hub",
            values=(
                Value.of(mdc.PULS_OXIM_SAT_O2, result.spo2, Ucum.PERCENT),
                Value.of(mdc.PULS_OXIM_PULS_RATE, result.pulse, Ucum.PER_MIN),
            ),
            status=result.status,
        )
        stored = await self.context.emit(reading)
        # The count of samples is not a patient value; the values are, so DEBUG only.
        self.context.logger.info(
            "device %s: reading stored (%d samples)", options.id, result.samples
        )
        self.context.logger.debug(
            "device %s: reading %s: SpO2 %.1f %%, pulse %.1f /min",
            options.id,
            stored.id,
            result.spo2,
            result.pulse,
        )
