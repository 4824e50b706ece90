"""`[[devices]]` managed remotely (issue 10): `devices/get`, `devices/set`.

The installer's file (`homehub.toml`) and the remote file (`{state_dir}/
remote-devices.json`) combine like this (README, "Remote devices"):

- the installer's devices always run, exactly as written: a remote table may not
  use an installer's id, so the care team can neither change nor remove a device
  the installer set up in the home (and `check-config` on the installer's file
  still tells the whole truth about those);
- the remote file adds devices of its own ids; `devices/set` replaces the remote
  list whole (declarative, so a retry or a replay gives the same result), and an
  empty list removes every remote device;
- should the installer later add an id the remote file also has, the installer's
  table wins and the remote one is skipped (a WARNING at start and reload).

Remote tables are validated exactly as `check-config` validates `[[devices]]`
(`gateway.config.validate_config`, every problem named as `args.devices[i].key`),
and nothing else of the config can be set remotely: `[gateway]`, `[mqtt]`,
`[store]`, `[ble]` and `[panel]` stay the installer's, so nothing said over MQTT
can cut the hub off its broker. Accepted tables are written atomically before
the reload path applies them (unchanged devices keep running).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.commands.persist import read_json, write_json_atomic
from gateway.commands.registry import FieldError, FieldProblem
from gateway.config import HubConfig, validate_config
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError

log = logging.getLogger(__name__)

REMOTE_FILE = "remote-devices.json"
REMOTE_SCHEMA = "homehub.remote-devices/1"
#: Remote devices at most (a hub in a home has a handful).
MAX_REMOTE_DEVICES = 32


def _installer_table(device: Any) -> dict[str, Any]:
    table: dict[str, Any] = device.model_dump(mode="json", exclude_none=True)
    return table


def _nulls(value: Any, path: str) -> list[FieldProblem]:
    """TOML has no null: a JSON null is not something check-config could ever accept."""
    if value is None:
        return [FieldProblem(path, "null is not a TOML value: leave the key out")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


class RemoteDevices:
    """The remote `[[devices]]` file and how it combines with the installer's config."""

    def __init__(self, state_dir: Path, registry: DriverRegistry) -> None:
        self.path = state_dir / REMOTE_FILE
        self.registry = registry

    def load(self) -> list[dict[str, Any]]:
        """The remote tables as last set ([] if none, or if the file is unusable)."""
        try:
            doc = read_json(self.path)
        except (OSError, ValueError) as exc:
            log.error("devices: %s unreadable (%s); no remote devices", self.path, exc)
            return []
        if doc is None:
            return []
        tables = doc.get("devices") if isinstance(doc, dict) else None
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            log.error("devices: %s is not %s; no remote devices", self.path, REMOTE_SCHEMA)
            return []
        return tables

    def _validate(self, tables: list[Any], installer: HubConfig) -> HubConfig:
        """The tables as check-config sees them; FieldError naming args.devices[i]."""
        problems: list[FieldProblem] = []
        installer_ids = {d.id for d in installer.devices}
        if len(tables) > MAX_REMOTE_DEVICES:
            problems.append(FieldProblem("args.devices", f"at most {MAX_REMOTE_DEVICES} devices"))
        for index, table in enumerate(tables):
            path = f"args.devices[{index}]"
            if not isinstance(table, dict):
                problems.append(FieldProblem(path, "must be an object (a [[devices]] table)"))
                continue
            problems.extend(_nulls(table, path))
            if table.get("id") in installer_ids:
                problems.append(
                    FieldProblem(
                        f"{path}.id",
                        "is one of the installer's devices (homehub.toml): it cannot be"
                        " changed or removed remotely",
                    )
                )
        if problems:
            raise FieldError(problems)
        data = {
            "gateway": {"id": installer.gateway.id, "state_dir": str(installer.gateway.state_dir)},
            "devices": tables,
        }
        try:
            return validate_config(data, self.registry)
        except ConfigError as exc:
            raise FieldError(
                [_field_problem(problem) for problem in exc.problems],
                message=f"{len(exc.problems)} problem(s) in the [[devices]] tables",
            ) from None

    def merge(self, installer: HubConfig) -> HubConfig:
        """The installer's config with the remote devices added (see the module's rules)."""
        tables = self.load()
        if not tables:
            return installer
        installer_ids = {d.id for d in installer.devices}
        shadowed = [t.get("id") for t in tables if t.get("id") in installer_ids]
        if shadowed:
            log.warning(
                "devices: %d remote device(s) use an id of the installer's file, which wins: %s",
                len(shadowed),
                ", ".join(str(s) for s in shadowed),
            )
        tables = [t for t in tables if t.get("id") not in installer_ids]
        try:
            remote = self._validate(tables, installer)
        except FieldError as exc:
            # A driver uninstalled since, say: never stop the hub over the remote file.
            log.error(
                "devices: %s is no longer valid (%s); running the installer's devices only",
                self.path,
                ", ".join(p.path.removeprefix("args.") for p in exc.problems),
            )
            return installer
        return installer.model_copy(update={"devices": [*installer.devices, *remote.devices]})

    # -- the commands ----------------------------------------------------------------

    def get(self, installer: HubConfig) -> dict[str, Any]:
        return {
            "installer": [_installer_table(d) for d in installer.devices],
            "remote": self.load(),
            "max_remote": MAX_REMOTE_DEVICES,
        }

    async def set(
        self,
        args: dict[str, Any],
        installer: HubConfig,
        apply: Callable[[], Awaitable[HubConfig]],
    ) -> dict[str, Any]:
        unknown = sorted(set(args) - {"devices"})
        if unknown:
            raise FieldError([FieldProblem(f"args.{key}", "unknown key") for key in unknown])
        tables = args.get("devices")
        if not isinstance(tables, list):
            raise FieldError.at("args.devices", "required: a list of [[devices]] tables")
        self._validate(tables, installer)
        # Durable before anything acts on it (and before the response says ok).
        write_json_atomic(self.path, {"schema": REMOTE_SCHEMA, "devices": tables})
        running = await apply()
        return {
            "remote": [t["id"] for t in tables],
            "running": [d.id for d in running.devices],
        }


def _field_problem(problem: str) -> FieldProblem:
    """`devices[1].port: message` (check-config's wording) as args.devices[1].port."""
    where, _, message = problem.partition(": ")
    if not message:
        return FieldProblem("args.devices", problem)
    if where.startswith("devices"):
        return FieldProblem(f"args.{where}", message)
    return FieldProblem("args.devices", problem)
