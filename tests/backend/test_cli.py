"""The `homehub-backend` command: config errors (exit 78), migrate, the schema check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from homehub_backend import db
from homehub_backend.cli import main
from homehub_backend.config import ConfigError, load_config

from tests.backend.support import write_backend_config

EXAMPLE = Path(__file__).parents[2] / "backend" / "config" / "example.toml"


def cli(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homehub_backend", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_the_example_config_is_valid_and_lists_every_option() -> None:
    config = load_config(EXAMPLE)
    assert config.ingest.share_group == "homehub-backend"
    text = EXAMPLE.read_text()
    for section_name, section in config:
        assert f"[{section_name}]" in text
        for key in type(section).model_fields:
            assert f"{key} =" in text, f"{section_name}.{key} is not in example.toml"


def test_every_problem_is_reported_with_its_field_and_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[broker]\nport = "1883"\nprot = 1\ncert_file = "/nonexistent.pem"\n'
        "reconnect_min_s = 9.0\nreconnect_max_s = 1.0\n"
        '[ingest]\nshare_group = "a/b"\nbatch_max = 0\n'
    )
    result = cli("check-config", "--config", str(bad))
    assert result.returncode == 78
    err = result.stderr
    for needle in (
        'broker.port: Input should be a valid integer, got "1883"',
        "broker.prot: unknown key",
        "broker.cert_file: file not found",
        "ingest.share_group: String should match pattern",
        "ingest.batch_max: Input should be greater than or equal to 1",
        "database: required, but missing",
    ):
        assert needle in err, (needle, err)
    with pytest.raises(ConfigError) as caught:
        write_backend_config(
            tmp_path / "x.toml",
            port=1883,
            dsn="host=x",
            broker={"reconnect_min_s": 9.0, "reconnect_max_s": 1.0},
        )
    assert caught.value.problems == [
        "broker.reconnect_min_s: must not exceed reconnect_max_s (1.0)"
    ]


def test_migrate_is_idempotent_and_ingest_refuses_an_unmigrated_database(
    tmp_path: Path, pg: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from homehub_backend.sandbox import PostgresSandbox

    assert isinstance(pg, PostgresSandbox)
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "empty_for_cli"')
    dsn = pg.dsn.replace(f"dbname={pg.database}", "dbname=empty_for_cli")
    path, _ = write_backend_config(tmp_path / "b.toml", port=1, dsn=dsn)
    try:
        # In-process (the same main() the command runs): subprocesses cost seconds each.
        assert main(["ingest", "--config", str(path)]) == 1
        assert "run 'homehub-backend migrate' first" in capsys.readouterr().err
        assert main(["migrate", "--config", str(path)]) == 0
        assert "schema at version 2 (0001_initial.sql, 0002_fhir.sql)" in capsys.readouterr().out
        assert main(["migrate", "--config", str(path)]) == 0
        assert "nothing to apply" in capsys.readouterr().out
        with psycopg.connect(dsn) as conn:
            assert db.schema_version(conn) == len(db.migrations()) == 2
            tables = {
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
        assert tables == {"schema_migrations", "readings", "rejected", "hubs"}
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "empty_for_cli" WITH (FORCE)')


def test_the_backend_imports_nothing_of_the_hub() -> None:
    # Every module of the package, as the command loads them; then what got imported.
    code = (
        "import sys, pkgutil, importlib, homehub_backend\n"
        "for m in pkgutil.iter_modules(homehub_backend.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('homehub_backend.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('gateway', 'bleak', 'bumble', 'gpiozero', 'serial', 'dbus_fast'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    pyproject = (Path(__file__).parents[2] / "backend" / "pyproject.toml").read_text()
    deps = pyproject.split("dependencies = [")[1].split("]")[0]
    assert '"homehub-contract' in deps and '"homehub>' not in deps and "bleak" not in deps
