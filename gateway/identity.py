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
from typing import Literal

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
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

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
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
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
