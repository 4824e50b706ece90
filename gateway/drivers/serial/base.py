"""The serial drivers' common loop: open the port, pump bytes, reopen with backoff.

A vanished port (cable pulled, USB re-enumerated) is reported to the hub's
status and retried with exponential backoff and jitter (gateway.backoff, which
uses tenacity's wait strategy), from `reopen_min_s` up to `reopen_max_s`. A
port that delivers mostly bytes the protocol does not recognise (a wrong baud
rate, a wrong driver or port) is reported too, with counts, never with values.
"""

from __future__ import annotations

import abc
import asyncio

from gateway.backoff import Backoff
from gateway.drivers.base import Driver
from gateway.drivers.serial.framing import DecoderStats
from gateway.drivers.serial.options import SerialOptions
from gateway.drivers.serial.port import LineSettings, PortLost, SerialPort

#: Length of the window over which garbage is judged.
GARBAGE_WINDOW_S = 5.0
#: Fewer bytes than this in a window are too few to judge (a device waking up).
GARBAGE_MIN_BYTES = 64
#: More than this share of unrecognised bytes in a window is a bad window.
GARBAGE_RATIO = 0.5
#: Bad windows in a row that are reported.
BAD_WINDOWS = 2


class GarbageMonitor:
    """Judges the share of unrecognised bytes per window; says when the verdict changes.

    "Bad" takes BAD_WINDOWS windows in a row: a burst of noise from a replug is
    not a wrong baud rate. "Good" takes one.
    """

    def __init__(self, stats: DecoderStats, now: float) -> None:
        self.stats = stats
        self._start = now
        self._bytes = stats.bytes_in
        self._frame_bytes = stats.frame_bytes
        self._bad_windows = 0
        self.bad = False

    def check(self, now: float) -> tuple[bool, int, int] | None:
        """Every window: (bad?, bytes, unrecognised bytes) if the verdict changed, else None."""
        if now - self._start < GARBAGE_WINDOW_S:
            return None
        total = self.stats.bytes_in - self._bytes
        framed = self.stats.frame_bytes - self._frame_bytes
        self._start, self._bytes = now, self.stats.bytes_in
        self._frame_bytes = self.stats.frame_bytes
        if total < GARBAGE_MIN_BYTES:
            return None
        window_bad = (total - framed) / total > GARBAGE_RATIO
        self._bad_windows = self._bad_windows + 1 if window_bad else 0
        bad = self._bad_windows >= BAD_WINDOWS if window_bad else False
        if bad == self.bad:
            return None
        self.bad = bad
        return bad, total, total - framed


class SerialDriver(Driver):
    """Opens `options.port` and runs `session` on it; reopens it with backoff when it goes."""

    @property
    def protocol_name(self) -> str:
        return "serial"

    _problem: str | None = None

    @abc.abstractmethod
    def first_settings(self) -> LineSettings:
        """Line settings to open the port with."""

    @abc.abstractmethod
    async def session(self, port: SerialPort) -> None:
        """Talk to the device until the port is lost (raise PortLost) or cancelled."""

    def port_lost(self) -> None:
        """Hook: the stream broke off (drop partial state)."""

    def set_problem(self, problem: str | None) -> None:
        """Show a lasting problem in the hub's status (None: it is over); log changes."""
        if problem == self._problem:
            return
        log = self.context.logger
        if problem is None:
            log.info("device %s: recovered (%s)", self.options.id, self._problem)
        else:
            log.warning("device %s: %s", self.options.id, problem)
        self._problem = problem
        self.context.report(problem)

    async def run(self) -> None:
        options = self.options
        assert isinstance(options, SerialOptions)
        backoff = Backoff(options.reopen_min_s, options.reopen_max_s)
        log = self.context.logger
        while True:
            try:
                port = await SerialPort.open(options.port, self.first_settings())
            except PortLost as exc:
                delay = backoff.next_delay()
                if self._problem is None or "cannot open" not in self._problem:
                    self.set_problem(str(exc))
                log.debug(
                    "device %s: open attempt %d failed; retrying in %.1f s",
                    options.id,
                    backoff.failures,
                    delay,
                )
                await asyncio.sleep(delay)  # the backoff itself: nothing to await instead
                continue
            backoff.reset()
            # The port path (by-id paths hold the adapter's serial number) at DEBUG only.
            log.info("device %s: port open (%s)", options.id, self.protocol_name)
            log.debug("device %s: port %s", options.id, options.port)
            self.set_problem(None)
            try:
                async with port:
                    await self.session(port)
            except PortLost as exc:
                self.port_lost()
                delay = backoff.next_delay()
                self.set_problem(f"port lost ({exc})")
                log.debug("device %s: reopening in %.1f s", options.id, delay)
                await asyncio.sleep(delay)
