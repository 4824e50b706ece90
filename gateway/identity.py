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
import stat
from collections.abc import Mapping
from pathlib import Path

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
