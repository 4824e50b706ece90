"""Logging for journald and terminals.

Under systemd (JOURNAL_STREAM set) lines carry a syslog priority prefix (`<3>`)
and no timestamp of their own: journald adds both the time and the level.
On a terminal, lines get a timestamp. Patient values and identifiers are never
logged at INFO or above (see the project's logging rule in the README).
"""

from __future__ import annotations

import logging
import os
import sys

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`, as sd-daemon(3) describes for stderr logging."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncio is chatty at DEBUG (every slow callback); keep it at WARNING.
    logging.getLogger("asyncio").setLevel(max(logging.WARNING, root.level))
