"""From a stream of oximeter samples to readings: one per finger-on session, or one per interval.

Pure and clock-free: the caller passes the time of each sample (monotonic
seconds) and calls `tick` when nothing arrives, so the tests can replay any
timeline without sleeping.

A sample is *valid* when the device gave both values and no finger-out or
sensor-off flag; decoders turn the devices' missing-value markers (SpO2 127,
pulse 255 or 511, zeros while acquiring) into None, so a marker can never
reach a median. Quality flags (perfusion, artifact) seen in the samples that
make a reading go into its `status`.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

#: Valid samples further apart than this do not make one continuous signal
#: (Nonin format #8 sends one sample a second; Contec 60).
MAX_GAP_S = 2.5


@dataclass(frozen=True, slots=True)
class OxiSample:
    """One decoded oximeter sample. None means "the device has no value now"."""

    spo2: int | None
    pulse: int | None
    finger_out: bool = False
    flags: frozenset[str] = frozenset()

    @property
    def valid(self) -> bool:
        return self.spo2 is not None and self.pulse is not None and not self.finger_out


@dataclass(frozen=True, slots=True)
class OxiResult:
    """What the aggregator decided to report."""

    spo2: float
    pulse: float
    at: float  # time of the last sample it covers (same clock as the samples)
    samples: int
    status: tuple[str, ...]


@dataclass(slots=True)
class _Timed:
    t: float
    sample: OxiSample


@dataclass
class SessionAggregator:
    """Spot or continuous aggregation of one device's samples.

    A session is a continuous valid signal: it starts with the first valid
    sample and ends at a finger-out sample or when no valid sample came for
    MAX_GAP_S. Spot mode reports, at the end (or after max_session_s), the
    median over the last window_s, and only if the signal lasted that long
    (steady). Continuous mode reports every interval_s the median over the
    last min(window_s, interval_s) seconds while a session runs.
    """

    mode: Literal["spot", "continuous"] = "spot"
    window_s: float = 10.0
    max_session_s: float = 60.0
    interval_s: float = 60.0
    # Counters, for logs and tests.
    sessions: int = 0
    too_short: int = 0
    _run: deque[_Timed] = field(default_factory=deque)
    _start: float | None = None  # first valid sample of this session
    _last_valid: float | None = None
    _done: bool = False  # spot: reading made, waiting for the finger to come out
    _next_emit: float = 0.0

    @property
    def active(self) -> bool:
        return self._start is not None

    @property
    def _span(self) -> float:
        return self.window_s if self.mode == "spot" else min(self.window_s, self.interval_s)

    def feed(self, t: float, sample: OxiSample) -> list[OxiResult]:
        """Add one sample received at time t; return the readings it completes."""
        out = self.tick(t)
        if sample.finger_out:
            out.extend(self._end())
            return out
        if not sample.valid:
            return out  # searching, artifact, a missing value: not a value, not an end
        if self._start is None:
            self._start = t
            self._done = False
            self.sessions += 1
            self._next_emit = t + self.interval_s
        self._last_valid = t
        if self._done:
            return out
        self._run.append(_Timed(t, sample))
        while self._run and self._run[0].t < t - self._span:
            self._run.popleft()
        out.extend(self.tick(t))
        return out

    def tick(self, t: float) -> list[OxiResult]:
        """Time passes without samples: end a silent session, make due readings."""
        if self._start is None or self._last_valid is None:
            return []
        if t - self._last_valid > MAX_GAP_S:
            return self._end()
        if self.mode == "spot":
            if not self._done and t - self._start >= self.max_session_s:
                result = self._result()
                self._done = True
                self._run.clear()
                return [result] if result is not None else []
            return []
        if t < self._next_emit:
            return []
        missed = int((t - self._next_emit) // self.interval_s)
        self._next_emit += self.interval_s * (missed + 1)
        result = self._result(require_steady=False)
        return [result] if result is not None else []

    def reset(self) -> None:
        """The stream is gone (port lost): drop the session without a reading."""
        self._run.clear()
        self._start = None
        self._last_valid = None
        self._done = False

    def _end(self) -> list[OxiResult]:
        out: list[OxiResult] = []
        if self._start is not None and self.mode == "spot" and not self._done:
            result = self._result()
            if result is None:
                self.too_short += 1
            else:
                out.append(result)
        self.reset()
        return out

    def _result(self, *, require_steady: bool = True) -> OxiResult | None:
        if not self._run or self._start is None:
            return None
        last = self._run[-1].t
        # Steady: the continuous valid signal covers the whole window.
        if require_steady and last - self._start < self._span - 1e-9:
            return None
        window = [x.sample for x in self._run]
        spo2 = [s.spo2 for s in window if s.spo2 is not None]
        pulse = [s.pulse for s in window if s.pulse is not None]
        flags: set[str] = set()
        for s in window:
            flags |= s.flags
        return OxiResult(
            spo2=float(statistics.median(spo2)),
            pulse=float(statistics.median(pulse)),
            at=last,
            samples=len(window),
            status=tuple(sorted(flags)),
        )
