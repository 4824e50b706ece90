"""A hub killed with SIGKILL in the middle of a glucose transfer loses nothing and
delivers each record once: the cursor is never ahead of the store."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bleak import BleakClient

from gateway.drivers.ble.bumble import BumbleAdapter, BumbleClient
from gateway.sim.ble.air import VirtualAir, tcp_port
from gateway.sim.ble.profiles import GlucoseMeter
from gateway.sim.broker import MosquittoBroker
from tests.ble.test_bumble_backend import find
from tests.helpers import LineReader, Listener, hub_process

WHEN = datetime(2026, 11, 22, 7, 0, 0)


async def test_sigkill_mid_transfer_then_restart(
    tmp_path: Path, broker: MosquittoBroker, listener_factory: Callable[..., Listener]
) -> None:
    air = VirtualAir()
    port = await air.expose("tcp-server:127.0.0.1:0")
    meter = GlucoseMeter(air, "C0:00:00:00:00:0D", "Glucose")
    await meter.start()
    for i in range(50):
        await meter.measure(WHEN.replace(minute=i), 80.0 + i)
    meter.record_delay_s = 0.02
    # Issue 12: the installer paired the meter (the bond in the hub's state directory);
    # the hub then re-encrypts with it, no pairing window needed.
    installer = BumbleAdapter(
        f"tcp-client:127.0.0.1:{tcp_port(port)}",
        keystore_path=tmp_path / "state" / "ble-bonds.json",
    )
    try:
        device = await find(installer, meter.address)
        async with BleakClient(device, backend=BumbleClient, bumble=installer, pair=True):
            pass
    finally:
        await installer.close()
    listener = listener_factory(broker.port)
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[gateway]\nid = "hub-crash"\nstate_dir = "{tmp_path / "state"}"\n\n'
        f"[mqtt]\nport = {broker.port}\nreconnect_min_s = 0.1\n\n"
        f'[ble]\nstack = "bumble"\ntransport = "tcp-client:127.0.0.1:{tcp_port(port)}"\n\n'
        f'[[devices]]\nid = "glu"\ndriver = "ble.glucose"\naddress = "{meter.address}"\n'
    )
    try:
        first = hub_process(config)
        LineReader(first)
        await asyncio.to_thread(listener.wait_for, 10, 30)
        first.send_signal(signal.SIGKILL)  # mid-transfer: no clean shutdown
        await asyncio.to_thread(first.wait, 10)
        sent_before_crash = len(meter.sent_sequences)
        assert sent_before_crash < 50, "the transfer finished before the crash"

        second = hub_process(config)
        output = LineReader(second)
        try:
            docs = await asyncio.to_thread(listener.wait_for, 50, 30)
        finally:
            second.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(second.wait, 15)
        assert code == 0, output.all[-20:]
    finally:
        await meter.close()
        await air.close()
    by_id = {d["id"]: d["values"][0]["value"] for d in docs}
    assert sorted(by_id.values()) == [80.0 + i for i in range(50)]  # none missing, none twice
    # The meter was asked again only from the cursor: at most the records in
    # flight at the kill (sent, not yet committed) were sent a second time.
    resent = len(meter.sent_sequences) - 50
    assert 0 <= resent <= sent_before_crash
    assert sorted(set(meter.sent_sequences)) == list(range(1, 51))
