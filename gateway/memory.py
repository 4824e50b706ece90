"""Hands the heap's free pages back to the kernel (glibc `malloc_trim`).

Starting the hub allocates and frees a few MiB with malloc (the config's TOML and
pydantic validation, the schemas compiled, a drained backlog's messages); glibc keeps
freed memory in the process for reuse, so the hub's resident size stays at its
high-water mark. On a Pi Zero 2 W (512 MB, shared with BlueZ and the rest) that is
memory lost to everything else. `malloc_trim(0)` returns what is free: ~1.7 MiB of
the demo hub's ~47 MiB at start (bench/README.md, rss). It costs a few milliseconds
(4 ms after freeing 20 MB here) and changes nothing but the resident size.

Elsewhere than glibc (musl has no `malloc_trim`) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)

#: The first trim: once the hub has started its drivers and uplink (their start-up
#: garbage is free by then), then every TRIM_INTERVAL_S (after a drained backlog).
FIRST_TRIM_S = 10.0
TRIM_INTERVAL_S = 300.0


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        # The process's own symbols, libc's among them: no `find_library`, which runs
        # ldconfig in a subprocess.
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        log.debug("no malloc_trim in this C library; the heap is not trimmed")
        return None
    return trim


def release_free_heap() -> bool:
    """Return the heap's free pages to the kernel; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
