"""The hub's identity against a real mosquitto with `require_certificate` (issue 14).

`homehub provision` makes the key on the hub and a CSR; the test CA (made by openssl)
signs it; the hub connects with it.
"""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from homehub_contract import load_schema

from gateway.events import (
    CertificateOk,
    CertificateTrouble,
    EventBus,
    HubStarted,
    ReadingDelivered,
    UplinkUp,
)
from gateway.identity import check_certificate
from gateway.panel.states import PanelState, PanelStateMachine, StateTimings
from gateway.sim.broker import MosquittoBroker
from tests.helpers import next_event, running_hub, sim_device, write_config
from tests.test_tls import make_pki, openssl


def provision_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "provision", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def sign_with_openssl(csr: Path, pki: dict[str, Path], out: Path, days: int = 2) -> Path:
    ext = out.with_suffix(".ext")
    ext.write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(pki["ca.crt"]),
        "-CAkey",
        str(pki["ca.key"]),
        "-CAcreateserial",
        "-days",
        str(days),
        "-extfile",
        str(ext),
        "-out",
        str(out),
        cwd=out.parent,
    )
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("identity") / "pki")


def test_provision_makes_a_private_key_and_a_request_naming_the_gateway(tmp_path: Path) -> None:
    result = provision_cli("--id", "hub-0042", "--dir", str(tmp_path / "etc"))
    assert result.returncode == 0, result.stderr
    key = tmp_path / "etc" / "hub-0042.key"
    csr_file = tmp_path / "etc" / "hub-0042.csr"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # the key is never printed, only the request
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert result.stdout == csr_file.read_text()
    csr = x509.load_pem_x509_csr(result.stdout.encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hub-0042"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert private.public_key() == csr.public_key()
    assert private.key_size == 256  # type: ignore[union-attr]


def test_provision_again_keeps_the_key_unless_asked_for_a_new_one(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert provision_cli("--id", "hub-1", "--dir", str(etc)).returncode == 0
    key = etc / "hub-1.key"
    first = key.read_bytes()
    again = provision_cli("--id", "hub-1", "--dir", str(etc))
    assert again.returncode == 0
    assert "kept the existing key" in again.stderr
    assert key.read_bytes() == first
    fresh = provision_cli("--id", "hub-1", "--dir", str(etc), "--new-key")
    assert fresh.returncode == 0
    assert key.read_bytes() != first
    assert (etc / "hub-1.key.old").read_bytes() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_provision_takes_the_id_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    # key_file names a file not made yet: provision reads only [gateway] id
    config.write_text('[gateway]\nid = "hub-from-config"\n\n[mqtt]\nkey_file = "/nowhere"\n')
    result = provision_cli("--config", str(config), "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hub-from-config.key").exists()


def test_provision_refuses_a_bad_id(tmp_path: Path) -> None:
    result = provision_cli("--id", "hub 1", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert "not a valid [gateway] id" in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_a_provisioned_hub_connects_with_its_signed_certificate(
    tmp_path: Path, pki: dict[str, Path], broker_factory: Callable[..., MosquittoBroker]
) -> None:
    etc = tmp_path / "etc"
    assert provision_cli("--id", "hub-test", "--dir", str(etc)).returncode == 0
    cert = sign_with_openssl(etc / "hub-test.csr", pki, etc / "hub-test.crt")
    broker = broker_factory(tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]))
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=2)],
        mqtt={"ca_file": pki["ca.crt"], "cert_file": cert, "key_file": etc / "hub-test.key"},
    )
    events = EventBus()
    queue, _ = events.queue()
    async with running_hub(config, events):
        for _ in range(2):
            await next_event(queue, ReadingDelivered, 15)


# -- the certificate's lifecycle (part 2) ----------------------------------------------


def sign(csr_path: Path, pki: dict[str, Path], out: Path, start: datetime, end: datetime) -> Path:
    """Sign with the openssl-made test CA, with any validity (openssl x509 has only -days)."""
    ca_cert = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes())
    ca_key = serialization.load_pem_private_key(pki["ca.key"].read_bytes(), password=None)
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


@pytest.fixture
def csr(tmp_path: Path) -> Path:
    assert provision_cli("--id", "hub-test", "--dir", str(tmp_path / "etc")).returncode == 0
    return tmp_path / "etc" / "hub-test.csr"


NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_a_certificate_with_a_year_left_is_ok(
    tmp_path: Path, pki: dict[str, Path], csr: Path
) -> None:
    cert = sign(csr, pki, tmp_path / "c.crt", NOW - timedelta(days=1), NOW + timedelta(days=365))
    check = check_certificate(cert, NOW)
    assert (check.state, check.days_left, check.problem) == ("ok", 365.0, None)
    assert check.not_after == NOW + timedelta(days=365)


def test_thirty_days_left_is_a_warning_not_a_call_for_help(
    tmp_path: Path, pki: dict[str, Path], csr: Path
) -> None:
    cert = sign(csr, pki, tmp_path / "c.crt", NOW - timedelta(days=300), NOW + timedelta(days=30))
    check = check_certificate(cert, NOW)
    assert check.state == "expiring" and not check.needs_help
    assert check.problem is not None and "expires in 30 day(s)" in check.problem
    later = check_certificate(cert, NOW - timedelta(days=1))
    assert later.state == "ok"  # 31 days left


def test_expired_and_not_yet_valid_need_help_and_say_which(
    tmp_path: Path, pki: dict[str, Path], csr: Path
) -> None:
    cert = sign(csr, pki, tmp_path / "c.crt", NOW - timedelta(days=10), NOW - timedelta(hours=1))
    expired = check_certificate(cert, NOW)
    assert expired.state == "expired" and expired.needs_help
    assert expired.problem is not None and "expired on 2026-12-03 11:00 UTC" in expired.problem
    future = sign(csr, pki, tmp_path / "f.crt", NOW + timedelta(days=1), NOW + timedelta(days=9))
    early = check_certificate(future, NOW)
    assert early.state == "not_yet_valid" and early.needs_help
    assert early.problem is not None and "clock looks right" in early.problem
    # a Pi that booted in 1970: the clock is what is wrong
    booted = check_certificate(cert, datetime(1970, 1, 1, tzinfo=UTC))
    assert booted.state == "not_yet_valid"
    assert booted.problem is not None and "the hub's clock is wrong" in booted.problem


def test_an_unreadable_certificate_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "c.crt"
    bad.write_text("not a certificate")
    check = check_certificate(bad, NOW)
    assert check.state == "unreadable" and check.needs_help
    assert check.problem is not None and str(bad) in check.problem


async def test_the_hub_reports_its_certificate_in_the_status_log_and_panel(
    tmp_path: Path, pki: dict[str, Path], csr: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    cert = sign(csr, pki, tmp_path / "c.crt", now - timedelta(days=1), now + timedelta(days=10))
    config = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        mqtt={
            "port": 9,
            "ca_file": pki["ca.crt"],
            "cert_file": cert,
            "key_file": csr.with_suffix(".key"),
        },
    )
    events = EventBus()
    queue, _ = events.queue()
    with caplog.at_level(logging.INFO, logger="gateway.daemon"):
        async with running_hub(config, events) as hub:
            await next_event(queue, HubStarted, 10)
            tls = hub.status.tls
            assert tls is not None
            assert tls["state"] == "expiring"
            assert 9.9 <= tls["days_left"] <= 10.0
            assert tls["cert_expires_at"].startswith(f"{now + timedelta(days=10):%Y-%m-%d}")
            stats = await hub.store.stats()  # type: ignore[union-attr]
            doc = hub.status.document(stats)
            jsonschema.validate(doc, load_schema("status-1"))
            assert doc["tls"] == tls
            assert any(
                r.levelno == logging.WARNING and "expires in 10 day(s)" in r.getMessage()
                for r in caplog.records
            )
            assert hub.panel is not None
            # It expires: ERROR, "needs help" with the reason, until a new one is in place.
            sign(csr, pki, cert, now - timedelta(days=20), now - timedelta(minutes=1))
            hub._check_certificate()
            trouble, _ = await next_event(queue, CertificateTrouble, 5)
            assert trouble == CertificateTrouble("check", "certificate expired")
            assert hub.status.tls is not None and hub.status.tls["state"] == "expired"
            assert any(
                r.levelno == logging.ERROR and "expired on" in r.getMessage()
                for r in caplog.records
            )
            sign(csr, pki, cert, now - timedelta(days=1), now + timedelta(days=365))
            hub._check_certificate()
            await next_event(queue, CertificateOk, 5)
            assert hub.status.tls["state"] == "ok"


def test_the_panel_needs_help_while_the_certificate_cannot_work() -> None:
    machine = PanelStateMachine(StateTimings(), now=0.0)
    machine.handle(HubStarted(), 0.0)
    machine.handle(UplinkUp(), 0.0)
    assert machine.state(1.0) is PanelState.READY
    machine.handle(CertificateTrouble("check", "certificate expired"), 1.0)
    machine.handle(CertificateTrouble("broker", "broker refuses the hub's certificate"), 1.0)
    assert machine.state(2.0) is PanelState.NEEDS_HELP
    assert machine.help_reasons(2.0) == [
        "broker refuses the hub's certificate",
        "certificate expired",
    ]
    machine.handle(CertificateOk("check"), 3.0)
    assert machine.help_reasons(3.0) == ["broker refuses the hub's certificate"]
    machine.handle(CertificateOk("broker"), 4.0)
    assert machine.state(4.0) is PanelState.READY
