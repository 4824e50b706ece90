"""A pseudo-terminal standing in for a serial cable, reachable through a stable symlink.

The simulator holds the master side; the hub opens the slave through the
symlink (`port = "DIR/name"`), as it would open /dev/serial/by-id/... . The
simulator also keeps the slave open, so the pty survives the hub closing and
reopening it, and puts the slave in raw mode, so nothing is echoed back or
translated. `vanish()` and `appear()` imitate a cable pulled and plugged back:
the pty goes away (the hub's reads fail) and a new one takes the same name.
"""

from __future__ import annotations

import contextlib
import os
import tty
from pathlib import Path


class PtyLink:
    def __init__(self, link: Path) -> None:
        self.link = link
        self._master: int | None = None
        self._slave: int | None = None

    def appear(self) -> None:
        """Create the pty and (re)point the symlink at it."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link.with_name(f".{self.link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        os.replace(tmp, self.link)  # atomic: the name never dangles half-made

    def vanish(self) -> None:
        """Remove the pty and its name, as a pulled USB cable does."""
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def write(self, data: bytes) -> None:
        if self._master is None or not data:
            return
        # A device does not wait for its reader: what the pty cannot take is lost.
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    def read(self) -> bytes:
        """What the hub wrote (commands), without waiting."""
        if self._master is None:
            return b""
        try:
            return os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return b""
