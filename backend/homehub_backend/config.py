"""Configuration of homehub-backend, from TOML (backend/config/example.toml lists every key).

Validated like the hub's: unknown keys are errors, values must have the right TOML type,
every problem is reported at once naming its field (`broker.port: ...`), and the CLI exits 78
(EX_CONFIG) on any of them. Files named by the config must exist when it is read.
"""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, DirectoryPath, Field, FilePath, ValidationError
from pydantic_core import ErrorDetails

from homehub_backend.errors import ConfigError

EX_CONFIG = 78  # sysexits.h: configuration error
DEFAULT_CONFIG_PATH = Path("/etc/homehub-backend/backend.toml")

# The contract's id pattern (gateway ids, the share group): safe in a topic level.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# MQTT 5 §4.7: '+' and '#' are wildcards, §4.7.2: '$' starts the broker's own topics.
TOPIC_PREFIX_PATTERN = r"^[^#+/\x00$][^#+/\x00]*(/[^#+/\x00]+)*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class BrokerSection(_Section):
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(
        default_factory=lambda: f"homehub-backend-{socket.gethostname()}"[:128],
        min_length=1,
        max_length=128,
        description="Stable per worker: the broker keeps the worker's session under it.",
    )
    keepalive_s: int = Field(default=30, ge=1, le=65535)
    session_expiry_s: int = Field(
        default=86400,
        ge=60,
        le=4294967295,
        description="How long the broker keeps a disconnected worker's session and its "
        "unacknowledged messages (MQTT 5 §3.1.2.11.2).",
    )
    receive_maximum: int = Field(
        default=2000,
        ge=1,
        le=65535,
        description="Unacknowledged readings the broker may send at once (§3.1.2.11.3).",
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    username: str | None = Field(default=None, min_length=1)
    password_file: FilePath | None = None
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None


class IngestSection(_Section):
    topic_prefix: str = Field(default="homehub", pattern=TOPIC_PREFIX_PATTERN)
    share_group: str = Field(
        default="homehub-backend",
        pattern=ID_PATTERN,
        description="Workers with the same group split the readings (MQTT 5 §4.8.2).",
    )
    batch_max: int = Field(default=500, ge=1, le=10000)
    batch_wait_ms: float = Field(
        default=5.0, ge=0, le=1000, description="How long a batch waits to fill up."
    )
    max_payload_bytes: int = Field(default=65536, ge=1024, le=268435455)
    db_retry_min_s: float = Field(default=0.2, gt=0, le=3600)
    db_retry_max_s: float = Field(default=10.0, gt=0, le=3600)


class DatabaseSection(_Section):
    dsn: str = Field(
        min_length=1,
        description="libpq connection string or URI, without the password when "
        "password_file is given.",
    )
    password_file: FilePath | None = None
    connect_timeout_s: int = Field(default=5, ge=1, le=300)


class FleetSection(_Section):
    backlog_age_s: float = Field(
        default=900.0,
        gt=0,
        le=86400 * 30,
        description="A hub whose oldest unsent reading is older than this has a backlog.",
    )


class VerifySection(_Section):
    """Signed readings (issue 14 part 3, verify.py)."""

    certs_dir: DirectoryPath | None = Field(
        default=None,
        description="Directory of hub certificates, {gateway}.crt (PEM, one or more): a "
        "signed reading is verified against them.",
    )
    require_signature: bool = Field(
        default=False,
        description="Reject every reading without a valid signature (needs certs_dir).",
    )


class BackendConfig(_Section):
    broker: BrokerSection = Field(default_factory=BrokerSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    database: DatabaseSection
    fleet: FleetSection = Field(default_factory=FleetSection)
    verify: VerifySection = Field(default_factory=VerifySection)


def _field_path(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(file)"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (not an option here; check the spelling)"
    if kind == "missing":
        return "required, but missing"
    if kind == "path_not_file":
        return f"file not found or not a regular file: {error.get('input')}"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    if kind.endswith(("_type", "_parsing")) and "input" in error:
        written = json.dumps(error["input"], default=str)
        if len(written) <= 60:
            return f"{error['msg']}, got {written}"
    return error["msg"]


def validate_config(raw: Mapping[str, Any]) -> BackendConfig:
    """A validated config, or ConfigError listing every problem with its field path."""
    try:
        # strict=True keeps TOML types honest (`port = "1883"` is an error); paths are the
        # one place a TOML string must become something else.
        config = BackendConfig.model_validate(_paths(raw))
    except ValidationError as exc:
        raise ConfigError(
            [f"{_field_path(e['loc'])}: {_message(e)}" for e in exc.errors()]
        ) from None
    problems = cross_field_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def cross_field_problems(config: BackendConfig) -> list[str]:
    """Options that do not go together, each naming the field to fix."""
    b, i = config.broker, config.ingest
    problems = []
    if b.cert_file is not None and b.key_file is None:
        problems.append("broker.key_file: required with cert_file: give both or neither")
    if b.key_file is not None and b.cert_file is None:
        problems.append("broker.cert_file: required with key_file: give both or neither")
    if b.cert_file is not None and b.ca_file is None:
        problems.append("broker.ca_file: a client certificate needs TLS: give ca_file too")
    if b.password_file is not None and b.username is None:
        problems.append("broker.username: required with password_file")
    if b.reconnect_min_s > b.reconnect_max_s:
        problems.append(
            f"broker.reconnect_min_s: must not exceed reconnect_max_s ({b.reconnect_max_s})"
        )
    if config.verify.require_signature and config.verify.certs_dir is None:
        problems.append("verify.certs_dir: required with require_signature")
    if i.db_retry_min_s > i.db_retry_max_s:
        problems.append(
            f"ingest.db_retry_min_s: must not exceed db_retry_max_s ({i.db_retry_max_s})"
        )
    return problems


_PATH_KEYS = {
    "broker": ("password_file", "ca_file", "cert_file", "key_file"),
    "database": ("password_file",),
    "verify": ("certs_dir",),
}


def _paths(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for section, keys in _PATH_KEYS.items():
        table = out.get(section)
        if isinstance(table, Mapping):
            table = dict(table)
            for key in keys:
                if isinstance(table.get(key), str):
                    table[key] = Path(table[key])
            out[section] = table
    return out


def load_config(path: Path) -> BackendConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"(file): not valid TOML: {exc}"]) from None
    return validate_config(raw)


def read_secret(path: Path | None) -> str | None:
    """The first line of a password file (a trailing newline is not part of it)."""
    if path is None:
        return None
    return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
