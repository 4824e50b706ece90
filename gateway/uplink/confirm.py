"""Confirmations from the backend (issue 9): a reading is confirmed, not just published.

A reading's life with `[mqtt] confirm = true`: stored -> published (a PUBACK that
means a subscriber got it) -> confirmed (the backend says, on
`{prefix}/{gateway}/confirm`, that it has committed the id). Only a confirmed
reading is shown as "sent" and only a confirmed one is ever purged.

`ConfirmHandler` is the inbox route for that topic. A confirmation is checked
whole against `homehub.confirm/1` (at most MAX_CONFIRM_IDS ids,
MAX_CONFIRM_BYTES bytes) and its `gateway` must be this hub: anything else is
one WARNING line (the reason and the field path, never the ids or the payload)
and changes nothing. Unknown ids are ignored (DEBUG): a backend confirms what it
holds, which may include readings this hub has already purged.

`ConfirmWatch` publishes again (same id) what was published but not confirmed
within `confirm_timeout_s`: the broker may have lost it (SIGKILLed after its
PUBACK, before the backend got it) or the backend may have. While nothing is
confirmed at all, the wait doubles each round up to BACKOFF_FACTOR_MAX times
the timeout, so a backend that is down is not flooded with the same readings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import fastjsonschema
from homehub_contract import (
    CONFIRM_SCHEMA,
    MAX_CONFIRM_IDS,
    compiled_validator,
    load_schema,
    validator,
)

from gateway.events import EventBus, ReadingsConfirmed
from gateway.uplink.inbox import InboundMessage

log = logging.getLogger(__name__)

#: 1000 ids of at most 64 characters, quoted and separated, plus the envelope, with room.
MAX_CONFIRM_BYTES = 96 * 1024
#: While confirmations keep queuing behind the one being committed (a backlog
#: drained), the next commit waits up to this long after the oldest waiting one
#: arrived, so a burst is a commit every ~50 ms instead of one every few ms: each is
#: an fsync on the store thread the publish queue reads from. A lone confirmation
#: is committed at once (the emit -> confirmed latency). See MqttUplink._gather_inbound.
CONFIRM_LINGER_S = 0.05
#: The confirmation wait grows up to this many times `confirm_timeout_s`.
BACKOFF_FACTOR_MAX = 16
#: How often the watch looks for overdue readings, at most (and at least 4 per timeout).
WATCH_INTERVAL_MAX_S = 30.0

MarkConfirmed = Callable[[Sequence[str]], Awaitable[int]]
Requeue = Callable[[float], Awaitable[int]]


class BadConfirmation(ValueError):
    """Why a confirmation is ignored (safe to log: no ids, no payload)."""


def _ids_rule() -> tuple[int, int, int, int] | None:
    """confirm-1's rule for `ids` as (min/max items, min/max length), if it is only that.

    Read from the schema itself, so the schema stays the one definition: should it
    ever say more about `ids` than these, every document is checked by the schema whole.
    """
    rule = load_schema("confirm-1")["properties"]["ids"]
    items = rule.get("items", {})
    known = {"type", "minItems", "maxItems", "uniqueItems", "items", "description"}
    if (
        set(rule) != known
        or rule["type"] != "array"
        or rule["uniqueItems"] is not True
        or set(items) != {"type", "minLength", "maxLength"}
        or items["type"] != "string"
    ):
        return None
    return rule["minItems"], rule["maxItems"], items["minLength"], items["maxLength"]


_IDS_RULE = _ids_rule()


def _ids_fit(ids: object) -> bool:
    """Whether `ids` certainly meets confirm-1's rule for `ids` (False: not known)."""
    if _IDS_RULE is None or type(ids) is not list:
        return False
    least, most, shortest, longest = _IDS_RULE
    return (
        least <= len(ids) <= most
        and all(type(i) is str and shortest <= len(i) <= longest for i in ids)
        and len(set(ids)) == len(ids)
    )


class _EnvelopeRule(NamedTuple):
    required: frozenset[str]
    schema_const: str
    gateway_pattern: re.Pattern[str]
    # For `confirmed_at`, the schema's own rule, compiled: stricter than the validator
    # (it checks the date-time format), so a stamp it refuses is judged by the validator.
    # Not jsonschema's: the hub then imports jsonschema only for an unusual confirmation
    # or a command, ~3.4 MiB of its resident memory (bench/README.md, rss).
    stamp: Callable[[object], object]


def _envelope_rule() -> _EnvelopeRule | None:
    """confirm-1's rules besides `ids`, if they are only the ones checked below.

    Read from the schema as for `_ids_rule`; anything more (a new property rule,
    `additionalProperties`, ...) and every document goes through the validator.
    """
    schema = load_schema("confirm-1")
    props = schema["properties"]
    const, gateway = props.get("schema", {}), props.get("gateway", {})
    notes = {"$schema", "$id", "title", "description"}
    if (
        set(schema) - notes != {"type", "required", "properties"}
        or schema["type"] != "object"
        or set(props) != {"schema", "gateway", "ids", "confirmed_at"}
        or set(const) - notes != {"const"}
        or not isinstance(const["const"], str)
        or set(gateway) - notes != {"type", "pattern"}
        or gateway["type"] != "string"
    ):
        return None
    return _EnvelopeRule(
        frozenset(schema["required"]),
        const["const"],
        re.compile(gateway["pattern"]),
        compiled_validator("confirm-1", "properties", "confirmed_at"),
    )


_ENVELOPE = _envelope_rule()


def _plainly_valid(doc: object) -> bool:
    """Whether `doc` certainly passes confirm-1 (False: not known; ask the validator)."""
    rule = _ENVELOPE
    if rule is None or type(doc) is not dict or not _ids_fit(doc.get("ids")):
        return False
    const, gateway = doc.get("schema"), doc.get("gateway")
    return (
        rule.required <= doc.keys()
        # Keys absent from the document are fine by the schema unless required.
        and ("schema" not in doc or (type(const) is str and const == rule.schema_const))
        # re.search, as the validator applies `pattern`.
        and (
            "gateway" not in doc
            or (type(gateway) is str and bool(rule.gateway_pattern.search(gateway)))
        )
        and ("confirmed_at" not in doc or _passes(rule.stamp, doc["confirmed_at"]))
    )


def _passes(check: Callable[[object], object], value: object) -> bool:
    try:
        check(value)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def parse_confirmation(payload: bytes, gateway_id: str) -> list[str]:
    """The ids of a valid `homehub.confirm/1` document for this hub; else BadConfirmation."""
    if len(payload) > MAX_CONFIRM_BYTES:
        raise BadConfirmation(f"{len(payload)} bytes, more than {MAX_CONFIRM_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadConfirmation("not JSON") from None
    # The usual document passes the schema's rules checked one by one (~10 us); the
    # validator walks every id (~15 us each, plus ~90 us a document, on the event loop:
    # a drain spent as long there as in publishing). Anything else, the validator
    # judges, with the first id only when the ids meet their rule already.
    errors = []
    if not _plainly_valid(doc):
        checked = doc
        if type(doc) is dict and _ids_fit(doc.get("ids")):
            checked = {**doc, "ids": doc["ids"][:1]}
        errors = sorted(validator("confirm-1").iter_errors(checked), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(document)"
        # The validator keyword names the rule (maxItems, required, ...) without
        # echoing the offending value.
        raise BadConfirmation(f"not {CONFIRM_SCHEMA}: {where}: fails {first.validator}")
    if doc["gateway"] != gateway_id:
        raise BadConfirmation("for another gateway than the topic's")
    ids: list[str] = doc["ids"]
    assert len(ids) <= MAX_CONFIRM_IDS  # the schema's maxItems
    return ids


class ConfirmHandler:
    """The inbox route for `{prefix}/{gateway}/confirm`."""

    def __init__(
        self,
        gateway_id: str,
        mark_confirmed: MarkConfirmed,
        events: EventBus,
    ) -> None:
        self._gateway_id = gateway_id
        # A confirmation may overtake the uplink's batched PUBACK bookkeeping: the
        # store then marks the reading published as well (Store.mark_confirmed).
        self._mark_confirmed = mark_confirmed
        self._events = events
        self.confirmed = 0  # readings newly confirmed (this process)
        self.ignored = 0  # confirmations ignored whole
        self.last_confirmation_at: float | None = None  # monotonic

    async def __call__(self, message: InboundMessage) -> None:
        await self.many([message])

    async def many(self, messages: list[InboundMessage]) -> None:
        """Several confirmations that queued up: one store commit for all their ids."""
        ids: list[str] = []
        for message in messages:
            try:
                ids.extend(parse_confirmation(message.payload, self._gateway_id))
            except BadConfirmation as why:
                self.ignored += 1
                log.warning("mqtt: ignored a confirmation on %s: %s", message.topic, why)
        if not ids:
            return
        ids = list(dict.fromkeys(ids))
        # Raises if the store cannot commit: the inbox then leaves the message
        # unacknowledged and the broker delivers it again.
        newly = await self._mark_confirmed(ids)
        self.confirmed += newly
        self.last_confirmation_at = time.monotonic()
        if newly < len(ids):
            log.debug(
                "mqtt: %d of %d confirmed ids were unknown or already confirmed",
                len(ids) - newly,
                len(ids),
            )
        self._events.publish(ReadingsConfirmed(tuple(ids)))


class ConfirmWatch:
    """Publishes again what stays unconfirmed past the timeout, with backoff."""

    def __init__(
        self,
        timeout_s: float,
        requeue_unconfirmed: Requeue,
        republish: Callable[[], None],
        handler: ConfirmHandler,
    ) -> None:
        self.timeout_s = timeout_s
        self._requeue = requeue_unconfirmed
        self._republish = republish
        self._handler = handler
        self._factor = 1
        self._confirmed_seen = handler.confirmed
        self.requeued = 0

    @property
    def current_timeout_s(self) -> float:
        return self.timeout_s * self._factor

    async def check(self, now: float | None = None) -> int:
        """One round: make overdue readings unsent again; how many."""
        now = time.time() if now is None else now
        if self._handler.confirmed != self._confirmed_seen:
            # Confirmations flow again: back to the configured timeout.
            self._confirmed_seen = self._handler.confirmed
            self._factor = 1
        count = await self._requeue(now - self.current_timeout_s)
        if count:
            self.requeued += count
            log.warning(
                "mqtt: %d published readings not confirmed within %.0f s: publishing them"
                " again (same ids); is the backend running?",
                count,
                self.current_timeout_s,
            )
            self._republish()
            self._factor = min(BACKOFF_FACTOR_MAX, self._factor * 2)
        return count

    async def run(self) -> None:
        interval = min(WATCH_INTERVAL_MAX_S, self.timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:
                log.exception("store: could not requeue unconfirmed readings")
