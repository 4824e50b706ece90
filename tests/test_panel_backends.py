"""Backend choice: auto, gpio, none; the pin factory is passed in, never global."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import gpiozero
import pytest
from gpiozero.exc import BadPinFactory

from gateway.config import PanelSection, load_config
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError, GatewayError
from gateway.events import EventBus, HubStarted
from gateway.panel import GpioBackend, NoneBackend, Panel, create_backend
from gateway.panel import backends as backends_module
from tests.helpers import load, write_config


@pytest.fixture(autouse=True)
def _no_env_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.delenv("GPIOZERO_MOCK_PIN_CLASS", raising=False)


def test_auto_without_gpio_is_none_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(backends_module, "gpio_present", lambda: False)
    with caplog.at_level(logging.WARNING):
        backend = create_backend(PanelSection(backend="auto"))
    assert isinstance(backend, NoneBackend)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_auto_uses_gpiozeros_own_selection_without_touching_the_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setenv("GPIOZERO_MOCK_PIN_CLASS", "mockpwmpin")
    before = gpiozero.Device.pin_factory
    backend = create_backend(PanelSection(backend="auto"))
    try:
        assert isinstance(backend, GpioBackend)
        assert gpiozero.Device.pin_factory is before  # not set process-wide
    finally:
        backend.close()


def test_gpio_without_any_pin_factory_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_factory() -> None:
        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr(gpiozero.Device, "_default_pin_factory", staticmethod(no_factory))
    with pytest.raises(GatewayError, match='backend = "none"'):
        create_backend(PanelSection(backend="gpio"))


def test_none_backend_logs_state_changes_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        events = EventBus()
        panel = Panel(PanelSection(backend="none"), NoneBackend(), events)
        panel.start()
        events.publish(HubStarted())
        await panel.close()

    with caplog.at_level(logging.DEBUG, logger="gateway.panel"):
        asyncio.run(main())
    debug = [r.message for r in caplog.records if r.levelno == logging.DEBUG]
    assert "panel: starting" in debug and "panel: ready" in debug


async def test_hub_with_gpio_backend_and_no_gpio_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_factory() -> None:
        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr(gpiozero.Device, "_default_pin_factory", staticmethod(no_factory))
    path = write_config(tmp_path / "hub.toml", broker=None, state_dir=tmp_path / "state")
    path.write_text(path.read_text() + '\n[panel]\nbackend = "gpio"\n')
    hub = Hub(load(path), DriverRegistry.from_entry_points())
    with pytest.raises(GatewayError, match="no GPIO pin factory"):
        await asyncio.wait_for(hub.run(), 5)
    assert not (tmp_path / "state").exists()  # failed before touching the store


@pytest.mark.parametrize(
    ("panel", "message"),
    [
        ("button_pin = 12", "panel: a pin is used twice: [12, 12, 13, 19]"),
        ('leds = "separate"\ngreen_pin = 17', "panel: a pin is used twice: [17, 17, 6, 26]"),
        ("stuck_s = 5.0", "panel: stuck_s must be longer than long_press_s"),
        ("rgb_pins = [12, 13]", "panel.rgb_pins"),
        ("button_pin = 40", "panel.button_pin"),
        ('backend = "pigpio"', "panel.backend"),
    ],
)
def test_panel_config_errors_name_the_problem(tmp_path: Path, panel: str, message: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(f'[gateway]\nid = "hub-1"\n\n[panel]\n{panel}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, DriverRegistry.from_entry_points())
    text = "\n".join(info.value.problems)
    assert message in text, text
