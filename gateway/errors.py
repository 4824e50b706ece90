"""The exception hierarchy: everything homehub raises on purpose is a GatewayError."""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Root of every error homehub raises deliberately."""


class ConfigError(GatewayError):
    """The configuration is invalid; carries every problem found, each naming its field."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(GatewayError):
    """The durable store could not do what was asked."""


class StoreFullError(StoreError):
    """The disk (or the configured page limit) is full: the reading was NOT stored."""


class StoreCorruptError(StoreError):
    """SQLite found the store file damaged (SQLITE_CORRUPT, SQLITE_NOTADB, a failed check).

    The asyncio `Store` answers it by salvaging what it can into a fresh file.
    """


class DriverError(GatewayError):
    """A driver failed; the supervisor restarts it with backoff."""


class DecodeError(GatewayError):
    """Device bytes could not be decoded; never turned into a number."""


class UplinkError(GatewayError):
    """The MQTT uplink could not connect or lost its connection."""


class CarePlanError(GatewayError):
    """A care plan was refused (issue 10); nothing changed. Carries (field path, message)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.problems))
