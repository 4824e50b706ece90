"""`homehub panel-test`: the installer's check of the light, buzzer and button.

Shows every state's pattern in turn, naming it on the console, then waits for a
short and a long press and confirms each. Exit status 0 when both came, 1 when
one did not come in time.
"""

from __future__ import annotations

import asyncio
from typing import TextIO

from gateway.config import PanelSection
from gateway.panel.backends import PanelBackend
from gateway.panel.button import ButtonLogic
from gateway.panel.patterns import patterns
from gateway.panel.player import PatternPlayer
from gateway.panel.states import PanelState

#: the order an installer sees them in: a day in the patient's life
SHOW_ORDER = (
    PanelState.STARTING,
    PanelState.READY,
    PanelState.WAITING,
    PanelState.MEASUREMENT_DUE,
    PanelState.GOT_IT,
    PanelState.SENT,
    PanelState.SENT_OUTSIDE_PLAN,
    PanelState.STORED_LATER,
    PanelState.NEEDS_HELP,
    PanelState.INSTALLER,
    PanelState.IDENTIFY,
)


async def _wait_press(
    presses: asyncio.Queue[str], wanted: str, timeout_s: float, out: TextIO
) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            while (kind := await presses.get()) != wanted:
                print(f"  that was a {kind} press; waiting for a {wanted} one", file=out)
    except TimeoutError:
        print(f"  FAILED: no {wanted} press in {timeout_s:g} s", file=out)
        return False
    return True


async def panel_test(
    config: PanelSection,
    backend: PanelBackend,
    out: TextIO,
    *,
    show_s: float = 5.0,
    timeout_s: float = 60.0,
) -> int:
    player = PatternPlayer(backend)
    table = patterns(config.ready_level, pwm=backend.pwm)
    presses: asyncio.Queue[str] = asyncio.Queue()
    button = ButtonLogic(
        bounce_s=config.bounce_s,
        long_s=config.long_press_s,
        stuck_s=config.stuck_s,
        on_short=lambda: presses.put_nowait("short"),
        on_long=lambda: presses.put_nowait("long"),
        on_stuck=lambda _held: print("  the button seems stuck (held too long)", file=out),
        on_released=lambda: None,
    )
    try:
        factory = "" if backend.pin_factory is None else f", pin factory {backend.pin_factory}"
        pwm = "" if backend.pwm else " (no PWM: on/off patterns)"
        print(
            f"panel-test: backend {backend.name}{factory}{pwm}; each pattern for {show_s:g} s",
            file=out,
        )
        for state in SHOW_ORDER:
            pattern = table[state]
            print(f"  {state.value:<24} {pattern.name}: {pattern.description}", file=out)
            player.play(pattern)
            player.beep(pattern.beeps)
            await asyncio.sleep(show_s)
        await player.stop()
        backend.show(None, 0.0)
        if not backend.has_button:
            print("panel-test: no button configured ([panel] button_pin); done", file=out)
            return 0
        button.start(asyncio.get_running_loop(), backend.button_pressed())
        backend.on_edge(button.edge_threadsafe)
        print("  press the button briefly ...", file=out)
        if not await _wait_press(presses, "short", timeout_s, out):
            return 1
        print("  short press: OK (measure now)", file=out)
        print(f"  now hold the button for {config.long_press_s:g} s ...", file=out)
        if not await _wait_press(presses, "long", timeout_s, out):
            return 1
        print("  long press: OK (installer mode)", file=out)
        print("panel-test: all good", file=out)
        return 0
    finally:
        backend.on_edge(None)
        button.close()
        await player.stop()
        backend.show(None, 0.0)
        backend.buzz(False)
