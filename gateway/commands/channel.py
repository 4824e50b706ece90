"""The command channel (issue 10): MQTT 5 request/response over the inbox.

A request is a QoS 1 PUBLISH on `{prefix}/{gateway}/command/{name}` carrying an
MQTT 5 Response Topic and Correlation Data (§4.10) and a `homehub.command/1` body
with a request id; the hub answers `homehub.response/1` on the Response Topic with
the same Correlation Data. The steps, in order (README, "Commands"):

1. No Response Topic, or one outside `{prefix}/{gateway}/response/`: nobody to
   answer (the fleet ACL lets a hub publish nowhere else): WARNING, not applied.
2. More than MAX_COMMAND_BYTES: `too_large`.
3. The rate limit, a token bucket of RATE_BURST commands refilled at RATE_PER_S:
   `rate_limited` with `retry_after_s` (bad input counts too: a flood is a flood).
4. Not JSON, not `homehub.command/1`: `malformed`; another hub's `gateway`:
   `wrong_gateway`.
5. A request id already answered: the first response again, byte for byte, and
   nothing applied (a bounded LRU; mutating commands' entries persisted).
6. Expired: the MQTT 5 Message Expiry Interval the broker passed on (what was
   left of it when the hub received it) has run out while it waited on the hub,
   or the body's `expires_at` is past by a plausible hub clock: `expired`.
7. Unknown name: `unknown_command`; invalid args: `invalid_args` naming each field.
8. The handler runs; it persists what it accepts before returning; the ok response
   is remembered (and for a mutating command persisted) before it is published.

Every refusal is one WARNING line naming the command, request id, code and field
paths, never a value from the request (it may describe a patient's devices or
plan). A refusal changes nothing but the rate limit's bucket.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from homehub_contract import COMMAND_SCHEMA, MAX_COMMAND_BYTES, RESPONSE_SCHEMA, validator

from gateway.commands.persist import read_json, write_json_atomic
from gateway.commands.registry import CommandRegistry, FieldError, FieldProblem
from gateway.reading import utc_iso_ms
from gateway.uplink.inbox import InboundMessage

log = logging.getLogger(__name__)

#: The inbox drops (unanswered) anything larger; up to it, too_large is answered.
MAX_ROUTE_BYTES = 16 * MAX_COMMAND_BYTES
#: Token bucket: this many commands at once, then RATE_PER_S a second.
RATE_BURST = 20
RATE_PER_S = 0.5
#: Request ids remembered (their responses), and of those persisted (mutating only).
#: A status response is ~2-3 KiB: 64 of them stay well under 1 MiB on a Pi Zero.
SEEN_MAX = 64
SEEN_PERSISTED_MAX = 64
SEEN_FILE = "commands-seen.json"
SEEN_SCHEMA = "homehub.commands-seen/1"

Publish = Callable[[str, bytes, bytes | None], bool]
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class TokenBucket:
    """RATE_BURST commands at once, then `per_s` a second (monotonic time)."""

    def __init__(self, burst: int, per_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.per_s = per_s
        self._now = now
        self._tokens = float(burst)
        self._at = now()

    def take(self) -> float:
        """Take a token: 0.0, or the seconds until one is available (none taken)."""
        now = self._now()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.per_s


@dataclass(slots=True)
class Refusal(Exception):
    """Why a command is refused: the response's error (nothing was changed)."""

    code: str
    message: str
    fields: list[FieldProblem] = field(default_factory=list)
    retry_after_s: float | None = None


class SeenRequests:
    """Request id -> the first response (bytes), least recently used first out."""

    def __init__(self, path: Path, size: int = SEEN_MAX, durable: int = SEEN_PERSISTED_MAX):
        self.path = path
        self.size = size
        self.durable = durable
        self._responses: OrderedDict[str, tuple[bytes, bool]] = OrderedDict()
        self._load()

    def _load(self) -> None:
        try:
            doc = read_json(self.path)
            if doc is None:
                return
            if not isinstance(doc, dict) or doc.get("schema") != SEEN_SCHEMA:
                raise ValueError("not " + SEEN_SCHEMA)
            for entry in doc["requests"]:
                self._responses[str(entry["id"])] = (str(entry["response"]).encode(), True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Only retries after a restart are at stake: start afresh, say so.
            log.warning(
                "commands: %s unreadable (%s); earlier request ids forgotten", self.path, exc
            )
            self._responses.clear()

    def get(self, request_id: str) -> bytes | None:
        entry = self._responses.get(request_id)
        if entry is None:
            return None
        self._responses.move_to_end(request_id)
        return entry[0]

    def remember(self, request_id: str, response: bytes, *, durable: bool) -> None:
        """Keep the response; a durable one is on disk when this returns (raises OSError)."""
        self._responses[request_id] = (response, durable)
        self._responses.move_to_end(request_id)
        while len(self._responses) > self.size:
            self._responses.popitem(last=False)
        if durable:
            self._save()

    def _save(self) -> None:
        kept = [(rid, r) for rid, (r, durable) in self._responses.items() if durable]
        kept = kept[-self.durable :]
        write_json_atomic(
            self.path,
            {
                "schema": SEEN_SCHEMA,
                "requests": [{"id": rid, "response": r.decode()} for rid, r in kept],
            },
        )

    def __len__(self) -> int:
        return len(self._responses)


def _json_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


def _peek_id(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    rid = doc.get("id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) and _ID.match(rid) else None


def parse_command(payload: bytes) -> dict[str, Any]:
    """A `homehub.command/1` document, or a `malformed` Refusal naming the field."""
    try:
        doc = json.loads(payload)
    except UnicodeDecodeError:
        raise Refusal("malformed", "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise Refusal("malformed", f"not JSON (line {exc.lineno}, column {exc.colno})") from None
    errors = sorted(validator("command-1").iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        # The keyword names the rule (required, type, pattern) without echoing the value.
        problems = [
            FieldProblem(_json_path(e.absolute_path), f"fails {e.validator}") for e in errors[:10]
        ]
        if errors[0].validator == "required":
            problems[0] = FieldProblem("(document)", errors[0].message)
        raise Refusal("malformed", f"not {COMMAND_SCHEMA}", problems)
    expires_at = doc.get("expires_at")
    if expires_at is not None:
        try:
            moment = datetime.fromisoformat(expires_at)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise Refusal(
                "malformed",
                f"not {COMMAND_SCHEMA}",
                [FieldProblem("expires_at", "not an RFC 3339 date-time with an offset")],
            )
        doc["expires_at"] = moment
    return dict(doc)


class CommandChannel:
    """The inbox route for `{prefix}/{gateway}/command/#`."""

    def __init__(
        self,
        registry: CommandRegistry,
        *,
        gateway_id: str,
        prefix: str,
        state_dir: Path,
        publish: Publish,
        clock_trusted: Callable[[], bool] = lambda: True,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        bucket: TokenBucket | None = None,
    ) -> None:
        self.registry = registry
        self.gateway_id = gateway_id
        self.prefix = prefix
        self._publish = publish
        self._clock_trusted = clock_trusted
        self._wall = wall
        self.bucket = bucket or TokenBucket(RATE_BURST, RATE_PER_S)
        self.seen = SeenRequests(state_dir / SEEN_FILE)
        self._limited = False  # in a rate-limited episode (one WARNING each)
        self.applied = 0
        self.refused = 0
        self.ignored = 0  # no topic to answer on

    @property
    def command_prefix(self) -> str:
        return f"{self.prefix}/{self.gateway_id}/command"

    @property
    def response_prefix(self) -> str:
        return f"{self.prefix}/{self.gateway_id}/response/"

    async def __call__(self, message: InboundMessage) -> None:
        name = message.topic.removeprefix(self.command_prefix + "/")
        rt = message.response_topic
        if not rt or not rt.startswith(self.response_prefix) or "+" in rt or "#" in rt:
            self.ignored += 1
            why = f"a Response Topic outside {self.response_prefix}" if rt else "no Response Topic"
            log.warning(
                "commands: ignored command %s: %s (MQTT 5 §4.10); nobody to answer, not applied",
                name,
                why,
            )
            return
        request_id: str | None = None
        try:
            if len(message.payload) > MAX_COMMAND_BYTES:
                raise Refusal(
                    "too_large",
                    f"{len(message.payload)} bytes, more than {MAX_COMMAND_BYTES}",
                    [FieldProblem("(document)", f"at most {MAX_COMMAND_BYTES} bytes")],
                )
            wait = self.bucket.take()
            if wait:
                request_id = _peek_id(message.payload)
                raise Refusal(
                    "rate_limited",
                    f"more than {RATE_BURST} commands at once or {RATE_PER_S * 60:g} a minute",
                    retry_after_s=round(wait, 1),
                )
            self._limited = False
            doc = parse_command(message.payload)
            request_id = doc["id"]
            if doc["gateway"] != self.gateway_id:
                raise Refusal(
                    "wrong_gateway",
                    "for another gateway than the topic's",
                    [FieldProblem("gateway", "must equal the gateway in the topic")],
                )
            first = self.seen.get(request_id)
            if first is not None:
                log.info(
                    "commands: request %s repeated; answering with its first response", request_id
                )
                self._publish(rt, first, message.correlation_data)
                return
            self._check_expiry(message, doc)
            command = self.registry.get(name)
            if command is None:
                known = ", ".join(self.registry.names())
                raise Refusal(
                    "unknown_command",
                    f"no command {name!r} (known: {known})",
                    [FieldProblem("command", "unknown command")],
                )
            args = doc.get("args", {})
            try:
                result = await command.run(args)
            except FieldError as exc:
                raise Refusal("invalid_args", exc.message, exc.problems) from None
        except Refusal as refusal:
            self._refuse(name, request_id, refusal, rt, message.correlation_data)
            return
        except Exception as exc:
            # A bug or a failing disk; the message may hold values, the exception's
            # type and text come from our own code.
            log.error("commands: %s (request %s) failed: %s", name, request_id, type(exc).__name__)
            log.debug("commands: traceback", exc_info=True)
            self._refuse(
                name,
                request_id,
                Refusal("internal", f"the hub could not carry it out ({type(exc).__name__})"),
                rt,
                message.correlation_data,
            )
            return
        response = self._encode(name, request_id, result=result)
        assert request_id is not None
        try:
            self.seen.remember(request_id, response, durable=command.mutates)
        except OSError as exc:
            # What the command changed is persisted already (its handler did that); a
            # retry after a restart would apply the same request again, idempotently.
            log.error("commands: could not persist request id %s: %s", request_id, exc.strerror)
        self.applied += 1
        log.info("commands: %s (request %s) done", name, request_id)
        self._publish(rt, response, message.correlation_data)

    def _check_expiry(self, message: InboundMessage, doc: dict[str, Any]) -> None:
        # MQTT 5 §3.3.2.3.3: the broker forwards the interval minus the time it held the
        # message; the hub counts the time it waited in its own queue on top.
        expiry, received = message.expiry_s, message.received_at
        if expiry is not None and received is not None and time.monotonic() >= received + expiry:
            raise Refusal(
                "expired", "its Message Expiry Interval passed before it could be applied"
            )
        expires_at: datetime | None = doc.get("expires_at")
        if expires_at is not None and self._clock_trusted() and self._wall() >= expires_at:
            raise Refusal(
                "expired",
                "expires_at is past by the hub's clock",
                [FieldProblem("expires_at", "in the past")],
            )

    def _refuse(
        self,
        name: str,
        request_id: str | None,
        refusal: Refusal,
        topic: str,
        correlation: bytes | None,
    ) -> None:
        self.refused += 1
        paths = ", ".join(p.path for p in refusal.fields)
        level = logging.WARNING
        if refusal.code == "rate_limited":
            level = logging.DEBUG if self._limited else logging.WARNING
            self._limited = True
        log.log(
            level,
            "commands: refused %s (request %s): %s%s",
            name,
            request_id,
            refusal.code,
            f" ({paths})" if paths else "",
        )
        self._publish(topic, self._encode(name, request_id, error=refusal), correlation)

    def _encode(
        self,
        name: str,
        request_id: str | None,
        *,
        result: dict[str, Any] | None = None,
        error: Refusal | None = None,
    ) -> bytes:
        err: dict[str, Any] | None = None
        if error is not None:
            err = {
                "code": error.code,
                "message": error.message,
                "fields": [{"path": p.path, "message": p.message} for p in error.fields],
            }
            if error.retry_after_s is not None:
                err["retry_after_s"] = error.retry_after_s
        doc = {
            "schema": RESPONSE_SCHEMA,
            "id": request_id,
            "gateway": self.gateway_id,
            "command": name,
            "ok": error is None,
            "result": result if error is None else None,
            "error": err,
            "responded_at": utc_iso_ms(datetime.now(UTC)),
        }
        return json.dumps(doc, separators=(",", ":"), default=str).encode("utf-8")
