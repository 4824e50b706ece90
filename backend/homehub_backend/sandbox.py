"""A private PostgreSQL cluster in a temporary directory, for the tests, the bench and the demo.

It is Debian's real `postgresql` (binaries in /usr/lib/postgresql/<major>/bin), started with
`initdb` + `postgres` on a free port on 127.0.0.1, never the machine's own cluster. Both
programs refuse to run as root, so when we are root they run as the unprivileged user
`nobody` in a directory owned by it. The server gets the parent-death signal SIGQUIT
(immediate shutdown): if the process that started it dies, the cluster does not outlive it.

`python -m homehub_backend.sandbox --config-out FILE` is the hub's demo's database (issue 9
part 3): it starts a cluster, migrates it, writes a backend config pointing at it, prints
`sandbox ready`, and removes everything on SIGTERM/SIGINT or when its stdin closes (the
demo that started it died). The hub never imports the backend; it runs this as a process.
`HOMEHUB_PG_BIN` names the directory with initdb and postgres where they are elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from homehub_backend.errors import BackendError

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def find_pg_bin() -> Path:
    """The directory with initdb and postgres: $HOMEHUB_PG_BIN, the newest Debian major, else
    the PATH."""
    override = os.environ.get("HOMEHUB_PG_BIN")
    if override:
        if not (Path(override) / "initdb").exists():
            raise BackendError(f"PostgreSQL: no initdb in HOMEHUB_PG_BIN={override}")
        return Path(override)
    root = Path("/usr/lib/postgresql")
    majors = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0),
    )
    if majors:
        return majors[-1]
    found = shutil.which("initdb")
    if found is None:
        raise BackendError(
            "PostgreSQL is not installed: run 'make install-deps' (or apt-get install postgresql)"
        )
    return Path(found).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # After the uid change (which clears the parent-death signal): a test runner or demo
    # killed with SIGKILL takes its database with it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)


@dataclass
class PostgresSandbox:
    """initdb once, then start / crash / restart / stop one private postgres."""

    database: str = "homehub"
    user: str = "homehub"
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)  # extra `-c name=value`
    # Where the temporary directory goes (default: the system's); it must be reachable by
    # `nobody` when run as root, and on a real disk for durability figures (not tmpfs).
    parent: Path | None = None
    workdir: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _run_as: str | None = None

    @property
    def dsn(self) -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={self.database} user={self.user} "
            "connect_timeout=5"
        )

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    def _popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        extra: dict[str, object] = {}
        if self._run_as is not None:
            extra = {"user": self._run_as, "group": pwd.getpwnam(self._run_as).pw_gid}
            extra["extra_groups"] = []
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            argv,
            cwd=self.workdir,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"},
            **extra,
            **kwargs,
        )

    def init(self, timeout_s: float = 60.0) -> None:
        """Create the cluster (initdb) in a fresh temporary directory."""
        self.workdir = Path(tempfile.mkdtemp(prefix="homehub-pg-", dir=self.parent))
        if os.geteuid() == 0:
            self._run_as = "nobody"
            entry = pwd.getpwnam("nobody")
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        initdb = self._popen(
            [
                str(find_pg_bin() / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",  # initdb's own files only; the server still fsyncs (see start)
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = initdb.communicate(timeout=timeout_s)
        if initdb.returncode != 0:
            raise BackendError(f"initdb failed: {out.decode(errors='replace')[-500:]}")

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server (initdb first if needed) and create the database once."""
        if self.workdir is None:
            self.init()
        assert self.workdir is not None
        argv = [
            str(find_pg_bin() / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.workdir}",
            # Durable as in production: every commit is flushed before it returns.
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
        ]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        log = open(self.workdir / "postgres.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = self._popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C for the demo is not for the database
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self._wait_ready(timeout_s)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user={self.user} connect_timeout=5"

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise BackendError(f"postgres exited at start: {self.log_tail()}")
            try:
                with psycopg.connect(self.admin_dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BackendError(
                        f"postgres did not start on 127.0.0.1:{self.port}: {exc}"
                    ) from exc
                time.sleep(0.05)

    def log_tail(self, lines: int = 5) -> str:
        if self.workdir is None:
            return ""
        path = self.workdir / "postgres.log"
        if not path.exists():
            return ""
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])

    def crash(self, timeout_s: float = 10.0) -> None:
        """Immediate shutdown (SIGQUIT): no checkpoint, crash recovery at the next start."""
        self._signal(signal.SIGQUIT, timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, a checkpoint is written."""
        self._signal(signal.SIGINT, timeout_s)

    def _signal(self, signum: int, timeout_s: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def cleanup(self) -> None:
        """Stop and remove the cluster's directory."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> PostgresSandbox:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()


# -- python -m homehub_backend.sandbox: the demo's database ----------------------------------


def _demo_config(sandbox: PostgresSandbox, args: argparse.Namespace) -> str:
    def q(text: str) -> str:
        return json.dumps(text)  # a TOML basic string is a JSON string for these values

    return "\n".join(
        [
            "# Written by python -m homehub_backend.sandbox; removed with the sandbox.",
            "[broker]",
            f"host = {q(args.broker_host)}",
            f"port = {args.broker_port}",
            f"client_id = {q(args.client_id)}",
            "reconnect_min_s = 0.2",
            "reconnect_max_s = 2.0",
            "",
            "[ingest]",
            f"topic_prefix = {q(args.prefix)}",
            "",
            "[database]",
            f"dsn = {q(sandbox.dsn)}",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Start, migrate, write the config, print `sandbox ready`, wait, remove. Exit 1 (one
    line on stderr saying why) when PostgreSQL cannot be started."""
    parser = argparse.ArgumentParser(
        prog="python -m homehub_backend.sandbox",
        description="A private, migrated PostgreSQL and a backend config for it, until "
        "SIGTERM/SIGINT or the end of stdin; then it is removed.",
    )
    parser.add_argument("--config-out", type=Path, required=True, help="backend config to write")
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--prefix", default="homehub")
    parser.add_argument("--client-id", default="homehub-demo-backend")
    args = parser.parse_args(argv)

    from homehub_backend import db  # pydantic and the migrations: not for the fixtures' import

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    sandbox = PostgresSandbox()
    try:
        try:
            sandbox.start()
            with psycopg.connect(sandbox.dsn) as conn:
                db.migrate(conn)
        except (BackendError, psycopg.Error, OSError, subprocess.SubprocessError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"sandbox: PostgreSQL cannot be started: {first}", file=sys.stderr, flush=True)
            return 1
        args.config_out.write_text(_demo_config(sandbox, args), "utf-8")
        print(f"sandbox ready: PostgreSQL on 127.0.0.1:{sandbox.port}", flush=True)

        def until_eof() -> None:
            with contextlib.suppress(OSError, ValueError):
                sys.stdin.read()
            stop.set()

        threading.Thread(target=until_eof, daemon=True, name="sandbox-stdin").start()
        while not stop.wait(0.5):  # short waits: the signal handler runs between them
            pass
        return 0
    finally:
        sandbox.cleanup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
