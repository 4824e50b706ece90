"""The `homehub` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from homehub_contract import load_schema

from gateway import __version__
from gateway.config import DEFAULT_CONFIG_PATH, EX_CONFIG, HubConfig, config_model, load_config
from gateway.drivers.registry import DriverRegistry
from gateway.errors import ConfigError, GatewayError
from gateway.identity import restrict_umask
from gateway.logsetup import setup_logging

log = logging.getLogger("gateway.cli")

EX_OK = 0
EX_FAIL = 1
EX_USAGE = 64


def _config_or_exit(path: Path, registry: DriverRegistry) -> HubConfig:
    try:
        return load_config(path, registry)
    except ConfigError as exc:
        print(f"homehub: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


# -- run -----------------------------------------------------------------------------


async def _run_hub(config: HubConfig, registry: DriverRegistry, path: Path) -> int:
    from gateway.daemon import Hub
    from gateway.sdnotify import SystemdNotifier

    hub = Hub(config, registry, notifier=SystemdNotifier())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, hub.stop)
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        # Issue 6: validate first; an invalid new config is logged, the old one kept.
        try:
            new = await loop.run_in_executor(None, load_config, path, registry)
        except ConfigError as exc:
            log.error("reload: %s is invalid; keeping the running config", path)
            for problem in exc.problems:
                log.error("reload:   %s", problem)
            return
        await hub.reload(new)

    def on_sighup() -> None:
        task = loop.create_task(reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await hub.run()
    return hub.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    registry = DriverRegistry.from_entry_points()
    config = _config_or_exit(args.config, registry)  # exits 78 before touching anything
    try:
        return asyncio.run(_run_hub(config, registry, args.config))
    except GatewayError as exc:
        log.critical("homehub cannot run: %s", exc)
        return EX_FAIL


# -- check-config --------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    registry = DriverRegistry.from_entry_points()
    config = _config_or_exit(args.path, registry)
    print(
        f"{args.path}: valid (gateway {config.gateway.id}, {len(config.devices)} device(s), "
        f"broker {config.mqtt.host}:{config.mqtt.port}{' with TLS' if config.mqtt.tls else ''})"
    )
    return EX_OK


# -- status --------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.commands import RemoteDevices
    from gateway.status import iso_utc
    from gateway.store import SqliteOutbox

    registry = DriverRegistry.from_entry_points()
    # Issue 10: the devices the hub runs, the care team's remote ones included.
    installer = _config_or_exit(args.config, registry)
    config = RemoteDevices(installer.gateway.state_dir, registry).merge(installer)
    path = config.store_path
    if not path.exists():
        print(f"homehub: no store at {path} yet (has the hub ever run?)", file=sys.stderr)
        return EX_FAIL
    try:
        outbox = SqliteOutbox(path, read_only=True)
        try:
            stats = outbox.stats()
        finally:
            outbox.close()
    except (GatewayError, sqlite3.Error) as exc:
        print(f"homehub: cannot read the store {path}: {exc}", file=sys.stderr)
        return EX_FAIL
    now = time.time()
    oldest_age = None if stats.oldest_unsent_at is None else round(now - stats.oldest_unsent_at, 1)
    oldest_unconfirmed = stats.oldest_unconfirmed_at
    unconfirmed_age = None if oldest_unconfirmed is None else round(now - oldest_unconfirmed, 1)
    devices = {
        device.id: {
            "driver": device.driver,
            "last_reading_at": iso_utc(stats.devices.get(device.id)),
        }
        for device in config.devices
    }
    care_plan = _care_plan_status(config.gateway.state_dir)
    if args.json:
        doc = {
            "gateway": config.gateway.id,
            "store": str(path),
            "unsent": stats.unsent,
            "oldest_unsent_age_s": oldest_age,
            "last_delivery_at": iso_utc(stats.last_delivery_at),
            "unconfirmed": stats.unconfirmed,
            "oldest_unconfirmed_age_s": unconfirmed_age,
            "last_confirmation_at": iso_utc(stats.last_confirmation_at),
            "dropped": stats.dropped,
            "stored": stats.total,
            "devices": devices,
            "care_plan": care_plan,
        }
        print(json.dumps(doc, indent=2))
        return EX_OK
    print(f"gateway        {config.gateway.id}")
    print(f"store          {path} ({stats.total} readings)")
    print(f"unsent         {stats.unsent}")
    print(f"oldest unsent  {'-' if oldest_age is None else f'{oldest_age:.0f} s ago'}")
    print(f"last delivery  {iso_utc(stats.last_delivery_at) or 'never'}")
    if config.mqtt.confirm or stats.unconfirmed or stats.last_confirmation_at is not None:
        # Issue 9: published but not yet confirmed by the backend.
        print(f"unconfirmed    {stats.unconfirmed}")
        age = "-" if unconfirmed_age is None else f"{unconfirmed_age:.0f} s ago"
        print(f"oldest unconf. {age}")
        print(f"last confirmed {iso_utc(stats.last_confirmation_at) or 'never'}")
    if stats.dropped:
        print(f"DROPPED        {stats.dropped} readings (store bound reached)")
    for device_id, info in devices.items():
        last = info["last_reading_at"] or "never"
        print(f"device {device_id:<12} {info['driver']:<24} last reading {last}")
    _print_care_plan(care_plan)
    return EX_OK


def _care_plan_status(state_dir: Path) -> dict[str, Any] | None:
    """The care plan in force and its windows, from the state directory (issue 10)."""
    from gateway.careplan import CarePlanService
    from gateway.clock import SystemClock

    plans = CarePlanService(state_dir, now=SystemClock().now)
    plans.load()  # reads only
    return plans.status()


def _print_care_plan(block: dict[str, Any] | None) -> None:
    if block is None:
        print("care plan      none")
        return
    version = "" if block["version"] is None else f"version {block['version']}, "
    print(
        f"care plan      {version}{block['hash']} ({block['windows']} windows,"
        f" {block['thresholds']} thresholds)"
    )
    if block["problem"]:
        print(f"CARE PLAN      {block['problem']}")
    if block["due"]:
        print(f"due now        {', '.join(block['due'])}")
    upcoming = block["next_window"]
    if upcoming is not None:
        print(f"next window    {upcoming['kind']} {upcoming['start']} - {upcoming['end']}")
    print(f"missed         {len(block['missed'])}")
    for window in block["missed"]:
        print(f"  missed       {window['kind']} {window['start']} - {window['end']}")
    if block["quiet"]:
        print("quiet hours    now")


# -- listen --------------------------------------------------------------------------


def cmd_listen(args: argparse.Namespace) -> int:
    from gateway.listen import ListenOptions, listen

    options = ListenOptions(
        host=args.host,
        port=args.port,
        prefix=args.prefix,
        as_json=args.json,
        count=args.count,
        timeout_s=args.timeout,
        session=args.session,
    )
    if args.config is not None:
        config = _config_or_exit(args.config, DriverRegistry.from_entry_points())
        m = config.mqtt
        options.host, options.port, options.prefix = m.host, m.port, m.topic_prefix
        options.ca_file = str(m.ca_file) if m.ca_file else None
        options.cert_file = str(m.cert_file) if m.cert_file else None
        options.key_file = str(m.key_file) if m.key_file else None
        options.username = m.username
        if m.password_file is not None:
            options.password = m.password_file.read_text("utf-8").strip()
    return listen(options)


# -- schema --------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    if args.which == "config":
        schema = config_model(DriverRegistry.from_entry_points()).model_json_schema()
    else:
        schema = load_schema(f"{args.which}-1")
    print(json.dumps(schema, indent=2))
    return EX_OK


# -- panel-test ----------------------------------------------------------------------


def cmd_panel_test(args: argparse.Namespace) -> int:
    from gateway.panel import NoneBackend, create_backend
    from gateway.panel.selftest import panel_test

    config = _config_or_exit(args.config, DriverRegistry.from_entry_points())
    try:
        backend = create_backend(config.panel)
    except GatewayError as exc:
        print(f"homehub: {exc}", file=sys.stderr)
        return EX_FAIL
    if isinstance(backend, NoneBackend):
        print(
            "homehub: no panel to test ([panel] backend is none, or no GPIO here)",
            file=sys.stderr,
        )
        return EX_FAIL
    try:
        return asyncio.run(
            panel_test(
                config.panel, backend, sys.stdout, show_s=args.seconds, timeout_s=args.timeout
            )
        )
    finally:
        backend.close()


# -- demo ----------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.sim.demo import run_demo

    return run_demo(args.config, seconds=args.seconds, ble=args.ble)


# -- scan (Bluetooth LE) --------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    from gateway.config import BleSection
    from gateway.drivers.ble.runtime import BleRuntime
    from gateway.drivers.ble.scan import report, scan

    if args.transport:
        section = BleSection(stack="bumble", transport=args.transport)
    else:
        section = _config_or_exit(args.config, DriverRegistry.from_entry_points()).ble
    print(report(asyncio.run(scan(BleRuntime(section), args.seconds))))
    return EX_OK


# -- provision -----------------------------------------------------------------------


def _configured_id(path: Path) -> str | None:
    """[gateway] id from the raw file: the config may name a key_file not made yet."""
    import tomllib

    try:
        gateway = tomllib.loads(path.read_text("utf-8")).get("gateway", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = gateway.get("id") if isinstance(gateway, dict) else None
    return value if isinstance(value, str) else None


def cmd_provision(args: argparse.Namespace) -> int:
    from gateway.identity import IdentityError, provision, service_owner

    gateway_id = args.id or _configured_id(args.config)
    if gateway_id is None:
        print(
            f"homehub provision: give --id, or a config with [gateway] id ({args.config})",
            file=sys.stderr,
        )
        return EX_USAGE
    key = args.key or args.dir / f"{gateway_id}.key"
    csr = args.csr or key.with_suffix(".csr")
    try:
        made = provision(
            gateway_id, key, csr, new_key=args.new_key, owner=service_owner(args.owner)
        )
    except (IdentityError, OSError, ValueError) as exc:
        print(f"homehub provision: {exc}", file=sys.stderr)
        return EX_FAIL
    what = "made a new key" if made.new_key else "kept the existing key"
    print(
        f"homehub provision: {what} {made.key_path} (EC P-256, mode 0600; it never leaves "
        f"this hub)\nhomehub provision: certificate request for CN={gateway_id} in "
        f"{made.csr_path}; have it signed by the care organisation's CA, put the "
        "certificate in [mqtt] cert_file and this key in key_file (docs/INSTALL.md)",
        file=sys.stderr,
    )
    print(made.csr_pem, end="")
    return EX_OK


# -- simulate ------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.sim.simulate import simulate

    if args.serial is None and args.ble is None:
        print(
            "homehub simulate: nothing to simulate; give --serial DIR and/or --ble TRANSPORT",
            file=sys.stderr,
        )
        return EX_USAGE
    asyncio.run(
        simulate(
            serial_dir=None if args.serial is None else args.serial.absolute(),
            ble=args.ble,
            ble_interval_s=args.interval,
            seconds=args.seconds,
        )
    )
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homehub", description="Home hub for digital home follow-up."
    )
    parser.add_argument("--version", action="version", version=f"homehub {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the hub")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file; exit 78 if invalid")
    p.add_argument("path", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("status", help="what the store holds (safe while the hub runs)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("listen", help="reference backend: print readings from the broker")
    p.add_argument("--config", type=Path, help="take broker, prefix and TLS from this config")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="homehub")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, default=0, help="exit after N unique readings")
    p.add_argument("--timeout", type=float, default=0.0, help="exit 1 after S seconds")
    p.add_argument("--session", help="persistent session with this client id")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("schema", help="print a JSON Schema")
    p.add_argument(
        "which", choices=["config", "reading", "status", "confirm", "command", "response"]
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("scan", help="list nearby BLE devices with a [[devices]] table each")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="for its [ble]")
    p.add_argument("--transport", help="scan with Bumble on this HCI transport instead")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to listen")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("panel-test", help="show every light pattern, then check the button")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    p.add_argument("--seconds", type=float, default=5.0, help="how long to show each pattern")
    p.add_argument("--timeout", type=float, default=60.0, help="how long to wait for each press")
    p.set_defaults(func=cmd_panel_test)

    p = sub.add_parser("demo", help="private broker + simulated devices + listener")
    p.add_argument("--config", type=Path, help="default: the packaged demo config")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after S seconds (0 = Ctrl-C)")
    p.add_argument("--ble", action="store_true", help="add virtual BLE devices (Bumble stack)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "provision", help="make the hub's key on this device and print a certificate request"
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="for [gateway] id")
    p.add_argument("--id", help="gateway id for the request's CN (default: the config's)")
    p.add_argument("--dir", type=Path, default=Path("/etc/homehub"), help="where ID.key goes")
    p.add_argument("--key", type=Path, help="the key file (default: DIR/ID.key)")
    p.add_argument("--csr", type=Path, help="the request file (default: the key's, .csr)")
    p.add_argument("--new-key", action="store_true", help="replace an existing key (kept .old)")
    p.add_argument("--owner", default="homehub", help="run as root: give the key to this user")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("simulate", help="virtual medical devices, until Ctrl-C")
    p.add_argument(
        "--serial", type=Path, metavar="DIR", help="serial devices: one pty each, linked in DIR"
    )
    p.add_argument(
        "--ble", metavar="TRANSPORT", help="BLE devices on a Bumble transport, tcp-server:HOST:PORT"
    )
    p.add_argument("--interval", type=float, default=60.0, help="BLE: seconds between measurements")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after S seconds (0 = Ctrl-C)")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Issue 14: before anything is created (store, WAL/SHM, bonds, keys): private files.
    restrict_umask()
    setup_logging(args.log_level)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
