"""The documentation stays true to the code: README, config/example.toml, CHANGELOG."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway import mdc
from gateway.cli import build_parser
from gateway.config import (
    BleSection,
    GatewaySection,
    MqttSection,
    PanelSection,
    StoreSection,
    validate_config,
)
from gateway.drivers.registry import DriverRegistry
from gateway.drivers.simulated import SimulatedOptions

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE = ROOT / "config" / "example.toml"
CHANGELOG = ROOT / "CHANGELOG.md"

#: example.toml table header -> the model whose options must all appear under it.
SECTIONS: dict[str, type[BaseModel]] = {
    "[gateway]": GatewaySection,
    "[mqtt]": MqttSection,
    "[store]": StoreSection,
    "[ble]": BleSection,
    "[panel]": PanelSection,
    "[[devices]]": SimulatedOptions,
}

# `key = ...` or a commented-out `# key = ...` (an option whose default is "not set").
_OPTION_LINE = re.compile(r"^\s*(?:#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
# A commented-out device table (`# [[devices]]`): an example to uncomment.
_COMMENTED_DEVICE = re.compile(r"^\s*#\s*\[\[devices\]\]\s*$")


def homehub_command() -> list[str]:
    """The installed console script when there is one, else the same CLI via -m."""
    script = Path(sys.executable).parent / "homehub"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*homehub_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def options_by_section(text: str) -> dict[str, set[str]]:
    """Option keys (set or commented out) written under each table header.

    Only the first `[[devices]]` table (the active example) counts here; the
    commented-out device tables are checked per driver by `device_examples`.
    """
    found: dict[str, set[str]] = {header: set() for header in SECTIONS}
    section: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if _COMMENTED_DEVICE.match(line):
            section = None
            continue
        if stripped.startswith("["):
            section = stripped
            assert section in SECTIONS, f"example.toml: unexpected table {section}"
            continue
        match = _OPTION_LINE.match(line)
        if match and section is not None:
            found[section].add(match.group(1))
    return found


def device_examples(text: str) -> list[tuple[set[str], dict[str, object]]]:
    """Each commented-out `# [[devices]]` table: its keys and its values (uncommented)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if _COMMENTED_DEVICE.match(line):
            current = []
            blocks.append(current)
        elif line.strip().startswith("[") and not line.strip().startswith("#"):
            current = None
        elif current is not None and _OPTION_LINE.match(line):
            current.append(line.strip().removeprefix("#").strip())
    return [
        ({line.split("=", 1)[0].strip() for line in block}, tomllib.loads("\n".join(block)))
        for block in blocks
    ]


def own_drivers() -> dict[str, type[BaseModel]]:
    """The drivers this package ships (third-party plug-ins document themselves)."""
    return {
        name: driver.Options
        for name, driver in DriverRegistry.from_entry_points().items()
        if driver.__module__.startswith("gateway.")
    }


def subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("homehub has no subcommands")


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


# -- config/example.toml ---------------------------------------------------------------


def test_example_config_validates_with_the_real_cli() -> None:
    result = run_cli("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize("header", list(SECTIONS))
def test_example_config_lists_every_option(header: str) -> None:
    written = options_by_section(EXAMPLE.read_text("utf-8"))[header]
    fields = set(SECTIONS[header].model_fields)
    missing = fields - written
    assert not missing, f"config/example.toml {header} lacks {sorted(missing)}"
    stale = written - fields
    assert not stale, f"config/example.toml {header} documents unknown options {sorted(stale)}"


def test_example_config_values_are_the_defaults() -> None:
    data = tomllib.loads(EXAMPLE.read_text("utf-8"))
    config = validate_config(data, DriverRegistry.from_entry_points())
    validated: dict[str, BaseModel] = {
        "[gateway]": config.gateway,
        "[mqtt]": config.mqtt,
        "[store]": config.store,
        "[ble]": config.ble,
        "[panel]": config.panel,
        "[[devices]]": config.devices[0],
    }
    raw = {
        "[gateway]": data["gateway"],
        "[mqtt]": data["mqtt"],
        "[store]": data["store"],
        "[ble]": data["ble"],
        "[panel]": data["panel"],
        "[[devices]]": data["devices"][0],
    }
    for header, model in SECTIONS.items():
        for key in raw[header]:
            field = model.model_fields[key]
            if field.is_required():
                continue
            value = getattr(validated[header], key)
            assert value == field.default, (
                f"config/example.toml {header} {key} = {value!r}, but the default is "
                f"{field.default!r}"
            )


#: keys that only apply when another key is set (true): a table without it leaves them out
#: (issue 12: `passkey` is for a device that pairs)
ONLY_WITH = {"passkey": "pair"}


def test_example_config_has_a_table_for_every_driver_with_every_option() -> None:
    text = EXAMPLE.read_text("utf-8")
    examples = {str(values["driver"]): (keys, values) for keys, values in device_examples(text)}
    first = tomllib.loads(text)["devices"][0]
    examples.setdefault(first["driver"], (options_by_section(text)["[[devices]]"], first))
    drivers = own_drivers()
    assert set(examples) == set(drivers), "config/example.toml: one device table per driver"
    for name, model in drivers.items():
        keys, values = examples[name]
        fields = set(model.model_fields) - {
            key for key, needs in ONLY_WITH.items() if not values.get(needs)
        }
        assert keys == fields, (
            f"config/example.toml {name}: missing {sorted(fields - keys)}, "
            f"unknown {sorted(keys - fields)}"
        )
        validated = model.model_validate(values)
        for key in values:
            field = model.model_fields[key]
            if field.is_required() or field.default is None:
                continue  # an example value for something with no default
            assert getattr(validated, key) == field.default, (
                f"config/example.toml {name} {key} = {values[key]!r}, but the default is "
                f"{field.default!r}"
            )


# -- README ----------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands() -> None:
    lines = [line.strip() for line in README.read_text("utf-8").splitlines() if line.strip()]
    if lines[0].startswith("```"):
        lines = lines[1:]
    assert lines[:2] == ["make demo", "make test"]


def test_readme_documents_every_subcommand() -> None:
    text = README.read_text("utf-8")
    for command in sorted(subcommands()):
        assert f"homehub {command}" in text, f"README does not mention `homehub {command}`"


def test_readme_examples_use_only_real_subcommands() -> None:
    """Commands shown in code blocks exist (planned ones are only named in prose)."""
    invocation = re.compile(r"^\s*(?:\$ )?homehub\s+(?:--\S+\s+(?:[A-Z]+\s+)?)*([a-z][a-z-]*)")
    known = subcommands()
    for block in code_blocks(README.read_text("utf-8")):
        for line in block.splitlines():
            match = invocation.match(line)
            if match:
                assert match.group(1) in known, f"README shows unknown command: {line.strip()}"


def test_readme_mdc_table_matches_gateway_mdc() -> None:
    text = README.read_text("utf-8")
    rows = dict(re.findall(r"^\| `(MDC_[A-Z0-9_]+)` \| (\d+) \|", text, flags=re.MULTILINE))
    expected = {code.name: str(code.number) for code in mdc.ALL_CODES}
    assert rows == expected


def test_readme_makefile_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text("utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))
    for target in set(re.findall(r"`make ([a-z][a-z-]*)`", README.read_text("utf-8"))):
        assert target in targets, f"README mentions `make {target}`, which the Makefile lacks"


# -- JSON Schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["reading", "status", "command", "response"])
def test_schema_command_prints_the_shipped_schema(which: str) -> None:
    result = run_cli("schema", which)
    assert result.returncode == 0, result.stderr
    shipped = json.loads(
        (ROOT / "contract" / "homehub_contract" / "schemas" / f"{which}-1.json").read_text("utf-8")
    )
    assert json.loads(result.stdout) == shipped


# -- CHANGELOG -------------------------------------------------------------------------


def test_changelog_has_an_unreleased_section() -> None:
    text = CHANGELOG.read_text("utf-8")
    assert text.startswith("# Changelog")
    assert re.search(r"^## \[Unreleased\]$", text, flags=re.MULTILINE)
