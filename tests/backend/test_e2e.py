"""Real hubs (`homehub run` processes on simulated devices) → mosquitto → ingest → PostgreSQL.

Today's hub does not read confirmations yet (issue 9, part 2): the test shows that every
reading each hub stored is in PostgreSQL once and that its id was confirmed back on the
hub's confirm topic.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
from homehub_backend.config import BackendConfig

from gateway.sim.broker import MosquittoBroker
from tests.backend.support import ConfirmCollector, ThreadWorker
from tests.helpers import hub_process, sim_device, wait_until, write_config

Make = Callable[..., tuple[Path, BackendConfig]]
HUBS = 5
PER_HUB = 1000


def hub_ids(state_dir: Path) -> set[str]:
    path = state_dir / "readings.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0] for r in db.execute("SELECT id FROM readings")}
    finally:
        db.close()


def stored_by_gateway(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        out: dict[str, list[str]] = {}
        for gateway, rid in conn.execute("SELECT gateway, id FROM readings"):
            out.setdefault(gateway, []).append(rid)
        return out


def test_5000_readings_from_5_hubs_are_stored_once_and_confirmed(
    tmp_path: Path, broker: MosquittoBroker, backend_config: Make, database: str
) -> None:
    gateways = [f"hub-{n}" for n in range(HUBS)]
    _, config = backend_config(broker.port)
    confirms = ConfirmCollector(broker.port, gateways).start()
    worker = ThreadWorker(config).start()
    hubs = []
    try:
        for gateway in gateways:
            state = tmp_path / gateway
            cfg = write_config(
                tmp_path / f"{gateway}.toml",
                broker=broker,
                state_dir=state,
                gateway_id=gateway,
                devices=[
                    sim_device("bp-1", "blood_pressure", interval_s=0.0, count=PER_HUB, burst=100)
                ],
                mqtt={"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "max_inflight": 100},
            )
            hubs.append((gateway, state, hub_process(cfg, log_level="WARNING")))
        wait_until(
            lambda: sum(len(v) for v in stored_by_gateway(database).values()) >= HUBS * PER_HUB,
            60,
            "5000 readings in PostgreSQL",
            step_s=0.2,
        )
        expected = {g: hub_ids(state) for g, state, _ in hubs}
        confirms.wait_for(set().union(*expected.values()), timeout_s=20)
    finally:
        for _, _, process in hubs:
            process.terminate()
        for _, _, process in hubs:
            process.wait(10)
        worker.stop()
        confirms.stop()
    stored = stored_by_gateway(database)
    for gateway in gateways:
        assert len(expected[gateway]) == PER_HUB
        assert not [i for i, n in Counter(stored[gateway]).items() if n > 1]
        assert set(stored[gateway]) == expected[gateway]
        # Confirmed to this hub, and only this hub's readings.
        assert set(confirms.ids[gateway]) == expected[gateway]
    assert worker.worker.counters.rejected == 0
