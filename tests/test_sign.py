"""Signed readings on the hub's side, `[mqtt] sign = true` (issue 14 part 3).

The JWS is checked with `cryptography` directly, never with our own verifier: what the
hub sends must verify for any RFC 7515 implementation holding the hub's certificate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from homehub_contract import SIGNATURE_PROPERTY
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import EX_CONFIG
from gateway.events import EventBus, ReadingDelivered
from gateway.identity import IdentityError
from gateway.sim.broker import MosquittoBroker, free_port
from gateway.uplink.sign import ReadingSigner, SignerSource, certificate_thumbprint
from tests.helpers import next_event, running_hub, sim_device, write_config
from tests.test_tls import make_pki


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write_identity(
    directory: Path,
    *,
    name: str = "hub",
    issuer: tuple[x509.Name, Any] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[Path, Path]:
    """An EC P-256 key and a certificate for it (self-signed, or by `issuer`'s key)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub-test")])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .sign(issuer_key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def verify_with_cryptography(jws: str, payload: bytes, cert_path: Path) -> dict[str, Any]:
    """RFC 7515 §5.2 for a detached ES256 JWS, by hand; returns the header. Raises if bad."""
    header_b64, middle, sig_b64 = jws.split(".")
    assert middle == "", "detached content (RFC 7515 Appendix F): the payload part is empty"
    header = json.loads(b64decode(header_b64))
    raw = b64decode(sig_b64)
    assert len(raw) == 64, "ES256 is R || S, 64 bytes (RFC 7518 §3.4), not DER"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    payload_b64 = base64.urlsafe_b64encode(payload).rstrip(b"=")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, header_b64.encode() + b"." + payload_b64, ec.ECDSA(hashes.SHA256()))
    return dict(header)


def test_the_jws_verifies_with_the_certificate_and_names_it(tmp_path: Path) -> None:
    key_path, cert_path = write_identity(tmp_path)
    signer = ReadingSigner.load(key_path, cert_path)
    payload = b'{"schema":"homehub.reading/1","id":"r-1","values":[{"value":120}]}'
    jws = signer.sign(payload)
    header = verify_with_cryptography(jws, payload, cert_path)
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert header == {"alg": "ES256", "kid": thumbprint}
    assert signer.kid == thumbprint == certificate_thumbprint(der)
    # ECDSA is randomised: a resend's signature differs, and verifies all the same.
    again = signer.sign(payload)
    assert again != jws
    verify_with_cryptography(again, payload, cert_path)


def test_a_changed_value_fails(tmp_path: Path) -> None:
    key_path, cert_path = write_identity(tmp_path)
    payload = b'{"id":"r-1","values":[{"value":120}]}'
    jws = ReadingSigner.load(key_path, cert_path).sign(payload)
    with pytest.raises(InvalidSignature):
        verify_with_cryptography(jws, payload.replace(b"120", b"121"), cert_path)


def test_another_hubs_certificate_fails(tmp_path: Path) -> None:
    key_path, cert_path = write_identity(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_cert = write_identity(tmp_path / "other")
    payload = b'{"id":"r-1"}'
    jws = ReadingSigner.load(key_path, cert_path).sign(payload)
    with pytest.raises(InvalidSignature):
        verify_with_cryptography(jws, payload, other_cert)


def test_a_key_that_is_not_the_certificates_or_not_p256_is_refused(tmp_path: Path) -> None:
    key_path, _ = write_identity(tmp_path, name="a")
    _, other_cert = write_identity(tmp_path, name="b")
    with pytest.raises(IdentityError, match="not the certificate of key_file"):
        ReadingSigner.load(key_path, other_cert)
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(IdentityError, match="P-256"):
        ReadingSigner.load(rsa_key, other_cert)
    (tmp_path / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    with pytest.raises(IdentityError, match="ValueError") as info:
        ReadingSigner.load(tmp_path / "garbage.key", other_cert)
    assert "secret" not in str(info.value)


def test_a_renewed_identity_signs_from_the_next_load(tmp_path: Path) -> None:
    key_path, cert_path = write_identity(tmp_path)
    source = SignerSource(key_path, cert_path)
    first = source.current()
    assert source.current() is first  # unchanged files: not read again
    (tmp_path / "new").mkdir()
    new_key, new_cert = write_identity(tmp_path / "new")
    new_key.replace(key_path)
    new_cert.replace(cert_path)
    renewed = source.current()
    assert renewed.kid != first.kid
    verify_with_cryptography(renewed.sign(b"{}"), b"{}", cert_path)


def test_sign_without_key_and_certificate_exits_78_naming_mqtt_sign(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure")],
        mqtt={"sign": True},
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == EX_CONFIG, done.stderr
    assert "mqtt.sign:" in done.stderr
    assert "key_file and cert_file" in done.stderr


# -- end to end: a hub over TLS with its EC identity, a subscriber on a plain listener ----


class Catcher:
    """A paho subscriber on '#' keeping each reading's payload and `jws` property."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[bytes, str | None, str | None]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        self.client.on_connect = lambda c, *_: c.subscribe("+/+/readings/#", qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._ready.wait(10), "the subscriber did not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = dict(getattr(msg.properties, "UserProperty", None) or [])
        content_type = getattr(msg.properties, "ContentType", None)
        with self._cond:
            self.got.append((bytes(msg.payload), props.get(SIGNATURE_PROPERTY), content_type))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> list[tuple[bytes, str | None, str | None]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.got) >= count, timeout_s), self.got
            return list(self.got)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pki = make_pki(tmp_path_factory.mktemp("sign") / "pki")
    ca_key = serialization.load_pem_private_key(
        pki["ca.crt"].with_name("ca.key").read_bytes(), None
    )
    ca_name = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes()).subject
    key, cert = write_identity(pki["ca.crt"].parent, name="hub-ec", issuer=(ca_name, ca_key))
    return {**pki, "hub-ec.key": key, "hub-ec.crt": cert}


@pytest.mark.parametrize("payload_format", ["homehub", "fhir"])
async def test_every_published_reading_carries_a_jws_over_its_exact_bytes(
    tmp_path: Path,
    pki: dict[str, Path],
    broker_factory: Callable[..., MosquittoBroker],
    payload_format: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.uplink.mqtt")
    plain = free_port()
    broker = broker_factory(
        tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]),
        extra=[f"listener {plain} 127.0.0.1"],
    )
    catcher = Catcher(plain)
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=3)],
        mqtt={
            "ca_file": pki["ca.crt"],
            "cert_file": pki["hub-ec.crt"],
            "key_file": pki["hub-ec.key"],
            "sign": True,
            "payload": payload_format,
        },
    )
    events = EventBus()
    queue, _ = events.queue()
    try:
        async with running_hub(config, events):
            for _ in range(3):
                await next_event(queue, ReadingDelivered, 15)
        got = await asyncio.to_thread(catcher.wait_for, 3, 10)
    finally:
        catcher.stop()
    kid = ReadingSigner.load(pki["hub-ec.key"], pki["hub-ec.crt"]).kid
    assert f"readings are signed (ES256, kid {kid})" in caplog.text
    for payload, jws, content_type in got:
        assert jws is not None, "a reading without its signature"
        header = verify_with_cryptography(jws, payload, pki["hub-ec.crt"])
        assert header["alg"] == "ES256"
        assert (content_type == "application/fhir+json") == (payload_format == "fhir")
        with pytest.raises(InvalidSignature):
            verify_with_cryptography(jws, payload.replace(b"bp-1", b"bp-2"), pki["hub-ec.crt"])


@pytest.mark.parametrize("content_type", [None, "application/fhir+json"])
def test_the_prepacked_properties_are_what_paho_would_pack(
    tmp_path: Path, content_type: str | None
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from gateway.uplink.mqtt import _render

    signer = ReadingSigner.load(*write_identity(tmp_path))
    rendered = _render(lambda b: (b, content_type), b'{"id":"r-1"}', signer)
    assert not isinstance(rendered, str)
    payload, fast = rendered
    assert fast is not None
    jws = dict(getattr(fast, "UserProperty"))[SIGNATURE_PROPERTY]  # noqa: B009 - untyped
    reference = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if content_type is not None:
        reference.PayloadFormatIndicator = 1
        reference.ContentType = content_type
    reference.UserProperty = (SIGNATURE_PROPERTY, jws)
    assert fast.pack() == reference.pack()  # type: ignore[no-untyped-call]
    verify_with_cryptography(jws, payload, tmp_path / "hub.crt")


async def test_a_key_that_cannot_sign_publishes_nothing_and_says_why(
    tmp_path: Path,
    pki: dict[str, Path],
    broker_factory: Callable[..., MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.uplink.mqtt")
    plain = free_port()
    broker = broker_factory(
        tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]),
        extra=[f"listener {plain} 127.0.0.1"],
    )
    catcher = Catcher(plain)
    (tmp_path / "other").mkdir()
    other_key, _ = write_identity(tmp_path / "other")
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=2)],
        mqtt={
            "ca_file": pki["ca.crt"],
            "cert_file": pki["hub-ec.crt"],
            "key_file": other_key,  # not the certificate's key
            "sign": True,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.2,
        },
    )
    try:
        async with running_hub(config, EventBus()):
            async with asyncio.timeout(10):
                # Two failed attempts: the refusal is retried, never sent around.
                while caplog.text.count("cert_file is not the certificate of key_file") < 2:
                    await asyncio.sleep(0.05)
    finally:
        catcher.stop()
    assert catcher.got == [], "a reading went out while its key could not sign"
