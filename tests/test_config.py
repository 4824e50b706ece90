"""Config: the installer contract. Bad files go through the real CLI in a subprocess.

Every bad config must exit 78 (EX_CONFIG) and name the field at fault, and
`homehub run` must start nothing (the state directory is not even created).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from gateway.config import EX_CONFIG, HubConfig, load_config, validate_config
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError

CLI_TIMEOUT_S = 30.0
HEADER = re.compile(r"invalid configuration \((\d+) problem\(s\)\):")


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def problems(self) -> list[str]:
        """The problem lines `_config_or_exit` prints under its header, checked against it."""
        lines = self.stderr.splitlines()
        for index, line in enumerate(lines):
            match = HEADER.search(line)
            if match:
                problems = [p.strip() for p in lines[index + 1 :] if p.startswith("  ")]
                assert len(problems) == int(match.group(1)), self.stderr
                return problems
        raise AssertionError(f"no problem list in stderr: {self.stderr!r}")


def homehub(*args: str | Path) -> CliResult:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def make_pki(where: Path) -> dict[str, Path]:
    """Files standing in for a CA, a client certificate and its key (contents unread)."""
    files = {}
    for name in ("ca", "cert", "key"):
        path = where / f"{name}.pem"
        path.write_text(f"-----BEGIN {name.upper()}-----\n")
        if name == "key":
            path.chmod(0o600)  # a readable key is warned about (issue 14)
        files[name] = path
    return files


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path)


def valid_toml(state_dir: Path, *, mqtt: str = "", extra_device: str = "", top: str = "") -> str:
    """A valid file with two simulated devices; the snippets go into its sections."""
    return f"""{top}
[gateway]
id = "hub-0001"
state_dir = {json.dumps(str(state_dir))}

[mqtt]
host = "127.0.0.1"
port = 1883
topic_prefix = "homehub"
{mqtt}

[[devices]]
id = "bp-1"
driver = "simulated"
kind = "blood_pressure"

[[devices]]
id = "scale-1"
driver = "simulated"
kind = "weight"
interval_s = 7
{extra_device}
"""


@dataclass(frozen=True)
class BadCase:
    name: str
    make: Callable[[Path, dict[str, Path]], str]  # (state_dir, pki) -> file text
    field: str  # the field path stderr must name
    also: str = ""  # another phrase stderr must contain


BAD_CASES = [
    BadCase("unknown-top-level-key", lambda d, _: valid_toml(d, top='colour = "red"'), "colour"),
    BadCase("unknown-key-in-mqtt", lambda d, _: valid_toml(d, mqtt='hots = "broker"'), "mqtt.hots"),
    BadCase(
        "unknown-key-in-device",
        lambda d, _: valid_toml(d, extra_device='adress = "C0:11:22:33:44:55"'),
        "devices[1].adress",
        "unknown key",
    ),
    BadCase(
        "toml-syntax",
        lambda d, _: valid_toml(d).replace("[mqtt]", "[mqtt", 1),
        "TOML syntax error",
        "line 6",
    ),
    BadCase(
        "wrong-type-string-for-int",
        lambda d, _: valid_toml(d).replace("port = 1883", 'port = "1883"'),
        "mqtt.port",
        'got "1883"',
    ),
    BadCase(
        "wrong-type-bool-for-int",
        lambda d, _: valid_toml(d, mqtt="keepalive_s = true"),
        "mqtt.keepalive_s",
        "valid integer",
    ),
    BadCase(
        "wrong-type-in-device",
        lambda d, _: valid_toml(d).replace("interval_s = 7", 'interval_s = "fast"'),
        "devices[1].interval_s",
        "valid number",
    ),
    BadCase(
        "duplicate-device-id",
        lambda d, _: valid_toml(d).replace('id = "scale-1"', 'id = "bp-1"'),
        "devices[1].id",
        "duplicate id 'bp-1' (also devices[0])",
    ),
    BadCase(
        "gateway-id-characters",
        lambda d, _: valid_toml(d).replace('"hub-0001"', '"hub/0001"'),
        "gateway.id",
        "letters",
    ),
    BadCase(
        "gateway-id-too-long",
        lambda d, _: valid_toml(d).replace('"hub-0001"', '"' + "h" * 65 + '"'),
        "gateway.id",
    ),
    BadCase(
        "port-zero",
        lambda d, _: valid_toml(d).replace("port = 1883", "port = 0"),
        "mqtt.port",
        "greater than or equal to 1",
    ),
    BadCase(
        "port-70000",
        lambda d, _: valid_toml(d).replace("port = 1883", "port = 70000"),
        "mqtt.port",
        "less than or equal to 65535",
    ),
    BadCase(
        "unknown-driver",
        lambda d, _: valid_toml(d).replace('driver = "simulated"\nkind = "weight"', 'driver = "x"'),
        "devices[1].driver",
        "unknown driver 'x' (known: ",
    ),
    BadCase(
        "missing-driver",
        lambda d, _: valid_toml(d).replace('driver = "simulated"\nkind = "weight"', ""),
        "devices[1].driver",
        "required, but missing (one of: ",
    ),
    BadCase(
        "missing-ca-file",
        lambda d, _: valid_toml(d, mqtt=f"ca_file = {json.dumps(str(d / 'nothing.pem'))}"),
        "mqtt.ca_file",
        "nothing.pem",
    ),
    BadCase(
        "interval-negative",
        lambda d, _: valid_toml(d).replace("interval_s = 7", "interval_s = -1"),
        "devices[1].interval_s",
        "greater than or equal to 0",
    ),
    BadCase(
        "kind-toaster",
        lambda d, _: valid_toml(d).replace('kind = "weight"', 'kind = "toaster"'),
        "devices[1].kind",
        "'blood_pressure'",
    ),
    BadCase(
        "cert-without-key",
        lambda d, pki: valid_toml(
            d,
            mqtt=f"ca_file = {json.dumps(str(pki['ca']))}\n"
            f"cert_file = {json.dumps(str(pki['cert']))}",
        ),
        "mqtt.key_file",
        "cert_file",
    ),
    BadCase(
        "key-without-cert",
        lambda d, pki: valid_toml(
            d,
            mqtt=f"ca_file = {json.dumps(str(pki['ca']))}\n"
            f"key_file = {json.dumps(str(pki['key']))}",
        ),
        "mqtt.cert_file",
    ),
    BadCase(
        "topic-prefix-hash",
        lambda d, _: valid_toml(d).replace('topic_prefix = "homehub"', 'topic_prefix = "home/#"'),
        "mqtt.topic_prefix",
        "'#'",
    ),
    BadCase(
        "topic-prefix-dollar",
        lambda d, _: valid_toml(d).replace('topic_prefix = "homehub"', 'topic_prefix = "$SYS"'),
        "mqtt.topic_prefix",
    ),
    BadCase(
        "missing-gateway-id",
        lambda d, _: valid_toml(d).replace('[gateway]\nid = "hub-0001"\n', "[gateway]\n"),
        "gateway.id",
        "required, but missing",
    ),
]


RUN_CASES = [
    "unknown-key-in-mqtt",
    "toml-syntax",
    "port-zero",
    "duplicate-device-id",
    "kind-toaster",
]


@dataclass(frozen=True)
class BadRun:
    state_dir: Path
    result: Future[CliResult]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], BadRun]]:
    """Every bad case through the CLI, started together: one process each, a few at a time."""
    base = tmp_path_factory.mktemp("bad-configs")
    files = make_pki(base)
    runs: dict[tuple[str, str], BadRun] = {}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for case in BAD_CASES:
            commands = ["check-config", "run"] if case.name in RUN_CASES else ["check-config"]
            for command in commands:
                where = base / f"{case.name}-{command}"
                where.mkdir()
                path = where / "homehub.toml"
                path.write_text(case.make(where / "state", files))
                args: list[str | Path] = (
                    ["check-config", path]
                    if command == "check-config"
                    else ["run", "--config", path]
                )
                runs[(case.name, command)] = BadRun(where / "state", pool.submit(homehub, *args))
        yield runs


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.name for c in BAD_CASES])
def test_check_config_rejects_and_names_the_field(
    case: BadCase, bad_runs: dict[tuple[str, str], BadRun]
) -> None:
    run = bad_runs[(case.name, "check-config")]
    result = run.result.result(timeout=CLI_TIMEOUT_S * 2)

    assert result.returncode == EX_CONFIG, result
    problems = result.problems()
    # One mistake, one line: nothing else in the file is blamed for it.
    assert len(problems) == 1, problems
    assert case.field in problems[0], problems
    assert case.also in problems[0], problems
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert not run.state_dir.exists()


@pytest.mark.parametrize("name", RUN_CASES)
def test_run_with_bad_config_exits_78_and_starts_nothing(
    name: str, bad_runs: dict[tuple[str, str], BadRun]
) -> None:
    case = next(c for c in BAD_CASES if c.name == name)
    run = bad_runs[(name, "run")]
    # A hub that did start would run until the subprocess timeout fails this test.
    result = run.result.result(timeout=CLI_TIMEOUT_S * 2)

    assert result.returncode == EX_CONFIG, result
    assert case.field in "\n".join(result.problems())
    assert not run.state_dir.exists(), "run touched the state directory before the config was valid"


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "no-such.toml"
    for args in (("check-config", path), ("run", "--config", path)):
        result = homehub(*args)
        assert result.returncode == EX_CONFIG, result
        problems = result.problems()
        assert problems == [f"{path}: config file not found"], problems
    assert list(tmp_path.iterdir()) == []


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "homehub.toml"
    path.write_bytes(b'[gateway]\nid = "hub-\xff"\n')
    result = homehub("check-config", path)
    assert result.returncode == EX_CONFIG
    assert "not UTF-8" in result.problems()[0]


def test_valid_config_exits_0(tmp_path: Path, pki: dict[str, Path]) -> None:
    path = tmp_path / "homehub.toml"
    # ca_file, cert_file and key_file, all present: TLS with a client certificate.
    tls = "\n".join(f"{name}_file = {json.dumps(str(file))}" for name, file in pki.items())
    path.write_text(valid_toml(tmp_path / "state", mqtt=tls))
    result = homehub("check-config", path)
    assert result.returncode == 0, result
    assert result.stderr == ""
    assert "valid (gateway hub-0001, 2 device(s), broker 127.0.0.1:1883 with TLS)" in result.stdout
    assert not (tmp_path / "state").exists(), "check-config must not create the state dir"


def test_config_without_devices_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "homehub.toml"
    path.write_text('[gateway]\nid = "hub-1"\n')
    result = homehub("check-config", path)
    assert result.returncode == 0, result
    assert "0 device(s)" in result.stdout
    assert "broker 127.0.0.1:1883)" in result.stdout


def test_check_config_prints_all_problems_at_once(tmp_path: Path) -> None:
    path = tmp_path / "homehub.toml"
    text = valid_toml(tmp_path / "state", top="colour = 1")
    text = text.replace("port = 1883", "port = 0").replace("interval_s = 7", "interval_s = -1")
    path.write_text(text)

    result = homehub("check-config", path)

    assert result.returncode == EX_CONFIG
    problems = result.problems()
    assert len(problems) == 3, problems
    assert [p.split(":")[0] for p in problems] == ["mqtt.port", "colour", "devices[1].interval_s"]


def test_cross_field_problems_reported_beside_field_errors(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """Checks across fields (pairs, duplicate ids) do not hide behind ordinary errors."""
    path = tmp_path / "homehub.toml"
    text = valid_toml(tmp_path / "state", mqtt=f"cert_file = {json.dumps(str(pki['cert']))}")
    text = text.replace("port = 1883", "port = 70000").replace('id = "scale-1"', 'id = "bp-1"')
    text = text.replace("interval_s = 7", 'interval_s = "x"')
    path.write_text(text)

    problems = homehub("check-config", path).problems()

    fields = sorted(p.split(":")[0] for p in problems)
    assert fields == [
        "devices[1].id",
        "devices[1].interval_s",
        "mqtt.ca_file",
        "mqtt.key_file",
        "mqtt.port",
    ], problems


def test_schema_config_lists_driver_options() -> None:
    result = homehub("schema", "config")
    assert result.returncode == 0, result
    schema = json.loads(result.stdout)
    simulated = [
        d
        for d in schema["$defs"].values()
        if d.get("properties", {}).get("driver", {}).get("const") == "simulated"
    ]
    assert len(simulated) == 1, list(schema["$defs"])
    properties = simulated[0]["properties"]
    assert {"id", "driver", "kind", "interval_s", "count", "seed"} <= set(properties)
    assert "toaster" not in properties["kind"]["enum"]
    assert "weight" in properties["kind"]["enum"]
    assert simulated[0]["additionalProperties"] is False
    assert schema["properties"]["devices"]["type"] == "array"


# -- in-process: the model itself ---------------------------------------------------------


def parse(text: str, registry: DriverRegistry) -> HubConfig:
    return validate_config(tomllib.loads(text), registry)


def problems_of(text: str, registry: DriverRegistry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, registry)
    return info.value.problems


def test_defaults_and_derived_values(tmp_path: Path, registry: DriverRegistry) -> None:
    config = parse(valid_toml(tmp_path / "s"), registry)
    assert config.client_id == "homehub-hub-0001"
    assert config.store_path == tmp_path / "s" / "readings.sqlite3"
    assert config.mqtt.tls is False
    assert config.store.synchronous == "full"
    assert [d.id for d in config.devices] == ["bp-1", "scale-1"]
    assert type(config.devices[1]).__name__ == "Device[simulated]"
    assert config.devices[1].interval_s == 7.0  # type: ignore[attr-defined]


def test_load_config_reads_the_file(tmp_path: Path, registry: DriverRegistry) -> None:
    path = tmp_path / "homehub.toml"
    path.write_text(valid_toml(tmp_path / "s", mqtt='client_id = "box-7"'))
    assert load_config(path, registry).client_id == "box-7"


def test_int_accepted_where_float_expected(registry: DriverRegistry) -> None:
    config = parse('[gateway]\nid = "h"\n[mqtt]\nstatus_interval_s = 30\n', registry)
    assert config.mqtt.status_interval_s == 30.0


@pytest.mark.parametrize(
    ("snippet", "field"),
    [
        ("[store]\nretention_hours = inf", "store.retention_hours"),
        ("[store]\nretention_hours = nan", "store.retention_hours"),
        ('[store]\nsynchronous = "off"', "store.synchronous"),
        ("[store]\nmax_readings = 99", "store.max_readings"),
        ("[mqtt]\nreconnect_min_s = 90.0", "mqtt.reconnect_min_s"),
        ('[mqtt]\npassword_file = "/etc/hostname"', "mqtt.username"),
        ("devices = 3", "devices"),
        ('[mqtt]\nhost = ""', "mqtt.host"),
        ("[[devices]]\ndriver = 'simulated'\nkind = 'weight'", "devices[0].id"),
    ],
)
def test_more_bad_values(snippet: str, field: str, registry: DriverRegistry) -> None:
    problems = problems_of(f'{snippet}\n[gateway]\nid = "h"\n', registry)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: "), problems


def test_missing_gateway_table(registry: DriverRegistry) -> None:
    assert problems_of("[mqtt]\nport = 1883\n", registry) == ["gateway: required, but missing"]


def test_no_driver_installed_still_rejects_devices() -> None:
    empty = DriverRegistry({})
    problems = problems_of(
        '[gateway]\nid = "h"\n[[devices]]\nid = "a"\ndriver = "simulated"\n', empty
    )
    assert problems == ["devices[0].driver: unknown driver 'simulated' (known: none installed)"]


def test_broken_plugin_named_in_error(registry: DriverRegistry) -> None:
    broken = DriverRegistry(dict(registry.items()), {"vendor.thing": "ImportError: no bleak"})
    problems = problems_of(
        '[gateway]\nid = "h"\n[[devices]]\nid = "a"\ndriver = "vendor.thing"\n', broken
    )
    assert problems == [
        "devices[0].driver: driver 'vendor.thing' is installed but failed to load: "
        "ImportError: no bleak"
    ]


def test_a_plugin_that_fails_to_import_is_named_when_the_config_asks_for_it() -> None:
    # Entry points load lazily (bench/README.md, rss): the failure surfaces at validation.
    lazy = DriverRegistry(
        {}, pending={"vendor.thing": EntryPoint("vendor.thing", "no_such_pkg.x:Driver", "g")}
    )
    assert lazy.names() == ["vendor.thing"]  # installed, not known to be broken yet
    problems = problems_of(
        '[gateway]\nid = "h"\n[[devices]]\nid = "a"\ndriver = "vendor.thing"\n', lazy
    )
    assert problems == [
        "devices[0].driver: driver 'vendor.thing' is installed but failed to load: "
        "ModuleNotFoundError: No module named 'no_such_pkg'"
    ]
    assert lazy.names() == []


def test_a_hub_imports_only_the_drivers_its_config_names(tmp_path: Path) -> None:
    # A serial-only (here: simulated-only) hub does not import the BLE drivers and their
    # profiles, nor build their option models: ~2 MiB of a Pi Zero's memory.
    config = tmp_path / "hub.toml"
    config.write_text(
        '[gateway]\nid = "h"\n[[devices]]\nid = "a"\ndriver = "simulated"\nkind = "weight"\n'
    )
    probe = (
        "import json, sys; from pathlib import Path\n"
        "from gateway.config import load_config\n"
        "from gateway.drivers.registry import DriverRegistry\n"
        "registry = DriverRegistry.from_entry_points()\n"
        f"load_config(Path({str(config)!r}), registry)\n"
        "print(json.dumps([m for m in sys.modules if m.startswith('gateway.drivers.')]))\n"
        "print('ble.glucose' in registry.names())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    loaded = json.loads(out[0])
    assert "gateway.drivers.simulated" in loaded
    assert not [
        m for m in loaded if m.startswith(("gateway.drivers.ble", "gateway.drivers.serial"))
    ]
    assert out[1] == "True"  # still known, for an error naming what is installed


def test_toml_dates_do_not_crash_validation(registry: DriverRegistry) -> None:
    data: dict[str, Any] = tomllib.loads('when = 2026-11-22T09:14:03+01:00\n[gateway]\nid = "h"\n')
    with pytest.raises(ConfigError) as info:
        validate_config(data, registry)
    assert info.value.problems == ["when: unknown key (not an option here; check the spelling)"]


def test_a_bumble_less_install_refuses_stack_bumble_naming_the_field(tmp_path: Path) -> None:
    # Issue 11: bumble is the `homehub[bumble]` extra. A hub without it (here: an interpreter
    # where `import bumble` fails, as on a plain armv7l install) must refuse the config with
    # the field and the install command, and accept stack = "bluez".
    blocker = tmp_path / "no_bumble"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['bumble'] = None\n")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), env.get("PYTHONPATH")]))

    def check(stack: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / f"{stack}.toml"
        path.write_text(valid_toml(tmp_path / "state", top=f'[ble]\nstack = "{stack}"\n'))
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            env=env,
            check=False,
        )

    refused = check("bumble")
    assert refused.returncode == EX_CONFIG, refused.stderr
    assert "ble.stack:" in refused.stderr
    assert "homehub[bumble]" in refused.stderr
    accepted = check("bluez")
    assert accepted.returncode == 0, accepted.stderr
