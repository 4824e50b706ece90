"""Signed readings: the hub's detached JWS checked against its certificate (issue 14 part 3).

A hub with `[mqtt] sign = true` sends, in the MQTT 5 User Property `jws`
(`homehub_contract.SIGNATURE_PROPERTY`), a detached compact JWS (RFC 7515 §7.1, Appendix F)
over the PUBLISH payload's bytes exactly as received: `BASE64URL(header)..BASE64URL(sig)`,
ES256 only (RFC 7518 §3.4: R || S, 64 bytes), `kid` the SHA-256 thumbprint of the hub's
certificate DER (`x5t#S256`, RFC 7515 §4.1.8).

The trust anchor is `[verify] certs_dir`: `{gateway}.crt` holds the PEM certificate(s) the
operator issued to that hub (during a renewal, the old and the new one). The `kid` picks one
of them; the certificate's chain and dates are not checked here (the directory is what the
operator trusts; a hub's expired certificate does not make its past readings false). Files
are read again when they change, so adding a hub needs no restart.

Reasons are short and never quote the payload (they are logged): `signature: missing`,
`signature: malformed`, `signature: unsupported alg`, `signature: no certificate for this
gateway`, `signature: unknown kid`, `signature: bad`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from homehub_backend.db import ReadingRow, RejectedRow
from homehub_backend.validate import Row

_ES256 = ec.ECDSA(hashes.SHA256())


def _b64decode(text: str) -> bytes:
    # RFC 7515 §2: base64url without padding; anything else is malformed.
    if "=" in text:
        raise ValueError("padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_jws(  # noqa: PLR0911 - one return per reason
    jws: str, payload: bytes, keys: dict[str, ec.EllipticCurvePublicKey]
) -> str | None:
    """Why `jws` is not a good ES256 signature of `payload` by one of `keys` (kid -> key)."""
    parts = jws.split(".")
    if len(parts) != 3 or parts[1] != "":
        return "signature: malformed"
    try:
        header = json.loads(_b64decode(parts[0]))
        raw = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        return "signature: malformed"
    if not isinstance(header, dict):
        return "signature: malformed"
    # RFC 7515 §4.1.11: a critical extension we do not know makes the JWS invalid.
    if header.get("alg") != "ES256" or "crit" in header:
        return "signature: unsupported alg"
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return "signature: unknown kid"
    if len(raw) != 64:
        return "signature: malformed"
    signing_input = parts[0].encode("ascii") + b"." + base64.urlsafe_b64encode(payload).rstrip(b"=")
    return None if es256_valid(signing_input, raw, key) else "signature: bad"


def es256_valid(signing_input: bytes, raw: bytes, key: ec.EllipticCurvePublicKey) -> bool:
    """RFC 7518 §3.4: `raw` is R || S (32 bytes each), turned into the DER cryptography takes."""
    if len(raw) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        key.verify(der, signing_input, _ES256)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: tuple[int, int, int]
    keys: dict[str, ec.EllipticCurvePublicKey]


class Verifier:
    """Checks readings' signatures against `certs_dir/{gateway}.crt`; thread-safe."""

    def __init__(self, certs_dir: Path | None, *, required: bool) -> None:
        self.certs_dir = certs_dir
        self.required = required
        self._cache: dict[str, _Loaded | None] = {}
        self._lock = threading.Lock()

    def _keys(self, gateway: str) -> dict[str, ec.EllipticCurvePublicKey] | None:
        assert self.certs_dir is not None
        path = self.certs_dir / f"{gateway}.crt"
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            loaded = self._cache.get(gateway)
        if loaded is not None and loaded.stamp == stamp:
            return loaded.keys
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError):
            certs = []
        keys = {}
        for cert in certs:
            public = cert.public_key()
            if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(
                public.curve, ec.SECP256R1
            ):
                keys[thumbprint(cert)] = public
        with self._lock:
            self._cache[gateway] = _Loaded(stamp, keys)
        return keys

    def problem(self, gateway: str, payload: bytes, jws: str | None) -> str | None:
        """Why this reading must be rejected, or None to take it."""
        if jws is None:
            return "signature: missing" if self.required else None
        if self.certs_dir is None:
            return None  # nothing to verify with, and not required: taken as unsigned
        keys = self._keys(gateway)
        if keys is None:
            return "signature: no certificate for this gateway"
        return check_jws(jws, payload, keys)

    def apply(self, row: Row, payload: bytes, jws: str | None) -> Row:
        """`row` itself, or a RejectedRow with the reason when its signature does not hold."""
        if not isinstance(row, ReadingRow):
            return row
        reason = self.problem(row.gateway, payload, jws)
        if reason is None:
            return row
        return RejectedRow(topic=row.topic, reason=reason, raw=payload)
