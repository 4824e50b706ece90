"""How a stored reading goes on the wire: `[mqtt] payload` (issue 13).

The store keeps the native `homehub.reading/1` bytes whatever the setting (it encodes
at add time); the uplink renders each stored payload just before it publishes it. A
renderer is a pure function of the stored bytes, so every resend of a reading is the
same message.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

from gateway.uplink.fhir import CONTENT_TYPE as FHIR_CONTENT_TYPE
from gateway.uplink.fhir import render_fhir

#: stored payload -> (bytes to publish, MQTT 5 Content Type or None for none).
Renderer = Callable[[bytes], tuple[bytes, str | None]]
PayloadFormat = Literal["homehub", "fhir"]


def _native(payload: bytes) -> tuple[bytes, str | None]:
    # Unchanged, and without properties: the native path is exactly what it was.
    return payload, None


def _fhir(payload: bytes, *, version: str) -> tuple[bytes, str | None]:
    return render_fhir(payload, version=version), FHIR_CONTENT_TYPE


def renderer_for(payload: PayloadFormat, *, version: str) -> Renderer:
    if payload == "fhir":
        return partial(_fhir, version=version)
    return _native
