"""Is the hub's wall clock synchronised to a time server? (issue 13, part 2)

A Pi has no battery-backed clock: at boot fake-hwclock restores the time it last
saved, hours or days old, and the plausibility check (`clockcheck`) passes it. Only
the time synchronisation knows better. Both systemd-timesyncd and chrony tell the
kernel when they have synchronised the clock, so the kernel's NTP state is the
source: `adjtimex(2)` with no modes (read-only, no privilege needed) returns
TIME_ERROR and sets STA_UNSYNC in `status` while the clock is not synchronised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Protocol

#: adjtimex(2): the clock is not synchronised.
TIME_ERROR = 5
#: struct timex status bit: the clock is not synchronised (linux/timex.h).
STA_UNSYNC = 0x0040


class SyncSource(Protocol):
    """Where the hub learns whether its clock is synchronised."""

    name: str

    def synced(self) -> bool | None:
        """True or False; None when it cannot tell."""
        ...


class _Timex(ctypes.Structure):
    # The leading fields of struct timex are the same on every Linux ABI (int, then
    # longs); the rest differs with time_t, and the kernel writes all of it: room.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    )


class KernelSync:
    """The kernel's NTP synchronisation state (adjtimex(2))."""

    name = "kernel"

    def __init__(self) -> None:
        self._adjtimex = None
        library = ctypes.util.find_library("c")
        if library is not None:
            self._adjtimex = getattr(ctypes.CDLL(library, use_errno=True), "adjtimex", None)

    def synced(self) -> bool | None:
        if self._adjtimex is None:
            return None
        timex = _Timex()  # modes 0: read only
        state = self._adjtimex(ctypes.byref(timex))
        if state < 0:  # e.g. EPERM from a seccomp filter (see SystemSync)
            return None
        return state != TIME_ERROR and not timex.status & STA_UNSYNC


#: systemd-timesyncd creates this on each synchronisation (sd-timesyncd(8)); /run is
#: emptied at boot, so it means "synchronised since this boot".
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


class FileSync:
    """Synchronised while a file exists: systemd-timesyncd's flag file (it creates
    /run/systemd/timesync/synchronized on each synchronisation), or a test's."""

    name = "file"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def synced(self) -> bool | None:
        return os.path.exists(self.path)


class SystemSync:
    """The hub's default: the kernel, and systemd-timesyncd's flag where the kernel
    will not say.

    homehub.service has ProtectClock=yes, and systemd then filters the @clock system
    calls, adjtimex(2) included even when it only reads (EPERM). Raspberry Pi OS sets
    its clock with systemd-timesyncd, whose flag file says the same. Without either
    (chrony under the hardened unit) the hub cannot tell: None.
    """

    def __init__(self, kernel: SyncSource | None = None, flag: Path = TIMESYNCD_FLAG) -> None:
        self._kernel = kernel or KernelSync()
        self._flag = flag
        self.name = "kernel"

    def synced(self) -> bool | None:
        synced = self._kernel.synced()
        if synced is not None:
            self.name = "kernel"
            return synced
        if self._flag.parent.is_dir():  # timesyncd runs (its state directory exists)
            self.name = "systemd-timesyncd"
            return self._flag.exists()
        self.name = "none"
        return None
