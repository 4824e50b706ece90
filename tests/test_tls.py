"""TLS with client certificates: the way a hub in a home reaches its backend."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.events import EventBus, ReadingDelivered, UplinkUp
from gateway.sim.broker import MosquittoBroker
from tests.helpers import next_event, running_hub, sim_device, write_config


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1, and a client certificate."""
    directory.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=directory,
        )
        ext = directory / f"{name}.ext"
        ext.write_text(extra + "\n" if extra else "basicConstraints=CA:FALSE\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.name,
            "-out",
            f"{name}.crt",
            cwd=directory,
        )
    return {p.name: p for p in directory.iterdir()}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("tls") / "pki")


async def test_readings_flow_over_tls_with_client_certificate(
    tmp_path: Path, pki: dict[str, Path], broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory(tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]))
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=3)],
        mqtt={
            "ca_file": pki["ca.crt"],
            "cert_file": pki["client.crt"],
            "key_file": pki["client.key"],
        },
    )
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events):
        for _ in range(3):
            await next_event(queue, ReadingDelivered, 15)


async def test_without_client_certificate_the_broker_refuses_and_nothing_is_delivered(
    tmp_path: Path, pki: dict[str, Path], broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory(tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]))
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=1)],
        mqtt={"ca_file": pki["ca.crt"], "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
    )
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events) as hub:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                while True:
                    event = await queue.get()
                    assert not isinstance(event, UplinkUp | ReadingDelivered)
        assert hub.store is not None
        assert (await hub.store.stats()).unsent == 1


async def test_a_certificate_from_another_ca_is_refused_then_the_fixed_one_delivers_everything(
    tmp_path: Path,
    pki: dict[str, Path],
    broker_factory: Callable[..., MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14: the broker refuses the hub's certificate (signed by another CA): nothing is
    marked delivered, the hub keeps running and says why; with the right one in place (the
    same files, as an installer or a renewal replaces them) everything goes."""
    other = make_pki(tmp_path / "other")
    broker = broker_factory(tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]))
    cert, key = tmp_path / "hub.crt", tmp_path / "hub.key"
    cert.write_bytes(other["client.crt"].read_bytes())
    key.write_bytes(other["client.key"].read_bytes())
    key.chmod(0o600)
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=2)],
        mqtt={
            "ca_file": pki["ca.crt"],
            "cert_file": cert,
            "key_file": key,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 0.5,
        },
    )
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events) as hub:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                while True:
                    event = await queue.get()
                    assert not isinstance(event, UplinkUp | ReadingDelivered)
        assert hub.store is not None
        stats = await hub.store.stats()
        assert (stats.total, stats.unsent) == (2, 2)
        refused = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("gateway.uplink")
        ]
        assert any("may refuse the hub's certificate (hub.crt)" in m for m in refused), refused
        # The right certificate, in the same files: the next connection uses it.
        cert.write_bytes(pki["client.crt"].read_bytes())
        key.write_bytes(pki["client.key"].read_bytes())
        for _ in range(2):
            await next_event(queue, ReadingDelivered, 15)
        assert hub.uplink is not None
        await hub.uplink.flush_deliveries()  # marks are written in batches (issue 11)
        assert (await hub.store.stats()).unsent == 0
