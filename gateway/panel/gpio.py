"""The gpio backend: gpiozero devices on a pin factory passed in, with or without PWM."""

from __future__ import annotations

import logging
from typing import Any

from gpiozero import LED, PWMLED, RGBLED, Button, Buzzer
from gpiozero.exc import PinPWMUnsupported

from gateway.config import PanelSection
from gateway.errors import GatewayError
from gateway.panel.backends import EdgeHandler, PanelBackend
from gateway.panel.factory import factory_name
from gateway.panel.patterns import RGB, Colour

log = logging.getLogger(__name__)


class GpioBackend(PanelBackend):
    """gpiozero devices on `pin_factory`. Where the factory's pins have no PWM (gpiozero's
    native factory, MockFactory with MockPin) the LEDs are plain on/off and `pwm` is
    False; lgpio has PWM (in software) on every pin."""

    name = "gpio"

    def __init__(self, config: PanelSection, pin_factory: Any) -> None:
        self._devices: list[Any] = []
        self._handler: EdgeHandler | None = None
        self.pin_factory = factory_name(pin_factory)
        self._rgb: Any = None
        self._leds: dict[Colour, Any] = {}
        try:
            try:
                self._open_leds(config, pin_factory, pwm=True)
            except PinPWMUnsupported:
                self.close()
                self._open_leds(config, pin_factory, pwm=False)
                self.pwm = False
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

    def _open_leds(self, config: PanelSection, pin_factory: Any, *, pwm: bool) -> None:
        if config.leds == "rgb":
            red, green, blue = config.rgb_pins
            self._rgb = self._add(
                RGBLED(
                    red,
                    green,
                    blue,
                    active_high=config.active_high,
                    pwm=pwm,
                    pin_factory=pin_factory,
                )
            )
            return
        led_class = PWMLED if pwm else LED
        self._leds = {
            colour: self._add(
                led_class(pin, active_high=config.active_high, pin_factory=pin_factory)
            )
            for colour, pin in (
                (Colour.GREEN, config.green_pin),
                (Colour.AMBER, config.amber_pin),
                (Colour.RED, config.red_pin),
            )
        }

    def _add(self, device: Any) -> Any:
        self._devices.append(device)
        return device

    def _edge(self, pressed: bool) -> None:
        handler = self._handler
        if handler is not None:
            handler(pressed)

    def show(self, colour: Colour | None, level: float) -> None:
        level = 0.0 if colour is None else max(0.0, min(1.0, level))
        if not self.pwm:
            level = 1.0 if level > 0.0 else 0.0
        if self._rgb is not None:
            r, g, b = RGB[colour] if colour is not None else (0.0, 0.0, 0.0)
            rgb = (round(r * level, 3), round(g * level, 3), round(b * level, 3))
            # Without PWM a channel is on or off: amber (1, 0.4, 0) becomes red + green.
            self._rgb.value = rgb if self.pwm else tuple(1 if c > 0 else 0 for c in rgb)
            return
        for led_colour, led in self._leds.items():
            value = level if led_colour is colour else 0.0
            led.value = value if self.pwm else int(value)

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
