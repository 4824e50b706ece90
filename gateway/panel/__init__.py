"""The patient's panel: one measure button and a status light (issue 5).

`Panel` is the one public interface; backends (`gpio` via gpiozero, `none`) sit
behind it. The displayed state comes from a pure state machine over the daemon's
events (`gateway.panel.states`), the patterns are data (`gateway.panel.patterns`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import PanelSection
from gateway.errors import GatewayError
from gateway.events import EventBus
from gateway.panel.backends import NoneBackend, PanelBackend, create_backend
from gateway.panel.panel import REOPEN_MAX_S, Panel
from gateway.panel.patterns import Colour, Pattern, Step, patterns
from gateway.panel.states import PRIORITY, PanelState, PanelStateMachine, StateTimings

__all__ = [
    "PRIORITY",
    "Colour",
    "GpioBackend",
    "NoneBackend",
    "Panel",
    "PanelBackend",
    "PanelState",
    "PanelStateMachine",
    "Pattern",
    "StateTimings",
    "Step",
    "create_backend",
    "create_panel",
    "patterns",
]

log = logging.getLogger(__name__)


def create_panel(
    config: PanelSection,
    events: EventBus,
    *,
    pin_factory: Any | None = None,
    work_dir: Path | None = None,
    on_measure: Callable[[], None],
    on_pairing: Callable[[], None],
) -> Panel:
    """The panel `config` describes; `pin_factory` (gpiozero) is passed in, never global;
    `work_dir` holds lgpio's notification FIFO (the hub's state directory).

    GPIO that is expected (`backend = "gpio"`, or "auto" where GPIO hardware exists) but
    does not open is not fatal: the panel starts dark, logs a WARNING naming why, and
    retries with backoff (1 s doubling to 60 s) until it opens (issue 11)."""

    def reopen() -> PanelBackend:
        return create_backend(config, pin_factory, work_dir=work_dir)

    try:
        backend, retry = reopen(), None
    except GatewayError as exc:
        log.warning("%s; running dark, retrying every %g s at most", exc, REOPEN_MAX_S)
        backend, retry = NoneBackend(), reopen
    return Panel(
        config, backend, events, on_measure=on_measure, on_pairing=on_pairing, reopen=retry
    )


def __getattr__(name: str) -> Any:
    # gpiozero costs ~3 MiB of a hub's memory: imported only when a gpio panel is used.
    if name == "GpioBackend":
        from gateway.panel.gpio import GpioBackend

        return GpioBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
