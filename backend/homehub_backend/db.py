"""PostgreSQL: connections, versioned migrations and the statements the worker runs.

psycopg 3 with server-side binding. A batch is one transaction: readings with
`INSERT ... SELECT FROM ROWS FROM (jsonb_array_elements(...), ...) ON CONFLICT (id)
DO NOTHING` (one round trip for the whole batch, a resend is a no-op), rejected messages,
hub statuses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from homehub_backend.config import DatabaseSection, read_secret
from homehub_backend.errors import DatabaseError

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def conninfo(section: DatabaseSection) -> str:
    """The libpq connection string, with the password from password_file if given."""
    extra: dict[str, Any] = {"connect_timeout": section.connect_timeout_s}
    password = read_secret(section.password_file)
    if password is not None:
        extra["password"] = password
    extra.setdefault("application_name", "homehub-backend")
    return make_conninfo(section.dsn, **extra)


def connect(section: DatabaseSection) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(conninfo(section))
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- migrations ------------------------------------------------------------------------------


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise DatabaseError(f"migrations are not numbered 1..n: {versions}")
    return found


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the migrations not yet applied (each with its schema_migrations row, in one
    transaction); return their names. Running it again applies nothing."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
    for version, name, sql in migrations():
        with conn.transaction():
            # Two `migrate` runs at once (two workers' start-up scripts): the lock makes the
            # second wait and then see the version applied.
            conn.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
            ).fetchone()
            if done:
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(name)
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The newest applied migration, 0 when none."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def check_schema(conn: psycopg.Connection[Any]) -> None:
    have, want = schema_version(conn), len(migrations())
    conn.rollback()
    if have != want:
        raise DatabaseError(
            f"database schema is at version {have}, this program needs {want}: "
            "run 'homehub-backend migrate' first"
        )


# -- one batch -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadingRow:
    id: str
    gateway: str
    device: str
    kind: str
    measured_at: datetime
    received_at: datetime | None  # None: a FHIR Bundle that does not carry it (fhir.py)
    payload: str  # the JSON text as received (valid, decoded once already)
    topic: str
    format: str = "homehub"  # or "fhir": which document payload holds (migration 0002)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    topic: str
    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class StatusRow:
    gateway: str
    doc: dict[str, Any]
    received_at: datetime
    online: bool
    version: str
    unsent: int | None
    oldest_unsent_age_s: float | None
    failing_devices: list[str]


@dataclass
class BatchResult:
    held: dict[str, list[str]] = field(default_factory=dict)  # gateway -> ids now in the table
    new: int = 0
    duplicates: int = 0
    # A reading whose id is already held for another gateway: not this hub's to confirm.
    conflicts: list[ReadingRow] = field(default_factory=list)
    # Rows PostgreSQL itself refused (write_batch_row_by_row), now in `rejected`.
    refused: list[RejectedRow] = field(default_factory=list)


# Two parameters for the whole batch, both JSON array text: the payloads joined as they
# came (each is valid JSON text already: no re-encoding) and the typed columns as one small
# array per row (json.dumps, in C). jsonb_array_elements splits them, ROWS FROM zips them.
# Arrays of text[] / timestamptz[] instead went through psycopg's pure-Python array dumper,
# which escapes every quote of every payload with a regex substitution: 4x slower, the
# worker's main cost (bench/README.md, backend_ingest). A parameter is sent out of line, so
# the text needs no escaping; the timestamps are ISO 8601 with an offset, as PostgreSQL
# parses them.
INSERT_READINGS = """
INSERT INTO readings (id, gateway, device, kind, measured_at, received_at, payload, format)
SELECT c->>0, c->>1, c->>2, c->>3, (c->>4)::timestamptz, (c->>5)::timestamptz, payload,
       c->>6
FROM ROWS FROM (jsonb_array_elements(%s::jsonb), jsonb_array_elements(%s::jsonb))
     AS t(c, payload)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""


def _columns(r: ReadingRow) -> list[str | None]:
    received = None if r.received_at is None else r.received_at.isoformat()
    return [r.id, r.gateway, r.device, r.kind, r.measured_at.isoformat(), received, r.format]


def insert_readings(cur: psycopg.Cursor[Any], rows: list[ReadingRow]) -> set[str]:
    """Insert the rows (ids unique within `rows`); the ids that were new."""
    if not rows:
        return set()
    columns = json.dumps([_columns(r) for r in rows], separators=(",", ":"))
    payloads = "[" + ",".join(r.payload for r in rows) + "]"
    cur.execute(INSERT_READINGS, (columns, payloads))
    return {row[0] for row in cur.fetchall()}


UPSERT_HUB = """
INSERT INTO hubs AS h (gateway, status, last_seen, online, offline_since, version,
                       unsent, previous_unsent, oldest_unsent_age_s, failing_devices)
VALUES (%(gateway)s, %(doc)s, %(received_at)s, %(online)s,
        CASE WHEN %(online)s THEN NULL ELSE %(received_at)s::timestamptz END, %(version)s,
        %(unsent)s, NULL, %(oldest)s, %(failing)s)
ON CONFLICT (gateway) DO UPDATE SET
    status = excluded.status,
    last_seen = excluded.last_seen,
    online = excluded.online,
    offline_since = CASE WHEN excluded.online THEN NULL
                         ELSE coalesce(h.offline_since, excluded.last_seen) END,
    version = excluded.version,
    -- The Last Will carries no counts: keep the last known ones.
    unsent = coalesce(excluded.unsent, h.unsent),
    previous_unsent = CASE WHEN excluded.unsent IS NULL THEN h.previous_unsent ELSE h.unsent END,
    oldest_unsent_age_s = CASE WHEN excluded.unsent IS NULL THEN h.oldest_unsent_age_s
                               ELSE excluded.oldest_unsent_age_s END,
    failing_devices = excluded.failing_devices
-- Every worker receives every status (not a shared subscription) in order, stamped with its
-- arrival (never the hub's clock, which may be wrong: the Last Will must always count):
-- a copy arriving late through a slower worker must not overwrite a newer one.
WHERE excluded.last_seen >= h.last_seen
"""


def write_batch(
    conn: psycopg.Connection[Any],
    readings: list[ReadingRow],
    rejected: list[RejectedRow],
    statuses: list[StatusRow],
) -> BatchResult:
    """One transaction for the whole batch; returns what is now held, per gateway.

    Raises psycopg.Error (nothing committed) when PostgreSQL fails: the caller keeps the
    batch unacknowledged and tries again.
    """
    with conn.transaction():
        return write_batch_in(conn, readings, rejected, statuses)


def write_batch_in(
    conn: psycopg.Connection[Any],
    readings: list[ReadingRow],
    rejected: list[RejectedRow],
    statuses: list[StatusRow],
) -> BatchResult:
    """write_batch's statements, in the caller's transaction."""
    result = BatchResult()
    unique: dict[str, ReadingRow] = {}
    for row in readings:
        unique.setdefault(row.id, row)  # a resend inside the same batch
    rows = list(unique.values())
    with conn.cursor() as cur:
        new_ids = insert_readings(cur, rows)
        held_rows = [r for r in rows if r.id in new_ids]
        others = [r for r in rows if r.id not in new_ids]
        if others:
            # Duplicates: confirm them again (the hub resent because a confirmation was lost)
            # but only to the gateway whose reading it is.
            cur.execute(
                "SELECT id, gateway FROM readings WHERE id = ANY(%s)", ([r.id for r in others],)
            )
            owner = dict(cur.fetchall())
            for r in others:
                if owner.get(r.id) == r.gateway:
                    held_rows.append(r)
                else:
                    result.conflicts.append(r)
        all_rejected = rejected + [
            RejectedRow(
                topic=r.topic,
                reason="id already held for another gateway",
                raw=r.payload.encode(),
            )
            for r in result.conflicts
        ]
        if all_rejected:
            cur.executemany(
                "INSERT INTO rejected (topic, reason, raw) VALUES (%s, %s, %s)",
                [(r.topic, r.reason, r.raw) for r in all_rejected],
            )
        for s in statuses:
            cur.execute(
                UPSERT_HUB,
                {
                    "gateway": s.gateway,
                    "doc": Jsonb(s.doc),
                    "received_at": s.received_at,
                    "online": s.online,
                    "version": s.version,
                    "unsent": s.unsent,
                    "oldest": s.oldest_unsent_age_s,
                    "failing": s.failing_devices,
                },
            )
    result.new = len(new_ids)
    result.duplicates = len(rows) - len(new_ids) - len(result.conflicts)
    for r in held_rows:
        result.held.setdefault(r.gateway, []).append(r.id)
    return result


def write_batch_row_by_row(
    conn: psycopg.Connection[Any],
    readings: list[ReadingRow],
    rejected: list[RejectedRow],
    statuses: list[StatusRow],
) -> BatchResult:
    """write_batch after PostgreSQL refused it: each row alone in a savepoint; a row it
    still refuses goes to `rejected` with the SQLSTATE instead of blocking the batch."""
    conn.rollback()
    good_readings: list[ReadingRow] = []
    good_statuses: list[StatusRow] = []
    refused: list[RejectedRow] = []
    with conn.transaction():
        for reading in readings:
            try:
                with conn.transaction(), conn.cursor() as cur:  # a savepoint
                    insert_readings(cur, [reading])
                    raise _Probe
            except _Probe:
                good_readings.append(reading)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                refused.append(_refused(reading.topic, reading.payload.encode(), exc))
        for status in statuses:
            try:
                with conn.transaction():
                    write_batch_in(conn, [], [], [status])
                    raise _Probe
            except _Probe:
                good_statuses.append(status)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raw = json.dumps(status.doc).encode()
                refused.append(_refused(f"(status of {status.gateway})", raw, exc))
        # Every row that is not refused again, now in the one transaction.
        result = write_batch_in(conn, good_readings, rejected + refused, good_statuses)
    result.refused = refused
    return result


class _Probe(Exception):
    """Rolls a probing savepoint back after its statement succeeded."""


def _refused(topic: str, raw: bytes, exc: psycopg.Error) -> RejectedRow:
    return RejectedRow(topic=topic, reason=f"database refused it: SQLSTATE {exc.sqlstate}", raw=raw)
