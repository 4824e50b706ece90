"""Configuration: the installer contract of ARCHITECTURE.md, loaded from TOML.

Unknown keys are errors (an installer's typo must never be silently ignored).
Every problem is collected and reported at once, each naming its field
(`devices[1].interval_s: ...`); the CLI exits 78 (EX_CONFIG) on any of them.
Each driver validates its own keys: the `[[devices]]` tables are a union
discriminated by `driver`, built from the registered drivers' option models.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from gateway.drivers.base import ID_PATTERN, DriverOptions
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError
from gateway.identity import secret_file_problem

log = logging.getLogger(__name__)

EX_CONFIG = 78  # sysexits.h: configuration error
DEFAULT_CONFIG_PATH = Path("/etc/homehub/homehub.toml")

# MQTT 5 §4.7: '+' and '#' are wildcards and may not appear in a topic name;
# §4.7.2: topics starting with '$' are the broker's own ($SYS).
TOPIC_PREFIX_PATTERN = r"^[^#+/\x00$][^#+/\x00]*(/[^#+/\x00]+)*$"

#: Error type of the cross-field checks below. `validate_config` runs the same
#: checks on the raw TOML (so they are reported even when other fields of the
#: same section are wrong) and so drops these when the model raises them too.
_CROSS_FIELD = "homehub_cross_field"

_PATTERN_HELP = {
    ID_PATTERN: "only letters A-Z a-z, digits, '_' and '-', 1 to 64 characters",
    TOPIC_PREFIX_PATTERN: "no '+', '#', leading '$', empty level or leading/trailing '/'",
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mqtt_cross_field_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for option combinations that do not go together.

    Works on the raw `[mqtt]` table as well as on a validated section (TOML has
    no null, so "given" means present and not None in both).
    """

    def given(key: str) -> bool:
        return values.get(key) is not None

    problems: list[tuple[str, str]] = []
    if given("cert_file") and not given("key_file"):
        problems.append(("key_file", "required with cert_file: give both or neither"))
    if given("key_file") and not given("cert_file"):
        problems.append(("cert_file", "required with key_file: give both or neither"))
    if given("cert_file") and not given("ca_file"):
        problems.append(("ca_file", "a client certificate needs TLS: give ca_file too"))
    if given("password_file") and not given("username"):
        problems.append(("username", "required with password_file"))
    if values.get("sign") is True and not (given("key_file") and given("cert_file")):
        # Issue 14: the signature is made with the hub's own key, named by its certificate.
        problems.append(
            ("sign", "needs the hub's key_file and cert_file (homehub provision, docs/INSTALL.md)")
        )
    fields = MqttSection.model_fields
    low = values.get("reconnect_min_s", fields["reconnect_min_s"].default)
    high = values.get("reconnect_max_s", fields["reconnect_max_s"].default)
    if _is_number(low) and _is_number(high) and low > high:
        problems.append(("reconnect_min_s", f"must not exceed reconnect_max_s ({high})"))
    return problems


def duplicate_device_ids(devices: Sequence[object]) -> list[str]:
    """One problem per `[[devices]]` table that reuses an earlier table's id."""
    seen: dict[str, int] = {}
    problems = []
    for index, device in enumerate(devices):
        if not isinstance(device, Mapping):
            continue
        device_id = device.get("id")
        if not isinstance(device_id, str):
            continue
        if device_id in seen:
            problems.append(
                f"devices[{index}].id: duplicate id {device_id!r} (also devices[{seen[device_id]}])"
            )
        else:
            seen[device_id] = index
    return problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GatewaySection(_Section):
    id: str = Field(pattern=ID_PATTERN, description="Hub id, used in MQTT topics.")
    state_dir: Path = Field(
        default=Path("/var/lib/homehub"), description="Where the reading store lives."
    )


class MqttSection(_Section):
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = Field(
        default="homehub",
        pattern=TOPIC_PREFIX_PATTERN,
        description="First topic level(s); no wildcards, no leading '$', "
        "no leading or trailing '/'.",
    )
    client_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="Default: homehub-{gateway.id}."
    )
    keepalive_s: int = Field(default=30, ge=1, le=65535)
    max_inflight: int = Field(
        default=20, ge=1, le=65535, description="Unacknowledged QoS 1 publishes at most."
    )
    status_interval_s: float = Field(default=60.0, ge=1.0, le=86400.0)
    reconnect_min_s: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    confirm: bool = Field(
        default=False,
        description="The backend confirms each reading on {prefix}/{gateway}/confirm; "
        "'sent' and retention then wait for the confirmation (issue 9).",
    )
    confirm_timeout_s: float = Field(
        default=300.0,
        ge=1.0,
        le=86400.0,
        description="A published reading not confirmed this long is published again "
        "(same id), with backoff (confirm = true only).",
    )
    session_expiry_s: int = Field(
        default=86400,
        ge=0,
        le=4294967295,
        description="MQTT 5 Session Expiry Interval of the hub's persistent session: the "
        "broker keeps confirmations and commands for a hub offline this long.",
    )
    username: str | None = None
    password_file: FilePath | None = None
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    payload: Literal["homehub", "fhir"] = Field(
        default="homehub",
        description="Readings on the wire: 'homehub' (homehub.reading/1 JSON) or 'fhir' (an "
        "HL7 FHIR R4 transaction Bundle of the Personal Health Device IG, issue 13).",
    )
    sign: bool = Field(
        default=False,
        description="Each reading carries a detached JWS (ES256) over its payload, made with "
        "key_file and named by cert_file, in the MQTT 5 user property 'jws' (issue 14).",
    )
    unsynced_hold_s: float = Field(
        default=300.0,
        ge=0.0,
        le=86400.0,
        description="Seconds a reading the hub stamped on an unsynchronised clock is held "
        "back waiting for the sync that corrects its time; then sent flagged (issue 13).",
    )

    @model_validator(mode="after")
    def _check_pairs(self) -> MqttSection:
        values = {name: getattr(self, name) for name in type(self).model_fields}
        problems = mqtt_cross_field_problems(values)
        if problems:
            text = "; ".join(f"{name}: {message}" for name, message in problems)
            raise PydanticCustomError(_CROSS_FIELD, text)
        return self

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


class StoreSection(_Section):
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="'full' fsyncs every commit; 'normal' may lose the last commits on power "
        "loss and is only for SD cards where write wear matters more.",
    )
    checkpoint_interval_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    retention_hours: float = Field(
        default=24.0, ge=0.0, le=24.0 * 365, description="Keep delivered readings this long."
    )
    max_readings: int = Field(
        default=500_000, ge=100, description="Bound on stored readings; oldest go first."
    )
    purge_interval_s: float = Field(default=300.0, ge=1.0, le=86400.0)


class BleSection(_Section):
    stack: Literal["bluez", "bumble"] = Field(
        default="bluez",
        description="'bluez': bleak's BlueZ backend (the Pi); 'bumble': the Bumble stack on "
        "`transport`, without BlueZ.",
    )
    transport: str = Field(
        default="usb:0",
        min_length=1,
        description="Bumble HCI transport (stack = 'bumble' only), e.g. usb:0 or "
        "tcp-client:127.0.0.1:9000.",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("stack")
    @classmethod
    def _stack_installed(cls, stack: str) -> str:
        # Issue 11: bumble is an extra (its libusb-package has no armv7l wheel), so a hub
        # configured for it must say how to get it rather than fail at the first scan.
        if stack == "bumble":
            try:
                import bumble  # noqa: F401
            except ImportError:
                raise ValueError(
                    "the Bumble stack is not installed: pip install 'homehub[bumble]', "
                    'or use stack = "bluez"'
                ) from None
        return stack

    clock_correct_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86400.0,
        description="A device whose clock is off the synchronised hub's by more than this "
        "has its timestamps corrected by the offset (issue 13).",
    )
    scan_stall_s: float = Field(
        default=600.0,
        ge=0,
        le=86400,
        description="No advertisement at all this long while devices wait: a recovery step "
        "(restart discovery, then power-cycle the adapter, then reset it), again and again "
        "further apart; never 'needs help' by itself. 0 = never.",
    )
    # Issue 12 part 3: outside the measure window the radio and CPU rest; a device that
    # advertises at least idle_period_s - idle_scan_s is still found.
    idle_scan_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Outside the measure window, scan this long in every idle_period_s "
        "(equal to idle_period_s: scan all the time).",
    )
    idle_period_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Outside the measure window, one scan of idle_scan_s starts this often.",
    )

    @model_validator(mode="after")
    def _duty(self) -> BleSection:
        if self.idle_scan_s > self.idle_period_s:
            raise PydanticCustomError(
                _CROSS_FIELD, f"idle_scan_s: must not exceed idle_period_s ({self.idle_period_s})"
            )
        return self


BcmPin = Annotated[int, Field(ge=0, le=27)]


class PanelSection(_Section):
    """The patient's panel: one button, a light, an optional buzzer (gateway/panel/)."""

    backend: Literal["auto", "gpio", "none"] = Field(
        default="auto",
        description="'gpio' (gpiozero), 'none' (log only), 'auto': gpio where present, else none.",
    )
    button_pin: BcmPin | None = Field(default=17, description="BCM number; not set: no button.")
    button_pull_up: bool = Field(default=True, description="Button connects the pin to ground.")
    bounce_s: float = Field(default=0.05, ge=0.0, le=1.0, description="Debounce time.")
    long_press_s: float = Field(default=5.0, gt=0.0, le=60.0, description="Installer mode.")
    stuck_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Held this long: stuck.")
    leds: Literal["rgb", "separate"] = Field(default="rgb", description="One RGB LED or three.")
    rgb_pins: tuple[BcmPin, BcmPin, BcmPin] = Field(
        default=(12, 13, 19), description="Red, green, blue pins of the RGB LED (PWM)."
    )
    green_pin: BcmPin = Field(default=5, description="Green LED, when leds = 'separate'.")
    amber_pin: BcmPin = Field(default=6, description="Amber LED, when leds = 'separate'.")
    red_pin: BcmPin = Field(default=26, description="Red LED, when leds = 'separate'.")
    active_high: bool = Field(default=True, description="False for common-anode LEDs.")
    buzzer_pin: BcmPin | None = Field(default=None, description="Active buzzer; not set: none.")
    ready_level: float = Field(default=0.1, ge=0.0, le=1.0, description="'ready' brightness.")
    measure_window_s: float = Field(default=120.0, gt=0.0, le=3600.0)
    pairing_window_s: float = Field(default=300.0, gt=0.0, le=3600.0)
    sent_s: float = Field(default=10.0, gt=0.0, le=600.0)
    stored_later_s: float = Field(default=10.0, gt=0.0, le=600.0)
    send_wait_s: float = Field(default=30.0, gt=0.0, le=600.0)
    help_after_failures: int = Field(default=3, ge=1, le=1000)
    offline_help_s: float = Field(default=21600.0, gt=0.0, le=30 * 86400.0)

    @model_validator(mode="after")
    def _distinct_pins(self) -> PanelSection:
        leds = (
            list(self.rgb_pins)
            if self.leds == "rgb"
            else [self.green_pin, self.amber_pin, self.red_pin]
        )
        pins = [p for p in (self.button_pin, *leds, self.buzzer_pin) if p is not None]
        if len(set(pins)) != len(pins):
            raise ValueError(f"a pin is used twice: {pins} (button, LEDs, buzzer)")
        if self.stuck_s <= self.long_press_s:
            raise ValueError("stuck_s must be longer than long_press_s")
        return self


class HubConfig(_Section):
    """The whole file. `devices` is replaced by a driver-discriminated union at load time."""

    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    store: StoreSection = StoreSection()
    ble: BleSection = BleSection()
    panel: PanelSection = PanelSection()
    devices: list[DriverOptions] = Field(default_factory=list)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"homehub-{self.gateway.id}"

    @property
    def store_path(self) -> Path:
        return self.gateway.state_dir / "readings.sqlite3"

    @model_validator(mode="after")
    def _unique_device_ids(self) -> HubConfig:
        problems = duplicate_device_ids([{"id": device.id} for device in self.devices])
        if problems:
            raise PydanticCustomError(_CROSS_FIELD, "; ".join(problems))
        return self


def config_model(registry: DriverRegistry, only: Iterable[str] | None = None) -> type[HubConfig]:
    """HubConfig whose `devices` items are validated by each driver's own Options model.

    With `only`, the drivers of those names alone (the ones a file names: the others
    need not be imported nor their models built).
    """
    variants: list[Any] = []
    for name, driver in registry.items(only):
        tag: Any = Literal[name]
        variants.append(
            create_model(
                f"Device[{name}]",
                __base__=driver.Options,
                driver=(tag, Field(description="Driver name.")),
            )
        )
    if not variants:
        return HubConfig
    item: Any = (
        variants[0]
        if len(variants) == 1
        else Annotated[Union[tuple(variants)], Field(discriminator="driver")]  # noqa: UP007
    )
    return create_model(
        "HubConfig",
        __base__=HubConfig,
        devices=(list[item], Field(default_factory=list)),
    )


def _field_path(loc: Sequence[int | str], driver_names: set[str]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        # A discriminated union adds the tag ("simulated") to the location; it is
        # not a field the installer wrote, so leave it out of the path.
        if i == 2 and loc[0] == "devices" and str(part) in driver_names:
            continue
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(file)"


def _driver_problem(given: object, registry: DriverRegistry) -> str:
    known = ", ".join(registry.names()) or "none installed"
    if given is None:
        return f"required, but missing (one of: {known})"
    reason = registry.broken.get(str(given))
    if reason:
        return f"driver {given!r} is installed but failed to load: {reason}"
    return f"unknown driver {given!r} (known: {known})"


def _message(error: ErrorDetails, registry: DriverRegistry) -> str:  # noqa: PLR0911
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        return "unknown key (not an option here; check the spelling)"
    if kind == "missing":
        return "required, but missing"
    if kind in ("union_tag_invalid", "union_tag_not_found") or (
        kind == "literal_error" and loc and loc[-1] == "driver"
    ):
        given = error.get("input")
        if isinstance(given, dict):
            given = given.get("driver")
        return _driver_problem(given, registry)
    if kind == "string_pattern_mismatch":
        pattern = str((error.get("ctx") or {}).get("pattern", ""))
        if pattern in _PATTERN_HELP:
            return f"{error.get('input')!r} is not allowed here: {_PATTERN_HELP[pattern]}"
    if kind == "path_not_file":
        return f"file not found or not a regular file: {error.get('input')}"
    if kind == "value_error":
        # pydantic prefixes our own ValueError messages with "Value error, ".
        return error["msg"].removeprefix("Value error, ")
    if kind.endswith(("_type", "_parsing")) and "input" in error:
        # A wrong TOML type: show what was written (`port = "1883"`, `count = true`).
        written = json.dumps(error["input"], default=str)
        if len(written) <= 60:
            return f"{error['msg']}, got {written}"
    return error["msg"]


def _file_order(problem: str) -> tuple[int, int]:
    """Sort key: whole-file and section problems first, then devices in file order."""
    match = re.match(r"devices\[(\d+)\]", problem)
    return (1, int(match.group(1))) if match else (0, 0)


def _json_default(value: object) -> str:
    # TOML has dates and times, JSON does not: pass them on as ISO 8601 text.
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not a TOML value: {type(value).__name__}")


def _raw_problems(data: Mapping[str, Any], registry: DriverRegistry) -> tuple[list[str], set[int]]:
    """Checks that need the whole file, run on the raw TOML so they are always reported.

    Returns the problems and the indexes of `[[devices]]` tables whose driver is
    missing or unknown: their other keys cannot be checked, so errors about them
    would be noise.
    """
    problems: list[str] = []
    mqtt = data.get("mqtt")
    if isinstance(mqtt, Mapping):
        problems.extend(
            f"mqtt.{name}: {message}" for name, message in mqtt_cross_field_problems(mqtt)
        )
    devices = data.get("devices")
    unchecked: set[int] = set()
    if isinstance(devices, list):
        names = set(registry.names())
        for index, device in enumerate(devices):
            if not isinstance(device, Mapping):
                continue
            given = device.get("driver")
            if not isinstance(given, str) or given not in names:
                unchecked.add(index)
                problems.append(f"devices[{index}].driver: {_driver_problem(given, registry)}")
        problems.extend(duplicate_device_ids(devices))
    return problems, unchecked


def _driver_names(data: Mapping[str, Any]) -> set[str]:
    devices = data.get("devices")
    if not isinstance(devices, list):
        return set()
    return {
        d["driver"] for d in devices if isinstance(d, Mapping) and isinstance(d.get("driver"), str)
    }


def validate_config(data: dict[str, Any], registry: DriverRegistry) -> HubConfig:
    """Validate parsed TOML; raise ConfigError listing every problem.

    Validation is strict (TOML is typed: `port = "1883"` or `keepalive_s = true`
    is a mistake, not something to guess at).
    """
    named = _driver_names(data)
    registry.load(named)  # first: a plug-in that fails to import is then `broken`
    raw_problems, unchecked = _raw_problems(data, registry)
    model = config_model(registry, only=named)
    try:
        text = json.dumps(data, default=_json_default)
        config = model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        names = set(registry.names())
        problems = list(raw_problems)
        for error in exc.errors():
            loc = error["loc"]
            if len(loc) >= 2 and loc[0] == "devices" and loc[1] in unchecked:
                continue
            if error["type"] == _CROSS_FIELD:
                # Reported above already, unless the raw check missed it.
                prefix = _field_path(loc, names) + "." if loc else ""
                problems.extend(prefix + part for part in error["msg"].split("; "))
                continue
            if loc and loc[-1] == "driver" and error["type"] == "union_tag_invalid":
                loc = loc[:-1]
            path = _field_path(loc, names)
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                path = _field_path((*loc, "driver"), names)
            problems.append(f"{path}: {_message(error, registry)}")
        unique = list(dict.fromkeys(problems))
        raise ConfigError(sorted(unique, key=_file_order)) from None
    if raw_problems:
        # The model runs the same checks, except for drivers when none is installed.
        raise ConfigError(sorted(raw_problems, key=_file_order))
    return config


def load_config(path: Path, registry: DriverRegistry) -> HubConfig:
    """Read and validate the TOML file at `path`; raise ConfigError on any problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    config = validate_config(data, registry)
    warn_unprotected_secrets(config)
    return config


def warn_unprotected_secrets(config: HubConfig) -> list[str]:
    """WARN about secret files other users can read (issue 14), as ssh does; return them."""
    warnings = []
    for name in ("password_file", "key_file"):
        path = getattr(config.mqtt, name)
        problem = None if path is None else secret_file_problem(path)
        if problem is not None:
            warnings.append(f"mqtt.{name}: {problem}")
            log.warning("mqtt.%s: %s", name, problem)
    return warnings
