"""Backend choice: auto, gpio, none; the pin factory is passed in, never global."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import gpiozero
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from gateway.config import PanelSection, load_config
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError, GatewayError
from gateway.events import Event, EventBus, HubStarted, ReadingStored
from gateway.panel import GpioBackend, NoneBackend, Panel, PanelState, create_backend
from gateway.panel import backends as backends_module
from gateway.panel import panel as panel_module
from tests.helpers import next_event, running_hub, sim_device, write_config


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


def test_gpio_without_any_pin_factory_fails_clearly(tmp_path: Path) -> None:
    # No /dev/gpiochip* and no Pi revision here: lgpio and native both fail, for real.
    with pytest.raises(GatewayError, match='backend = "none"') as info:
        create_backend(PanelSection(backend="gpio"), work_dir=tmp_path)
    assert "lgpio: " in str(info.value)


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


async def test_hub_with_gpio_backend_starts_dark_and_lights_up_when_gpio_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPIO chip that comes up after the hub at boot must not kill the hub (issue 11):
    it starts dark, stores readings, retries with backoff, and lights up."""
    monkeypatch.setattr(panel_module, "REOPEN_INITIAL_S", 0.02)
    monkeypatch.setattr(panel_module, "REOPEN_MAX_S", 0.05)
    factory = MockFactory(pin_class=MockPWMPin)
    attempts: list[Path | None] = []

    def late_gpio(work_dir: Path | None = None) -> MockFactory:
        attempts.append(work_dir)
        if len(attempts) <= 5:  # the first call and 4 retries
            raise GatewayError("panel: no GPIO pin factory works here (lgpio: not yet)")
        return factory

    monkeypatch.setattr(backends_module, "choose_pin_factory", late_gpio)
    state = tmp_path / "state"
    path = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=state,
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.05, count=3)],
    )
    path.write_text(path.read_text() + '\n[panel]\nbackend = "gpio"\n')
    events = EventBus()
    stored: asyncio.Queue[Event] = asyncio.Queue()
    events.subscribe(stored.put_nowait)
    with caplog.at_level(logging.DEBUG, logger="gateway.panel"):
        async with running_hub(path, events) as hub:
            await next_event(stored, ReadingStored, 10)  # the data path runs, dark
            assert hub.panel is not None
            async with asyncio.timeout(10):
                while hub.panel.backend.name != "gpio":
                    await asyncio.sleep(0.01)
            # It shows the hub's state on the pins it finally got: no broker, so
            # "stored, will send later", amber (red 1, green 0.4) 1.7 s on.
            async with asyncio.timeout(5):
                while hub.panel.state is not PanelState.STORED_LATER or (
                    float(factory.pin(12).state),
                    float(factory.pin(13).state),
                ) != (1.0, 0.4):
                    await asyncio.sleep(0.01)
    assert attempts == [state] * 6  # lgpio's FIFO goes in the state directory
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("running dark, retrying" in m and "lgpio: not yet" in m for m in warnings)
    assert any("still no GPIO" in m for m in warnings)  # once the pauses are longest
    assert len([m for m in warnings if "still no GPIO" in m]) == 1
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "panel: GPIO ready after 5 attempt(s)" in infos
    assert "panel: backend gpio, pin factory mock, PWM" in infos


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
