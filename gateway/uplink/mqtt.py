"""The MQTT 5 uplink: publishes stored readings, marks them delivered on PUBACK.

paho-mqtt runs its network loop on its own thread (`loop_start`); every paho
callback hops onto the asyncio loop with `call_soon_threadsafe`, and all
bookkeeping happens there. A fresh paho client is made for every connection,
so no message paho queued for a dead connection is ever resent behind our back:
after a disconnect, whatever was in flight is simply unsent in the store and is
published again (same id) on the next connection.

Invariants (ARCHITECTURE.md, data path step 3):
- at most `max_inflight` readings (or the broker's Receive Maximum, if lower)
  are unacknowledged at once; the read-ahead buffer holds at most two more
  windows' worth of rows; the rest waits in the store;
- a reading is marked delivered only on a PUBACK with a success reason code
  (MQTT 5 §3.4.2.1: codes below 0x80 are success, e.g. 0x10 "no matching
  subscribers");
- a refused publish (e.g. 0x87 not authorized) leaves the reading unsent, logs
  an error and pauses that device's stream with backoff, never a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import Backoff
from gateway.config import MqttSection
from gateway.errors import UplinkError
from gateway.events import (
    EventBus,
    PublishRefused,
    ReadingDelivered,
    UplinkDown,
    UplinkUp,
)
from gateway.store import OutboxRow, Store
from gateway.uplink.payload import offline_status, reading_topic, status_topic

log = logging.getLogger(__name__)

# A connection that stayed up this long counts as healthy: the backoff starts over.
STABLE_CONNECTION_S = 30.0
# Refused publishes of one device are retried after this backoff (not a hot loop).
REFUSED_BACKOFF_INITIAL_S = 1.0
REFUSED_BACKOFF_MAX_S = 300.0


@dataclass(slots=True)
class _InFlight:
    seq: int
    reading_id: str
    device_id: str


@dataclass(slots=True)
class _Session:
    """One broker connection: its own paho client, its own in-flight map."""

    client: paho.Client
    connected_at: float
    lost: asyncio.Future[str]
    inflight: dict[int, _InFlight] = field(default_factory=dict)  # mid -> reading
    status_mids: set[int] = field(default_factory=set)
    status_acked: asyncio.Event = field(default_factory=asyncio.Event)


class MqttUplink:
    """Publishes the store's unsent readings to the broker; one public object."""

    def __init__(
        self,
        settings: MqttSection,
        *,
        gateway_id: str,
        client_id: str,
        store: Store,
        events: EventBus,
        status_document: Callable[[], Awaitable[bytes]],
        version: str,
    ) -> None:
        self._settings = settings
        self._gateway_id = gateway_id
        self._client_id = client_id
        self._store = store
        self._events = events
        self._status_document = status_document
        self._version = version
        self._window = settings.max_inflight
        self._session: _Session | None = None
        self._wake = asyncio.Event()
        self._status_wanted = asyncio.Event()
        self._buffer: deque[OutboxRow] = deque()
        self._cursor = 0  # highest seq fetched into the buffer
        self._exhausted = False  # the store had nothing after the cursor
        # Bumped by every new reading / position reset, so a fetch that raced
        # with one does not wrongly conclude "nothing to send" or undo a reset.
        self._new_readings = 0
        self._position = 0
        self._acked: list[int] = []  # delivered seqs not yet marked in the store
        self._marking: set[int] = set()  # seqs being marked right now
        self._ack_flusher: asyncio.Task[None] | None = None
        self._blocked: dict[str, float] = {}  # device -> monotonic time it may resume
        self._refusals: dict[str, Backoff] = {}
        self._stopping = False
        self.connected = asyncio.Event()
        self.delivered_count = 0

    # -- what the daemon calls ---------------------------------------------------

    def notify_new_reading(self) -> None:
        """A reading was committed: there may be something to publish."""
        self._exhausted = False
        self._new_readings += 1
        self._wake.set()

    def request_status(self) -> None:
        """Publish the status soon (debounced)."""
        self._status_wanted.set()

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; until cancelled or stopped."""
        backoff = Backoff(self._settings.reconnect_min_s, self._settings.reconnect_max_s)
        while not self._stopping:
            try:
                session = await self._connect()
            except (OSError, UplinkError, ssl.SSLError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "mqtt: cannot connect to %s:%d (%s); retrying in %.1f s",
                    self._settings.host,
                    self._settings.port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            reason = await self._serve(session)
            if self._stopping:
                return
            lasted = time.monotonic() - session.connected_at
            if lasted >= STABLE_CONNECTION_S:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning("mqtt: connection lost (%s); reconnecting in %.1f s", reason, delay)
            await asyncio.sleep(delay)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop publishing, wait up to `grace_s` for in-flight PUBACKs, go offline, close."""
        self._stopping = True
        self._wake.set()
        session = self._session
        if session is not None and not session.lost.done():
            deadline = time.monotonic() + grace_s
            while session.inflight and not session.lost.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            # A clean shutdown says "offline" itself; the Last Will covers the rest.
            if not session.lost.done():
                info = session.client.publish(
                    self._status_topic,
                    offline_status(self._gateway_id, self._version),
                    qos=1,
                    retain=True,
                )
                session.status_mids.add(info.mid)
                session.status_acked.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.status_acked.wait(), 0.5)
            await self._close(session)
        await self._flush_acks()

    # -- connection ------------------------------------------------------------------

    @property
    def _status_topic(self) -> str:
        return status_topic(self._settings.topic_prefix, self._gateway_id)

    def _make_client(
        self, loop: asyncio.AbstractEventLoop, lost: asyncio.Future[str]
    ) -> paho.Client:
        s = self._settings
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5,
            # We reconnect ourselves (with our backoff and a fresh client).
            reconnect_on_failure=False,
        )
        client.connect_timeout = s.connect_timeout_s
        # paho queues beyond its own window; keep its window above ours so it never
        # holds a reading back (+2 leaves room for status publishes).
        client.max_inflight_messages_set(self._window + 2)
        # ARCHITECTURE.md: the Last Will makes the retained status "offline"
        # when the hub vanishes without saying goodbye.
        client.will_set(
            self._status_topic, offline_status(self._gateway_id, self._version), qos=1, retain=True
        )
        if s.username is not None:
            password = s.password_file.read_text("utf-8").strip() if s.password_file else None
            client.username_pw_set(s.username, password)
        if s.ca_file is not None:
            client.tls_set(
                ca_certs=str(s.ca_file),
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )

        def threadsafe(fn: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed at exit
                loop.call_soon_threadsafe(fn, *args)

        connack: asyncio.Future[tuple[ReasonCode, int | None]] = loop.create_future()
        client.user_data_set(connack)

        def on_connect(
            _c: paho.Client, _u: Any, _flags: Any, rc: ReasonCode, props: Properties | None
        ) -> None:
            receive_maximum = getattr(props, "ReceiveMaximum", None) if props else None
            threadsafe(_settle, connack, (rc, receive_maximum))

        def on_disconnect(
            _c: paho.Client, _u: Any, _flags: Any, rc: ReasonCode, _p: Properties | None
        ) -> None:
            threadsafe(_settle, lost, str(rc))

        def on_publish(
            _c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None
        ) -> None:
            threadsafe(self._on_publish, client, mid, rc.value, str(rc))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        return client

    async def _connect(self) -> _Session:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        client = self._make_client(loop, lost)
        connack: asyncio.Future[tuple[ReasonCode, int | None]] = client.user_data_get()
        s = self._settings
        # clean_start: every connection starts a fresh session; what was in
        # flight is resent from the store, not from a broker-side session.
        await loop.run_in_executor(
            None,
            lambda: client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=True),
        )
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Nagle would hold small publishes back ~40 ms waiting for more data.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        try:
            rc, receive_maximum = await asyncio.wait_for(
                asyncio.shield(connack), s.connect_timeout_s
            )
        except TimeoutError:
            await self._close_client(client)
            raise UplinkError("no CONNACK from the broker in time") from None
        if rc.is_failure:
            await self._close_client(client)
            raise UplinkError(f"broker refused the connection: {rc}")
        # MQTT 5 §3.2.2.3.3: the client must not have more unacknowledged QoS 1
        # publishes than the broker's Receive Maximum, or the broker disconnects
        # it (0x93). paho does not enforce it, so the window shrinks here.
        # One slot stays free for the status message (at most one is in flight).
        self._window = s.max_inflight
        if receive_maximum is not None and int(receive_maximum) - 1 < self._window:
            self._window = max(1, int(receive_maximum) - 1)
            log.info(
                "mqtt: broker's Receive Maximum is %d: at most %d readings in flight",
                receive_maximum,
                self._window,
            )
        return _Session(client=client, connected_at=time.monotonic(), lost=lost)

    async def _close_client(self, client: paho.Client) -> None:
        client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, client.loop_stop)

    async def _close(self, session: _Session) -> None:
        if self._session is session:
            self._session = None
        await self._close_client(session.client)
        if self.connected.is_set():
            self.connected.clear()
            self._events.publish(UplinkDown(reason="closed"))

    # -- a connected session ---------------------------------------------------------

    async def _serve(self, session: _Session) -> str:
        """Publish until the connection is lost; return why it was lost."""
        self._session = session
        self._reset_reading_position()
        log.info("mqtt: connected to %s:%d", self._settings.host, self._settings.port)
        self.connected.set()
        self._events.publish(UplinkUp())
        self._status_wanted.set()
        pump = asyncio.create_task(self._pump(session), name="mqtt-pump")
        status = asyncio.create_task(self._status_loop(session), name="mqtt-status")
        try:
            reason = await asyncio.shield(session.lost)
        except asyncio.CancelledError:
            pump.cancel()
            status.cancel()
            await self._close(session)
            raise
        pump.cancel()
        status.cancel()
        for task in (pump, status):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self._stopping:
            self._session = None
            self.connected.clear()
            # The readings that were in flight are still unsent in the store; they
            # go out again on the next connection under the same ids.
            self._events.publish(UplinkDown(reason=reason))
            await self._close_client(session.client)
        return reason

    def _reset_reading_position(self) -> None:
        self._position += 1
        self._buffer.clear()
        self._cursor = 0
        self._exhausted = False
        self._wake.set()

    async def _pump(self, session: _Session) -> None:
        """Keep the in-flight window full from the store, in seq order."""
        while not self._stopping and not session.lost.done():
            while self._buffer and len(session.inflight) < self._window:
                self._publish(session, self._buffer.popleft())
            if not self._exhausted and len(self._buffer) <= self._window // 2:
                await self._fetch(session)
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _fetch(self, session: _Session) -> None:
        now = time.monotonic()
        for device, until in list(self._blocked.items()):
            if until <= now:
                del self._blocked[device]
        new_readings, position = self._new_readings, self._position
        rows = await self._store.fetch_unsent(
            self._cursor, self._window * 2 - len(self._buffer), tuple(self._blocked)
        )
        if position != self._position:
            return  # the position was reset while we read: read again from there
        if not rows:
            self._exhausted = new_readings == self._new_readings
            return
        self._cursor = rows[-1].seq
        busy = {f.seq for f in session.inflight.values()} | self._marking | set(self._acked)
        self._buffer.extend(
            row for row in rows if row.seq not in busy and row.device_id not in self._blocked
        )

    def _publish(self, session: _Session, row: OutboxRow) -> None:
        topic = reading_topic(self._settings.topic_prefix, self._gateway_id, row.device_id)
        info = session.client.publish(topic, row.payload, qos=1, retain=False)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            # Not sent (connection just dropped): it stays unsent in the store.
            log.debug("mqtt: publish of seq %d not sent: rc=%s", row.seq, info.rc)
            return
        # on_publish hops through call_soon_threadsafe, so it cannot run before
        # this line even when the PUBACK is already back.
        session.inflight[info.mid] = _InFlight(row.seq, row.id, row.device_id)

    def _on_publish(self, client: paho.Client, mid: int, code: int, reason: str) -> None:
        session = self._session
        if session is None or session.client is not client:
            return  # a late acknowledgement from a connection already given up
        if mid in session.status_mids:
            session.status_mids.discard(mid)
            session.status_acked.set()
            if code >= 0x80:
                log.error("mqtt: broker refused the status message: %s", reason)
            return
        flight = session.inflight.pop(mid, None)
        self._wake.set()
        if flight is None:
            return
        if code < 0x80:
            self._acked.append(flight.seq)
            self.delivered_count += 1
            self._refusals.pop(flight.device_id, None)
            self._events.publish(ReadingDelivered(flight.device_id, flight.reading_id))
            if self._ack_flusher is None or self._ack_flusher.done():
                self._ack_flusher = asyncio.create_task(self._flush_acks(), name="mqtt-acks")
            return
        self._refused(flight, reason)

    def _refused(self, flight: _InFlight, reason: str) -> None:
        device = flight.device_id
        backoff = self._refusals.setdefault(
            device, Backoff(REFUSED_BACKOFF_INITIAL_S, REFUSED_BACKOFF_MAX_S)
        )
        if device not in self._blocked:
            delay = backoff.next_delay()
            log.error(
                "mqtt: broker refused a reading of device %s (%s); it stays unsent,"
                " retrying that device in %.1f s",
                device,
                reason,
                delay,
            )
            self._blocked[device] = time.monotonic() + delay
            self._events.publish(PublishRefused(device, reason))
            asyncio.get_running_loop().call_later(delay, self._unblock, device)
        # Drop this device's read-ahead; the whole stream restarts from its oldest unsent.
        self._buffer = deque(row for row in self._buffer if row.device_id != device)

    def _unblock(self, device: str) -> None:
        self._blocked.pop(device, None)
        self._reset_reading_position()

    async def _flush_acks(self) -> None:
        while self._acked:
            batch, self._acked = self._acked, []
            self._marking.update(batch)
            try:
                await self._store.mark_delivered(batch)
            except Exception:
                # Not marked: they will be resent (same ids) and the backend drops
                # the duplicates. Losing nothing beats a tidy outbox.
                log.exception("store: could not mark %d readings delivered", len(batch))
            finally:
                self._marking.difference_update(batch)

    async def _status_loop(self, session: _Session) -> None:
        interval = self._settings.status_interval_s
        while not session.lost.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_wanted.wait(), interval)
            if session.status_mids:
                # The last status is still unacknowledged: keep within the broker's
                # Receive Maximum and send the newer one after the debounce.
                await asyncio.sleep(1.0)
                continue
            self._status_wanted.clear()
            payload = await self._status_document()
            info = session.client.publish(self._status_topic, payload, qos=1, retain=True)
            session.status_mids.add(info.mid)
            await asyncio.sleep(1.0)  # debounce: at most one status a second


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
