"""The exception hierarchy: everything homehub-backend raises on purpose is a BackendError."""

from __future__ import annotations

from collections.abc import Sequence


class BackendError(Exception):
    """Root of every error homehub-backend raises deliberately."""


class ConfigError(BackendError):
    """The configuration is invalid; carries every problem found, each naming its field."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DatabaseError(BackendError):
    """PostgreSQL could not do what was asked (down, refused, schema missing)."""
