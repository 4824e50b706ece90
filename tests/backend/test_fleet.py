"""Hub statuses → the hubs table → `homehub-backend fleet`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from homehub_backend.cli import main
from homehub_backend.config import BackendConfig

from gateway.sim.broker import MosquittoBroker
from tests.backend.support import Publisher, ThreadWorker, encode
from tests.helpers import wait_until

Make = Callable[..., tuple[Path, BackendConfig]]


def status(gateway: str, **fields: Any) -> dict[str, Any]:
    return {"schema": "homehub.status/1", "gateway": gateway, "version": "0.1.0", **fields}


def online(gateway: str, unsent: int, oldest: float | None, **fields: Any) -> dict[str, Any]:
    return status(
        gateway,
        state="online",
        published_at="2026-11-22T08:00:00.000Z",
        unsent=unsent,
        oldest_unsent_age_s=oldest,
        **fields,
    )


def fleet_cli(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["fleet", "--config", str(config), *extra]) == 0
    return capsys.readouterr().out


def hubs_seen(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM hubs").fetchone()
        return int(row[0]) if row else 0


def test_fleet_shows_offline_backlog_and_failing_devices(
    broker: MosquittoBroker,
    backend_config: Make,
    database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, config = backend_config(broker.port, fleet={"backlog_age_s": 600.0})
    hub = Publisher(broker.port)
    # Retained before the worker exists: a new subscription gets them (Retain Handling 1).
    hub.publish("homehub/hub-ok/status", encode(online("hub-ok", 0, None)), retain=True)
    hub.publish("homehub/hub-gone/status", encode(online("hub-gone", 3, 30.0)), retain=True)
    worker = ThreadWorker(config).start()
    try:
        wait_until(lambda: hubs_seen(database) == 2, 10, "the retained statuses")
        # hub-gone's Last Will; hub-slow's backlog grows; hub-sick has a failing device.
        hub.publish("homehub/hub-gone/status", encode(status("hub-gone", state="offline")))
        hub.publish("homehub/hub-slow/status", encode(online("hub-slow", 10, 700.0)))
        hub.publish("homehub/hub-slow/status", encode(online("hub-slow", 25, 760.0)))
        devices = {"bp-1": {"state": "failing"}, "oxi-1": {"state": "ok"}}
        hub.publish("homehub/hub-sick/status", encode(online("hub-sick", 0, None, devices=devices)))
        wait_until(lambda: worker.worker.counters.statuses >= 6, 10, "the statuses")
    finally:
        hub.close()
        worker.stop()

    hubs = {h["gateway"]: h for h in json.loads(fleet_cli(path, capsys, "--json"))["hubs"]}
    assert set(hubs) == {"hub-ok", "hub-gone", "hub-slow", "hub-sick"}
    assert not hubs["hub-gone"]["online"] and hubs["hub-gone"]["offline_since"]
    assert hubs["hub-gone"]["unsent"] == 3  # the Last Will has no counts: the last known kept
    assert hubs["hub-slow"]["backlog"] and hubs["hub-slow"]["growing"]
    assert hubs["hub-slow"]["unsent"] == 25 and hubs["hub-slow"]["previous_unsent"] == 10
    assert hubs["hub-sick"]["failing_devices"] == ["bp-1"]
    assert not hubs["hub-ok"]["attention"]
    assert all(hubs[g]["attention"] for g in ("hub-gone", "hub-slow", "hub-sick"))

    lines = fleet_cli(path, capsys).splitlines()
    assert lines[0].split()[:3] == ["HUB", "STATE", "SINCE"]
    # Those that need attention first, the offline one on top.
    assert lines[1].startswith("hub-gone") and "OFFLINE" in lines[1] and " ago" in lines[1]
    assert lines[-2].startswith("hub-ok")
    assert "growing" in next(line for line in lines if line.startswith("hub-slow"))
    assert lines[-1] == "4 hub(s), 3 need attention"
