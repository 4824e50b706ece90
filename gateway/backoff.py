"""Exponential backoff with jitter, using tenacity's own wait strategy for the math.

One object per thing that retries (a driver, the broker connection, a refused
device topic): `next_delay()` after each failure, `reset()` after a success.
"""

from __future__ import annotations

from tenacity import RetryCallState, Retrying, wait_exponential_jitter


class Backoff:
    def __init__(self, initial_s: float, maximum_s: float, jitter_s: float | None = None) -> None:
        # Jitter spreads 10,000 hubs reconnecting after a broker outage over time
        # instead of having them all knock at once.
        self._wait = wait_exponential_jitter(
            multiplier=initial_s,
            max=maximum_s,
            jitter=initial_s if jitter_s is None else jitter_s,
        )
        self._state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        self._state.attempt_number = 0
        self.maximum_s = maximum_s

    @property
    def failures(self) -> int:
        return self._state.attempt_number

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before trying again."""
        self._state.attempt_number += 1
        return min(self.maximum_s, float(self._wait(self._state)))

    def reset(self) -> None:
        self._state.attempt_number = 0
