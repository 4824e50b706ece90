"""The hub's own commands (issue 10): `status` and `identify`.

`devices/get` and `devices/set` are in gateway.commands.devices; the daemon wires
all of them to the running hub (gateway/daemon.py, `Hub._register_commands`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.commands.registry import FieldError, FieldProblem
from gateway.reading import utc_iso_ms

#: identify's `seconds`: default and bounds (an installer looking for the box).
IDENTIFY_DEFAULT_S = 30
IDENTIFY_MAX_S = 300


def _no_extra(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise FieldError([FieldProblem(f"args.{key}", "unknown key") for key in unknown])


def status_command(
    document: Callable[[], Awaitable[dict[str, Any]]],
) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """`status`: the full `homehub.status/1` document, now."""

    async def status(args: dict[str, Any]) -> dict[str, Any]:
        _no_extra(args, set())
        return await document()

    return status


def identify_command(
    show: Callable[[float], None],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`identify {"seconds": N}`: "here I am" on the panel for N s (1..300, default 30);
    0 ends it early."""

    def identify(args: dict[str, Any]) -> dict[str, Any]:
        _no_extra(args, {"seconds"})
        seconds = args.get("seconds", IDENTIFY_DEFAULT_S)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise FieldError.at("args.seconds", "must be a number of seconds")
        if not 0 <= seconds <= IDENTIFY_MAX_S:
            raise FieldError.at("args.seconds", f"must be from 0 to {IDENTIFY_MAX_S}")
        show(float(seconds))
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        return {"seconds": seconds, "until": utc_iso_ms(until) if seconds else None}

    return identify
