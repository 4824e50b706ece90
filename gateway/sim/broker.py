"""A private mosquitto on a free loopback port, for the demo and the tests.

It is the real broker (Debian's `mosquitto`), not a fake: the demo and the
tests see exactly what a hub in a home sees, minus the Internet.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import GatewayError
from gateway.uplink.mqtt import variable_byte_integer

_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
)


def find_mosquitto() -> str:
    found = shutil.which("mosquitto", path=_SEARCH_PATH)
    if found is None:
        raise GatewayError(
            "mosquitto is not installed: run 'make install-deps' (or apt-get install mosquitto)"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MosquittoBroker:
    """Start, kill, restart one mosquitto bound to 127.0.0.1 only."""

    workdir: Path
    port: int = field(default_factory=free_port)
    acl: str | None = None  # mosquitto acl_file text; None = everything allowed
    persistent: bool = False  # save sessions and queued messages on every change
    # (ca_file, cert_file, key_file): TLS on the listener, client certificates required
    tls: tuple[Path, Path, Path] | None = None
    extra: list[str] = field(default_factory=list)  # more mosquitto.conf lines
    # A QoS 0 subscriber to '#' while the broker runs, on a plain listener of its
    # own: publishes then have a matching subscriber. Without one, mosquitto answers
    # a reading's PUBLISH with PUBACK 0x10 "No matching subscribers" (MQTT 5
    # §3.4.2.1), which the hub rightly treats as not delivered (issue 9).
    subscriber: bool = False
    process: subprocess.Popen[bytes] | None = None
    log_lines: list[str] = field(default_factory=list)
    _sink: _Sink | None = None
    _sink_port: int = 0

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
            # Without it mosquitto's Nagle holds a PUBLISH sent right behind a PUBACK on
            # the same socket until the peer's delayed ACK (~40 ms): a confirmation
            # would take two of those to reach the hub (issue 9; README, Confirmations).
            "set_tcp_nodelay true",
            # Started as root, mosquitto drops to user "mosquitto", who may not read
            # our private work dir: keep running as whoever started it.
            f"user {getpass.getuser()}",
        ]
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [
                f"cafile {ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                "require_certificate true",
            ]
        if self.acl is not None:
            acl_path = self.workdir / "acl"
            acl_path.write_text(self.acl)
            lines.append(f"acl_file {acl_path}")
        if self.persistent:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                # Save after every change: a broker SIGKILLed in a test must not
                # forget the backend's session or the messages queued for it.
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        lines += self.extra
        if self.subscriber:
            # Last, so that the listener-specific lines above stay with the main one.
            self._sink_port = free_port()
            lines.append(f"listener {self._sink_port} 127.0.0.1")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout_s: float = 10.0) -> None:
        conf = self._write_config()
        self.process = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl-C meant for the demo must not kill the broker
            # before the hub has said goodbye; we stop it ourselves, last.
            start_new_session=True,
        )
        running = threading.Event()
        process = self.process

        def read_log() -> None:
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.log_lines.append(line)
                if " running" in line:
                    running.set()
            process.stderr.close()
            running.set()  # the broker exited: stop waiting

        threading.Thread(target=read_log, daemon=True, name="mosquitto-log").start()
        if not running.wait(timeout_s) or process.poll() is not None:
            self.stop()
            raise GatewayError(
                f"mosquitto did not start on 127.0.0.1:{self.port}: "
                + " | ".join(self.log_lines[-5:])
            )
        if self.subscriber:
            self._sink = _Sink(self._sink_port, timeout_s)

    def _stop_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye, as on a power cut."""
        self._stop_sink()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        self._stop_sink()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


class _Sink:
    """The broker's own subscriber (`MosquittoBroker.subscriber`): takes and drops all.

    Raw MQTT 5 on a socket, not paho: after its SUBACK it only reads bytes and throws
    them away, never parsing a PUBLISH. The benchmarks run the hub under test in this
    process; a paho subscriber here parsed every message (and its properties) on the
    same GIL, which cost more than the hub's own publish path and grew with the
    message size, so it was measuring the harness, not the hub (issue 13). QoS 0 and
    keep-alive 0 (MQTT 5 §3.1.2.10): the broker expects nothing back, ever.
    """

    _CHUNK = 1 << 20

    def __init__(self, port: int, timeout_s: float) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        try:
            client_id = f"homehub-sim-sink-{port}".encode()
            # CONNECT (§3.1): "MQTT", level 5, Clean Start, keep-alive 0, no properties.
            self._send(0x10, b"\x00\x04MQTT\x05\x02\x00\x00\x00" + _utf8(client_id))
            # SUBSCRIBE (§3.8): packet id 1, no properties, "#" at QoS 0.
            self._send(0x82, b"\x00\x01\x00" + _utf8(b"#") + b"\x00")
            self._expect_acks()
        except (OSError, GatewayError) as why:
            self._sock.close()
            raise GatewayError(
                f"mosquitto's subscriber could not subscribe on port {port}: {why}"
            ) from None
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._drain, daemon=True, name="mqtt-sink")
        self._thread.start()

    def _send(self, kind: int, body: bytes) -> None:
        self._sock.sendall(bytes([kind]) + variable_byte_integer(len(body)) + body)

    def _expect_acks(self) -> None:
        """Read packets until the SUBACK; a refusal is an error (CONNACK/SUBACK codes)."""
        buffer = b""
        while True:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise GatewayError("the broker closed the connection")
            buffer += chunk
            while len(buffer) >= 2:
                length, used = _read_varint(buffer, 1)
                if used == 0 or len(buffer) < 1 + used + length:
                    break
                kind, body = buffer[0] >> 4, buffer[1 + used : 1 + used + length]
                buffer = buffer[1 + used + length :]
                if kind == 2 and len(body) >= 2 and body[1] != 0:  # CONNACK reason code
                    raise GatewayError(f"CONNACK reason code 0x{body[1]:02x}")
                if kind == 9:  # SUBACK: packet id, properties, then one reason code
                    plen, pused = _read_varint(body, 2)
                    codes = body[2 + pused + plen :]
                    if codes[:1] != b"\x00":
                        raise GatewayError(f"SUBACK reason codes {codes.hex()}")
                    return  # anything after it is PUBLISHes: the drain drops them

    def _drain(self) -> None:
        buffer = bytearray(self._CHUNK)
        with contextlib.suppress(OSError):
            while self._sock.recv_into(buffer):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)


def _utf8(text: bytes) -> bytes:
    """An MQTT UTF-8 string: two length bytes, then the bytes (§1.5.4)."""
    return len(text).to_bytes(2, "big") + text


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, bytes used) of the Variable Byte Integer at `at`; used 0 if incomplete."""
    value, shift = 0, 0
    for used, byte in enumerate(data[at : at + 4], start=1):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, used
        shift += 7
    return 0, 0
