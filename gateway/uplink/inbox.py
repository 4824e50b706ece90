"""What the hub receives: topic -> handler routing over the uplink's one MQTT 5 session.

The hub receives on the same connection it publishes on, in one persistent
session (Clean Start 0 with a Session Expiry Interval, MQTT 5 §3.1.2.4 and
§3.1.2.11.2): the broker keeps the hub's subscriptions and queues what is sent
to it while it is offline, so a confirmation published while the hub restarts
is delivered when it is back (issue 9). Issue 10's commands are one more route.

A route is an exact topic (the hub's own topics have no wildcards), or a topic
prefix for a family of topics (`prefix_route`, subscribed as `{prefix}/#`: the
commands of issue 10, `command/status`, `command/devices/set`, ...), the most
bytes a message on it may have, and an async handler. `dispatch` never raises:
a message on a topic without a route or an oversize one is logged (never its
payload: it may hold patient data) and dropped. The uplink acknowledges a QoS 1
message (PUBACK) only once `dispatch` says so: not when the handler failed (say
the store could not commit), so the broker delivers it again on the next
connection (MQTT 5 §4.4).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    # MQTT 5 request/response (§4.10) and expiry (§3.3.2.3.3), for the commands
    # (issue 10): the Response Topic and Correlation Data as sent, and the Message
    # Expiry Interval the broker gave (what was left of it) with the monotonic time
    # the message arrived, so time spent queued on the hub counts too.
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry_s: int | None = None
    received_at: float | None = None


Handler = Callable[[InboundMessage], Awaitable[None]]
#: Handles several messages of one route at once (e.g. one store commit for all).
BatchHandler = Callable[[list[InboundMessage]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    topic: str
    handler: Handler
    max_bytes: int
    batch: BatchHandler | None = None
    # How long the oldest of a batch route's messages may wait for more while the
    # route is busy (see MqttUplink._take_inbound): one commit for a burst.
    linger_s: float = 0.0


class Inbox:
    """The hub's inbound routes; the uplink subscribes to each on every connection."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._prefixes: dict[str, Route] = {}  # "a/b/command" -> route of "a/b/command/#"

    def route(
        self,
        topic: str,
        handler: Handler,
        *,
        max_bytes: int,
        batch: BatchHandler | None = None,
        linger_s: float = 0.0,
    ) -> None:
        """Route `topic` to `handler`; with `batch`, messages that queued up go to it at once.

        `linger_s` (batch routes only): while messages of the route keep queuing
        behind the batch being handled (a burst), the next batch waits up to this
        long after its oldest message arrived for more to join it.
        """
        if "+" in topic or "#" in topic:
            raise ValueError(f"a route is an exact topic, not a filter: {topic!r}")
        if topic in self._routes:
            raise ValueError(f"{topic!r} already has a route")
        if linger_s and batch is None:
            raise ValueError(f"{topic!r}: only a batch route lingers")
        self._routes[topic] = Route(topic, handler, max_bytes, batch, linger_s)

    def prefix_route(self, prefix: str, handler: Handler, *, max_bytes: int) -> None:
        """Route every topic below `prefix` (subscribed as `{prefix}/#`) to `handler`."""
        if "+" in prefix or "#" in prefix or prefix.endswith("/"):
            raise ValueError(f"a prefix route is a topic without wildcards: {prefix!r}")
        if prefix in self._prefixes:
            raise ValueError(f"{prefix!r} already has a prefix route")
        self._prefixes[prefix] = Route(f"{prefix}/#", handler, max_bytes)

    @property
    def topics(self) -> list[str]:
        """The topic filters to subscribe to, in a stable order."""
        return sorted(self._routes) + sorted(r.topic for r in self._prefixes.values())

    def __bool__(self) -> bool:
        return bool(self._routes) or bool(self._prefixes)

    def linger_s(self, topic: str) -> float:
        """How long a message on `topic` may wait for others in a burst (0: none)."""
        route = self._route_for(topic)
        return route.linger_s if route is not None else 0.0

    def _route_for(self, topic: str) -> Route | None:
        route = self._routes.get(topic)
        if route is not None:
            return route
        for prefix, candidate in self._prefixes.items():
            if topic.startswith(prefix + "/") and len(topic) > len(prefix) + 1:
                return candidate
        return None

    async def dispatch_many(self, messages: list[InboundMessage]) -> list[bool]:
        """Handle messages in order; for each, whether to acknowledge it.

        Consecutive messages of a route with a batch handler go to it together
        (messages that queued up while the last batch was committing: group commit).
        """
        results: list[bool] = []
        index = 0
        while index < len(messages):
            route = self._route_for(messages[index].topic)
            end = index + 1
            if route is not None and route.batch is not None:
                while end < len(messages) and messages[end].topic == route.topic:
                    end += 1
            if end - index == 1 or route is None or route.batch is None:
                results.append(await self.dispatch(messages[index]))
            else:
                results.extend(await self._dispatch_batch(route, route.batch, messages[index:end]))
            index = end
        return results

    async def _dispatch_batch(
        self, route: Route, batch: BatchHandler, messages: list[InboundMessage]
    ) -> list[bool]:
        fitting = [m for m in messages if not self._oversize(route, m)]
        if not fitting:
            return [True] * len(messages)
        try:
            await batch(fitting)
        except Exception:
            log.exception("mqtt: handling %d messages on %s failed", len(fitting), route.topic)
            return [m not in fitting for m in messages]
        return [True] * len(messages)

    @staticmethod
    def _oversize(route: Route, message: InboundMessage) -> bool:
        if len(message.payload) <= route.max_bytes:
            return False
        log.warning(
            "mqtt: ignored a %d-byte message on %s (at most %d bytes)",
            len(message.payload),
            message.topic,
            route.max_bytes,
        )
        return True

    async def dispatch(self, message: InboundMessage) -> bool:
        """Handle one message; whether to acknowledge it (False: the handler failed)."""
        route = self._route_for(message.topic)
        if route is None:
            # The broker sent something we never subscribed to (or a retired route).
            log.warning(
                "mqtt: ignored a message on %s: the hub has no use for that topic", message.topic
            )
            return True
        if self._oversize(route, message):
            return True
        try:
            await route.handler(message)
        except Exception:
            log.exception("mqtt: handling a message on %s failed", message.topic)
            return False
        return True
