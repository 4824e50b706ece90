"""Issue 10: the shipped fleet broker config and ACL keep each hub in its own lane.

The real mosquitto runs `config/mosquitto-fleet.conf` (paths and port swapped for
the test's) with `config/mosquitto-fleet.acl` verbatim; every client has a client
certificate from a throwaway CA whose CN is its identity. MQTT 5 says what the ACL
refused: PUBACK/SUBACK 0x87 Not authorized.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.events import EventBus
from gateway.sim.broker import find_mosquitto, free_port
from tests.helpers import running_hub, write_config

ROOT = Path(__file__).resolve().parent.parent
NOT_AUTHORIZED = 0x87


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ec_key(name: str, cwd: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=cwd)


def make_fleet_pki(directory: Path, identities: list[str]) -> Path:
    """A CA, a broker certificate for 127.0.0.1 and one client certificate per identity."""
    directory.mkdir(parents=True)
    _ec_key("ca", directory)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=fleet-ca",
        "-out", "ca.crt", cwd=directory,
    )  # fmt: skip
    for name, ext in [("broker", "subjectAltName=IP:127.0.0.1")] + [
        (identity, "basicConstraints=CA:FALSE") for identity in identities
    ]:
        _ec_key(name, directory)
        _openssl(
            "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr",
            cwd=directory,
        )  # fmt: skip
        (directory / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=directory,
        )  # fmt: skip
    return directory


def shipped_conf(pki: Path, workdir: Path, port: int) -> str:
    """config/mosquitto-fleet.conf with the test's paths and port, nothing else changed."""
    text = (ROOT / "config" / "mosquitto-fleet.conf").read_text("utf-8")
    acl = workdir / "fleet.acl"
    acl.write_text((ROOT / "config" / "mosquitto-fleet.acl").read_text("utf-8"))
    swaps = {
        "listener 8883": f"listener {port} 127.0.0.1",
        "/etc/mosquitto/certs/ca.crt": str(pki / "ca.crt"),
        "/etc/mosquitto/certs/broker.crt": str(pki / "broker.crt"),
        "/etc/mosquitto/certs/broker.key": str(pki / "broker.key"),
        "/etc/mosquitto/homehub-fleet.acl": str(acl),
        "/var/lib/mosquitto/": f"{workdir}/",
    }
    for old, new in swaps.items():
        assert old in text, f"config/mosquitto-fleet.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text + f"\nuser {getpass.getuser()}\nlog_dest stderr\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The shipped config running; (port, pki directory)."""
    workdir = tmp_path_factory.mktemp("fleet")
    pki = make_fleet_pki(workdir / "pki", ["hub-a", "hub-b", "homehub-backend", "stranger"])
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(shipped_conf(pki, workdir, port))
    process = subprocess.Popen(
        [find_mosquitto(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.05)
        yield port, pki
    finally:
        process.terminate()
        process.wait(5)


class Client:
    """One identity's MQTT 5 connection; PUBACK and SUBACK reason codes, messages received."""

    def __init__(self, port: int, pki: Path, identity: str) -> None:
        self.identity = identity
        self._cond = threading.Condition()
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[tuple[str, bytes]] = []
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{identity}-{uuid.uuid4().hex[:6]}",
            protocol=paho.MQTTv5,
        )
        client.tls_set(
            ca_certs=str(pki / "ca.crt"),
            certfile=str(pki / f"{identity}.crt"),
            keyfile=str(pki / f"{identity}.key"),
        )
        connected = threading.Event()
        client.on_connect = lambda *_: connected.set()
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert connected.wait(10), f"{identity} did not connect"
        self.client = client

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._cond:
            self.pubacks[mid] = rc.value
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._cond:
            self.subacks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes = b"{}", props: Properties | None = None) -> int:
        """Publish QoS 1; the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, properties=props)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.pubacks, 5), topic
            return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> int:
        """Subscribe QoS 1; the SUBACK's reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.subacks, 5), topic
            return self.subacks[mid][0]

    def wait_message(self, topic: str, timeout_s: float = 5.0) -> list[str]:
        """Every topic received up to and including the first message on `topic`."""
        with self._cond:
            assert self._cond.wait_for(
                lambda: any(t == topic for t, _ in self.messages), timeout_s
            ), f"{self.identity} got nothing on {topic}"
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(fleet: tuple[int, Path]) -> Iterator[dict[str, Client]]:
    port, pki = fleet
    made = {name: Client(port, pki, name) for name in ("hub-a", "hub-b", "homehub-backend")}
    yield made
    for client in made.values():
        client.close()


def test_a_hub_publishes_its_own_readings_status_and_responses_only(
    clients: dict[str, Client],
) -> None:
    hub = clients["hub-a"]
    for topic in (
        "homehub/hub-a/readings/bp-1",
        "homehub/hub-a/status",
        "homehub/hub-a/response/x",
    ):
        assert hub.publish(topic) < 0x80, topic
    for topic in (
        "homehub/hub-b/readings/bp-1",  # as another hub
        "homehub/hub-b/status",
        "homehub/hub-b/response/x",
        "homehub/hub-a/command/status",  # commanding itself, or another
        "homehub/hub-b/command/devices/set",
        "homehub/hub-b/confirm",  # confirming
        "homehub/hub-a/confirm",
        "homehub/hub-a/readings/bp-1/extra",
        "elsewhere/hub-a/readings/bp-1",
    ):
        assert hub.publish(topic) == NOT_AUTHORIZED, topic


def test_a_hub_cannot_read_another_hubs_commands_and_only_the_backend_commands(
    clients: dict[str, Client],
) -> None:
    hub_a, hub_b, backend = clients["hub-a"], clients["hub-b"], clients["homehub-backend"]
    assert hub_a.subscribe("homehub/hub-a/command/#") < 0x80
    assert hub_a.subscribe("homehub/hub-a/confirm") < 0x80
    # mosquitto 2.0.11 grants a subscription whatever the ACL (SUBACK 1) and checks
    # `read` on every message it would deliver: what counts is that nothing comes.
    for topic in ("homehub/hub-b/command/#", "homehub/hub-b/confirm", "homehub/+/readings/#",
                  "homehub/+/command/#", "homehub/+/response/#"):  # fmt: skip
        hub_a.subscribe(topic)
    # A non-backend client cannot command a hub.
    assert hub_b.publish("homehub/hub-a/command/devices/set") == NOT_AUTHORIZED
    assert hub_b.publish("homehub/hub-b/readings/bp-1") < 0x80
    assert hub_b.publish("homehub/hub-b/response/x") < 0x80
    assert backend.publish("homehub/hub-b/command/status", b"for b") < 0x80
    assert backend.publish("homehub/hub-b/confirm", b"ids of b") < 0x80
    assert backend.publish("homehub/hub-a/confirm", b"ids") < 0x80
    assert backend.publish("homehub/hub-a/command/status", b"for a") < 0x80
    # Messages from one publisher arrive in order: once hub-a has its own command, a
    # leak of hub-b's (sent before it) would already be there; hub-b's are older still.
    seen = hub_a.wait_message("homehub/hub-a/command/status")
    assert [t for t in seen if "hub-b" in t] == []
    assert "homehub/hub-a/command/devices/set" not in seen
    assert "homehub/hub-a/confirm" in seen


def test_the_backend_reads_readings_status_and_responses_and_writes_nothing_else(
    clients: dict[str, Client],
) -> None:
    hub, backend = clients["hub-a"], clients["homehub-backend"]
    for topic in ("homehub/+/readings/#", "homehub/+/status", "homehub/+/response/#"):
        assert backend.subscribe(topic) < 0x80, topic
    assert hub.publish("homehub/hub-a/response/abc", b"answer") < 0x80
    assert "homehub/hub-a/response/abc" in backend.wait_message("homehub/hub-a/response/abc")
    # The backend does not publish as a hub (a forged reading or status).
    assert backend.publish("homehub/hub-a/readings/bp-1") == NOT_AUTHORIZED
    assert backend.publish("homehub/hub-a/status") == NOT_AUTHORIZED


def test_a_stranger_with_a_valid_certificate_can_do_nothing(fleet: tuple[int, Path]) -> None:
    port, pki = fleet
    stranger = Client(port, pki, "stranger")
    try:
        # Its own lane only ("stranger" is a hub id nobody uses): no other hub's topics.
        assert stranger.publish("homehub/hub-a/command/status") == NOT_AUTHORIZED
        assert stranger.publish("homehub/hub-a/readings/bp-1") == NOT_AUTHORIZED
    finally:
        stranger.close()


async def test_the_real_hub_answers_a_command_through_the_fleet_acl(
    fleet: tuple[int, Path], tmp_path: Path
) -> None:
    """The hub (CN hub-a) behind the shipped ACL: it subscribes, answers, publishes status."""
    import asyncio

    port, pki = fleet
    config = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        gateway_id="hub-a",
        mqtt={
            "port": port,
            "ca_file": pki / "ca.crt",
            "cert_file": pki / "hub-a.crt",
            "key_file": pki / "hub-a.key",
            "reconnect_min_s": 0.1,
        },
    )
    backend = Client(port, pki, "homehub-backend")
    try:
        assert backend.subscribe("homehub/hub-a/response/#") < 0x80
        async with running_hub(config, EventBus()):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "homehub/hub-a/response/t1"
            props.CorrelationData = b"acl-1"
            body = json.dumps(
                {"schema": "homehub.command/1", "id": "acl-1", "gateway": "hub-a"}
            ).encode()
            deadline = time.monotonic() + 10
            while True:  # until the hub has connected and subscribed
                await asyncio.to_thread(
                    backend.publish, "homehub/hub-a/command/status", body, props
                )
                try:
                    await asyncio.to_thread(backend.wait_message, "homehub/hub-a/response/t1", 0.5)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, "the hub never answered"
            payload = next(p for t, p in backend.messages if t == "homehub/hub-a/response/t1")
            response = json.loads(payload)
            assert response["ok"] and response["result"]["gateway"] == "hub-a"
    finally:
        backend.close()


def test_without_a_client_certificate_there_is_no_connection(fleet: tuple[int, Path]) -> None:
    port, pki = fleet
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="anon", protocol=paho.MQTTv5
    )
    client.tls_set(ca_certs=str(pki / "ca.crt"))
    connected = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            connected.set()

    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port)
        client.loop_start()
    except OSError:  # ssl.SSLError is one: the handshake itself was refused
        return
    try:
        assert not connected.wait(2), "the broker let a client without a certificate in"
    finally:
        client.loop_stop()
