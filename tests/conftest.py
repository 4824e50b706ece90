"""Fixtures: a real mosquitto on a free loopback port, config files, listeners."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.drivers.registry import DriverRegistry
from gateway.sim.broker import MosquittoBroker
from tests.helpers import Listener
from tests.virtual_time import virtual  # noqa: F401 - the panel's virtual-time fixture


@pytest.fixture
def registry() -> DriverRegistry:
    return DriverRegistry.from_entry_points()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    started: list[MosquittoBroker] = []

    def make(**kwargs: Any) -> MosquittoBroker:
        # A subscriber on '#' unless a test asks for none: without one every reading
        # gets PUBACK 0x10, which is not delivered (issue 9).
        kwargs.setdefault("subscriber", True)
        broker = MosquittoBroker(tmp_path / f"broker{len(started)}", **kwargs)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return broker_factory()


@pytest.fixture
def listener_factory() -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def make(port: int, session: str | None = None) -> Listener:
        listener = Listener(port=port, session=session).start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop()
