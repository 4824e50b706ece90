"""The gpio backend: gpiozero devices on a pin factory passed in."""

from __future__ import annotations

import logging
from typing import Any

from gpiozero import PWMLED, RGBLED, Button, Buzzer

from gateway.config import PanelSection
from gateway.errors import GatewayError
from gateway.panel.backends import EdgeHandler, PanelBackend
from gateway.panel.patterns import RGB, Colour

log = logging.getLogger(__name__)


class GpioBackend(PanelBackend):
    """gpiozero devices on `pin_factory`."""

    name = "gpio"

    def __init__(self, config: PanelSection, pin_factory: Any) -> None:
        self._devices: list[Any] = []
        self._handler: EdgeHandler | None = None
        try:
            if config.leds == "rgb":
                red, green, blue = config.rgb_pins
                self._rgb: Any = self._add(
                    RGBLED(
                        red,
                        green,
                        blue,
                        active_high=config.active_high,
                        pwm=True,
                        pin_factory=pin_factory,
                    )
                )
                self._leds: dict[Colour, Any] = {}
            else:
                self._rgb = None
                self._leds = {
                    colour: self._add(
                        PWMLED(pin, active_high=config.active_high, pin_factory=pin_factory)
                    )
                    for colour, pin in (
                        (Colour.GREEN, config.green_pin),
                        (Colour.AMBER, config.amber_pin),
                        (Colour.RED, config.red_pin),
                    )
                }
            self._buzzer: Any = (
                None
                if config.buzzer_pin is None
                else self._add(Buzzer(config.buzzer_pin, pin_factory=pin_factory))
            )
            self._button: Any = (
                None
                if config.button_pin is None
                else self._add(
                    Button(
                        config.button_pin,
                        pull_up=config.button_pull_up,
                        bounce_time=None,  # debounced by the panel, the same on every factory
                        pin_factory=pin_factory,
                    )
                )
            )
        except Exception as exc:
            self.close()
            raise GatewayError(
                f"panel: cannot set up the GPIO pins: {type(exc).__name__}: {exc}"
            ) from exc
        self.has_button = self._button is not None
        if self._button is not None:
            self._button.when_activated = lambda: self._edge(True)
            self._button.when_deactivated = lambda: self._edge(False)

    def _add(self, device: Any) -> Any:
        self._devices.append(device)
        return device

    def _edge(self, pressed: bool) -> None:
        handler = self._handler
        if handler is not None:
            handler(pressed)

    def show(self, colour: Colour | None, level: float) -> None:
        level = 0.0 if colour is None else max(0.0, min(1.0, level))
        if self._rgb is not None:
            r, g, b = RGB[colour] if colour is not None else (0.0, 0.0, 0.0)
            self._rgb.value = (round(r * level, 3), round(g * level, 3), round(b * level, 3))
            return
        for led_colour, led in self._leds.items():
            led.value = level if led_colour is colour else 0.0

    def buzz(self, on: bool) -> None:
        if self._buzzer is not None:
            self._buzzer.value = 1 if on else 0

    def on_edge(self, handler: EdgeHandler | None) -> None:
        self._handler = handler

    def button_pressed(self) -> bool:
        return bool(self._button is not None and self._button.is_pressed)

    def close(self) -> None:
        self._handler = None
        for device in reversed(self._devices):
            try:
                device.close()
            except Exception:  # closing must not hide the error that got us here
                log.debug("panel: closing %r failed", device, exc_info=True)
        self._devices.clear()
