"""The store's SQL schema, its version and the in-place upgrades between versions."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from gateway.errors import StoreError

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    -- A seq is never reused after deletes, so ordering holds forever: handed out by the
    -- outbox above meta 'seq_high' (schema 5; before, AUTOINCREMENT, whose
    -- sqlite_sequence row was one more page written per insert commit).
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    delivered_at REAL,
    confirmed_at REAL%(v3_columns)s%(v4_columns)s
);
CREATE INDEX IF NOT EXISTS readings_delivered ON readings(delivered_at)
    WHERE delivered_at IS NOT NULL;
%(v2_indexes)s%(v3_indexes)s%(v4_indexes)s
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    last_reading_at REAL NOT NULL
);
-- Per-device cursors (e.g. a glucose meter's last stored record sequence number).
CREATE TABLE IF NOT EXISTS device_cursors (
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (device_id, name)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
"""

# Version 2 (issue 9): published but not yet confirmed, for the status and the requeue.
_V2_INDEXES = """
CREATE INDEX IF NOT EXISTS readings_unconfirmed ON readings(delivered_at)
    WHERE delivered_at IS NOT NULL AND confirmed_at IS NULL;
"""
# Version 3 (issue 10, the care plan): a flagged reading (outside a threshold) has
# priority > 0 and is published ahead of the unflagged backlog. Only this column and
# its index; the salvage copies it not (salvaged readings go in seq order).
_V3_COLUMN = "priority INTEGER NOT NULL DEFAULT 0"
_V3_INDEXES = """
CREATE INDEX IF NOT EXISTS readings_priority ON readings(seq)
    WHERE delivered_at IS NULL AND priority > 0;
"""
# Version 4 (issue 13, clock governance): a reading the hub stamped while its clock
# was not synchronised is held back (clock_hold = 1) with the CLOCK_BOOTTIME and the
# boot id of its stamp, so its time can be corrected once the clock is synchronised
# (gateway/clockfix.py). Only these columns and their index.
_V4_COLUMNS = (
    "clock_hold INTEGER NOT NULL DEFAULT 0",
    "stamp_boottime REAL",
    "stamp_boot_id TEXT",
)
_V4_INDEXES = """
CREATE INDEX IF NOT EXISTS readings_clock_hold ON readings(seq) WHERE clock_hold = 1;
"""
# Version 5 (issue 11 part 4, wear): payloads are stored compressed (gateway/store/
# codec.py names the encoding in each payload's first byte; older rows stay plain and
# read as they are), and there is no `readings_unsent` index any more (one page less
# per insert and per mark; the outbox reads the queue from an in-memory cursor on the
# primary key). A new store also has no AUTOINCREMENT. An older file keeps its
# AUTOINCREMENT table: taking it away means copying the whole table in one
# transaction (up to max_readings rows: the table's size again in WAL and file, on a
# card that may be nearly full); it costs such a store one page per insert commit,
# and the outbox reads its sqlite_sequence as the seq high-water mark.
_SCHEMA = _SCHEMA % {
    "v2_indexes": _V2_INDEXES,
    "v3_columns": ",\n    " + _V3_COLUMN,
    "v3_indexes": _V3_INDEXES,
    "v4_columns": "".join(",\n    " + column for column in _V4_COLUMNS),
    "v4_indexes": _V4_INDEXES,
}

# In-place upgrades, each run in one transaction with the version bump: a crash
# mid-migration leaves the file at the old version, and the next open redoes it.
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE readings ADD COLUMN confirmed_at REAL;" + _V2_INDEXES,
    2: f"ALTER TABLE readings ADD COLUMN {_V3_COLUMN};" + _V3_INDEXES,
    3: "".join(f"ALTER TABLE readings ADD COLUMN {c};\n" for c in _V4_COLUMNS) + _V4_INDEXES,
    4: "DROP INDEX IF EXISTS readings_unsent;",
}


def statements(script: str) -> list[str]:
    """Split an SQL script into statements (to run them inside one transaction)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Create a new store at SCHEMA_VERSION, or upgrade an older one in place."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        # A downgraded hub must not write rows a newer schema would misread.
        raise StoreError(
            f"{path}: store schema version {version} is newer than this"
            f" homehub's ({SCHEMA_VERSION}); install a newer homehub"
        )
    if version == SCHEMA_VERSION:
        return version
    db.execute("BEGIN IMMEDIATE")
    try:
        has_readings = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'readings'"
        ).fetchone()
        if version == 0 and not has_readings:
            script = _SCHEMA
        else:
            # Version 0 with a readings table: version-1 code set user_version
            # only after creating the tables, so a crash between left this.
            script = "".join(_MIGRATIONS[v] for v in range(max(version, 1), SCHEMA_VERSION))
        # executescript would COMMIT first; run the statements one by one instead.
        for statement in statements(script):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if version:
        log.warning("store: schema upgraded from version %d to %d", version, SCHEMA_VERSION)
    return SCHEMA_VERSION
