"""The stored form of a payload (issue 11 part 4): compressed, read back byte for byte."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.reading import Reading, Value
from gateway.store import NewRow, SqliteOutbox, Store, codec
from gateway.store.salvage import Recovery
from gateway.uplink.payload import encode_reading

GATEWAY = "hub-test"


def bp_payload(n: int) -> bytes:
    """A real `homehub.reading/1` document, as the store is given it."""
    reading = Reading(
        device_id="bp-1",
        driver="simulated",
        kind="blood_pressure",
        measured_at=datetime(2026, 12, 3, 9, 0, n % 60, tzinfo=UTC),
        measured_at_source="device",
        values=[
            Value(mdc=150021, code="MDC_PRESS_BLD_NONINV_SYS", value=120.0 + n, unit="mm[Hg]"),
            Value(mdc=150022, code="MDC_PRESS_BLD_NONINV_DIA", value=80.0, unit="mm[Hg]"),
            Value(mdc=150023, code="MDC_PRESS_BLD_NONINV_MEAN", value=93.3, unit="mm[Hg]"),
            Value(mdc=149546, code="MDC_PULS_RATE_NON_INV", value=61.0, unit="/min"),
        ],
        source_key=f"rec-{n}",
    )
    return encode_reading(
        reading,
        reading_id=f"0e3b7c1a-2f4d-5e6f-8a9b-{n:012d}",
        gateway_id=GATEWAY,
        received_at=datetime(2026, 12, 3, 9, 0, 1, tzinfo=UTC),
    )


def test_a_reading_is_stored_in_a_fifth_of_its_size_and_read_back_exactly() -> None:
    payload = bp_payload(1)
    stored = codec.encode(payload)
    assert stored[:1] == codec.ZLIB_DICT_1
    # ~600 bytes of JSON in ~100: five or six readings share a 1 KiB table page.
    assert len(stored) * 5 < len(payload), (len(stored), len(payload))
    assert codec.decode(stored) == payload


@pytest.mark.parametrize("plain", [b'{"n":1}', b"  {}", b"p3", b""])
def test_a_payload_stored_plain_before_schema_5_reads_as_it_is(plain: bytes) -> None:
    assert codec.decode(plain) == plain


def test_a_damaged_payload_is_refused_not_returned() -> None:
    stored = bytearray(codec.encode(bp_payload(2)))
    for at in (len(stored) // 2, len(stored) - 1):  # a deflate byte; the Adler-32 itself
        bad = bytearray(stored)
        bad[at] ^= 0x10
        with pytest.raises(codec.PayloadDamaged):
            codec.decode(bytes(bad))
    with pytest.raises(codec.PayloadDamaged):
        codec.decode(bytes(stored[:-5]))  # cut short
    with pytest.raises(codec.PayloadDamaged):
        codec.decode(b"\x00" + bytes(stored[1:]))  # a reserved encoding byte


def test_the_dictionary_is_frozen() -> None:
    # Stored rows need it to be read back: a better one gets a new prefix byte.
    digest = hashlib.sha256(codec._DICTIONARY_1).hexdigest()
    assert digest == PINNED_DICTIONARY_1


PINNED_DICTIONARY_1 = "0da7908431a21085d8facbc87ccc77beab143bb3af8e3b0e699c7c3b5428de21"


def test_the_store_holds_compressed_rows_and_hands_back_the_json(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    outbox = SqliteOutbox(path)
    payloads = [bp_payload(n) for n in range(3)]
    try:
        outbox.add_many(
            [NewRow(json.loads(p)["id"], "bp-1", p, 1000.0 + n) for n, p in enumerate(payloads)]
        )
        assert [r.payload for r in outbox.fetch_unsent(0, 10)] == payloads
    finally:
        outbox.close()
    db = sqlite3.connect(path)
    try:
        stored = [bytes(p) for (p,) in db.execute("SELECT payload FROM readings ORDER BY seq")]
    finally:
        db.close()
    assert all(
        s[:1] == codec.ZLIB_DICT_1 and len(s) * 5 < len(p)
        for s, p in zip(stored, payloads, strict=True)
    )


async def test_a_payload_damaged_on_the_card_is_salvaged_not_published(tmp_path: Path) -> None:
    # SQLite checks a page's structure, not its bytes: a flipped bit inside a payload
    # used to go out as a wrong reading. Now it is the file's damage, salvaged.
    path = tmp_path / "readings.sqlite3"
    outbox = SqliteOutbox(path)
    payloads = [bp_payload(n) for n in range(5)]
    ids = [json.loads(p)["id"] for p in payloads]
    try:
        outbox.add_many([NewRow(i, "bp-1", p, 1000.0) for i, p in zip(ids, payloads, strict=True)])
        db = outbox._db
        (stored,) = db.execute("SELECT payload FROM readings WHERE id = ?", (ids[2],)).fetchone()
        bad = bytearray(stored)
        bad[30] ^= 0x01  # one bit, as a failing card returns it
        db.execute("UPDATE readings SET payload = ? WHERE id = ?", (bytes(bad), ids[2]))
    finally:
        outbox.close()
    recoveries: list[Recovery] = []
    store = await Store.open(path, gateway_id=GATEWAY, on_recovered=recoveries.append)
    try:
        rows = await store.fetch_unsent(0, 10)
    finally:
        await store.close()
    assert [r.payload for r in rows] == payloads[:2] + payloads[3:]
    (recovery,) = recoveries
    assert recovery.salvaged == 4 and recovery.unreadable == 1
