"""Signed readings, `[mqtt] sign = true` (issue 14 part 3).

Each reading's PUBLISH carries, in the MQTT 5 User Property `jws` (§3.3.2.3.7,
`homehub_contract.SIGNATURE_PROPERTY`), a detached compact JWS (RFC 7515 §7.1 and
Appendix F: `header..signature`, the payload part left out) over the payload bytes
exactly as published: the native `homehub.reading/1` JSON or the FHIR Bundle alike.

- What is signed is the bytes on the wire, not a canonical form of the document: the hub
  is the only encoder, so there is nothing to canonicalise, and the backend verifies the
  bytes it received before it parses them (no JCS, RFC 8785, on either side). The
  signature travels outside those bytes, so the stored payload, the schema and the FHIR
  Bundle stay exactly what they are unsigned, and a resend is the same payload (ECDSA
  signatures are randomised: a resend's signature differs, its id and bytes do not).
- ES256 (RFC 7518 §3.4): ECDSA P-256 with SHA-256 over ASCII(BASE64URL(header) "." BASE64URL
  (payload)), the signature the 64 bytes R || S, not cryptography's DER.
- The header is `{"alg":"ES256","kid":T}` with T the certificate's SHA-256 thumbprint,
  BASE64URL(SHA-256(certificate DER)) (the value of `x5t#S256`, RFC 7515 §4.1.8): the backend
  finds the certificate it verifies with by it, and a renewed certificate has a new one.

The key and certificate are the hub's TLS client identity (`key_file`, `cert_file`, made
by `homehub provision`). `SignerSource` reads them again when either file changes, so a
renewed identity signs from the next connection on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

# Imported only with `sign = true` (gateway/uplink/mqtt.py): cryptography's import costs
# RSS and start-up time a hub without signatures need not pay.
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.identity import IdentityError

#: RFC 7518 §3.4: P-256 coordinates are 32 bytes; R || S is 64.
_COORDINATE_BYTES = 32
#: Made once: building it costs ~3 µs, a tenth of the signature (bench/README.md, sign).
_ES256 = ec.ECDSA(hashes.SHA256())


def b64url(data: bytes) -> str:
    """RFC 7515 §2 base64url: the URL-safe alphabet, no padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def certificate_thumbprint(cert_der: bytes) -> str:
    """BASE64URL(SHA-256(DER)): `x5t#S256` (RFC 7515 §4.1.8), the JWS `kid` here."""
    return b64url(hashlib.sha256(cert_der).digest())


@dataclass(frozen=True, slots=True)
class ReadingSigner:
    """Signs payloads with the hub's key; holds no file name and logs nothing."""

    kid: str
    _header_b64: bytes
    _key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> ReadingSigner:
        """The signer for the key in `key_path`, named by the certificate in `cert_path`.

        Refuses (IdentityError) a key that is not EC P-256 or a certificate that is not
        the key's: every signature would then fail at the backend.
        """
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            # The exception's type only: a message could quote part of the file.
            raise IdentityError(
                f"[mqtt] sign: cannot read the hub's key or certificate ({type(exc).__name__})"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise IdentityError("[mqtt] sign: ES256 needs an EC P-256 key_file (homehub provision)")
        public = cert.public_key()
        if public != key.public_key():
            raise IdentityError("[mqtt] sign: cert_file is not the certificate of key_file")
        kid = certificate_thumbprint(cert.public_bytes(serialization.Encoding.DER))
        header = json.dumps({"alg": "ES256", "kid": kid}, separators=(",", ":")).encode()
        return cls(kid, b64url(header).encode("ascii"), key)

    def sign(self, payload: bytes) -> str:
        """The detached compact JWS over `payload`: `BASE64URL(header)..BASE64URL(R||S)`."""
        signing_input = self._header_b64 + b"." + b64url(payload).encode("ascii")
        r, s = decode_dss_signature(self._key.sign(signing_input, _ES256))
        raw = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
        return f"{self._header_b64.decode('ascii')}..{b64url(raw)}"


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class SignerSource:
    """The signer for the current key and certificate files, reloaded when they change.

    A certificate renewal (issue 14 part 2) replaces both files and reconnects; the uplink
    asks for the signer at each connection, so the new identity signs from then on.
    """

    def __init__(self, key_path: Path, cert_path: Path) -> None:
        self._paths = (key_path, cert_path)
        self._stamps: tuple[tuple[int, int, int], ...] | None = None
        self._signer: ReadingSigner | None = None

    def current(self) -> ReadingSigner:
        try:
            stamps = tuple(_stamp(p) for p in self._paths)
        except OSError as exc:
            raise IdentityError(
                f"[mqtt] sign: cannot read the hub's key or certificate ({exc.strerror})"
            ) from None
        if self._signer is None or stamps != self._stamps:
            self._signer = ReadingSigner.load(*self._paths)
            self._stamps = stamps
        return self._signer
