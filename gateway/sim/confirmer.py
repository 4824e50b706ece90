"""A stand-in confirming backend for the tests, the benchmarks and the demo (issue 9).

It subscribes (QoS 1) to every hub's readings under a prefix and answers each
hub on `{prefix}/{gateway}/confirm` with `homehub.confirm/1` documents listing
the ids it got, batched per hub (up to MAX_CONFIRM_IDS, or what arrived within
`batch_s`). It holds readings in memory only: the real backend
(`homehub-backend`, PostgreSQL) confirms only after its commit. It never imports
the hub's internals, only the contract, like any backend.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import defaultdict
from typing import Any

import paho.mqtt.client as paho
from homehub_contract import CONFIRM_SCHEMA, MAX_CONFIRM_IDS, confirm_topic, readings_filter
from paho.mqtt.enums import CallbackAPIVersion


class Confirmer:
    """Confirms every reading it receives; `pause()` makes it receive without confirming."""

    def __init__(
        self, port: int, *, prefix: str = "homehub", host: str = "127.0.0.1", batch_s: float = 0.002
    ) -> None:
        self.port = port
        self.prefix = prefix
        self.batch_s = batch_s
        self.received: list[str] = []  # reading ids, in arrival order (duplicates too)
        self.confirmed: set[str] = set()
        self.confirmations = 0  # documents published
        self.confirming = True
        self._pending: dict[str, list[str]] = defaultdict(list)  # gateway -> ids
        self._cond = threading.Condition()
        self._closed = False
        self._flushing = False  # publishing what it took from _pending
        self._last_publish: paho.MQTTMessageInfo | None = None
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"homehub-sim-confirmer-{id(self):x}",
            protocol=paho.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self._host = host
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True, name="confirmer")

    def start(self, timeout_s: float = 10.0) -> Confirmer:
        self.client.connect(self._host, self.port)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            # Its confirmation follows its PUBACK at once: no Nagle wait between them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        self._flusher.start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"confirmer: not subscribed on port {self.port} in {timeout_s} s")
        return self

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(readings_filter(self.prefix), qos=1)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            doc = json.loads(message.payload)
            gateway, reading_id = str(doc["gateway"]), str(doc["id"])
        except (ValueError, KeyError, TypeError):
            return  # not a reading: a real backend rejects it; here, it is not confirmed
        with self._cond:
            self.received.append(reading_id)
            if self.confirming:
                self._pending[gateway].append(reading_id)
                self._cond.notify_all()

    def pause(self) -> None:
        with self._cond:
            self.confirming = False

    def resume(self) -> None:
        with self._cond:
            self.confirming = True

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
            time.sleep(self.batch_s)  # let a burst gather into one document
            with self._cond:
                pending, self._pending = self._pending, defaultdict(list)
                self._flushing = True
            for gateway, ids in pending.items():
                unique = list(dict.fromkeys(ids))
                for start in range(0, len(unique), MAX_CONFIRM_IDS):
                    chunk = unique[start : start + MAX_CONFIRM_IDS]
                    doc = {"schema": CONFIRM_SCHEMA, "gateway": gateway, "ids": chunk}
                    topic = confirm_topic(self.prefix, gateway)
                    info = self.client.publish(topic, json.dumps(doc), qos=1)
                    with self._cond:
                        self._last_publish = info
                        self.confirmed.update(chunk)
                        self.confirmations += 1
                        self._cond.notify_all()
            with self._cond:
                self._flushing = False
                self._cond.notify_all()

    def wait_received(self, count: int, timeout_s: float) -> list[str]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(set(self.received)) >= count, timeout_s):
                raise TimeoutError(
                    f"confirmer: {len(set(self.received))} of {count} readings in {timeout_s} s"
                )
            return list(self.received)

    def wait_idle(self, received: int, timeout_s: float) -> None:
        """Until `received` readings in all (duplicates too) came and all are confirmed.

        A benchmark runs the same readings in several rounds: a round must not start
        while confirmations of the last one's are still on their way (they would
        confirm this round's readings before it sends them).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self.received) >= received and not self._pending and not self._flushing,
                timeout_s,
            ):
                raise TimeoutError(
                    f"confirmer: {len(self.received)} of {received} readings, not idle in"
                    f" {timeout_s} s"
                )
            last = self._last_publish
        if last is not None:
            # Its PUBACK: the broker has routed every confirmation sent before it.
            last.wait_for_publish(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()

    def __enter__(self) -> Confirmer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.sim.confirmer PORT PREFIX [BATCH_S]`: a Confirmer in a process of its own.

    For the benchmarks (bench/confirm.py), so that it does not share the measured
    hub's interpreter. One line in, one line out: it prints `ok N` (N documents
    published so far) once subscribed, after `idle RECEIVED TIMEOUT_S` (see
    `wait_idle`; `timeout ...` if not) and after `stop`, then exits.
    """
    import sys

    args = argv if argv is not None else sys.argv[1:]
    port, prefix = args[:2]
    batch_s = float(args[2]) if len(args) > 2 else 0.002
    with Confirmer(int(port), prefix=prefix, batch_s=batch_s) as backend:
        print("ok", backend.confirmations, flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["idle"]:
                try:
                    backend.wait_idle(int(words[1]), float(words[2]))
                except TimeoutError as why:
                    print("timeout", str(why).replace("\n", " "), flush=True)
                    continue
            print("ok", backend.confirmations, flush=True)
            if words[:1] == ["stop"]:
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
