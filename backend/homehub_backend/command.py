"""`homehub-backend command HUB NAME [JSON]`: one command to one hub, its response printed.

MQTT 5 request/response (§4.10, the README's "Commands"): the command goes QoS 1 to
`{prefix}/{hub}/command/{name}` with a Response Topic under `{prefix}/{hub}/response/`
(the only place the fleet ACL lets a hub answer), fresh Correlation Data, a Message
Expiry Interval (`--expiry`, one day) and the same instant as `expires_at` in the body
(mosquitto 2.0.11 was seen delivering a queued command past its expiry). The response
is awaited a bounded time (`--wait`).

An offline hub (its retained status says `offline`) or no response within the wait:
the command stays queued at the broker in the hub's persistent session until its
expiry, and the hub applies it when it comes back, if it comes back in time. Its
answer then goes to the response topic printed here, with nobody listening.

Exit status: 0 the hub said ok; 1 the hub refused it (the response says why), or the
broker refused it, or nobody is subscribed; 75 (EX_TEMPFAIL) queued, no answer yet.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
from homehub_contract import COMMAND_SCHEMA, command_topic, response_topic, status_topic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from homehub_backend.config import BrokerSection, read_secret
from homehub_backend.errors import BackendError

EX_TEMPFAIL = 75  # sysexits.h: try again later (here: queued)
#: MQTT 5 §3.3.2.3.3 default for `--expiry`: a command older than a day is old intent.
DEFAULT_EXPIRY_S = 86400
DEFAULT_WAIT_S = 10.0
NO_MATCHING_SUBSCRIBERS = 0x10
CONNECT_TIMEOUT_S = 10.0


@dataclass
class Outcome:
    """What became of one command."""

    request_id: str
    response_topic: str
    expires_at: datetime
    response: dict[str, Any] | None = None
    hub_state: str | None = None  # "online" / "offline" from its retained status; None unknown
    puback: int | None = None

    @property
    def exit_code(self) -> int:
        if self.response is not None:
            return 0 if self.response.get("ok") else 1
        if self.puback is not None and self.puback >= 0x80:
            return 1
        if self.puback == NO_MATCHING_SUBSCRIBERS:
            return 1
        return EX_TEMPFAIL

    def describe(self) -> str:
        """What to tell the person (the response itself goes to stdout)."""
        if self.response is not None:
            return ""
        if self.puback is not None and self.puback >= 0x80:
            return f"the broker refused the command (reason code 0x{self.puback:02x}; ACL?)"
        if self.puback == NO_MATCHING_SUBSCRIBERS:
            return (
                "no hub is subscribed to its commands (PUBACK 0x10): the broker dropped it;"
                " is the hub id right, and has this hub ever connected with commands?"
            )
        why = "the hub is offline" if self.hub_state == "offline" else "no response yet"
        return (
            f"{why}: the command is queued at the broker until {self.expires_at:%Y-%m-%d %H:%M:%S}"
            f" UTC (its expiry) and applied if the hub comes back by then; its response will go"
            f" to {self.response_topic}"
        )


@dataclass
class _Waiter:
    cond: threading.Condition = field(default_factory=threading.Condition)
    connected: int | None = None
    subscribed: bool = False
    status: dict[str, Any] | None = None
    status_seen: bool = False
    response: bytes | None = None
    puback: int | None = None


def send_command(
    broker: BrokerSection,
    prefix: str,
    hub: str,
    name: str,
    args: dict[str, Any] | None = None,
    *,
    wait_s: float = DEFAULT_WAIT_S,
    expiry_s: int = DEFAULT_EXPIRY_S,
    request_id: str | None = None,
) -> Outcome:
    """Send one command and wait up to `wait_s` for its response (raises BackendError)."""
    request_id = request_id or uuid.uuid4().hex
    correlation = uuid.uuid4().bytes
    token = correlation.hex()
    reply_to = response_topic(prefix, hub, token)
    expires_at = (datetime.now(UTC) + timedelta(seconds=expiry_s)).replace(microsecond=0)
    outcome = Outcome(request_id, reply_to, expires_at)
    w = _Waiter()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{broker.client_id}-cmd-{token[:8]}"[:128],
        protocol=paho.MQTTv5,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, read_secret(broker.password_file))
    if broker.ca_file is not None:
        client.tls_set(
            ca_certs=str(broker.ca_file),
            certfile=str(broker.cert_file) if broker.cert_file else None,
            keyfile=str(broker.key_file) if broker.key_file else None,
        )

    def notify(update: Any) -> None:
        with w.cond:
            update()
            w.cond.notify_all()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        notify(lambda: setattr(w, "connected", rc.value))

    def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        notify(lambda: setattr(w, "subscribed", True))

    def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        notify(lambda: setattr(w, "puback", rc.value))

    def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic == reply_to:
            got = getattr(message.properties, "CorrelationData", None)
            if got == correlation:
                notify(lambda: setattr(w, "response", bytes(message.payload)))
            return
        try:
            doc = json.loads(message.payload)
        except ValueError:
            doc = None

        def seen() -> None:
            w.status_seen = True
            w.status = doc if isinstance(doc, dict) else None

        notify(seen)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    except OSError as exc:
        raise BackendError(f"cannot connect to {broker.host}:{broker.port}: {exc}") from None
    client.loop_start()
    try:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        with w.cond:
            if not w.cond.wait_for(lambda: w.connected is not None, CONNECT_TIMEOUT_S):
                raise BackendError(f"no CONNACK from {broker.host}:{broker.port}")
            if w.connected:
                raise BackendError(f"the broker refused the connection (0x{w.connected:02x})")
        # The response topic first (nothing may be missed), and the retained status.
        client.subscribe([(reply_to, 1), (status_topic(prefix, hub), 1)])
        with w.cond:
            if not w.cond.wait_for(lambda: w.subscribed, max(0.1, deadline - time.monotonic())):
                raise BackendError("the broker did not confirm the subscription")
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = reply_to
        properties.CorrelationData = correlation
        properties.MessageExpiryInterval = expiry_s
        properties.ContentType = "application/json"
        body = {
            "schema": COMMAND_SCHEMA,
            "id": request_id,
            "gateway": hub,
            "args": args or {},
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
            "sent_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        client.publish(
            command_topic(prefix, hub, name),
            json.dumps(body).encode(),
            qos=1,
            properties=properties,
        )
        end = time.monotonic() + wait_s
        with w.cond:
            w.cond.wait_for(lambda: w.puback is not None, max(0.1, end - time.monotonic()))
            outcome.puback = w.puback
            if w.puback is None or (w.puback < 0x80 and w.puback != NO_MATCHING_SUBSCRIBERS):

                def settled() -> bool:
                    # An offline hub answers nothing now: no point waiting out --wait.
                    offline = w.status_seen and (w.status or {}).get("state") == "offline"
                    return w.response is not None or offline

                w.cond.wait_for(settled, max(0.0, end - time.monotonic()))
            if w.status is not None:
                outcome.hub_state = str(w.status.get("state"))
            if w.response is not None:
                try:
                    outcome.response = json.loads(w.response)
                except ValueError:
                    raise BackendError("the hub's response is not JSON") from None
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome


def parse_args_json(text: str | None) -> dict[str, Any]:
    """The command's args from the command line (a JSON object)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BackendError(f"ARGS is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BackendError("ARGS must be a JSON object, e.g. '{\"seconds\": 60}'")
    return value
