"""The backend contract of homehub: what a hub and its backend share, and nothing else.

Both distributions depend on this one (``homehub`` on the Pi, ``homehub-backend`` on the care
team's server), so neither imports the other's internals: the JSON Schemas of every message,
their names, and the MQTT topics they travel on (ARCHITECTURE.md, "MQTT contract").

Versioning: a message's schema name carries its major version (``homehub.reading/1``). Fields
may be added to a version, never removed or changed in meaning; consumers ignore unknown fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

__all__ = [
    "COMMAND_SCHEMA",
    "CONFIRM_SCHEMA",
    "MAX_COMMAND_BYTES",
    "MAX_CONFIRM_IDS",
    "READING_SCHEMA",
    "RESPONSE_SCHEMA",
    "SIGNATURE_PROPERTY",
    "STATUS_SCHEMA",
    "command_filter",
    "command_topic",
    "compiled_validator",
    "confirm_topic",
    "load_schema",
    "reading_topic",
    "readings_filter",
    "response_filter",
    "response_topic",
    "status_filter",
    "status_topic",
    "validator",
]

READING_SCHEMA = "homehub.reading/1"
STATUS_SCHEMA = "homehub.status/1"
CONFIRM_SCHEMA = "homehub.confirm/1"
COMMAND_SCHEMA = "homehub.command/1"
RESPONSE_SCHEMA = "homehub.response/1"

# confirm-1.json's maxItems: a confirmation stays far below any broker's packet limit.
MAX_CONFIRM_IDS = 1000
# Issue 14: the MQTT 5 User Property (§3.3.2.3.7) carrying a signed reading's detached
# compact JWS (RFC 7515 Appendix F, ES256) over the PUBLISH payload's exact bytes.
SIGNATURE_PROPERTY = "jws"
# A command's payload, at most (command-1.json): a hub answers a larger one "too_large".
MAX_COMMAND_BYTES = 65536


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``<name>.json`` shipped here: ``reading-1``, ``status-1``, ``confirm-1``,
    ``command-1``, ``response-1``."""
    text = resources.files(__package__).joinpath("schemas", f"{name}.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """A ready Draft 2020-12 validator for ``<name>.json`` (built once per process).

    jsonschema is imported here, not with the module: it and its referencing stack are
    ~3.4 MiB of a hub's resident memory, and the hub validates on its hot paths with
    `compiled_validator` instead (bench/README.md, rss).
    """
    import jsonschema

    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    checker: jsonschema.protocols.Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return checker


#: What `compiled_validator` declares instead of 2020-12: fastjsonschema implements draft-07,
#: and the contract's schemas use only keywords that mean the same in both (a test checks).
DRAFT_07 = "http://json-schema.org/draft-07/schema#"


@cache
def compiled_validator(name: str, *path: str) -> Callable[[Any], Any]:
    """``<name>.json`` compiled to Python by fastjsonschema (built once per process).

    With `path`, the rule at that path of keys only (e.g. ``"properties",
    "confirmed_at"``). The function returns the document or raises
    `fastjsonschema.JsonSchemaValueException` (its ``rule`` names the failing keyword,
    its ``path`` where). About 20 µs a reading against ~360 µs for `validator`, and
    ~0.1 MiB of memory against ~3.4 MiB. Formats are checked (`date-time`), which
    `validator` skips without jsonschema's optional rfc3339 package: this one is the
    stricter of the two.
    """
    import fastjsonschema

    schema: dict[str, Any] = load_schema(name)
    for key in path:
        schema = schema[key]
    schema = {**schema, "$schema": DRAFT_07}
    compiled: Callable[[Any], Any] = fastjsonschema.compile(schema, use_formats=True)
    return compiled


def reading_topic(prefix: str, gateway_id: str, device_id: str) -> str:
    """hub → backend, QoS 1, not retained: ``homehub.reading/1``."""
    return f"{prefix}/{gateway_id}/readings/{device_id}"


def status_topic(prefix: str, gateway_id: str) -> str:
    """hub → backend, QoS 1, retained (and the Last Will): ``homehub.status/1``."""
    return f"{prefix}/{gateway_id}/status"


def confirm_topic(prefix: str, gateway_id: str) -> str:
    """backend → hub, QoS 1, not retained: ``homehub.confirm/1``."""
    return f"{prefix}/{gateway_id}/confirm"


def readings_filter(prefix: str) -> str:
    """Every hub's readings under a prefix (a backend's subscription)."""
    return f"{prefix}/+/readings/#"


def status_filter(prefix: str) -> str:
    """Every hub's status under a prefix."""
    return f"{prefix}/+/status"


def command_topic(prefix: str, gateway_id: str, name: str) -> str:
    """backend → hub, QoS 1, Response Topic + Correlation Data: ``homehub.command/1``."""
    return f"{prefix}/{gateway_id}/command/{name}"


def command_filter(prefix: str, gateway_id: str) -> str:
    """Every command to one hub (the hub's subscription)."""
    return f"{prefix}/{gateway_id}/command/#"


def response_topic(prefix: str, gateway_id: str, token: str) -> str:
    """hub → backend, QoS 1: ``homehub.response/1``. A hub answers only on topics under
    ``{prefix}/{gateway}/response/`` (the fleet ACL lets it publish nowhere else)."""
    return f"{prefix}/{gateway_id}/response/{token}"


def response_filter(prefix: str, gateway_id: str = "+") -> str:
    """The responses of one hub, or of every hub (``+``)."""
    return f"{prefix}/{gateway_id}/response/#"
