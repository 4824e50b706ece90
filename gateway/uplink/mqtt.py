"""The MQTT 5 uplink: publishes stored readings, marks them delivered on PUBACK.

paho-mqtt runs its network loop on its own thread (`loop_start`); every paho
callback hops onto the asyncio loop with `call_soon_threadsafe`, and all
bookkeeping happens there. A fresh paho client is made for every connection,
so no message paho queued for a dead connection is ever resent behind our back:
after a disconnect, whatever was in flight is simply unsent in the store and is
published again (same id) on the next connection.

Invariants (ARCHITECTURE.md, data path step 3):
- at most `max_inflight` readings are unacknowledged at once, and readings plus
  status messages never exceed the broker's Receive Maximum (MQTT 5
  §3.2.2.3.3); the read-ahead buffer holds at most two windows of rows; the
  rest waits in the store;
- a reading is marked delivered only on a PUBACK with a success reason code
  that means a subscriber got it (MQTT 5 §3.4.2.1: codes below 0x80 are
  success, but 0x10 "No matching subscribers" means the broker dropped it:
  not delivered, retried with backoff, issue 9);
- a refused publish (e.g. 0x87 not authorized) leaves the reading unsent, logs
  an error and pauses that device's readings with backoff, never a hot loop; a
  reading the broker can never take (too large, invalid) is held back on its
  own, so it cannot block the readings behind it (see outbox.PoisonGuard);
- nothing that goes wrong inside the uplink stops it for good: errors end the
  connection, and the next one starts from the store again.

What the hub receives (the `Inbox`, issue 9) comes on the same connection, in
one persistent session: Clean Start 0 with a Session Expiry Interval (MQTT 5
§3.1.2.4, §3.1.2.11.2). paho's default, MQTT_CLEAN_START_FIRST_ONLY, would start
clean on the first connect of each client, and every connection here has a new
client: the confirmations the broker queued while the hub was down or
restarting would be thrown away. So Clean Start is always 0 when the inbox has
routes. Inbound QoS 1 messages are acknowledged by hand (paho `manual_ack`),
after the inbox has handled them. The session holds no outgoing state worth
keeping: paho's fresh client never resends a publish; the store does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import paho.mqtt.client as paho
from homehub_contract import SIGNATURE_PROPERTY, reading_topic, status_topic
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

if TYPE_CHECKING:
    from gateway.uplink.sign import ReadingSigner, SignerSource

from gateway.backoff import Backoff
from gateway.config import MqttSection
from gateway.errors import UplinkError
from gateway.events import EventBus, PublishRefused, ReadingDelivered, UplinkDown, UplinkUp
from gateway.store import OutboxRow, Store
from gateway.uplink.inbox import InboundMessage, Inbox
from gateway.uplink.outbox import HOLD_RETRY_S, POISON_LOSSES, PoisonGuard, PublishQueue
from gateway.uplink.payload import offline_status, short_status
from gateway.uplink.render import renderer_for

log = logging.getLogger(__name__)

T = TypeVar("T")

# A connection that stayed up this long counts as healthy: the backoff starts over.
STABLE_CONNECTION_S = 30.0
# Refused publishes of one device are retried after this backoff (not a hot loop).
REFUSED_BACKOFF_INITIAL_S = 1.0
REFUSED_BACKOFF_MAX_S = 300.0
# PUBACK reason codes that will not change by retrying soon (MQTT 5 §3.4.2.1):
# 0x90 topic name invalid, 0x95 packet too large, 0x99 payload format invalid.
PERMANENT_REFUSALS = frozenset({0x90, 0x95, 0x99})
# MQTT 5 §3.4.2.1: 0x10 "No matching subscribers" is a success code, yet nobody got
# the message (the backend is not subscribed): the reading stays unsent, and that
# device's readings are retried after this backoff (issue 9).
NO_MATCHING_SUBSCRIBERS = 0x10
#: How much of the status is sent: less after the broker dropped the connection for it.
StatusForm = Literal["full", "short", "none"]
UNHEARD_BACKOFF_INITIAL_S = 1.0
UNHEARD_BACKOFF_MAX_S = 60.0
# MQTT 5 §3.2.2.3.3: Receive Maximum absent means 65,535.
DEFAULT_RECEIVE_MAXIMUM = 65535
STATUS_DEBOUNCE_S = 1.0
# Readings wait this long, at most, for the connection's first status to be
# acknowledged (MqttUplink._pump).
FIRST_STATUS_WAIT_S = 1.0
# Received messages handed to the inbox together, at most (see _take_inbound).
INBOX_BATCH = 64
# A message received before the session is served waits for it this long, at most.
INBOX_SESSION_WAIT_S = 2.0
# Deliveries (success PUBACKs) are written to the store in batches (issue 11, wear):
# at the latest MARK_DELAY_S after the first one not yet written, at once when
# MARK_BATCH are waiting, before each status document (so its `unsent` is exact)
# and at stop. Each mark rewrites the reading's table page: one commit for many
# saves an fsync and ~10 KiB per reading at 1 reading/s. A mark lost in a crash
# costs only a resend under the same id (the backend drops duplicates); until
# it is written the reading is never read again for sending (see _pump).
MARK_DELAY_S = 30.0
MARK_BATCH = 500
# ... or once no PUBACK has come for this long: the stream paused or the queue is
# drained (a burst, a device's memory), so the store catches up soon after. Longer
# than the gap in a 1 reading/s stream, so that stream is marked every MARK_DELAY_S.
MARK_QUIET_S = 2.5


@dataclass(slots=True)
class _InFlight:
    seq: int
    reading_id: str
    device_id: str


@dataclass(slots=True)
class _IdentityTrial:
    """A new client key and certificate being tried (issue 14, `cert/install`)."""

    rollback: Callable[[], None]
    outcome: asyncio.Future[str | None]


@dataclass(slots=True)
class _Session:
    """One broker connection: its own paho client, its own in-flight map."""

    client: paho.Client
    connected_at: float
    lost: asyncio.Future[str]
    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM
    maximum_packet_size: int | None = None
    inflight: dict[int, _InFlight] = field(default_factory=dict)  # mid -> reading
    status_mids: set[int] = field(default_factory=set)
    status_acked: asyncio.Event = field(default_factory=asyncio.Event)
    response_mids: dict[int, str] = field(default_factory=dict)  # mid -> topic (issue 10)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: ended on purpose (a new identity to try): not a loss the poison guard counts
    retired: bool = False

    @property
    def unacknowledged(self) -> int:
        return len(self.inflight) + len(self.status_mids) + len(self.response_mids)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def _in_daemon_thread(fn: Callable[[], T], name: str) -> T:
    """Run blocking `fn` on a daemon thread.

    Not the loop's default executor: asyncio.run() waits for that at exit, so a
    connect hanging on a dead network would hold a SIGTERM'd hub past its 5 s.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_fail, future, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


def _publish_size(topic: str, payload: bytes, properties: Properties | None = None) -> int:
    """Bytes of a QoS 1 PUBLISH (MQTT 5 §3.3); without properties, 1 for their length."""
    props = len(properties.pack()) if properties is not None else 1  # type: ignore[no-untyped-call]
    remaining = 2 + len(topic.encode()) + 2 + props + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + remaining


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
        inbox: Inbox | None = None,
    ) -> None:
        self._settings = settings
        self._gateway_id = gateway_id
        self._client_id = client_id
        self._store = store
        self._events = events
        self._status_document = status_document
        self._version = version
        self._session: _Session | None = None
        self._queue = PublishQueue(store)
        self._poison = PoisonGuard()
        # The status message can be what the broker drops the connection for (a
        # message size limit it does not announce): see _status_lost.
        self._status_losses = 0
        self._status_form: StatusForm = "full"
        self._status_reduced_at = 0.0  # monotonic; the full form is tried again after an hour
        self._status_wanted = asyncio.Event()
        self._acked: list[int] = []  # delivered seqs not yet marked in the store
        self._marking: set[int] = set()  # seqs being marked right now
        self._ack_flusher: asyncio.Task[None] | None = None
        self._marks_due = asyncio.Event()  # wakes the flusher before MARK_DELAY_S
        self._last_ack_at = 0.0  # monotonic, the last success PUBACK
        # Set by finish_deliveries: the store may close now, so no flusher starts.
        self._deliveries_final = False
        self._refusals: dict[str, Backoff] = {}
        self._unheard: dict[str, Backoff] = {}  # device -> backoff after PUBACK 0x10
        self._stopping = False
        self._inbox = inbox if inbox else None
        self._inbound: deque[tuple[paho.Client, paho.MQTTMessage, float]] = deque()
        self._inbox_worker: asyncio.Task[None] | None = None
        self._inbound_more = asyncio.Event()  # set by each received message
        self.connected = asyncio.Event()
        self.delivered_count = 0
        self._trial: _IdentityTrial | None = None
        self._retry_now = asyncio.Event()  # cuts a reconnect backoff short (a trial)
        # Issue 13: `[mqtt] payload` renders the stored payload at publish time.
        self._render = renderer_for(settings.payload, version=version)
        # Issue 14: `[mqtt] sign`. The signer is taken afresh at each connection (a renewed
        # key signs from the next one); without a usable key nothing is published, never
        # a reading unsigned.
        self._signers: SignerSource | None = None
        self._signer: ReadingSigner | None = None
        if settings.sign:
            from gateway.uplink.sign import SignerSource  # cryptography only when signing

            assert settings.key_file is not None and settings.cert_file is not None
            self._signers = SignerSource(settings.key_file, settings.cert_file)

    # -- what the daemon calls ---------------------------------------------------

    def notify_new_reading(self) -> None:
        """A reading was committed: there may be something to publish."""
        self._queue.notify_new()

    def request_status(self) -> None:
        """Publish the status soon (debounced)."""
        self._status_wanted.set()

    def republish(self) -> None:
        """Readings were made unsent again in the store (unconfirmed): read it again."""
        self._queue.reset()

    async def flush_deliveries(self) -> None:
        """Write the PUBACKs not yet marked in the store, now (not after MARK_DELAY_S)."""
        if self._acked:
            batch, self._acked = self._acked, []
            await self._mark_delivered(batch)

    def publish_response(self, topic: str, payload: bytes, correlation_data: bytes | None) -> bool:
        """Publish a command's response (issue 10), QoS 1, not retained; whether it went out.

        MQTT 5 §4.10: on the request's Response Topic, with its Correlation Data. Not
        sent while there is no connection: the request is then not acknowledged
        either, the broker delivers it again, and the repeated request id gets this
        same response (gateway.commands).
        """
        session = self._session
        if session is None or session.lost.done():
            return False
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.PayloadFormatIndicator = 1
        properties.ContentType = "application/json"
        if correlation_data is not None:
            properties.CorrelationData = correlation_data
        info = session.client.publish(topic, payload, qos=1, retain=False, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("mqtt: a command response was not sent (rc=%s)", info.rc)
            return False
        session.response_mids[info.mid] = topic
        return True

    async def try_identity(self, rollback: Callable[[], None], timeout_s: float) -> str | None:
        """Reconnect at once with the client key and certificate now in their files.

        Issue 14, `cert/install`: paho reads `cert_file` and `key_file` when each
        connection's client is made, so the files replaced in place are what the
        next connection uses. None when the broker accepted it (CONNACK success);
        otherwise why not (TLS handshake refused, CONNACK refused, no answer within
        the connect timeout): `rollback` has then put the old files back before
        the uplink connects again, at once, with them. `timeout_s` bounds the wait
        whatever happens (rolled back too if it runs out before an answer).
        """
        loop = asyncio.get_running_loop()
        trial = _IdentityTrial(rollback, loop.create_future())
        self._trial = trial
        session = self._session
        if session is not None:
            session.retired = True
            _settle(session.lost, "reconnecting with a new client certificate")
        self._retry_now.set()
        deadline = time.monotonic() + timeout_s
        try:
            why = await asyncio.wait_for(asyncio.shield(trial.outcome), timeout_s)
            # The caller's answer can only go out on a connection: wait for the one
            # that follows (with whichever identity), within the same bound.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), deadline - time.monotonic())
            return why
        except TimeoutError:
            if self._trial is trial:
                self._trial = None
                rollback()
                return f"no answer from the broker within {timeout_s:.0f} s"
            return await trial.outcome  # settled in the meantime
        except asyncio.CancelledError:
            # The hub is stopping: never leave an untried pair behind for the next start.
            if self._trial is trial:
                self._trial = None
                rollback()
            raise
        finally:
            if self._trial is trial and trial.outcome.done():
                self._trial = None

    async def _pause(self, delay: float) -> None:
        """The reconnect backoff; an identity trial cuts it short."""
        if self._trial is not None:
            return
        self._retry_now.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), delay)

    def _trial_failed(self, trial: _IdentityTrial | None, why: str) -> bool:
        """A connect with the identity on trial failed: roll back; whether it was one."""
        if trial is None or self._trial is not trial:
            return False
        self._trial = None
        try:
            trial.rollback()
        except Exception as exc:
            log.error("tls: rolling back to the old client certificate failed: %s", exc)
        log.error(
            "tls: the broker did not accept the new client certificate (%s); back to the old one",
            why,
        )
        _settle(trial.outcome, why)
        return True

    @property
    def held_back(self) -> int:
        """Readings set aside because the broker cannot take them (retried later)."""
        return len(self._queue.held)

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; until cancelled or stopped."""
        backoff = Backoff(self._settings.reconnect_min_s, self._settings.reconnect_max_s)
        while not self._stopping:
            trial = self._trial
            try:
                session = await self._connect()
            except Exception as exc:  # any failure to connect is retried, never fatal
                if self._trial_failed(trial, str(exc)):
                    continue  # at once, with the old identity back in its files
                delay = backoff.next_delay()
                log.warning(
                    "mqtt: cannot connect to %s:%d (%s); retrying in %.1f s",
                    self._settings.host,
                    self._settings.port,
                    exc,
                    delay,
                )
                await self._pause(delay)
                continue
            if trial is not None and self._trial is trial:
                self._trial = None
                log.info("tls: the broker accepted the new client certificate")
                _settle(trial.outcome, None)
            elif self._trial is not None:
                # Asked for while this connection was being made with the old files.
                session.retired = True
                _settle(session.lost, "reconnecting with a new client certificate")
            reason = await self._serve(session)
            if self._stopping:
                return
            if self._trial is not None:
                continue  # a new identity to try: at once
            if time.monotonic() - session.connected_at >= STABLE_CONNECTION_S:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning("mqtt: connection lost (%s); reconnecting in %.1f s", reason, delay)
            await self._pause(delay)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop publishing, wait up to `grace_s` for in-flight PUBACKs, go offline, close."""
        self._stopping = True
        self._marks_due.set()
        self._queue.wake.set()
        self._inbound_more.set()  # a batch lingering for more is handled now
        session = self._session
        if session is not None:
            # No new readings and no "online" status after this point.
            await self._cancel_tasks(session)
        if session is not None and not session.lost.done():
            deadline = time.monotonic() + grace_s
            while session.unacknowledged and not session.lost.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._queue.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queue.wake.wait(), remaining)
            # A clean shutdown says "offline" itself (a clean DISCONNECT discards
            # the Last Will); the Will covers every other way of going away.
            if not session.lost.done():
                info = session.client.publish(
                    self._status_topic,
                    offline_status(self._gateway_id, self._version),
                    qos=1,
                    retain=True,
                )
                session.status_acked.clear()
                session.status_mids.add(info.mid)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.status_acked.wait(), 0.5)
            await self._close(session)
        worker = self._inbox_worker
        if worker is not None and not worker.done():
            # Let a confirmation being handled commit; what is left is not acked
            # and comes again with the session.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(worker), 0.3)
            worker.cancel()
        await self.finish_deliveries()

    async def finish_deliveries(self) -> None:
        """Write every PUBACK so far to the store and start no store write after (issue 11).

        The daemon calls this (again: `stop` may have run out of time) after the
        session is closed and before it closes the store: the `mqtt-acks`
        flusher, asleep collecting its batch, must not wake against a closed
        store. Its batch in progress is awaited, then what is left is written.
        A PUBACK after this cannot come (the session is closed, late ones are
        ignored); had it come, its reading would stay unsent and be resent
        under the same id on the next start.
        """
        self._deliveries_final = True
        self._marks_due.set()
        worker = self._inbox_worker
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        flusher = self._ack_flusher
        if flusher is not None and not flusher.done():
            await asyncio.gather(flusher, return_exceptions=True)
        await self.flush_deliveries()

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
            # Inbound QoS 1 is acknowledged once the inbox has handled it (see the top).
            manual_ack=self._inbox is not None,
        )
        client.connect_timeout = s.connect_timeout_s
        # paho queues beyond its own window; keep its window above ours so it never
        # holds a reading back (+2 leaves room for status publishes).
        client.max_inflight_messages_set(s.max_inflight + 2)
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
            )

        def threadsafe(fn: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed at exit
                loop.call_soon_threadsafe(fn, *args)

        connack: asyncio.Future[tuple[ReasonCode, Properties | None]] = loop.create_future()
        client.user_data_set(connack)

        def on_connect(
            _c: paho.Client, _u: Any, _flags: Any, rc: ReasonCode, props: Properties | None
        ) -> None:
            threadsafe(_settle, connack, (rc, props))

        def on_disconnect(
            _c: paho.Client, _u: Any, _flags: Any, rc: ReasonCode, _p: Properties | None
        ) -> None:
            threadsafe(_settle, lost, str(rc))

        # PUBACKs arrive in bursts; hop to the loop once per burst, not once per
        # PUBACK (each hop wakes the loop through its self-pipe).
        pubacks: deque[tuple[int, ReasonCode]] = deque()
        hop_lock = threading.Lock()
        hop_pending = False

        def take_pubacks() -> None:
            nonlocal hop_pending
            with hop_lock:
                hop_pending = False
            while pubacks:
                mid, rc = pubacks.popleft()
                self._on_publish(client, mid, rc)

        def on_publish(
            _c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None
        ) -> None:
            nonlocal hop_pending
            pubacks.append((mid, rc))
            with hop_lock:
                if hop_pending:
                    return
                hop_pending = True
            threadsafe(take_pubacks)

        def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
            threadsafe(self._on_message, client, message, time.monotonic())

        def on_subscribe(
            _c: paho.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Properties | None
        ) -> None:
            threadsafe(self._on_suback, codes)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        if self._inbox is not None:
            client.on_message = on_message
            client.on_subscribe = on_subscribe
        return client

    async def _connect(self) -> _Session:
        if self._signers is not None:
            # Raises (IdentityError) when the key cannot sign: retried like a failed connect.
            signer = self._signers.current()
            if signer is not self._signer:
                # The kid is the certificate's thumbprint: public, and what the backend's
                # rejection reasons are about.
                log.info("mqtt: readings are signed (ES256, kid %s)", signer.kid)
            self._signer = signer
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        client = self._make_client(loop, lost)
        connack: asyncio.Future[tuple[ReasonCode, Properties | None]] = client.user_data_get()
        s = self._settings
        log.debug("mqtt: connecting to %s:%d", s.host, s.port)
        # Without an inbox, every connection starts a fresh session (what was in
        # flight is resent from the store). With one, never clean: see the top.
        clean_start = self._inbox is None
        properties: Properties | None = None
        if not clean_start:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry_s
        try:
            await _in_daemon_thread(
                lambda: client.connect(
                    s.host,
                    s.port,
                    keepalive=s.keepalive_s,
                    clean_start=clean_start,
                    properties=properties,
                ),
                "mqtt-connect",
            )
            sock = client.socket()
            if isinstance(sock, socket.socket):
                # Nagle would hold small publishes back ~40 ms waiting for more data.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.loop_start()
            waiters: list[asyncio.Future[Any]] = [connack, lost]
            done, _ = await asyncio.wait(
                waiters, timeout=s.connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if connack not in done:
                why = lost.result() if lost in done else "no CONNACK in time"
                if lost in done and s.cert_file is not None:
                    # TLS 1.3: a broker that rejects the client certificate (another
                    # CA, expired, revoked) closes after the handshake, before CONNACK.
                    why += f"; the broker may refuse the hub's certificate ({s.cert_file.name})"
                raise UplinkError(f"connection closed before CONNACK: {why}")
            rc, props = connack.result()
            if rc.is_failure:
                raise UplinkError(f"broker refused the connection: {rc}")
        except BaseException:
            # Never leave a paho thread or socket behind (they would share our
            # client id and kick the next connection off the broker).
            _close_in_background(client)
            raise
        session = _Session(client=client, connected_at=time.monotonic(), lost=lost)
        receive_maximum = getattr(props, "ReceiveMaximum", None) if props else None
        if receive_maximum:
            session.receive_maximum = int(receive_maximum)
        maximum_packet_size = getattr(props, "MaximumPacketSize", None) if props else None
        if maximum_packet_size:
            session.maximum_packet_size = int(maximum_packet_size)
        return session

    def _window(self, session: _Session) -> int:
        """Readings allowed in flight: one slot of Receive Maximum stays for the status."""
        if self._poison.probing:
            return 1
        return max(1, min(self._settings.max_inflight, session.receive_maximum - 1))

    async def _close_client(self, client: paho.Client) -> None:
        client.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_in_daemon_thread(client.loop_stop, "mqtt-stop"), 2.0)

    async def _close(self, session: _Session) -> None:
        if self._session is session:
            self._session = None
        await self._close_client(session.client)
        if self.connected.is_set():
            self.connected.clear()
            self._events.publish(UplinkDown(reason="closed"))

    async def _cancel_tasks(self, session: _Session) -> None:
        for task in session.tasks:
            task.cancel()
        await asyncio.gather(*session.tasks, return_exceptions=True)
        session.tasks.clear()

    # -- a connected session ---------------------------------------------------------

    async def _serve(self, session: _Session) -> str:
        """Publish until the connection is lost; return why it was lost."""
        self._session = session
        self._queue.reset()
        log.info("mqtt: connected to %s:%d", self._settings.host, self._settings.port)
        if session.receive_maximum - 1 < self._settings.max_inflight:
            log.info(
                "mqtt: the broker's Receive Maximum is %d: at most %d readings in flight",
                session.receive_maximum,
                self._window(session),
            )
        if self._inbox is not None:
            # Also when the broker kept the session (harmless, and it repairs a
            # broker that lost it). Before the first reading goes out, so the
            # backend's answer to it cannot miss the subscription.
            options = SubscribeOptions(
                qos=1, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
            )
            session.client.subscribe([(topic, options) for topic in self._inbox.topics])
        self.connected.set()
        self._events.publish(UplinkUp(confirming=self._settings.confirm))
        self._status_wanted.set()
        session.tasks = [
            asyncio.create_task(self._guarded(session, self._pump), name="mqtt-pump"),
            asyncio.create_task(self._guarded(session, self._status_loop), name="mqtt-status"),
        ]
        try:
            reason = await asyncio.shield(session.lost)
        except asyncio.CancelledError:
            await self._cancel_tasks(session)
            await self._close(session)
            raise
        await self._cancel_tasks(session)
        if not self._stopping:
            if not session.retired:
                self._after_loss(session)
            self._session = None
            self.connected.clear()
            # The readings that were in flight are still unsent in the store; they
            # go out again on the next connection under the same ids.
            self._events.publish(UplinkDown(reason=reason))
            await self._close_client(session.client)
        return reason

    async def _guarded(
        self, session: _Session, body: Callable[[_Session], Awaitable[None]]
    ) -> None:
        """Run a session task; an unexpected error ends the connection, not the uplink."""
        try:
            await body(session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("mqtt: internal error; starting over with a new connection")
            _settle(session.lost, f"internal error: {type(exc).__name__}: {exc}")

    def _after_loss(self, session: _Session) -> None:
        if session.status_mids:
            # The status was in flight: it may be what the broker dropped the
            # connection for, so no reading is blamed for this loss. Each connection
            # sends its status before any reading (_pump), so a reading the broker
            # drops the connection for is still found: it dies with no status in flight.
            self._status_lost()
            return
        held = self._poison.connection_lost(f.seq for f in session.inflight.values())
        if held is not None:
            flight = next(f for f in session.inflight.values() if f.seq == held)
            self._hold(flight.seq, flight.device_id, "the broker drops the connection for it")
        elif self._poison.probing:
            log.warning("mqtt: connection keeps dying with the same reading in flight; probing")

    def _status_lost(self) -> None:
        """The connection died with the status in flight; after a few, send less of it."""
        self._status_losses += 1
        if self._status_losses < POISON_LOSSES or self._status_form == "none":
            return
        self._status_losses = 0
        self._status_reduced_at = time.monotonic()
        if self._status_form == "full":
            self._status_form = "short"
            log.error(
                "mqtt: the broker drops the connection for the hub's status message;"
                " sending its short form (no devices, no details) for an hour"
                " (does the broker limit the message size?)"
            )
        else:
            self._status_form = "none"
            log.error(
                "mqtt: the broker drops the connection even for the short status;"
                " sending no status for an hour (readings still go)"
            )

    def _status_form_now(self) -> StatusForm:
        """The form to send; the full one again an hour after it was reduced, as a held
        reading is tried again (the broker's limit may have been raised meanwhile)."""
        if (
            self._status_form != "full"
            and time.monotonic() - self._status_reduced_at >= HOLD_RETRY_S
        ):
            self._status_form = "full"
            log.info("mqtt: trying the full status message again")
        return self._status_form

    async def _pump(self, session: _Session) -> None:
        """Keep the in-flight window full from the store, in seq order."""
        queue = self._queue
        if self._status_form_now() != "none":
            # The status goes first on each connection, alone: the backend learns the
            # hub is online before its readings, and a connection dropped for the
            # status is told apart from one dropped for a reading (_after_loss).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.status_acked.wait(), FIRST_STATUS_WAIT_S)
        while not self._stopping and not session.lost.done():
            window = self._window(session)
            while (
                len(queue)
                and len(session.inflight) < window
                and session.unacknowledged < session.receive_maximum
            ):
                row = queue.pop()
                assert row is not None
                self._publish(session, row)
            if queue.wants_refill(window):
                busy = {f.seq for f in session.inflight.values()} | self._marking
                await queue.refill(window, busy | set(self._acked))
                continue
            queue.wake.clear()
            await queue.wake.wait()

    def _publish(self, session: _Session, row: OutboxRow) -> None:
        topic = reading_topic(self._settings.topic_prefix, self._gateway_id, row.device_id)
        rendered = _render(self._render, row.payload, self._signer)
        if isinstance(rendered, str):
            self._hold(row.seq, row.device_id, rendered)
            return
        payload, properties = rendered
        limit = session.maximum_packet_size
        if limit is not None and _publish_size(topic, payload, properties) > limit:
            self._hold(row.seq, row.device_id, f"larger than the broker's {limit} byte limit")
            return
        info = session.client.publish(topic, payload, qos=1, retain=False, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # Not sent (connection just dropped, or paho's queue is full): it
            # stays unsent in the store and goes out on a later pass.
            log.debug("mqtt: publish of seq %d not sent: rc=%s", row.seq, info.rc)
            return
        # on_publish hops through call_soon_threadsafe, so it cannot run before
        # this line even when the PUBACK is already back.
        session.inflight[info.mid] = _InFlight(row.seq, row.id, row.device_id)

    def _on_publish(self, client: paho.Client, mid: int, rc: ReasonCode) -> None:
        session = self._session
        if session is None or session.client is not client:
            return  # a late acknowledgement from a connection already given up
        self._queue.wake.set()
        code = rc.value
        if self._response_acked(session, mid, rc) or self._status_acked(session, mid, rc):
            return
        flight = session.inflight.pop(mid, None)
        if flight is None:
            return
        if code == NO_MATCHING_SUBSCRIBERS:
            self._no_subscriber(flight)
            return
        if code < 0x80:
            self._acked.append(flight.seq)
            self._last_ack_at = time.monotonic()
            if len(self._acked) >= MARK_BATCH:
                self._marks_due.set()
            self.delivered_count += 1
            self._poison.delivered(flight.seq)
            self._refusals.pop(flight.device_id, None)
            if self._unheard.pop(flight.device_id, None) is not None:
                log.info("mqtt: readings of device %s have a subscriber again", flight.device_id)
            self._events.publish(ReadingDelivered(flight.device_id, flight.reading_id))
            if not self._deliveries_final and (
                self._ack_flusher is None or self._ack_flusher.done()
            ):
                self._ack_flusher = asyncio.create_task(self._flush_acks(), name="mqtt-acks")
            return
        if code in PERMANENT_REFUSALS:
            self._hold(flight.seq, flight.device_id, f"the broker refused it: {rc}")
            return
        self._refused(flight, str(rc))

    def _status_acked(self, session: _Session, mid: int, rc: ReasonCode) -> bool:
        if mid not in session.status_mids:
            return False
        self._status_losses = 0
        session.status_mids.discard(mid)
        session.status_acked.set()
        if rc.value >= 0x80:
            log.error("mqtt: broker refused the status message: %s", rc)
        return True

    @staticmethod
    def _response_acked(session: _Session, mid: int, rc: ReasonCode) -> bool:
        """Whether `mid` was a command response (issue 10); a refusal is logged."""
        topic = session.response_mids.pop(mid, None)
        if topic is None:
            return False
        if rc.value >= 0x80:
            log.error(
                "mqtt: broker refused a command response on %s: %s (check the broker's ACL)",
                topic,
                rc,
            )
        return True

    def _hold(self, seq: int, device_id: str, why: str) -> None:
        self._queue.hold(seq)
        log.error(
            "mqtt: holding back a reading of device %s (%s); it stays unsent and is"
            " tried again in an hour",
            device_id,
            why,
        )
        self._events.publish(PublishRefused(device_id, why))
        self._status_wanted.set()

    def _refused(self, flight: _InFlight, reason: str) -> None:
        device = flight.device_id
        if device in self._queue.paused:
            return
        backoff = self._refusals.setdefault(
            device, Backoff(REFUSED_BACKOFF_INITIAL_S, REFUSED_BACKOFF_MAX_S)
        )
        delay = backoff.next_delay()
        log.error(
            "mqtt: broker refused a reading of device %s (%s); it stays unsent,"
            " retrying that device in %.1f s",
            device,
            reason,
            delay,
        )
        self._queue.pause_device(device, delay)
        self._events.publish(PublishRefused(device, reason))

    def _no_subscriber(self, flight: _InFlight) -> None:
        """PUBACK 0x10 (MQTT 5 §3.4.2.1): a success code, but nobody got the reading."""
        device = flight.device_id
        if device in self._queue.paused:
            return  # the rest of the window answered the same; one pause is enough
        first = device not in self._unheard
        backoff = self._unheard.setdefault(
            device, Backoff(UNHEARD_BACKOFF_INITIAL_S, UNHEARD_BACKOFF_MAX_S)
        )
        delay = backoff.next_delay()
        topic = reading_topic(self._settings.topic_prefix, self._gateway_id, device)
        # One WARNING per episode (until a reading of this device has a subscriber).
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "mqtt: no subscriber for %s (PUBACK 0x10, the broker dropped it): is the"
            " backend subscribed? The readings stay unsent; retrying in %.1f s",
            topic,
            delay,
        )
        self._queue.pause_device(device, delay)

    async def _flush_acks(self) -> None:
        while self._acked:
            # Collect first: one transaction (one fsync) per batch of PUBACKs (see
            # MARK_DELAY_S); the PUBACK already counts as delivered for everyone
            # else (events, panel), this is bookkeeping.
            first = time.monotonic()
            self._marks_due.clear()
            while not (self._stopping or self._deliveries_final) and len(self._acked) < MARK_BATCH:
                due = min(first + MARK_DELAY_S, self._last_ack_at + MARK_QUIET_S)
                wait = due - time.monotonic()
                if wait <= 0 or self._marks_due.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._marks_due.wait(), wait)
            batch, self._acked = self._acked, []
            await self._mark_delivered(batch)

    async def _mark_delivered(self, batch: list[int]) -> None:
        if not batch:
            return
        self._marking.update(batch)
        try:
            await self._store.mark_delivered(batch)
        except Exception:
            # Not marked: they will be resent (same ids) and the backend drops
            # the duplicates. Losing nothing beats a tidy outbox.
            log.exception("store: could not mark %d readings delivered", len(batch))
        finally:
            self._marking.difference_update(batch)

    # -- what the hub receives ---------------------------------------------------------

    def _on_suback(self, codes: list[ReasonCode]) -> None:
        assert self._inbox is not None
        for topic, rc in zip(self._inbox.topics, codes, strict=False):
            if rc.is_failure:
                log.error(
                    "mqtt: the broker refused the subscription to %s (%s): nothing sent"
                    " there reaches the hub (check the broker's ACL)",
                    topic,
                    rc,
                )

    def _on_message(self, client: paho.Client, message: paho.MQTTMessage, at: float) -> None:
        self._inbound.append((client, message, at))
        self._inbound_more.set()
        if self._inbox_worker is None or self._inbox_worker.done():
            self._inbox_worker = asyncio.create_task(self._take_inbound(), name="mqtt-inbox")

    async def _take_inbound(self) -> None:
        """Hand received messages to the inbox in order, what has queued up at once; then
        PUBACK them (what queued while the last batch committed is one batch: group commit).
        """
        assert self._inbox is not None
        busy = False  # messages queued while the last batch was being handled
        while self._inbound:
            if not self.connected.is_set():
                # Handed over between the CONNACK and _serve taking the session (the
                # broker resends what was not acknowledged at once): a command's answer
                # and the acknowledgement need that session (issue 14, cert/install).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.connected.wait(), INBOX_SESSION_WAIT_S)
            if busy:
                await self._gather_inbound()
            taken = [self._inbound.popleft() for _ in range(min(INBOX_BATCH, len(self._inbound)))]
            inbound = [_inbound_message(m, at) for _, m, at in taken]
            acknowledged = await self._inbox.dispatch_many(inbound)
            session = self._session
            for (client, message, _), acknowledge in zip(taken, acknowledged, strict=True):
                # On a connection already given up there is nothing to acknowledge:
                # the broker sends it again on the next one (MQTT 5 §4.4).
                current = session is not None and session.client is client
                if acknowledge and message.qos > 0 and current:
                    client.ack(message.mid, message.qos)
            busy = bool(self._inbound)

    async def _gather_inbound(self) -> None:
        """In a burst, let the next batch grow: up to its route's linger after the oldest.

        Only while messages keep queuing behind the batch being handled (a backlog
        being confirmed, issue 9): a lone confirmation (a patient's one reading) is
        handled at once. Each confirmation commit is an fsync on the store's one
        thread, which the publish queue reads from too; confirmations arriving every
        few ms would otherwise cost one commit each few ms and slow the drain.
        """
        assert self._inbox is not None
        _, first, arrived = self._inbound[0]
        deadline = arrived + self._inbox.linger_s(first.topic)
        while len(self._inbound) < INBOX_BATCH and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._inbound_more.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbound_more.wait(), left)

    async def _status_loop(self, session: _Session) -> None:
        interval = self._settings.status_interval_s
        while not session.lost.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_wanted.wait(), interval)
            if session.status_mids or session.unacknowledged >= session.receive_maximum:
                # Keep within the broker's Receive Maximum; the newer status goes
                # out after the debounce.
                self._status_wanted.set()
                await asyncio.sleep(STATUS_DEBOUNCE_S)
                continue
            self._status_wanted.clear()
            form = self._status_form_now()
            if form == "none":
                session.status_acked.set()  # nothing to wait for (_pump)
                continue
            payload = await self._status_document()
            if form == "short":
                payload = short_status(payload)
            info = session.client.publish(self._status_topic, payload, qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                session.status_mids.add(info.mid)
            await asyncio.sleep(STATUS_DEBOUNCE_S)


def _inbound_message(message: paho.MQTTMessage, at: float) -> InboundMessage:
    """paho's message as the inbox sees it, with the MQTT 5 properties commands use."""
    props = message.properties
    response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
    correlation = getattr(props, "CorrelationData", None) if props is not None else None
    expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
    return InboundMessage(
        message.topic,
        bytes(message.payload),
        message.qos,
        bool(message.retain),
        response_topic=response_topic if isinstance(response_topic, str) else None,
        correlation_data=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
        expiry_s=int(expiry) if isinstance(expiry, int) else None,
        received_at=at,
    )


def _close_in_background(client: paho.Client) -> None:
    def close() -> None:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop_stop()

    threading.Thread(target=close, name="mqtt-close", daemon=True).start()


# -- issue 13: the payload renderer hook (gateway/uplink/render.py) ------------------------


def _render(
    render: Callable[[bytes], tuple[bytes, str | None]],
    stored: bytes,
    signer: ReadingSigner | None = None,
) -> tuple[bytes, Properties | None] | str:
    """The bytes and PUBLISH properties for a stored payload, or why it cannot go.

    A payload the renderer fails on is held back like any reading the broker cannot
    take (it stays unsent and is retried later), so it never blocks the ones behind it.
    With a `signer` (issue 14) the rendered bytes, exactly as published, are signed and
    the JWS goes in a User Property: the payload itself is the same signed or not.
    """
    try:
        payload, content_type = render(stored)
    except Exception as exc:
        return f"cannot be rendered for [mqtt] payload: {type(exc).__name__}"
    if signer is None:
        return payload, _publish_properties(content_type)
    try:
        jws = signer.sign(payload)
    except Exception as exc:
        return f"cannot be signed: {type(exc).__name__}"
    return payload, _SignedProperties.make(content_type, jws)


class _SignedProperties(Properties):
    """A signed reading's PUBLISH properties, packed once, without paho's per-message cost.

    paho's `Properties()` and its validating `__setattr__` cost ~30 µs and its `pack()`
    (walking all 29 property names) ~15 µs more per message, as much as the signature
    itself (bench/README.md, sign). Here a template checked by paho is copied, the
    `jws` User Property (MQTT 5 §3.3.2.3.7: 0x26, then a UTF-8 string pair, §1.5.7) is
    appended to its packed form, and pack() returns that. tests/test_sign.py holds it
    equal to paho's own pack().
    """

    @classmethod
    def make(cls, content_type: str | None, jws: str) -> _SignedProperties:
        template, body = _signed_template(content_type)
        value = jws.encode()
        pair = _JWS_PAIR_PREFIX + len(value).to_bytes(2, "big") + value
        properties = cls.__new__(cls)
        properties.__dict__.update(template.__dict__)
        properties.__dict__["UserProperty"] = [(SIGNATURE_PROPERTY, jws)]
        properties.__dict__["_packed"] = variable_byte_integer(len(body) + len(pair)) + body + pair
        return properties

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


#: 0x26 User Property, then its name as a UTF-8 string (MQTT 5 §2.2.2.2, §1.5.4).
_JWS_PAIR_PREFIX = (
    b"\x26" + len(SIGNATURE_PROPERTY).to_bytes(2, "big") + SIGNATURE_PROPERTY.encode()
)


def variable_byte_integer(value: int) -> bytes:
    """MQTT 5 §1.5.5 (a property length is far below its 268,435,455 limit)."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


@functools.cache
def _signed_template(content_type: str | None) -> tuple[_SignedProperties, bytes]:
    """The template for `content_type`, and its packed properties without the length."""
    template = _SignedProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if content_type is not None:
        template.PayloadFormatIndicator = 1
        template.ContentType = content_type
    packed = Properties.pack(template)  # type: ignore[no-untyped-call]
    _, length_bytes = VariableByteIntegers.decode(packed)  # type: ignore[no-untyped-call]
    return template, bytes(packed[length_bytes:])


@functools.cache
def _publish_properties(content_type: str | None) -> Properties | None:
    """MQTT 5 §3.3.2.3.9 Content Type, and §3.3.2.3.2 Payload Format Indicator 1 (UTF-8)."""
    if content_type is None:
        return None
    properties = _PackedProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.PayloadFormatIndicator = 1
    properties.ContentType = content_type
    properties.freeze()
    return properties


class _PackedProperties(Properties):
    """Properties packed once. paho packs a message's properties on every publish (~20 µs
    of pure Python, as much as a FHIR render: issue 13's drain), and these never change."""

    _packed: bytes | None = None

    def freeze(self) -> None:
        # object's setattr: paho's own accepts only MQTT property names.
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        if self._packed is not None:
            return self._packed
        packed: bytes = super().pack()  # type: ignore[no-untyped-call]
        return packed
