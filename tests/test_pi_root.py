"""scripts/pi-root-check.sh and `make pi-check` (issue 11): the cheap checks only.

The check itself builds a Debian root and runs pip under qemu (minutes): it is run by
hand before a release (`make pi-check`, docs/INSTALL.md), never by the suite. Here: the
script parses, documents itself, refuses bad arguments before touching anything, and
the Makefile target runs it for both architectures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pi-root-check.sh"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_names_both_architectures_and_the_cache() -> None:
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: scripts/pi-root-check.sh")
    for needed in ("arm64", "armhf", "PI_ROOT_CACHE", "PI_CHECK_RUN_S", "--tree", "--keep"):
        assert needed in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "ARCH missing"),
        (("x86_64",), {}, "ARCH must be arm64 or armhf, not 'x86_64'"),
        (("arm64", "armhf"), {}, "one ARCH only"),
        (("--frobnicate", "arm64"), {}, "unknown option --frobnicate"),
        (("--cache",), {}, "--cache needs a directory"),
        (("arm64",), {"PI_CHECK_RUN_S": "1m"}, "PI_CHECK_RUN_S must be a whole number"),
        (("arm64",), {"PI_CHECK_RUN_S": "5"}, "PI_CHECK_RUN_S must be at least 20"),
    ],
)
def test_bad_arguments_exit_2_before_touching_anything(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    cache = tmp_path / "cache"
    result = run_script(*args, env={"PI_ROOT_CACHE": str(cache), **env})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not cache.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_it_refuses_to_run_without_root(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) missing")
    cache = tmp_path / "cache"
    # On standard input: the unprivileged user may not be able to read the work tree.
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s", "armhf"],
        input=SCRIPT.read_text("utf-8"),
        env={**os.environ, "PI_ROOT_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "run as root" in result.stderr
    assert not cache.exists()


def test_make_pi_check_runs_both_architectures_and_is_not_part_of_make_test() -> None:
    dry = subprocess.run(
        ["make", "-n", "pi-check", "PI_ROOT_CACHE=/tmp/some-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dry.returncode == 0, dry.stderr
    assert "for arch in arm64 armhf" in dry.stdout
    assert 'PI_ROOT_CACHE="/tmp/some-cache" bash scripts/pi-root-check.sh' in dry.stdout
    test_recipe = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert "pi-root-check" not in test_recipe.stdout


def test_install_md_has_the_measured_section() -> None:
    text = (REPO / "docs" / "INSTALL.md").read_text("utf-8")
    assert "## Emulated Pi root (make pi-check)" in text
    section = text.split("## Emulated Pi root (make pi-check)", 1)[1]
    for arch in ("arm64", "armhf"):
        assert f"PASS {arch}" in section or f"FAIL {arch}" in section
