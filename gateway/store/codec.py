"""How a reading's payload is kept in the store: compressed, never changed (issue 11 part 4).

Wear: a ~600-byte reading row fills a 1 KiB page by itself, so every insert also
writes page 1 and the table's parent page, and every mark, purge and checkpoint
rewrites one page per reading. Deflated against a preset dictionary of what every
`homehub.reading/1` document repeats (keys, MDC codes, units) a payload shrinks to
~90-100 bytes, and five or six readings share a table page.

The stored form names its encoding in its first byte:

- 0x01: zlib (with its Adler-32 of the JSON) against `_DICTIONARY_1`;
- 0x00, 0x02-0x08: reserved (no JSON text starts with one): damage, or a newer
  encoding an older homehub cannot read (the schema version keeps it away anyway);
- anything else: the payload itself, as every store before schema 5 holds it.

The bytes the uplink publishes are exactly the JSON the store was given: only
the stored form changes. The Adler-32 also catches a damaged payload that SQLite
itself cannot see (it checks a page's structure, not its bytes): `decode` raises
`PayloadDamaged` instead of handing back a wrong reading.

`_DICTIONARY_1` is frozen: stored rows need it to be read back. A better one is a
new prefix byte beside it, never an edit (a test pins its digest).
"""

from __future__ import annotations

import zlib

ZLIB_DICT_1 = b"\x01"
_RESERVED = bytes(range(0x09))  # below JSON's first possible byte (tab)

# Fragments of `homehub.reading/1` documents, the most frequent last (deflate codes a
# nearer match no worse). Only a hint: any payload compresses and reads back with it.
_DICTIONARY_1 = (
    b'"status":["device_clock_unset"],"flags":["above:150021","weight_gain"],'
    b'"measured_at_quality":"unsynced","device_clock_offset_s":'
    b'{"mdc":188736,"code":"MDC_MASS_BODY_ACTUAL","value":,"unit":"kg"}'
    b'{"mdc":160188,"code":"MDC_CONC_GLU_CAPILLARY_PLASMA","value":,"unit":"mmol/L"}'
    b'{"mdc":150364,"code":"MDC_TEMP_BODY","value":,"unit":"Cel"}'
    b'{"mdc":150456,"code":"MDC_PULS_OXIM_SAT_O2","value":,"unit":"%"},'
    b'{"mdc":149530,"code":"MDC_PULS_OXIM_PULS_RATE","value":,"unit":"/min"}'
    b'{"mdc":150021,"code":"MDC_PRESS_BLD_NONINV_SYS","value":,"unit":"mm[Hg]"},'
    b'{"mdc":150022,"code":"MDC_PRESS_BLD_NONINV_DIA","value":,"unit":"mm[Hg]"},'
    b'{"mdc":150023,"code":"MDC_PRESS_BLD_NONINV_MEAN","value":,"unit":"mm[Hg]"},'
    b'{"mdc":149546,"code":"MDC_PULS_RATE_NON_INV","value":,"unit":"/min"}],"status":[]}'
    b'{"schema":"homehub.reading/1","id":"","gateway":"","device":{"id":"","driver":"simulated"},'
    b'"kind":"blood_pressure","measured_at":"2026-12-03T14:54:15+00:00",'
    b'"measured_at_source":"device","received_at":"2026-12-03T14:54:15.189Z","values":['
)


class PayloadDamaged(ValueError):
    """A stored payload that does not decode: its bytes were damaged on the card."""


def encode(payload: bytes) -> bytes:
    """The stored form of `payload` (the JSON the uplink will publish)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zdict=_DICTIONARY_1)
    return ZLIB_DICT_1 + packer.compress(payload) + packer.flush()


def decode(stored: bytes) -> bytes:
    """The payload exactly as it was given to `encode` (or stored plain before schema 5)."""
    head = stored[:1]
    if head == ZLIB_DICT_1:
        unpacker = zlib.decompressobj(zlib.MAX_WBITS, zdict=_DICTIONARY_1)
        try:
            payload = unpacker.decompress(stored[1:]) + unpacker.flush()
        except zlib.error as exc:
            raise PayloadDamaged(f"stored payload does not decompress: {exc}") from exc
        if not unpacker.eof or unpacker.unused_data:
            raise PayloadDamaged("stored payload is cut short or has bytes after its end")
        return payload
    if head and head in _RESERVED:
        raise PayloadDamaged(f"stored payload has an unknown encoding byte {head!r}")
    return stored
