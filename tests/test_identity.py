"""The hub's files and secrets (issue 14 part 4): umask, secret-file warnings."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.drivers.registry import DriverRegistry
from gateway.identity import restrict_umask, secret_file_problem
from tests.helpers import LineReader, sim_device, wait_until, write_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_restored() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def current_umask() -> int:
    value = os.umask(0)
    os.umask(value)
    return value


def test_outside_systemd_the_umask_becomes_private(umask_restored: None) -> None:
    assert restrict_umask({}) == 0o022
    assert current_umask() == 0o077


def test_a_stricter_umask_stays(umask_restored: None) -> None:
    os.umask(0o277)
    restrict_umask({})
    assert current_umask() == 0o277


def test_under_systemd_the_units_umask_is_kept(umask_restored: None) -> None:
    assert restrict_umask({"INVOCATION_ID": "0123abcd"}) is None
    assert current_umask() == 0o022


def test_the_hub_creates_its_store_private_even_with_an_open_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=state,
        devices=[sim_device("bp-1", "blood_pressure", interval_s=0.0, count=2)],
        # nobody listens there: the readings stay in the store
        mqtt={"port": 9, "reconnect_min_s": 5.0},
    )
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
        umask=0o022,
    )
    lines = LineReader(process)
    try:
        lines.wait_for("started", 20)
        store = state / "readings.sqlite3"

        def stored() -> bool:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                return bool(db.execute("SELECT count(*) FROM readings").fetchone()[0] == 2)

        wait_until(stored, 15, "two stored readings")
        files = [store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")]
        for path in files:
            assert path.exists(), path
            assert mode(path) & 0o077 == 0, f"{path.name} is {mode(path):04o}"
        assert mode(state) & 0o077 == 0, f"state_dir is {mode(state):04o}"
    finally:
        process.terminate()
        process.wait(10)


# -- secret files -----------------------------------------------------------------------


def secret(tmp_path: Path, name: str, file_mode: int) -> Path:
    path = tmp_path / name
    path.write_text("not a real secret\n")
    path.chmod(file_mode)
    return path


def config_with_secrets(tmp_path: Path, key_mode: int, password_mode: int) -> Path:
    return write_config(
        tmp_path / "hub.toml",
        broker=None,
        state_dir=tmp_path / "state",
        mqtt={
            "username": "hub",
            "password_file": secret(tmp_path, "password", password_mode),
            "ca_file": secret(tmp_path, "ca.crt", 0o644),
            "cert_file": secret(tmp_path, "hub.crt", 0o644),
            "key_file": secret(tmp_path, "hub.key", key_mode),
        },
    )


@pytest.mark.parametrize("file_mode", [0o644, 0o604, 0o666, 0o601])
def test_a_world_accessible_secret_is_named(tmp_path: Path, file_mode: int) -> None:
    problem = secret_file_problem(secret(tmp_path, "hub.key", file_mode))
    assert problem is not None
    assert str(tmp_path / "hub.key") in problem
    assert f"{file_mode:04o}" in problem
    assert "every user" in problem


@pytest.mark.parametrize("file_mode", [0o600, 0o400, 0o640])
def test_private_or_own_group_secrets_are_fine(tmp_path: Path, file_mode: int) -> None:
    # The file's group is the creator's (ours): 0640 is the documented root:homehub setup.
    assert secret_file_problem(secret(tmp_path, "hub.key", file_mode)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another group needs root")
def test_a_secret_readable_by_a_foreign_group_is_named(tmp_path: Path) -> None:
    path = secret(tmp_path, "hub.key", 0o640)
    os.chown(path, -1, 1 if os.getegid() != 1 else 2)
    problem = secret_file_problem(path)
    assert problem is not None
    assert "accessible to group" in problem
    assert str(path) in problem


def test_loading_a_config_warns_about_each_unprotected_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_with_secrets(tmp_path, key_mode=0o644, password_mode=0o604)
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        load_config(config, DriverRegistry.from_entry_points())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any("mqtt.key_file" in w and str(tmp_path / "hub.key") in w for w in warnings)
    assert any("mqtt.password_file" in w and str(tmp_path / "password") in w for w in warnings)
    # the secret itself is never in a message
    assert not any("not a real secret" in w for w in warnings)


def test_protected_secrets_load_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_with_secrets(tmp_path, key_mode=0o600, password_mode=0o640)
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        load_config(config, DriverRegistry.from_entry_points())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_check_config_shows_the_warning_and_still_passes(tmp_path: Path) -> None:
    config = config_with_secrets(tmp_path, key_mode=0o644, password_mode=0o600)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "WARNING" in result.stderr
    assert f"mqtt.key_file: {tmp_path / 'hub.key'}" in result.stderr
