"""sd_notify(3) in a few lines: READY, WATCHDOG, STOPPING and STATUS for systemd.

The protocol is one datagram of newline-separated `KEY=value` pairs to the
AF_UNIX socket named in $NOTIFY_SOCKET; a name starting with '@' is in the
abstract namespace (sd_notify(3), "NOTIFY_SOCKET"). Not worth a dependency.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Talks to the service manager; silently does nothing when not run by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self._watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        # sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be our pid.
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_s = int(usec) / 1_000_000
        self._socket: socket.socket | None = None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often systemd wants WATCHDOG=1 at the latest, or None."""
        return self._watchdog_s

    def notify(self, *fields: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")
