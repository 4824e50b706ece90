"""The hub's identity against a real mosquitto with `require_certificate` (issue 14).

`homehub provision` makes the key on the hub and a CSR; the test CA (made by openssl)
signs it; the hub connects with it.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway.events import EventBus, ReadingDelivered
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
