"""`homehub-backend ingest`: readings from a shared subscription into PostgreSQL, then acked.

Threads: paho's network thread receives each PUBLISH, turns it into a row (validate.py)
and queues it; the worker's own thread takes the queue in batches, commits each batch in
one transaction, then publishes the confirmations and only then sends the PUBACKs
(paho `manual_ack=True`). What is not committed is not acknowledged, so a worker killed at
any moment loses nothing: the broker still holds every unacknowledged message in the
worker's persistent session and sends it again (MQTT 5 §4.4).

- Readings: `$share/{group}/{prefix}/+/readings/#`, QoS 1. Workers in one group split them
  (§4.8.2).
- Statuses: `{prefix}/+/status`, NOT shared: a shared subscription never gets retained
  messages (§4.8.2), and each hub's retained status is exactly what a restarted fleet view
  needs. Retain Handling 1 (§3.8.3.1): the retained statuses come once, when the
  subscription is new, not again at every reconnect.
- Receive Maximum (§3.1.2.11.3) bounds what the broker sends before we acknowledge: the
  in-memory queue can never hold more than that, however long PostgreSQL is away.
- PUBACKs go in the order the PUBLISHes arrived (§4.6): batches are committed and acked in
  arrival order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import psycopg
from homehub_contract import (
    CONFIRM_SCHEMA,
    MAX_CONFIRM_IDS,
    SIGNATURE_PROPERTY,
    confirm_topic,
    readings_filter,
)
from homehub_contract import status_filter as contract_status_filter
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from homehub_backend import db
from homehub_backend.config import BackendConfig, read_secret
from homehub_backend.db import BatchResult, ReadingRow, RejectedRow, StatusRow
from homehub_backend.errors import DatabaseError
from homehub_backend.mqttsock import BufferedClient
from homehub_backend.validate import Row, Topics, classify, utc_now
from homehub_backend.verify import Verifier

log = logging.getLogger("homehub_backend.ingest")


@dataclass(frozen=True, slots=True)
class Inbound:
    mid: int
    qos: int
    generation: int  # the connection it came on: see Worker._ack
    row: Row


@dataclass
class Counters:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    statuses: int = 0
    batches: int = 0
    confirmations: int = 0


def share_filter(group: str, prefix: str) -> str:
    return f"$share/{group}/{readings_filter(prefix)}"


def confirm_payloads(gateway: str, ids: list[str], confirmed_at: str) -> list[bytes]:
    """`homehub.confirm/1` documents for `ids`, at most MAX_CONFIRM_IDS each."""
    return [
        json.dumps(
            {
                "schema": CONFIRM_SCHEMA,
                "gateway": gateway,
                "ids": ids[start : start + MAX_CONFIRM_IDS],
                "confirmed_at": confirmed_at,
            },
            separators=(",", ":"),
        ).encode()
        for start in range(0, len(ids), MAX_CONFIRM_IDS)
    ]


@dataclass
class Worker:
    config: BackendConfig
    # Called after each committed batch (tests and the demo watch it); on the worker thread.
    on_batch: Callable[[BatchResult], None] | None = None
    counters: Counters = field(default_factory=Counters)
    _queue: queue.Queue[Inbound] = field(default_factory=queue.Queue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _subscribed: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _generation: int = 0
    _conn: psycopg.Connection[Any] | None = None
    _client: paho.Client | None = None
    _pending_confirms: list[paho.MQTTMessageInfo] = field(default_factory=list)
    _verifier: Verifier | None = None

    def __post_init__(self) -> None:
        v = self.config.verify
        if v.certs_dir is not None or v.require_signature:
            self._verifier = Verifier(v.certs_dir, required=v.require_signature)

    # -- MQTT (paho's thread) ------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        b = self.config.broker
        # Reads the socket in large chunks: paho's own receive path makes ~5 system
        # calls per reading (homehub_backend.mqttsock).
        client = BufferedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=b.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(
            min_delay=max(1, round(b.reconnect_min_s)), max_delay=max(1, round(b.reconnect_max_s))
        )
        # Confirmations are QoS 1 too: let a burst of them be in flight at once.
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(0)
        if b.username is not None:
            client.username_pw_set(b.username, read_secret(b.password_file))
        if b.ca_file is not None:
            client.tls_set(
                ca_certs=str(b.ca_file),
                certfile=str(b.cert_file) if b.cert_file else None,
                keyfile=str(b.key_file) if b.key_file else None,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.broker.session_expiry_s
        props.ReceiveMaximum = self.config.broker.receive_maximum
        return props

    def _on_connect(
        self, client: paho.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any
    ) -> None:
        if rc.is_failure:
            log.warning("ingest: the broker refused the connection: %s", rc)
            return
        with self._lock:
            # Deliveries of an earlier connection are never acknowledged on this one: the
            # broker sends them again (same packet ids, §4.4) and those copies are acked.
            # Acking an old copy after the broker has reused its packet id would
            # acknowledge another, uncommitted message.
            self._generation += 1
        log.info(
            "ingest: connected to %s:%d (session %s)",
            self.config.broker.host,
            self.config.broker.port,
            "resumed" if flags.session_present else "new",
        )
        ingest = self.config.ingest
        client.subscribe(
            [
                (share_filter(ingest.share_group, ingest.topic_prefix), SubscribeOptions(qos=1)),
                (
                    contract_status_filter(ingest.topic_prefix),
                    SubscribeOptions(qos=1, retainHandling=1),
                ),
            ]
        )

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any
    ) -> None:
        failed = [str(rc) for rc in rcs if rc.is_failure]
        if failed:
            # Without its subscriptions the worker would sit idle while hubs' readings go
            # unconsumed: say so loudly; the next reconnect subscribes again.
            log.error("ingest: subscription refused: %s", ", ".join(failed))
            return
        log.info("ingest: subscribed (share group %s)", self.config.ingest.share_group)
        self._subscribed.set()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if not self._stop.is_set():
            log.warning("ingest: disconnected from the broker (%s); reconnecting", rc)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        row = classify(
            self._topics,
            msg.topic,
            payload,
            self.config.ingest.max_payload_bytes,
            utc_now(),
            # MQTT 5 Content Type (§3.3.2.3.9): application/fhir+json from a FHIR hub.
            content_type=getattr(msg.properties, "ContentType", None),
        )
        if self._verifier is not None:
            # Issue 14: a reading whose signature fails becomes a rejection like any other
            # (acknowledged, never confirmed). Checked over the bytes as received.
            row = self._verifier.apply(row, payload, _signature(msg))
        with self._lock:
            generation = self._generation
        self._queue.put(Inbound(msg.mid, msg.qos, generation, row))

    # -- the worker thread ---------------------------------------------------------------

    @property
    def _topics(self) -> Topics:
        return Topics(self.config.ingest.topic_prefix)

    def stop(self) -> None:
        """Finish the batch in hand, acknowledge it, and return from run()."""
        self._stop.set()

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def run(self) -> None:
        """Until stop(). Raises DatabaseError when the schema is missing or outdated."""
        self._conn = self._db_connect_retrying()
        if self._conn is None:
            return
        db.check_schema(self._conn)
        client = self._client = self._make_client()
        b = self.config.broker
        client.connect_async(
            b.host,
            b.port,
            keepalive=b.keepalive_s,
            clean_start=False,  # a persistent session: the broker keeps what we did not ack
            properties=self._connect_properties(),
        )
        client.loop_start()
        try:
            while not self._stop.is_set():
                batch = self._collect()
                if batch:
                    self._handle(batch)
        finally:
            self._shutdown(client)

    def _collect(self) -> list[Inbound]:
        ingest = self.config.ingest
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        log.debug("ingest: batch open")
        deadline = time.monotonic() + ingest.batch_wait_ms / 1000
        while len(batch) < ingest.batch_max and not self._stop.is_set():
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # Short waits: a SIGTERM closes the batch at once (then commit, ack, exit).
                batch.append(self._queue.get(timeout=min(remaining, 0.05)))
            except queue.Empty:
                continue
        return batch

    def _handle(self, batch: list[Inbound]) -> None:
        readings = [i.row for i in batch if isinstance(i.row, ReadingRow)]
        rejected = [i.row for i in batch if isinstance(i.row, RejectedRow)]
        statuses = [i.row for i in batch if isinstance(i.row, StatusRow)]
        result = self._commit(readings, rejected, statuses)
        if result is None:
            return  # stopping while PostgreSQL is away: nothing acked, nothing lost
        for r in rejected + result.refused:
            log.warning("ingest: rejected a message: %s", r.reason)
            log.debug("ingest: rejected %s: %s", r.topic, r.reason)
        for _ in result.conflicts:
            log.warning("ingest: rejected a reading: its id is held for another gateway")
        self.counters.batches += 1
        self.counters.stored += result.new
        self.counters.duplicates += result.duplicates
        self.counters.rejected += len(rejected) + len(result.conflicts) + len(result.refused)
        self.counters.statuses += len(statuses)
        self._confirm(result)
        self._ack(batch)
        if self.on_batch is not None:
            self.on_batch(result)

    def _commit(
        self, readings: list[ReadingRow], rejected: list[RejectedRow], statuses: list[StatusRow]
    ) -> BatchResult | None:
        """Commit the batch, retrying with backoff while PostgreSQL is away; None if stopped."""
        delay = self.config.ingest.db_retry_min_s
        while True:
            if self._conn is None or self._conn.closed:
                self._conn = self._db_connect_retrying()
                if self._conn is None:
                    return None
            try:
                return db.write_batch(self._conn, readings, rejected, statuses)
            except psycopg.OperationalError as exc:
                log.warning(
                    "ingest: PostgreSQL failed (%s): %d message(s) kept unacknowledged; "
                    "retrying in %.1f s",
                    _first_line(exc),
                    len(readings) + len(rejected) + len(statuses),
                    delay,
                )
                self._close_db()
            except psycopg.Error as exc:
                # Not the server going away but a row it refuses (e.g. a \u0000 that JSON
                # allows and jsonb does not): find it, reject it, store the rest.
                log.warning("ingest: PostgreSQL refused the batch (%s): row by row", exc.sqlstate)
                try:
                    return db.write_batch_row_by_row(self._conn, readings, rejected, statuses)
                except psycopg.OperationalError as again:
                    log.warning("ingest: PostgreSQL failed (%s)", _first_line(again))
                    self._close_db()
            if self._stop.wait(delay):
                return None
            delay = min(delay * 2, self.config.ingest.db_retry_max_s)

    def _db_connect_retrying(self) -> psycopg.Connection[Any] | None:
        delay = self.config.ingest.db_retry_min_s
        while True:
            try:
                return db.connect(self.config.database)
            except DatabaseError as exc:
                log.warning("ingest: %s; retrying in %.1f s", exc, delay)
            if self._stop.wait(delay):
                return None
            delay = min(delay * 2, self.config.ingest.db_retry_max_s)

    def _close_db(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _confirm(self, result: BatchResult) -> None:
        assert self._client is not None
        prefix = self.config.ingest.topic_prefix
        confirmed_at = utc_now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        infos = []
        for gateway, ids in result.held.items():
            for payload in confirm_payloads(gateway, ids, confirmed_at):
                infos.append(self._client.publish(confirm_topic(prefix, gateway), payload, qos=1))
                self.counters.confirmations += 1
        # The last batch's, to give them a moment to leave at shutdown.
        self._pending_confirms = infos

    def _ack(self, batch: list[Inbound]) -> None:
        assert self._client is not None
        with self._lock:
            for item in batch:
                if item.generation == self._generation and item.qos > 0:
                    self._client.ack(item.mid, item.qos)

    def _shutdown(self, client: paho.Client) -> None:
        deadline = time.monotonic() + 2.0
        for info in self._pending_confirms:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):
                break
        client.disconnect()
        client.loop_stop()
        self._close_db()
        log.info(
            "ingest: stopped: %d stored, %d duplicates, %d rejected, %d statuses, %d batches",
            self.counters.stored,
            self.counters.duplicates,
            self.counters.rejected,
            self.counters.statuses,
            self.counters.batches,
        )


def _signature(msg: paho.MQTTMessage) -> str | None:
    """The `jws` User Property (MQTT 5 §3.3.2.3.7); None without one.

    A second `jws` property is not a second chance: only the first counts.
    """
    for name, value in getattr(msg.properties, "UserProperty", None) or ():
        if name == SIGNATURE_PROPERTY:
            return str(value)
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
