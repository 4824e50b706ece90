"""BLE fixtures: a virtual air with the hub's controller on a TCP port, and the hub's adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.drivers.ble.bumble import BumbleAdapter
from gateway.sim.ble.air import VirtualAir, tcp_port


@dataclass
class Air:
    air: VirtualAir
    transport: str  # what the hub's [ble] transport would say


@pytest.fixture
async def air() -> AsyncIterator[Air]:
    virtual = VirtualAir()
    transport = await virtual.expose("tcp-server:127.0.0.1:0")
    yield Air(virtual, f"tcp-client:127.0.0.1:{tcp_port(transport)}")
    await virtual.close()


@pytest.fixture
async def adapter(air: Air) -> AsyncIterator[BumbleAdapter]:
    bumble = BumbleAdapter(air.transport)
    yield bumble
    await bumble.close()
