"""The `homehub-backend` command: migrate, ingest, fleet, command, check-config.

Exit status: 0 done (ingest: after SIGTERM/Ctrl-C), 1 could not run (PostgreSQL schema
missing, a database that refuses us), 78 (EX_CONFIG) invalid configuration, each problem
naming its field. `command`: 0 ok, 1 refused, 75 queued for an offline hub (see
homehub_backend/command.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from homehub_backend import __version__
from homehub_backend.config import DEFAULT_CONFIG_PATH, EX_CONFIG, BackendConfig, load_config
from homehub_backend.errors import BackendError, ConfigError

log = logging.getLogger("homehub_backend")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homehub-backend",
        description="homehub reference backend: readings into PostgreSQL, confirmed to hubs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
        return p

    with_config("check-config", "validate the config file and exit")
    with_config("migrate", "apply the database schema migrations not yet applied")
    ingest = with_config("ingest", "run one ingest worker until SIGTERM")
    ingest.add_argument(
        "--client-id", help="override broker.client_id (one per worker: it names the session)"
    )
    fleet = with_config("fleet", "print the hubs: offline, backlog, failing devices")
    fleet.add_argument("--json", action="store_true", help="one JSON document")
    command = with_config("command", "send a command to a hub and print its response")
    command.add_argument("hub", help="the hub's gateway id")
    command.add_argument("name", help="status, identify, devices/get, devices/set, ...")
    command.add_argument("args", nargs="?", help="the command's args, a JSON object")
    command.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the response (10)"
    )
    command.add_argument(
        "--expiry", type=int, default=86400, help="seconds the command stays valid (86400)"
    )
    command.add_argument("--id", help="the request id (default: a fresh one; reuse to retry)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(
            f"homehub-backend: invalid configuration ({len(exc.problems)} problem(s)):",
            file=sys.stderr,
        )
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    try:
        return _run(args, config)
    except BackendError as exc:
        print(f"homehub-backend: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, config: BackendConfig) -> int:
    if args.command == "check-config":
        b = config.broker
        print(
            f"{args.config}: valid (broker {b.host}:{b.port}, share group "
            f"{config.ingest.share_group}, prefix {config.ingest.topic_prefix})"
        )
        return 0
    if args.command == "command":
        return _command(args, config)
    from homehub_backend import db  # psycopg: not needed to check a file

    if args.command == "migrate":
        with db.connect(config.database) as conn:
            applied = db.migrate(conn)
            version = db.schema_version(conn)
        done = ", ".join(applied) if applied else "nothing to apply"
        print(f"migrate: schema at version {version} ({done})")
        return 0
    if args.command == "fleet":
        from datetime import UTC, datetime

        from homehub_backend.fleet import fleet, format_json, format_table

        with db.connect(config.database) as conn:
            db.check_schema(conn)
            hubs = fleet(conn, config.fleet.backlog_age_s)
        print(format_json(hubs) if args.json else format_table(hubs, datetime.now(UTC)))
        return 0
    return _ingest(args, config)


def _ingest(args: argparse.Namespace, config: BackendConfig) -> int:
    from homehub_backend.ingest import Worker

    if args.client_id:
        config = config.model_copy(
            update={"broker": config.broker.model_copy(update={"client_id": args.client_id})}
        )
    worker = Worker(config)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("ingest: %s: finishing the batch in hand", signal.Signals(signum).name)
        worker.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _command(args: argparse.Namespace, config: BackendConfig) -> int:
    import json

    from homehub_backend.command import parse_args_json, send_command

    if not 0 < args.wait <= 3600 or not 1 <= args.expiry <= 4294967295:
        print("homehub-backend: --wait 0..3600 s, --expiry 1..4294967295 s", file=sys.stderr)
        return 64
    outcome = send_command(
        config.broker,
        config.ingest.topic_prefix,
        args.hub,
        args.name,
        parse_args_json(args.args),
        wait_s=args.wait,
        expiry_s=args.expiry,
        request_id=args.id,
    )
    if outcome.response is not None:
        print(json.dumps(outcome.response, indent=2))
    else:
        print(
            f"homehub-backend: command {outcome.request_id}: {outcome.describe()}", file=sys.stderr
        )
    return outcome.exit_code
