"""`homehub listen`: a reference backend receiver for the MQTT contract.

Subscribes to `{prefix}/+/readings/#` and `{prefix}/+/status`, validates every
payload against the shipped JSON Schema, drops duplicate ids (a reading may be
resent after a lost PUBACK: same id, same content), and prints one line per new
reading. It is what a backend must do at the least, in ~150 lines.

With `--session NAME` it keeps a persistent MQTT 5 session (clean_start=false
and a session expiry), so the broker queues readings while it is away: the way
a real backend should subscribe.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

import jsonschema
import paho.mqtt.client as paho
from homehub_contract import load_schema
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


@dataclass
class ListenOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "homehub"
    as_json: bool = False
    count: int = 0  # 0 = until interrupted
    timeout_s: float = 0.0  # 0 = no timeout
    session: str | None = None
    session_expiry_s: int = 3600
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None


@dataclass
class ListenResult:
    unique: int = 0
    duplicates: int = 0
    invalid: int = 0
    seen: set[str] = field(default_factory=set)


def format_reading(doc: dict[str, Any]) -> str:
    values = " ".join(
        f"{v['code'].removeprefix('MDC_')}="
        f"{'n/a' if v['value'] is None else format(v['value'], 'g')}{v['unit']}"
        for v in doc["values"]
    )
    status = f" [{','.join(doc['status'])}]" if doc["status"] else ""
    return (
        f"{doc['measured_at']} {doc['gateway']}/{doc['device']['id']} {doc['kind']}: "
        f"{values}{status} (id {doc['id']})"
    )


def listen(options: ListenOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run until `count` unique readings arrived (exit 0), timeout (1) or a signal (0)."""
    reading_validator = jsonschema.Draft202012Validator(load_schema("reading-1"))
    status_validator = jsonschema.Draft202012Validator(load_schema("status-1"))
    result = ListenResult()
    done = threading.Event()
    timed_out = threading.Event()

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=options.session or "",
        protocol=paho.MQTTv5,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    if options.username:
        client.username_pw_set(options.username, options.password)
    if options.ca_file:
        client.tls_set(
            ca_certs=options.ca_file, certfile=options.cert_file, keyfile=options.key_file
        )
    topics = [(f"{options.prefix}/+/readings/#", 1), (f"{options.prefix}/+/status", 1)]

    def on_connect(c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            print(f"listen: broker refused the connection: {rc}", file=err, flush=True)
            return
        c.subscribe(topics)

    def on_subscribe(_c: paho.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        failed = [str(rc) for rc in rcs if rc.is_failure]
        if failed:
            print(f"listen: subscription refused: {', '.join(failed)}", file=err, flush=True)
        else:
            print(
                f"listen: subscribed on {options.host}:{options.port} to "
                f"{', '.join(t for t, _ in topics)}",
                file=err,
                flush=True,
            )

    def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError as exc:
            result.invalid += 1
            print(f"listen: {msg.topic}: not JSON: {exc}", file=err, flush=True)
            return
        is_status = msg.topic.endswith("/status")
        validator = status_validator if is_status else reading_validator
        problems = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        if problems:
            result.invalid += 1
            where = "/".join(str(p) for p in problems[0].path) or "(document)"
            print(
                f"listen: {msg.topic}: invalid payload: {where}: {problems[0].message}",
                file=err,
                flush=True,
            )
            return
        if is_status:
            if not options.as_json:
                print(f"listen: status {msg.topic}: {doc['state']}", file=err, flush=True)
            return
        if doc["id"] in result.seen:
            result.duplicates += 1
            return
        result.seen.add(doc["id"])
        result.unique += 1
        line = json.dumps(doc, separators=(",", ":")) if options.as_json else format_reading(doc)
        print(line, file=out, flush=True)
        if options.count and result.unique >= options.count:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message

    properties = None
    if options.session:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = options.session_expiry_s

    def stop(*_: Any) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    client.connect_async(
        options.host,
        options.port,
        keepalive=30,
        clean_start=options.session is None,
        properties=properties,
    )
    client.loop_start()
    timer = None
    if options.timeout_s > 0:

        def expire() -> None:
            timed_out.set()
            done.set()

        timer = threading.Timer(options.timeout_s, expire)
        timer.daemon = True
        timer.start()
    try:
        done.wait()
    finally:
        if timer is not None:
            timer.cancel()
        client.disconnect()
        client.loop_stop()
    print(
        f"listen: {result.unique} unique readings, {result.duplicates} duplicates dropped, "
        f"{result.invalid} invalid",
        file=err,
        flush=True,
    )
    if timed_out.is_set():
        print(f"listen: timed out after {options.timeout_s:g} s", file=err, flush=True)
        return 1
    return 0
