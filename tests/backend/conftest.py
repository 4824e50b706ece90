"""Backend fixtures: one private PostgreSQL per test session, a fresh database per test.

The cluster is Debian's real postgresql (homehub_backend.sandbox): initdb once per session
(~3 s), then each test gets its own database copied from a migrated template (~0.1 s).
The broker is the real mosquitto from tests/conftest.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from homehub_backend import db
from homehub_backend.config import BackendConfig, DatabaseSection
from homehub_backend.sandbox import PostgresSandbox

from tests.backend.support import write_backend_config

_TEMPLATE = "homehub_template"
_names = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresSandbox]:
    sandbox = PostgresSandbox(database=_TEMPLATE)
    sandbox.start(timeout_s=60)
    try:
        with psycopg.connect(sandbox.dsn) as conn:
            db.migrate(conn)
        yield sandbox
    finally:
        sandbox.cleanup()


@pytest.fixture
def database(pg: PostgresSandbox) -> Iterator[str]:
    """The DSN of a fresh, migrated database of its own."""
    name = f"t{next(_names)}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE}"')
    yield pg.dsn.replace(f"dbname={_TEMPLATE}", f"dbname={name}")
    if pg.process is not None and pg.process.poll() is None:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_section(database: str) -> DatabaseSection:
    return DatabaseSection(dsn=database)


@pytest.fixture
def backend_config(tmp_path: Path, database: str) -> Callable[..., tuple[Path, BackendConfig]]:
    counter = itertools.count()

    def make(port: int, **sections: dict[str, object]) -> tuple[Path, BackendConfig]:
        path = tmp_path / f"backend{next(counter)}.toml"
        return write_backend_config(path, port=port, dsn=database, **sections)

    return make
