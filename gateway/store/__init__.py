"""The durable reading store: an SQLite outbox on the SD card.

Contract (ARCHITECTURE.md, data path step 2): `Store.add` returns only after the
reading is committed, so a driver acknowledges to its device only what is on
disk. The uplink reads unsent readings in `seq` order and marks them delivered
only after a successful PUBACK. "In flight" is deliberately a memory-only state:
after a crash or restart every reading not yet marked delivered is simply
unsent again, and is resent under the same id.

A reading's life (issue 9): stored -> published (`delivered_at`, success PUBACK)
-> confirmed (`confirmed_at`, the backend says it holds the id). A published
reading whose confirmation never comes is made unsent again by
`requeue_unconfirmed`, keeping its seq, id and payload.

Blocking SQLite calls run on one dedicated thread (the connection is confined
to it); the asyncio side batches concurrent adds into one transaction (group
commit), so many drivers cost one fsync, not one each.
"""

from gateway.store.aio import DROP_LOG_INTERVAL_S, Store
from gateway.store.outbox import (
    SQLITE_FULL,
    AddReport,
    AddResult,
    ClockStamp,
    HeldRow,
    NewRow,
    OutboxRow,
    SqliteOutbox,
    StoreStats,
)
from gateway.store.salvage import Recovery
from gateway.store.schema import SCHEMA_VERSION

__all__ = [
    "DROP_LOG_INTERVAL_S",
    "SCHEMA_VERSION",
    "SQLITE_FULL",
    "AddReport",
    "AddResult",
    "ClockStamp",
    "HeldRow",
    "NewRow",
    "OutboxRow",
    "Recovery",
    "SqliteOutbox",
    "Store",
    "StoreStats",
]
