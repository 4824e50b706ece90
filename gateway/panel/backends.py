"""Panel hardware backends: one interface, `gpio` (gpiozero, gpio.py) and `none`.

A backend shows one colour at one brightness, switches the buzzer, and reports
the button's raw edges. It knows nothing of states or timing. `create_backend`
picks one from `[panel] backend`; the gpio backend takes its gpiozero pin
factory as an argument and never sets gpiozero's process-global
`Device.pin_factory`.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable
from glob import glob
from pathlib import Path
from typing import Any

from gateway.config import PanelSection
from gateway.panel.factory import choose_pin_factory
from gateway.panel.patterns import Colour

log = logging.getLogger(__name__)

#: called with the button's new raw state (True: down), from any thread
EdgeHandler = Callable[[bool], None]


class PanelBackend(abc.ABC):
    name: str = "?"
    has_button: bool = False
    #: whether `show` can dim (PWM); without it any level above 0 is full on, and the
    #: panel plays the on/off variants of the patterns (gateway/panel/patterns.py)
    pwm: bool = True
    #: the gpiozero pin factory's name ("lgpio", "mock", ...), None without one
    pin_factory: str | None = None

    @abc.abstractmethod
    def show(self, colour: Colour | None, level: float) -> None:
        """Light `colour` at `level` (0..1); None or 0 is dark."""

    def buzz(self, on: bool) -> None:  # noqa: B027 - optional hardware
        """Switch the buzzer (if fitted)."""

    def on_edge(self, handler: EdgeHandler | None) -> None:  # noqa: B027
        """Report button edges to `handler` (on the backend's own thread)."""

    def button_pressed(self) -> bool:
        """Whether the button is down right now."""
        return False

    def close(self) -> None:  # noqa: B027
        """Dark, silent, pins released."""


class NoneBackend(PanelBackend):
    """No hardware: the panel logs its state changes at DEBUG."""

    name = "none"

    def show(self, colour: Colour | None, level: float) -> None:
        pass


def gpio_present() -> bool:
    """GPIO hardware (a gpiochip or gpiomem device), or a pin factory chosen by env."""
    if os.environ.get("GPIOZERO_PIN_FACTORY"):
        return True
    return bool(glob("/dev/gpiochip*") or os.path.exists("/dev/gpiomem"))


def create_backend(
    config: PanelSection, pin_factory: Any | None = None, *, work_dir: Path | None = None
) -> PanelBackend:
    """The backend `config.backend` names. `pin_factory` (e.g. gpiozero's MockFactory)
    replaces our selection (gateway/panel/factory.py) and makes "auto" choose gpio.
    `work_dir` is where lgpio keeps its notification FIFO (the hub's state directory;
    None: a private temporary one). Raises GatewayError when GPIO is expected ("gpio", or
    "auto" with GPIO hardware present) but no pin factory works or the pins do not open:
    `create_panel` then retries; `panel-test` reports it."""
    backend = config.backend
    if backend == "none":
        return NoneBackend()
    if backend == "auto" and pin_factory is None and not gpio_present():
        log.warning("panel: no GPIO hardware found; running without button and light")
        return NoneBackend()
    if pin_factory is None:
        pin_factory = choose_pin_factory(work_dir)  # GatewayError when none works
    from gateway.panel.gpio import GpioBackend

    return GpioBackend(config, pin_factory)
