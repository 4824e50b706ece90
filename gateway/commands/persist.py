"""Durable small files of the command channel: write, fsync, rename, fsync the directory.

What a command changes is in a file that is either the old one or the new one
after a power cut or a SIGKILL, never half of each (issue 10).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, doc: Any) -> None:
    """Replace `path` with `doc` as JSON, durably (raises OSError; `path` is then unchanged)."""
    data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # The rename is durable only once the directory is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, None if there is no such file (raises ValueError/OSError)."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    return json.loads(text)
