"""The hub's identity and its secrets on disk (issue 14).

- `restrict_umask`: outside systemd the hub makes every file it creates (the store
  and its WAL/SHM, the Bumble bonds, its key) private to its own user.
- `secret_file_problem`: a config file holding a secret (`password_file`, `key_file`)
  that other users can read, named in a WARNING as ssh does for its keys.

Nothing here logs or returns a secret's content.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gateway.clockcheck import clock_problem
from gateway.drivers.base import ID_PATTERN
from gateway.errors import GatewayError

ID_RE = re.compile(ID_PATTERN)


class IdentityError(GatewayError):
    """The hub's key or certificate cannot be made, read or used."""


#: The umask the hub sets for itself outside systemd: files 0600, directories 0700.
PRIVATE_UMASK = 0o077
#: The service's group (systemd/homehub.service, Group=): the documented
#: `root:homehub 0640` key file is readable by the hub and nobody else.
SERVICE_GROUP = "homehub"


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """Whether systemd started this process as a service (systemd.exec(5), $INVOCATION_ID)."""
    env = os.environ if environ is None else environ
    return bool(env.get("INVOCATION_ID"))


def restrict_umask(environ: Mapping[str, str] | None = None) -> int | None:
    """Make files created from now on private to the hub's user; return the old umask.

    Under systemd the unit's `UMask=` (0077 in homehub.service) is the operator's
    choice and is kept (None returned). Outside it the umask only ever gets
    stricter: a umask of 0277 stays 0277.
    """
    if under_systemd(environ):
        return None
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    return old


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _trusted_groups() -> set[int]:
    groups = {os.getegid()}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrnam(SERVICE_GROUP).gr_gid)
    return groups


def secret_file_problem(path: Path) -> str | None:
    """Why the secret in `path` is readable by others than the hub, or None.

    Like ssh ("UNPROTECTED PRIVATE KEY FILE!"), any access for other users is a
    problem. Access for the file's group is a problem unless that group is the
    hub's own or the service group: `root:homehub 0640` is how docs/INSTALL.md
    installs a key the service may read and not change.
    """
    try:
        st = path.stat()
    except OSError:
        return None  # a missing file is the config check's to report
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return (
            f"{path} is accessible to every user on this hub (mode {mode:04o}); "
            f"it holds a secret: chmod 0600 (or 0640 with group {SERVICE_GROUP}) it"
        )
    if mode & 0o070 and st.st_gid not in _trusted_groups():
        return (
            f"{path} is accessible to group {_group_name(st.st_gid)} (mode {mode:04o}); "
            f"it holds a secret: chmod 0600 it, or give it to group {SERVICE_GROUP}"
        )
    return None


# -- provisioning (issue 14 part 1) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Provisioned:
    key_path: Path
    csr_path: Path
    csr_pem: str
    new_key: bool


def _write_private(path: Path, data: bytes, *, owner: tuple[int, int] | None) -> None:
    """Write `data` to `path` atomically, mode 0600 from the start (whatever the umask)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # The rename is durable only once the directory is synced (a power cut).
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def service_owner(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) of `user` when we are root and it exists; the key is then the service's."""
    if user is None or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _csr_pem(key: Any, gateway_id: str) -> str:
    """A CSR for `key` whose subject is CN=`gateway_id`, asking for a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def provision(
    gateway_id: str,
    key_path: Path,
    csr_path: Path,
    *,
    new_key: bool = False,
    owner: tuple[int, int] | None = None,
) -> Provisioned:
    """Make the hub's key (EC P-256, 0600) unless it has one, and a CSR naming `gateway_id`.

    An existing key is kept and a fresh CSR made for it (a lost request, a certificate
    to re-issue); `new_key` replaces it, keeping the old one as `NAME.old`. The key
    never leaves this function other than into its file.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not ID_RE.fullmatch(gateway_id):
        raise IdentityError(f"gateway id {gateway_id!r} is not a valid [gateway] id")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    made = new_key or not key_path.exists()
    if made:
        key = ec.generate_private_key(ec.SECP256R1())
        if key_path.exists():
            os.replace(key_path, key_path.with_name(key_path.name + ".old"))
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(key_path, pem, owner=owner)
    else:
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{key_path} is not an EC private key; give --new-key")
        key = loaded
    csr_pem = _csr_pem(key, gateway_id)
    tmp = csr_path.with_name(f".{csr_path.name}.tmp")
    tmp.write_text(csr_pem)
    os.replace(tmp, csr_path)
    return Provisioned(key_path, csr_path, csr_pem, made)


# -- the certificate's lifecycle (issue 14 part 2) ----------------------------------------

#: A WARNING from this many days before the certificate ends (a renewal takes time).
EXPIRY_WARNING_DAYS = 30

CertState = Literal["ok", "expiring", "expired", "not_yet_valid", "unreadable"]


@dataclass(frozen=True, slots=True)
class CertificateCheck:
    """What the hub knows of its client certificate at one moment."""

    state: CertState
    not_before: datetime | None = None
    not_after: datetime | None = None
    days_left: float | None = None
    #: for the log and the status; names dates and files, never a key
    problem: str | None = None

    @property
    def needs_help(self) -> bool:
        """Expired, not yet valid or unreadable: the broker will refuse the hub."""
        return self.state in ("expired", "not_yet_valid", "unreadable")


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def check_certificate(path: Path, now: datetime) -> CertificateCheck:
    """Read `path`'s validity and judge it at `now` (an aware datetime)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM certificate"
        return CertificateCheck("unreadable", problem=f"cannot read {path}: {reason}")
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    days_left = round((not_after - now).total_seconds() / 86400, 1)

    def check(state: CertState, problem: str | None = None) -> CertificateCheck:
        return CertificateCheck(state, not_before, not_after, days_left, problem)

    renew = "renew it (homehub provision, docs/INSTALL.md)"
    if now < not_before:
        # A Pi without a battery clock starts in the past: say which of the two is wrong.
        clock = clock_problem(now)
        why = (
            f"{clock}: the hub's clock is wrong, not the certificate"
            if clock is not None
            else "the hub's clock looks right, so the certificate was issued for later"
        )
        return check(
            "not_yet_valid",
            f"the client certificate is not valid yet (from {_utc(not_before)}); {why}",
        )
    if now >= not_after:
        return check("expired", f"the client certificate expired on {_utc(not_after)}; {renew}")
    if days_left <= EXPIRY_WARNING_DAYS:
        return check(
            "expiring",
            f"the client certificate expires in {days_left:.0f} day(s), on "
            f"{_utc(not_after)}; {renew}",
        )
    return check("ok")


# -- renewal over the air (issue 14 part 2) -----------------------------------------------
#
# `cert/csr` makes the next key beside the current one (`KEY.new`); `cert/install` checks
# the signed certificate against it and the CA, then replaces the two files in place:
# the certificate first, the key second, each atomically (write, fsync, rename), the
# old pair kept as `.old`. A power cut between the two renames leaves the new
# certificate beside the old key and `KEY.new`: `finish_interrupted_install` completes
# it at the next start. Rolling back puts the old pair back the same way and the new
# key back as `KEY.new` (a certificate re-signed by the right CA can then be installed
# without another CSR).

#: Chain certificates an install may carry (intermediates), at most.
MAX_CHAIN = 4


class RenewalRefused(IdentityError):
    """A renewal step refused before any file changed; `field` names the argument at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def pending_key_path(key_path: Path) -> Path:
    """Where `cert/csr` keeps the next key until `cert/install`: beside the current one."""
    return key_path.with_name(key_path.name + ".new")


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _writable_dir(path: Path) -> None:
    # Under systemd (ProtectSystem=strict) /etc is read-only to the hub: its identity
    # must live where it may write, the state directory (docs/INSTALL.md).
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise IdentityError(
            f"the hub cannot write in {path.parent}: keep its key and certificate in its"
            " state directory to renew them over the air (docs/INSTALL.md)"
        )


def _load_key(data: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(data, password=None)


def _public_der(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


@dataclass(frozen=True, slots=True)
class RenewalRequest:
    csr_pem: str
    key_path: Path
    #: a pending key from an earlier `cert/csr` was replaced (its CSR is now useless)
    replaced: bool


def make_renewal_request(gateway_id: str, key_path: Path, cert_path: Path) -> RenewalRequest:
    """Make the next key (EC P-256, 0600) as `KEY.new` and a CSR naming `gateway_id`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not ID_RE.fullmatch(gateway_id):
        raise IdentityError(f"gateway id {gateway_id!r} is not a valid [gateway] id")
    _writable_dir(key_path)
    _writable_dir(cert_path)
    pending = pending_key_path(key_path)
    replaced = pending.exists()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(pending, pem, owner=None)
    return RenewalRequest(_csr_pem(key, gateway_id), pending, replaced)


def _load_certs(pem: str, field: str) -> list[Any]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise RenewalRefused(field, "not a PEM certificate") from None
    return certs


def _issued_by(cert: Any, issuer: Any) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, or a key type it cannot check
        return False
    return True


def check_renewal(
    gateway_id: str,
    certificate_pem: str,
    chain_pem: str | None,
    *,
    key_path: Path,
    ca_file: Path,
    now: datetime,
) -> Any:
    """The certificate to install, or RenewalRefused saying why (nothing is changed).

    It must be for the pending key (public key equality), name the hub (CN = gateway
    id), chain to a CA in `ca_file` (through `chain_pem`'s certificates if any) and be
    valid at `now`; a `now` before its start is explained as the clock or the CA.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certs = _load_certs(certificate_pem, "args.certificate")
    if len(certs) != 1:
        raise RenewalRefused("args.certificate", "must hold exactly one certificate")
    cert = certs[0]
    chain = [] if not chain_pem else _load_certs(chain_pem, "args.chain")
    if len(chain) > MAX_CHAIN:
        raise RenewalRefused("args.chain", f"at most {MAX_CHAIN} certificates")
    pending = pending_key_path(key_path)
    try:
        key = _load_key(pending.read_bytes())
    except FileNotFoundError:
        raise RenewalRefused(
            "args.certificate", "no pending key: ask cert/csr first, then sign its request"
        ) from None
    except ValueError:
        raise IdentityError(f"{pending} is not a readable key; ask cert/csr again") from None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise RenewalRefused(
            "args.certificate",
            "is not for the hub's pending key (signed from another request? the latest"
            " cert/csr replaces earlier ones)",
        )
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [gateway_id]:
        raise RenewalRefused("args.certificate", f"its subject must be CN={gateway_id}")
    try:
        roots = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read [mqtt] ca_file {ca_file}: {exc}") from None
    current, seen = cert, 0
    while not any(_issued_by(current, root) for root in roots):
        parent = next((c for c in chain if _issued_by(current, c)), None)
        seen += 1
        if parent is None or seen > MAX_CHAIN:
            raise RenewalRefused(
                "args.certificate",
                f"does not chain to a CA in [mqtt] ca_file ({ca_file.name}); give the"
                " intermediates in args.chain",
            )
        current = parent
    for checked, field in [(cert, "args.certificate"), *((c, "args.chain") for c in chain)]:
        if now < checked.not_valid_before_utc:
            clock = clock_problem(now)
            why = (
                f"{clock}: the hub's clock is wrong, not the certificate; install it once"
                " the clock is set"
                if clock is not None
                else "the hub's clock looks right, so it was issued for later"
            )
            raise RenewalRefused(
                field, f"not valid yet (from {_utc(checked.not_valid_before_utc)}); {why}"
            )
        if now >= checked.not_valid_after_utc:
            raise RenewalRefused(field, f"expired on {_utc(checked.not_valid_after_utc)}")
    return cert


@dataclass(frozen=True, slots=True)
class Installed:
    """An installed renewal: what `rollback` puts back."""

    cert_path: Path
    key_path: Path
    old_cert: bytes
    old_key: bytes
    new_key: bytes

    def rollback(self) -> None:
        """The old pair back in place, the new key back as pending (each write atomic)."""
        _write_private(pending_key_path(self.key_path), self.new_key, owner=None)
        _write_private(self.cert_path, self.old_cert, owner=None)
        _write_private(self.key_path, self.old_key, owner=None)


def install_renewal(cert: Any, *, cert_path: Path, key_path: Path) -> Installed:
    """Replace `cert_path` and `key_path` in place with `cert` and the pending key.

    The old pair is kept as `.old` (written first, durably). The certificate goes
    first: see the section comment for a power cut in between.
    """
    from cryptography.hazmat.primitives import serialization

    pending = pending_key_path(key_path)
    old_cert, old_key, new_key = cert_path.read_bytes(), key_path.read_bytes(), pending.read_bytes()
    _write_private(_old(cert_path), old_cert, owner=None)
    _write_private(_old(key_path), old_key, owner=None)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), owner=None)
    os.replace(pending, key_path)
    dir_fd = os.open(key_path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Installed(cert_path, key_path, old_cert, old_key, new_key)


def finish_interrupted_install(cert_path: Path, key_path: Path) -> bool:
    """Complete an install a power cut stopped between its two renames; whether it did.

    That state is: the certificate is for `KEY.new`, not for the key in place.
    """
    from cryptography import x509

    pending = pending_key_path(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        current = _load_key(key_path.read_bytes())
        new = _load_key(pending.read_bytes())
    except (OSError, ValueError, TypeError):
        return False
    cert_key = _public_der(cert.public_key())
    if cert_key == _public_der(current.public_key()) or cert_key != _public_der(new.public_key()):
        return False
    os.replace(pending, key_path)
    return True
