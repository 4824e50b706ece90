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
import warnings
from collections.abc import Callable
from glob import glob
from typing import Any

from gateway.config import PanelSection
from gateway.errors import GatewayError
from gateway.panel.patterns import Colour

log = logging.getLogger(__name__)

#: called with the button's new raw state (True: down), from any thread
EdgeHandler = Callable[[bool], None]


class PanelBackend(abc.ABC):
    name: str = "?"
    has_button: bool = False

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


def default_pin_factory() -> Any:
    """gpiozero's normal factory selection (lgpio, RPi.GPIO, pigpio, native; or
    GPIOZERO_PIN_FACTORY), without installing it as the process-global default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpiozero warns for each factory it falls back from
        try:
            from gpiozero import Device  # only with a gpio panel: ~3 MiB otherwise unused

            return Device._default_pin_factory()
        except Exception as exc:
            raise GatewayError(
                f'panel: backend "gpio" but no GPIO pin factory works here ({exc}); '
                'set [panel] backend = "none" on hardware without GPIO'
            ) from exc


def create_backend(config: PanelSection, pin_factory: Any | None = None) -> PanelBackend:
    """The backend `config.backend` names. `pin_factory` (e.g. gpiozero's MockFactory)
    replaces gpiozero's selection and makes "auto" choose gpio."""
    backend = config.backend
    if backend == "none":
        return NoneBackend()
    if backend == "auto" and pin_factory is None and not gpio_present():
        log.warning("panel: no GPIO hardware found; running without button and light")
        return NoneBackend()
    if pin_factory is None:
        try:
            pin_factory = default_pin_factory()
        except GatewayError as exc:
            if backend == "gpio":
                raise
            log.warning("panel: no usable GPIO (%s); running without button and light", exc)
            return NoneBackend()
    from gateway.panel.gpio import GpioBackend

    return GpioBackend(config, pin_factory)
