"""`homehub panel-test`: every pattern named in turn, then a short and a long press."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPWMPin

from gateway.config import PanelSection
from gateway.panel import GpioBackend, PanelState
from gateway.panel.selftest import panel_test
from tests.panel_helpers import BUTTON_PIN, RGB_PINS
from tests.test_docs import homehub_command

ROOT = Path(__file__).resolve().parents[1]


async def _installer_presses(factory: MockFactory, out: io.StringIO) -> None:
    pin: Any = factory.pin(BUTTON_PIN)
    while "press the button briefly" not in out.getvalue():
        await asyncio.sleep(0.5)
    pin.drive_low()
    await asyncio.sleep(0.3)
    pin.drive_high()
    while "now hold the button" not in out.getvalue():
        await asyncio.sleep(0.5)
    pin.drive_low()
    await asyncio.sleep(6)
    pin.drive_high()


async def _panel_test_passes() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    config = PanelSection(backend="gpio")
    backend = GpioBackend(config, factory)
    out = io.StringIO()
    installer = asyncio.create_task(_installer_presses(factory, out))
    status = await panel_test(config, backend, out)
    # Bounded (in virtual time, so free): a panel_test that returned early must
    # fail here, not leave the presses waiting for a prompt for ever.
    async with asyncio.timeout(60):
        await installer
    backend.close()
    text = out.getvalue()
    assert status == 0, text
    lines = text.splitlines()
    for state in PanelState:
        assert any(line.strip().startswith(state.value) for line in lines), state
    assert "short press: OK" in text and "long press: OK" in text
    green: Any = factory.pin(RGB_PINS[1])
    assert len(green.states) > 20  # the patterns really drove the pins


def test_panel_test_shows_every_pattern_and_confirms_both_presses(virtual: Any) -> None:
    virtual(_panel_test_passes)


async def _panel_test_times_out() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    config = PanelSection(backend="gpio")
    out = io.StringIO()
    status = await panel_test(config, GpioBackend(config, factory), out, timeout_s=30)
    assert status == 1
    assert "FAILED: no short press in 30 s" in out.getvalue()


def test_panel_test_fails_without_a_press(virtual: Any) -> None:
    virtual(_panel_test_times_out)


def _run(
    config: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*homehub_command(), "panel-test", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        # PYTHONPATH: this checkout's gateway/, whatever the venv's script was installed from
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def test_panel_test_command_without_a_panel_says_so(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[gateway]\nid = "hub-1"\n\n[panel]\nbackend = "none"\n')
    result = _run(config)
    assert result.returncode == 1
    assert "no panel to test" in result.stderr


def test_panel_test_command_on_gpiozeros_mock_pins(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[gateway]\nid = "hub-1"\n\n[panel]\nbackend = "gpio"\n')
    env = {"GPIOZERO_PIN_FACTORY": "mock", "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin"}
    result = _run(config, "--seconds", "0.05", "--timeout", "0.2", env=env)
    assert result.returncode == 1, result.stdout + result.stderr  # nobody pressed
    for state in PanelState:
        assert state.value in result.stdout
    assert "FAILED: no short press in 0.2 s" in result.stdout
    assert result.stdout.startswith("panel-test: backend gpio, pin factory mock; ")


def test_panel_test_names_its_pin_factory_and_plays_on_off_without_pwm(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[gateway]\nid = "hub-1"\n\n[panel]\nbackend = "gpio"\n')
    env = {"GPIOZERO_PIN_FACTORY": "mock", "GPIOZERO_MOCK_PIN_CLASS": "mockpin"}
    result = _run(config, "--seconds", "0.05", "--timeout", "0.1", env=env)
    assert result.returncode == 1, result.stdout + result.stderr  # nobody pressed
    first = result.stdout.splitlines()[0]
    assert first.startswith("panel-test: backend gpio, pin factory mock (no PWM: on/off"), first
    assert "green heartbeat" in result.stdout and "steady dim green" not in result.stdout


def test_panel_test_without_gpio_names_what_lgpio_said_and_leaves_no_fifo_behind(
    tmp_path: Path,
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[gateway]\nid = "hub-1"\n\n[panel]\nbackend = "gpio"\n')
    env = {"GPIOZERO_PIN_FACTORY": ""}  # our own choice: lgpio (installed), then native
    before = set(ROOT.glob(".lgd-nfy*"))
    result = _run(config, env=env)
    assert result.returncode == 1
    assert "no GPIO pin factory works here (lgpio: " in result.stderr, result.stderr
    # lgpio's FIFO went into a private temporary directory, not the working directory.
    assert set(ROOT.glob(".lgd-nfy*")) == before
