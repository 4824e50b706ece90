"""Signed readings at the backend (issue 14 part 3): the hub's detached ES256 JWS, in the
`jws` User Property, is verified against `[verify] certs_dir/{gateway}.crt`; a good one is
stored and confirmed, a failing one lands in `rejected` with its reason, never stored or
confirmed. Real mosquitto, real PostgreSQL, the hub's own signer (gateway/uplink/sign.py).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from homehub_backend.config import BackendConfig
from homehub_backend.verify import Verifier, check_jws, es256_valid
from homehub_contract import SIGNATURE_PROPERTY, reading_topic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.events import EventBus
from gateway.sim.broker import MosquittoBroker, free_port
from gateway.uplink.sign import ReadingSigner
from tests.backend.support import (
    ConfirmCollector,
    ThreadWorker,
    encode,
    reading_doc,
    reading_ids,
    rejected_rows,
)
from tests.helpers import running_hub, sim_device, wait_until, write_config
from tests.test_sign import write_identity
from tests.test_tls import make_pki

Make = Callable[..., tuple[Path, BackendConfig]]


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_rfc7515_appendix_a3_es256_example_verifies() -> None:
    # RFC 7515 A.3.1: the ES256 example's key (JWK x, y) and A.3.1's JWS, whose signing
    # input is the header and payload parts as written there.
    x = b64decode("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU")
    y = b64decode("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0")
    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    ).public_key()
    header = b"eyJhbGciOiJFUzI1NiJ9"
    payload = (
        b"eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6"
        b"Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    )
    sig = b64decode(
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
    )
    assert es256_valid(header + b"." + payload, sig, key)
    assert not es256_valid(header + b"." + payload[:-1] + b"R", sig, key)
    # Detached (Appendix F): the payload part left out, the content given beside it.
    content = b64decode(payload.decode())
    jws = f"{header.decode()}..{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    # The example header has no kid: this backend needs one to pick the certificate.
    assert check_jws(jws, content, {"k": key}) == "signature: unknown kid"


@pytest.fixture
def hub_identity(tmp_path: Path) -> tuple[ReadingSigner, Path]:
    certs = tmp_path / "certs"
    certs.mkdir()
    key, cert = write_identity(tmp_path, name="hub-1")
    cert.rename(certs / "hub-1.crt")
    return ReadingSigner.load(key, certs / "hub-1.crt"), certs


def test_the_verifier_reasons(tmp_path: Path, hub_identity: tuple[ReadingSigner, Path]) -> None:
    signer, certs = hub_identity
    (tmp_path / "x").mkdir()
    other = ReadingSigner.load(*write_identity(tmp_path / "x", name="other"))
    payload = encode(reading_doc("hub-1", 1))
    good = signer.sign(payload)
    verifier = Verifier(certs, required=True)
    assert verifier.problem("hub-1", payload, good) is None
    changed = payload.replace(b'"value":120.0', b'"value":121.0')
    assert changed != payload
    assert verifier.problem("hub-1", changed, good) == "signature: bad"
    assert verifier.problem("hub-1", payload, None) == "signature: missing"
    assert verifier.problem("hub-1", payload, other.sign(payload)) == "signature: unknown kid"
    assert verifier.problem("hub-2", payload, good) == "signature: no certificate for this gateway"
    header, _, sig = good.split(".")
    assert verifier.problem("hub-1", payload, f"{header}.e30.{sig}") == "signature: malformed"
    assert verifier.problem("hub-1", payload, "garbage") == "signature: malformed"
    none_alg = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert verifier.problem("hub-1", payload, f"{none_alg}..") == "signature: unsupported alg"
    # Not required: an unsigned reading is taken, a signed one still checked.
    lenient = Verifier(certs, required=False)
    assert lenient.problem("hub-1", payload, None) is None
    assert lenient.problem("hub-1", changed, good) == "signature: bad"
    # A renewal: both certificates in the file, either kid verifies.
    (certs / "hub-1.crt").write_bytes(
        (certs / "hub-1.crt").read_bytes() + (tmp_path / "x" / "other.crt").read_bytes()
    )
    assert verifier.problem("hub-1", payload, other.sign(payload)) is None


def publish_signed(port: int, items: list[tuple[bytes, str | None]]) -> None:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = []
        for payload, jws in items:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if jws is not None:
                props.UserProperty = (SIGNATURE_PROPERTY, jws)
            topic = reading_topic("homehub", "hub-1", "bp-1")
            infos.append(client.publish(topic, payload, qos=1, properties=props))
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_good_stored_and_confirmed_bad_rejected_with_reason(
    broker: MosquittoBroker,
    backend_config: Make,
    database: str,
    hub_identity: tuple[ReadingSigner, Path],
) -> None:
    signer, certs = hub_identity
    _, config = backend_config(
        broker.port, verify={"certs_dir": str(certs), "require_signature": True}
    )
    worker = ThreadWorker(config).start()
    confirms = ConfirmCollector(broker.port, ["hub-1"]).start()
    try:
        docs = [reading_doc("hub-1", n) for n in range(4)]
        good, changed, unsigned, last = (encode(d) for d in docs)
        publish_signed(
            broker.port,
            [
                (good, signer.sign(good)),
                # One changed value under the signature of the original.
                (changed.replace(b'"value":120.0', b'"value":180.0'), signer.sign(changed)),
                (unsigned, None),
                (last, signer.sign(last)),
            ],
        )
        confirms.wait_for({docs[0]["id"], docs[3]["id"]}, 15)
        wait_until(lambda: len(rejected_rows(database)) == 2, 10, "two rejections")
    finally:
        confirms.stop()
        worker.stop()
    assert sorted(reading_ids(database)) == sorted([docs[0]["id"], docs[3]["id"]])
    assert [reason for _, reason, _ in rejected_rows(database)] == [
        "signature: bad",
        "signature: missing",
    ]
    assert confirms.unique() == {docs[0]["id"], docs[3]["id"]}, "a rejected reading confirmed"


@pytest.mark.parametrize("payload_format", ["homehub", "fhir"])
async def test_a_signing_hub_through_the_backend(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    backend_config: Make,
    database: str,
    payload_format: str,
) -> None:
    pki = make_pki(tmp_path / "pki")
    ca_key = serialization.load_pem_private_key(pki["ca.key"].read_bytes(), None)
    ca_name = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes()).subject
    key, cert = write_identity(tmp_path / "pki", name="hub-1", issuer=(ca_name, ca_key))
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "hub-1.crt").write_bytes(cert.read_bytes())
    plain = free_port()
    broker = broker_factory(
        tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]),
        extra=[f"listener {plain} 127.0.0.1"],
        subscriber=False,
    )
    _, config = backend_config(plain, verify={"certs_dir": str(certs), "require_signature": True})
    worker = ThreadWorker(config).start()
    hub = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        gateway_id="hub-1",
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=3)],
        mqtt={
            "ca_file": pki["ca.crt"],
            "cert_file": cert,
            "key_file": key,
            "sign": True,
            "confirm": True,
            "payload": payload_format,
        },
    )
    try:
        async with running_hub(hub, EventBus()):
            async with asyncio.timeout(20):
                while worker.worker.counters.stored < 3:
                    await asyncio.sleep(0.05)
    finally:
        worker.stop()
    assert len(reading_ids(database)) == 3
    assert rejected_rows(database) == []
