"""The Panel: the patient's light and button, whatever the backend.

It subscribes to the daemon's events, runs them through the state machine,
plays the state's pattern on the backend and publishes `PanelShows(state)` when
what it shows changes. The button's presses become commands (`on_measure`,
`on_pairing`), and a stuck button becomes `ButtonStuck`/`ButtonReleased` events.

Given `reopen`, the panel starts dark (its backend is a placeholder) and keeps calling
`reopen` with backoff until it returns the real backend: the GPIO chip may come up
after the hub at boot, and a dark light must never stop the readings (issue 11).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.backoff import Backoff
from gateway.config import PanelSection
from gateway.errors import GatewayError
from gateway.events import (
    ButtonReleased,
    ButtonStuck,
    Event,
    EventBus,
    PanelShows,
    ReadingDelivered,
    ReadingsConfirmed,
)
from gateway.panel.backends import PanelBackend
from gateway.panel.button import ButtonLogic
from gateway.panel.patterns import QUIET, Pattern, dimmed, patterns
from gateway.panel.player import PatternPlayer
from gateway.panel.states import PanelState, PanelStateMachine, StateTimings

log = logging.getLogger(__name__)

#: first and longest pause between attempts to open a GPIO that was not there
REOPEN_INITIAL_S = 1.0
REOPEN_MAX_S = 60.0


def _nothing() -> None:
    pass


class Panel:
    def __init__(
        self,
        config: PanelSection,
        backend: PanelBackend,
        events: EventBus,
        *,
        on_measure: Callable[[], None] = _nothing,
        on_pairing: Callable[[], None] = _nothing,
        pattern_scale: float = 1.0,
        reopen: Callable[[], PanelBackend] | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.events = events
        self.patterns: dict[PanelState, Pattern] = patterns(config.ready_level, pwm=backend.pwm)
        self.player = PatternPlayer(backend, pattern_scale)
        self.timings = StateTimings(
            got_it_s=self.patterns[PanelState.GOT_IT].cycle_s * pattern_scale,
            sent_s=config.sent_s,
            stored_later_s=config.stored_later_s,
            send_wait_s=config.send_wait_s,
            help_after_failures=config.help_after_failures,
            offline_help_s=config.offline_help_s,
        )
        self.button = ButtonLogic(
            bounce_s=config.bounce_s,
            long_s=config.long_press_s,
            stuck_s=config.stuck_s,
            on_short=on_measure,
            on_long=on_pairing,
            on_stuck=lambda held: events.publish(ButtonStuck(held)),
            on_released=lambda: events.publish(ButtonReleased()),
        )
        self.machine: PanelStateMachine | None = None
        self.state: PanelState | None = None
        self._quiet = False  # what the light plays is the quiet-hours version (issue 10)
        self._help: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._reopen = reopen
        self._reopening: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Show "starting", listen to events and the button. Call on the loop."""
        loop = self._loop = asyncio.get_running_loop()
        self.machine = PanelStateMachine(self.timings, loop.time())
        self._unsubscribe = self.events.subscribe(self._on_event)
        self._listen_to_button()
        if self._reopen is not None:
            self._reopening = loop.create_task(self._keep_reopening(self._reopen), name="panel")
        else:
            self._log_backend()
        self._refresh()

    def _log_backend(self) -> None:
        backend = self.backend
        if backend.pin_factory is None:
            log.info("panel: backend %s", backend.name)
        else:
            log.info(
                "panel: backend %s, pin factory %s, %s",
                backend.name,
                backend.pin_factory,
                "PWM" if backend.pwm else "no PWM (on/off patterns)",
            )

    def _listen_to_button(self) -> None:
        if self.backend.has_button and self._loop is not None:
            self.button.start(self._loop, self.backend.button_pressed())
            self.backend.on_edge(self.button.edge_threadsafe)

    async def _keep_reopening(self, reopen: Callable[[], PanelBackend]) -> None:
        backoff = Backoff(REOPEN_INITIAL_S, REOPEN_MAX_S)
        warned = False
        while True:
            delay = backoff.next_delay()
            await asyncio.sleep(delay)
            try:
                backend = reopen()
            except GatewayError as exc:
                # One more WARNING once the pauses are at their longest, DEBUG otherwise:
                # a hub without its light must not fill the journal (issue 11).
                level = logging.DEBUG
                if delay >= REOPEN_MAX_S and not warned:
                    level, warned = logging.WARNING, True
                log.log(level, "panel: still no GPIO (%s); retrying every %g s", exc, REOPEN_MAX_S)
                continue
            break
        log.info("panel: GPIO ready after %d attempt(s)", backoff.failures)
        self._use(backend)

    def _use(self, backend: PanelBackend) -> None:
        """Swap in the backend that finally opened and show the current state on it."""
        placeholder, self.backend = self.backend, backend
        placeholder.close()
        self.player.backend = backend
        self.patterns = patterns(self.config.ready_level, pwm=backend.pwm)
        self._log_backend()
        self._listen_to_button()
        if self.state is not None:
            self.player.play(self._pattern(self.state))

    def _on_event(self, event: Event) -> None:
        if isinstance(event, PanelShows) or self.machine is None or self._loop is None:
            return
        if isinstance(event, ReadingDelivered) and not self.machine.changed_by_delivery(
            event.reading_id
        ):
            return
        if isinstance(event, ReadingsConfirmed) and not self.machine.changed_by_confirmation(
            event.reading_ids
        ):
            return
        self.machine.handle(event, self._loop.time())
        self._refresh()

    def _refresh(self) -> None:
        machine, loop = self.machine, self._loop
        if machine is None or loop is None:
            return
        now = loop.time()
        help_now = machine.help_reasons(now)
        if help_now and not self._help:
            log.warning("panel: needs help: %s", "; ".join(help_now))
            if not machine.quiet:  # no beeps in quiet hours (issue 10)
                self.player.beep(self.patterns[PanelState.NEEDS_HELP].beeps)
        elif self._help and not help_now:
            log.info("panel: help no longer needed")
        self._help = help_now
        state = machine.state(now)
        if state is not self.state or machine.quiet != self._quiet:
            changed = state is not self.state
            self.state, self._quiet = state, machine.quiet
            log.debug("panel: %s%s", state.value, " (quiet hours)" if machine.quiet else "")
            self.player.play(self._pattern(state))
            if changed:
                if state is PanelState.IDENTIFY and not machine.quiet:
                    self.player.beep(self.patterns[state].beeps)  # heard as well as seen
                self.events.publish(PanelShows(state.value))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = machine.next_change(now)
        if at is not None:
            self._timer = loop.call_at(at, self._refresh)

    def _pattern(self, state: PanelState) -> Pattern:
        """What the light plays for `state`: in the care plan's quiet hours nothing but
        "needs help", dimmed (issue 10)."""
        machine = self.machine
        if machine is None or not machine.quiet:
            return self.patterns[state]
        if state is PanelState.NEEDS_HELP:
            return dimmed(self.patterns[state], machine.quiet_level)
        return QUIET

    async def close(self) -> None:
        """Stop listening; lights off and pins released."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None:
            self._timer.cancel()
        if self._reopening is not None:
            self._reopening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopening
        self.backend.on_edge(None)
        self.button.close()
        await self.player.stop()
        self.backend.show(None, 0.0)
        self.backend.buzz(False)
        self.backend.close()
