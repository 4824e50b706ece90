"""Is the hub's wall clock plausible?

A Pi has no battery-backed clock: until NTP answers it runs from the last time
saved at shutdown (fake-hwclock) or from 1970. A reading stamped by such a
clock would be filed at the wrong time in the patient's record, so the hub
says so (status, panel "needs help") instead of keeping quiet.
"""

from __future__ import annotations

from datetime import UTC, datetime

#: No real clock shows a time before this build was made.
EARLIEST_PLAUSIBLE = datetime(2026, 11, 1, tzinfo=UTC)
#: ... or a time this far in the future.
LATEST_PLAUSIBLE = datetime(2100, 1, 1, tzinfo=UTC)


def clock_problem(now: datetime) -> str | None:
    """Why `now` cannot be right, or None when it is plausible."""
    if now < EARLIEST_PLAUSIBLE:
        return f"the clock says {now:%Y-%m-%d}, before this software was built"
    if now > LATEST_PLAUSIBLE:
        return f"the clock says {now:%Y-%m-%d}, far in the future"
    return None
