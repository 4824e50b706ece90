"""The panel wired into the daemon: a simulated device, a real mosquitto, mock pins.

The patient presses, measures (the simulated device answers the "measure now"
window), and watches the light: "got it", then "sent" only once the broker's
PUBACK is in; with the broker stopped, "stored, will send later".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPWMPin

from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import (
    Event,
    EventBus,
    PanelShows,
    ReadingDelivered,
    ReadingStored,
    UplinkDown,
    UplinkUp,
    WindowOpened,
)
from gateway.sim.broker import MosquittoBroker
from tests.helpers import load, sim_device, write_config
from tests.panel_helpers import BUTTON_PIN, RGB_PINS


class Recorder:
    """Every event in order; lets a test await one."""

    def __init__(self, events: EventBus) -> None:
        self.seen: list[Event] = []
        self._changed = asyncio.Event()
        events.subscribe(self._add)

    def _add(self, event: Event) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait(
        self, predicate: Callable[[Event], bool], since: int = 0, timeout_s: float = 10
    ) -> int:
        """Index of the first event at or after `since` that satisfies `predicate`."""
        start = since
        async with asyncio.timeout(timeout_s):
            while True:
                for index in range(start, len(self.seen)):
                    if predicate(self.seen[index]):
                        return index
                start = len(self.seen)
                self._changed.clear()
                await self._changed.wait()

    async def shown(self, state: str, since: int = 0, timeout_s: float = 10) -> int:
        return await self.wait(
            lambda e: isinstance(e, PanelShows) and e.state == state, since, timeout_s
        )

    def states(self, since: int = 0) -> list[str]:
        return [e.state for e in self.seen[since:] if isinstance(e, PanelShows)]


@contextlib.asynccontextmanager
async def hub_with_panel(
    tmp_path: Path, broker: MosquittoBroker
) -> AsyncIterator[tuple[Hub, Recorder, MockFactory]]:
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", trigger="measure", interval_s=0.3)],
        mqtt={"reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
    )
    text = config.read_text() + '\n[panel]\nbackend = "gpio"\nsent_s = 1.0\nstored_later_s = 1.0\n'
    config.write_text(text)
    factory = MockFactory(pin_class=MockPWMPin)
    events = EventBus()
    recorder = Recorder(events)
    hub = Hub(load(config), DriverRegistry.from_entry_points(), events=events, pin_factory=factory)
    task = asyncio.create_task(hub.run())
    try:
        yield hub, recorder, factory
    finally:
        hub.stop()
        await asyncio.wait_for(task, 8)


async def press_button(factory: MockFactory) -> None:
    """A patient's press: 150 ms down (from another thread, as gpiozero's come)."""
    pin: Any = factory.pin(BUTTON_PIN)
    await asyncio.to_thread(pin.drive_low)
    await asyncio.sleep(0.15)
    await asyncio.to_thread(pin.drive_high)


async def test_press_measure_got_it_then_sent_after_the_puback(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_with_panel(tmp_path, broker) as (hub, rec, factory):
        await rec.wait(lambda e: isinstance(e, UplinkUp))
        await rec.shown("ready")
        assert rec.states() == ["starting", "ready"]
        mark = len(rec.seen)
        await press_button(factory)
        await rec.wait(lambda e: isinstance(e, WindowOpened) and e.kind == "measure", mark)
        assert hub.measure.is_open
        waiting = await rec.shown("waiting for you", mark)
        stored = await rec.wait(lambda e: isinstance(e, ReadingStored), mark)
        got_it = await rec.shown("got it", waiting)
        sent = await rec.shown("sent", got_it)
        delivered = await rec.wait(lambda e: isinstance(e, ReadingDelivered), mark)
        assert waiting < stored < got_it < sent and delivered < sent
        await rec.shown("ready", sent)  # sent_s = 1.0 here
        assert rec.states(mark) == ["waiting for you", "got it", "sent", "ready"]
        # The light really changed: bright green while "sent" (checked by its history).
        green: Any = factory.pin(RGB_PINS[1])
        assert 1.0 in [float(s.state) for s in green.states]
    # Stopped: dark.
    assert all(float(factory.pin(n).state) == 0.0 for n in RGB_PINS)  # type: ignore[attr-defined]


async def test_broker_stopped_stored_will_send_later_then_sent_when_back(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_with_panel(tmp_path, broker) as (_hub, rec, factory):
        await rec.wait(lambda e: isinstance(e, UplinkUp))
        await rec.shown("ready")
        broker.stop()
        await rec.wait(lambda e: isinstance(e, UplinkDown))
        mark = len(rec.seen)
        await press_button(factory)
        waiting = await rec.shown("waiting for you", mark)
        await rec.wait(lambda e: isinstance(e, ReadingStored), mark)
        got_it = await rec.shown("got it", waiting)
        later = await rec.shown("stored, will send later", got_it)
        await rec.shown("ready", later)
        assert rec.states(mark) == ["waiting for you", "got it", "stored, will send later", "ready"]
        assert not any(isinstance(e, ReadingDelivered) for e in rec.seen[mark:])
        # The broker comes back: the stored reading goes out, and only now "sent".
        back = len(rec.seen)
        broker.start()
        delivered = await rec.wait(lambda e: isinstance(e, ReadingDelivered), back, 15)
        sent = await rec.shown("sent", back)
        assert delivered < sent
