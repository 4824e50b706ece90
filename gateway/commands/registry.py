"""The command registry (issue 10): name -> handler, one line per command.

A handler gets the request's validated-as-an-object `args` and returns the result
(a JSON object), or raises `FieldError` naming what is wrong (nothing changed). It
may be a plain function or a coroutine function. `mutates` says whether it changes
state the hub keeps: its ok response is then persisted with its request id (a
retry after a restart gets the first response, without applying again); a
read-only command's response is remembered in memory only (no SD-card write per
`status`).

The care plan (gateway/careplan/) plugs in with:

    hub.commands.register("care-plan/get", plan.get)
    hub.commands.register("care-plan/set", plan.set, mutates=True)

A handler must persist what it accepts atomically (gateway.commands.persist.
write_json_atomic) before it returns: the ok response goes out only after that.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

Result = dict[str, Any]
Handler = Callable[[dict[str, Any]], Result | Awaitable[Result]]

#: Command names: topic levels of letters, digits, '-' and '_' (e.g. devices/set).
NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,32}(/[a-z0-9_-]{1,32}){0,3}$")


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One thing wrong with a request: the field's path (`args.devices[1].port`) and why."""

    path: str
    message: str


class FieldError(ValueError):
    """A command's arguments are invalid; nothing was changed."""

    def __init__(self, problems: list[FieldProblem] | FieldProblem, message: str = "") -> None:
        self.problems = [problems] if isinstance(problems, FieldProblem) else list(problems)
        self.message = message or f"{len(self.problems)} invalid field(s)"
        super().__init__(self.message)

    @classmethod
    def at(cls, path: str, message: str) -> FieldError:
        return cls(FieldProblem(path, message), message=f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    handler: Handler
    mutates: bool

    async def run(self, args: dict[str, Any]) -> Result:
        result = self.handler(args)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, dict):
            raise TypeError(f"command {self.name} returned {type(result).__name__}, not a dict")
        return result


class CommandRegistry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def register(self, name: str, handler: Handler, *, mutates: bool = False) -> None:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"not a command name: {name!r}")
        if name in self._commands:
            raise ValueError(f"command {name!r} is already registered")
        self._commands[name] = Command(name, handler, mutates)

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def __contains__(self, name: object) -> bool:
        return name in self._commands
