"""How a stored reading goes on the wire: `[mqtt] payload` (issue 13).

The store keeps the native `homehub.reading/1` bytes whatever the setting (it encodes
at add time); the uplink renders each stored payload just before it publishes it. A
renderer is a pure function of the stored bytes, so every resend of a reading is the
same message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

#: stored payload -> (bytes to publish, MQTT 5 Content Type or None for none).
Renderer = Callable[[bytes], tuple[bytes, str | None]]
PayloadFormat = Literal["homehub", "fhir"]


def _native(payload: bytes) -> tuple[bytes, str | None]:
    # Unchanged, and without properties: the native path is exactly what it was.
    return payload, None


def renderer_for(payload: PayloadFormat, *, version: str) -> Renderer:
    if payload == "fhir":
        # Imported only for a hub that sends FHIR: its templates, built at import from
        # the reference Bundle, are ~1.3 MiB of resident memory (bench/README.md, rss).
        from gateway.uplink import fhir

        def _fhir(stored: bytes) -> tuple[bytes, str | None]:
            return fhir.render_fhir(stored, version=version), fhir.CONTENT_TYPE

        return _fhir
    return _native
