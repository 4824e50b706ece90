"""BLE blood pressure: from the virtual cuff's first advertisement to the broker's PUBACK.

50 runs on one hub (in process, Bumble stack over a virtual controller on TCP, a
real mosquitto): p50/p99 of the whole path and the share spent connecting
(advertisement -> link up) and discovering (link up -> the hub subscribed, which
includes service discovery and the time write).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench.common import percentile, private_broker
from gateway.config import validate_config
from gateway.daemon import Hub
from gateway.drivers.registry import DriverRegistry
from gateway.events import Event, ReadingDelivered
from gateway.sim.ble import encode
from gateway.sim.ble.air import VirtualAir, tcp_port
from gateway.sim.ble.profiles import BloodPressureMonitor
from gateway.sim.broker import MosquittoBroker

RUNS = 50


class TimedCuff(BloodPressureMonitor):
    """The virtual cuff, noting when the link comes up and when the hub subscribed."""

    connected_at = 0.0
    subscribed_at = 0.0

    def _on_connection(self, connection):  # type: ignore[no-untyped-def]
        self.connected_at = time.perf_counter()
        super()._on_connection(connection)

    async def on_subscribed(self, connection, characteristic):  # type: ignore[no-untyped-def]
        self.subscribed_at = time.perf_counter()
        await super().on_subscribed(connection, characteristic)


async def run(workdir: Path) -> dict[str, float]:
    with private_broker(workdir) as broker:
        return await _run(workdir, broker)


async def _run(workdir: Path, broker: MosquittoBroker) -> dict[str, float]:
    air = VirtualAir()
    port = tcp_port(await air.expose("tcp-server:127.0.0.1:0"))
    cuff = TimedCuff(air, "C0:BE:AC:00:00:01", "BP-bench")
    await cuff.start()
    registry = DriverRegistry.from_entry_points()
    config = validate_config(
        {
            "gateway": {"id": "bench", "state_dir": str(workdir / "state")},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "unsynced_hold_s": 0.0},
            "ble": {"stack": "bumble", "transport": f"tcp-client:127.0.0.1:{port}"},
            "panel": {"backend": "none"},
            "devices": [
                {
                    "id": "bp",
                    "driver": "ble.blood_pressure",
                    "address": cuff.address,
                    "cooldown_s": 0.0,
                }
            ],
        },
        registry,
    )
    delivered: asyncio.Queue[float] = asyncio.Queue()

    def on_event(event: Event) -> None:
        if isinstance(event, ReadingDelivered):
            delivered.put_nowait(time.perf_counter())

    hub = Hub(config, registry)
    hub.events.subscribe(on_event)
    task = asyncio.create_task(hub.run())
    totals, connects, discovers = [], [], []
    try:
        for i in range(RUNS):
            started = time.perf_counter()
            # Each measurement its own device timestamp: the cuff's record identity.
            when = datetime.now().replace(microsecond=0) - timedelta(minutes=RUNS - i)
            await cuff.measure(encode.blood_pressure(120 + i % 10, 80, 93, when=when))
            done = await asyncio.wait_for(delivered.get(), 30)
            totals.append(done - started)
            connects.append(cuff.connected_at - started)
            discovers.append(cuff.subscribed_at - cuff.connected_at)
            await asyncio.wait_for(cuff.disconnected.wait(), 10)
    finally:
        hub.stop()
        await asyncio.wait_for(task, 10)
        await cuff.close()
        await air.close()
    p50, p99 = percentile(totals, 50), percentile(totals, 99)
    connect_share = statistics.median(connects) / statistics.median(totals)
    discover_share = statistics.median(discovers) / statistics.median(totals)
    print(f"ble blood pressure, advertisement -> PUBACK, {RUNS} runs:")
    print(f"  p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms")
    print(
        f"  connecting {connect_share:5.1%} of the median, "
        f"discovering (+ time write, subscribe) {discover_share:5.1%}"
    )
    return {
        "runs": RUNS,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "connect_share": connect_share,
        "discover_share": discover_share,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="homehub-bench-") as tmp:
        asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    main()
