"""Renewing the hub's certificate over the air (issue 14 part 2), real mosquitto with
`require_certificate true` and an openssl-made CA.

The backend (tests.test_commands.Backend) talks to the broker on a second, plain
listener; the hub on the TLS one with its client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.daemon import Hub
from gateway.events import Event, EventBus, ReadingDelivered, UplinkUp
from gateway.identity import (
    RenewalRefused,
    check_renewal,
    finish_interrupted_install,
    install_renewal,
    make_renewal_request,
    pending_key_path,
    provision,
)
from gateway.sim.broker import MosquittoBroker, free_port
from tests.helpers import next_event, running_hub, sim_device, write_config
from tests.test_commands import Backend, until_answered
from tests.test_identity_tls import sign, sign_with_openssl
from tests.test_tls import make_pki

GW = "hub-test"


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, Path]]:
    """The care organisation's CA, and another one the broker does not trust."""
    base = tmp_path_factory.mktemp("renewal")
    return make_pki(base / "pki"), make_pki(base / "other")


def csr_file(tmp_path: Path, pem: str, name: str = "renew.csr") -> Path:
    path = tmp_path / name
    path.write_text(pem)
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def not_after(pem: bytes) -> datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


@dataclass
class Setup:
    hub: Hub
    backend: Backend
    events: asyncio.Queue[Event]
    identity: Path  # the directory of cert_file and key_file
    cert: Path
    key: Path

    async def call(self, name: str, args: dict[str, Any] | None = None, t: float = 20) -> Any:
        return await self.backend.response(self.backend.send(name, args), t)

    async def delivers(self, timeout_s: float = 15.0) -> None:
        """A reading stored from now on reaches the broker (the hub is connected)."""
        while not self.events.empty():
            self.events.get_nowait()
        await next_event(self.events, ReadingDelivered, timeout_s)


@contextlib.asynccontextmanager
async def renewing_hub(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    pki: dict[str, Path],
    *,
    hub_ca: Path | None = None,
) -> AsyncIterator[Setup]:
    """A hub with a provisioned, CA-signed identity on a broker requiring certificates.

    `hub_ca`: the hub's `[mqtt] ca_file` (default: the broker's CA).
    """
    identity = tmp_path / "identity"
    made = provision(GW, identity / f"{GW}.key", identity / f"{GW}.csr")
    now = datetime.now(UTC)
    cert = sign(
        made.csr_path,
        pki,
        identity / f"{GW}.crt",
        now - timedelta(hours=1),
        now + timedelta(days=1),
    )
    made.csr_path.unlink()
    plain = free_port()
    broker = broker_factory(
        tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]),
        extra=[f"listener {plain} 127.0.0.1"],
    )
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        gateway_id=GW,
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.3)],
        mqtt={
            "ca_file": hub_ca or pki["ca.crt"],
            "cert_file": cert,
            "key_file": made.key_path,
            "reconnect_min_s": 0.1,
            "connect_timeout_s": 3.0,
        },
    )
    bus = EventBus()
    queue, _ = bus.queue()
    async with running_hub(config, bus) as hub:
        await next_event(queue, UplinkUp, 15)
        backend = Backend(plain, GW)
        try:
            await until_answered(backend)
            yield Setup(hub, backend, queue, identity, cert, made.key_path)
        finally:
            backend.close()


async def test_renewal_over_the_air_end_to_end(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    pkis: tuple[dict[str, Path], dict[str, Path]],
) -> None:
    pki, _ = pkis
    async with renewing_hub(tmp_path, broker_factory, pki) as s:
        old_key, old_cert = s.key.read_bytes(), s.cert.read_bytes()
        before = s.hub.status.tls
        assert before is not None
        first = await s.call("cert/csr")
        assert first["ok"], first
        assert first["result"]["replaced_pending"] is False
        again = await s.call("cert/csr")
        assert again["result"]["replaced_pending"] is True  # said so: the first is useless
        assert "PRIVATE KEY" not in str(first) + str(again)
        pem = again["result"]["csr"]
        request = x509.load_pem_x509_csr(pem.encode())
        assert request.subject.rfc4514_string() == f"CN={GW}"
        pending = pending_key_path(s.key)
        assert stat.S_IMODE(pending.stat().st_mode) == 0o600
        new_key = pending.read_bytes()
        assert s.key.read_bytes() == old_key  # nothing in use changed yet

        signed = sign_with_openssl(csr_file(tmp_path, pem), pki, tmp_path / "new.crt", days=5)
        done = await s.call("cert/install", {"certificate": signed.read_text()})
        assert done["ok"], done
        assert done["result"]["installed"] is True and done["result"]["rolled_back"] is False
        # In place, the old pair kept beside it; the key private.
        assert s.key.read_bytes() == new_key and not pending.exists()
        assert x509.load_pem_x509_certificate(s.cert.read_bytes()) == (
            x509.load_pem_x509_certificate(signed.read_bytes())
        )
        assert (s.identity / f"{GW}.key.old").read_bytes() == old_key
        assert (s.identity / f"{GW}.crt.old").read_bytes() == old_cert
        assert stat.S_IMODE(s.key.stat().st_mode) == 0o600
        # The status tells the new certificate; the hub delivers with it.
        after = s.hub.status.tls
        assert after is not None and after["cert_expires_at"] != before["cert_expires_at"]
        assert not_after(s.cert.read_bytes()) > not_after(old_cert)
        await s.delivers()


async def test_a_certificate_the_broker_refuses_is_rolled_back_and_the_hub_delivers(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    pkis: tuple[dict[str, Path], dict[str, Path]],
) -> None:
    pki, other = pkis
    # The hub trusts both CAs (a bundle), the broker only the first: the hub's own
    # check passes, the broker refuses the TLS handshake.
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(pki["ca.crt"].read_bytes() + other["ca.crt"].read_bytes())
    async with renewing_hub(tmp_path, broker_factory, pki, hub_ca=bundle) as s:
        before, tls_before = snapshot(s.identity), s.hub.status.tls
        pem = (await s.call("cert/csr"))["result"]["csr"]
        pending = pending_key_path(s.key).read_bytes()
        wrong = sign_with_openssl(csr_file(tmp_path, pem), other, tmp_path / "other.crt")
        correlation = s.backend.send("cert/install", {"certificate": wrong.read_text()})
        done = await s.backend.response(correlation, 30)
        assert done["ok"], done
        # The broker delivers the request again on the new connection (never acknowledged
        # on the one the install ended): answered again, byte for byte, nothing applied.
        first, again = await asyncio.to_thread(s.backend.wait_raw, correlation, 10, 2)
        assert first == again
        result = done["result"]
        assert result["installed"] is False and result["rolled_back"] is True
        assert result["reason"]
        # The pair in use is the old one again; the new key is pending again.
        now = snapshot(s.identity)
        for name in (f"{GW}.key", f"{GW}.crt"):
            assert now[name] == before[name]
        assert now[f"{GW}.key.new"] == pending
        assert s.hub.status.tls == tls_before  # the old certificate's validity
        await s.delivers()


async def test_wrong_key_wrong_ca_expired_or_malformed_refused_before_any_change(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    pkis: tuple[dict[str, Path], dict[str, Path]],
) -> None:
    pki, other = pkis
    async with renewing_hub(tmp_path, broker_factory, pki) as s:
        nothing = await s.call(
            "cert/install", {"certificate": s.cert.read_text()}
        )  # no cert/csr yet
        assert nothing["error"]["code"] == "invalid_args"
        assert "no pending key" in nothing["error"]["message"]
        pem = (await s.call("cert/csr"))["result"]["csr"]
        request = csr_file(tmp_path, pem)
        before = snapshot(s.identity)
        now = datetime.now(UTC)
        # A certificate for another key: one made from an older request.
        stale = provision(GW, tmp_path / "x" / "k.key", tmp_path / "x" / "k.csr").csr_path
        cases: list[tuple[Path | str, str]] = [
            (
                sign_with_openssl(stale, pki, tmp_path / "stale.crt"),
                "not for the hub's pending key",
            ),
            (sign_with_openssl(request, other, tmp_path / "o.crt"), "does not chain to a CA"),
            (
                sign(
                    request,
                    pki,
                    tmp_path / "e.crt",
                    now - timedelta(days=3),
                    now - timedelta(days=1),
                ),
                "expired on",
            ),
            (
                sign(
                    request,
                    pki,
                    tmp_path / "n.crt",
                    now + timedelta(days=1),
                    now + timedelta(days=9),
                ),
                "not valid yet",
            ),
            ("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "not a PEM"),
        ]
        for certificate, why in cases:
            text = certificate if isinstance(certificate, str) else certificate.read_text()
            answer = await s.call("cert/install", {"certificate": text})
            assert not answer["ok"], why
            assert answer["error"]["code"] == "invalid_args"
            assert why in answer["error"]["message"], (why, answer["error"])
            assert answer["error"]["fields"][0]["path"] == "args.certificate"
            assert snapshot(s.identity) == before, why
        extra = await s.call("cert/install", {"certificate": "x", "key": "no"})
        assert extra["error"]["fields"][0]["path"] == "args.key"
        await s.delivers()


# -- without a broker --------------------------------------------------------------------


def test_not_yet_valid_on_a_wrong_clock_blames_the_clock(
    tmp_path: Path, pkis: tuple[dict[str, Path], dict[str, Path]]
) -> None:
    pki, _ = pkis
    key = tmp_path / "hub.key"
    provision(GW, key, tmp_path / "hub.csr")
    request = make_renewal_request(GW, key, tmp_path / "hub.crt")
    now = datetime.now(UTC)
    cert = sign(
        csr_file(tmp_path, request.csr_pem), pki, tmp_path / "n.crt", now, now + timedelta(days=9)
    )
    with pytest.raises(RenewalRefused) as refused:
        check_renewal(
            GW,
            cert.read_text(),
            None,
            key_path=key,
            ca_file=pki["ca.crt"],
            now=datetime(1970, 1, 2, tzinfo=UTC),  # a Pi before NTP
        )
    assert "the hub's clock is wrong, not the certificate" in refused.value.message


def test_a_power_cut_between_the_two_renames_is_finished_at_start(
    tmp_path: Path, pkis: tuple[dict[str, Path], dict[str, Path]]
) -> None:
    pki, _ = pkis
    key, cert_path = tmp_path / "hub.key", tmp_path / "hub.crt"
    provision(GW, key, tmp_path / "hub.csr")
    now = datetime.now(UTC)
    sign(tmp_path / "hub.csr", pki, cert_path, now, now + timedelta(days=1))
    request = make_renewal_request(GW, key, cert_path)
    new = sign(
        csr_file(tmp_path, request.csr_pem), pki, tmp_path / "new.crt", now, now + timedelta(days=2)
    )
    assert not finish_interrupted_install(cert_path, key)  # a pending key alone: nothing to do
    # The certificate renamed into place, the key not yet: as a power cut leaves it.
    cert_path.write_bytes(new.read_bytes())
    assert finish_interrupted_install(cert_path, key)
    installed_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert (
        installed_key.public_key() == x509.load_pem_x509_certificate(new.read_bytes()).public_key()
    )
    assert not pending_key_path(key).exists()
    assert not finish_interrupted_install(cert_path, key)


def test_rollback_puts_back_the_old_pair_and_the_pending_key(
    tmp_path: Path, pkis: tuple[dict[str, Path], dict[str, Path]]
) -> None:
    pki, _ = pkis
    key, cert_path = tmp_path / "hub.key", tmp_path / "hub.crt"
    provision(GW, key, tmp_path / "hub.csr")
    now = datetime.now(UTC)
    sign(tmp_path / "hub.csr", pki, cert_path, now, now + timedelta(days=1))
    before = {p: p.read_bytes() for p in (key, cert_path)}
    request = make_renewal_request(GW, key, cert_path)
    pending = pending_key_path(key).read_bytes()
    new = sign(
        csr_file(tmp_path, request.csr_pem), pki, tmp_path / "new.crt", now, now + timedelta(days=2)
    )
    checked = check_renewal(
        GW,
        new.read_text(),
        None,
        key_path=key,
        ca_file=pki["ca.crt"],
        now=now + timedelta(seconds=1),
    )
    installed = install_renewal(checked, cert_path=cert_path, key_path=key)
    assert key.read_bytes() == pending
    installed.rollback()
    assert {p: p.read_bytes() for p in (key, cert_path)} == before
    assert pending_key_path(key).read_bytes() == pending
    for path in (key, cert_path, pending_key_path(key)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
