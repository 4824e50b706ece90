"""The pin factory choice (issue 11): lgpio first, its FIFO in the state directory, the
board's revision from sysfs (the unit's ProcSubset=pid hides /proc/cpuinfo).

lgpio is installed in the test venv (its x86_64 wheel): its import and gpiozero's own
LGPIOFactory run for real here. Only opening /dev/gpiochip0, which no CI machine has,
is replaced where a test needs a factory that opened.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gateway.errors import GatewayError
from gateway.panel import factory as factory_module
from gateway.panel.factory import (
    board_model,
    board_revision,
    choose_pin_factory,
    factory_name,
    import_lgpio,
)

REPO = Path(__file__).resolve().parent.parent
PI_ZERO_2_W = 0x902120


@pytest.fixture(autouse=True)
def _no_env_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)


def devicetree(root: Path, revision: int | None = PI_ZERO_2_W) -> Path:
    """A devicetree as /sys/firmware/devicetree/base shows it on a Pi."""
    (root / "system").mkdir(parents=True)
    (root / "model").write_bytes(b"Raspberry Pi Zero 2 W Rev 1.0\0")
    if revision is not None:
        (root / "system" / "linux,revision").write_bytes(revision.to_bytes(4, "big"))
    return root


def test_board_revision_and_model_come_from_sysfs(tmp_path: Path) -> None:
    tree = devicetree(tmp_path / "dt")
    assert board_revision(tree) == PI_ZERO_2_W
    assert board_model(tree) == "Raspberry Pi Zero 2 W Rev 1.0"
    # gpiozero's rule for over-volted old boards: "100" then the code.
    old = devicetree(tmp_path / "old", revision=0x01000002)
    assert board_revision(old) == 0x0002


def test_without_any_revision_it_fails_naming_where_it_looked(tmp_path: Path) -> None:
    # This machine's /proc/cpuinfo has no Revision line (x86), like a hidden one.
    tree = devicetree(tmp_path / "dt", revision=None)
    with pytest.raises(Exception, match=r"revision"):
        board_revision(tree)


def test_lgpio_import_puts_its_fifo_in_the_work_dir_and_gives_the_cwd_back(
    tmp_path: Path,
) -> None:
    """In a fresh interpreter: lgpio fixes its directory at its first import."""
    cwd, state = tmp_path / "cwd", tmp_path / "state"
    cwd.mkdir()
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from gateway.panel.factory import import_lgpio
        lgpio = import_lgpio(Path({str(state)!r}))
        print(os.getcwd())
        print(os.environ["LG_WD"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "LG_WD"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    printed_cwd, lg_wd = result.stdout.split()
    assert printed_cwd == str(cwd)  # lgpio chdir()ed to LG_WD; we came back
    assert lg_wd == str(state.resolve())
    assert stat.S_ISFIFO((state / ".lgd-nfy0").stat().st_mode)
    assert (state.stat().st_mode & 0o777) == 0o700
    assert list(cwd.iterdir()) == []  # nothing left where the process happened to be


def test_lgpio_chosen_when_importable_with_sysfs_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lgpio = import_lgpio(tmp_path / "state")
    opened: list[int] = []
    monkeypatch.setattr(lgpio, "gpiochip_open", lambda chip: opened.append(chip) or 5)
    monkeypatch.setattr(lgpio, "gpiochip_close", lambda handle: 0)
    from gpiozero.pins.lgpio import LGPIOFactory

    factory: Any = choose_pin_factory(tmp_path / "state", devicetree=devicetree(tmp_path / "dt"))
    try:
        assert isinstance(factory, LGPIOFactory)  # gpiozero's own class, not a stand-in
        assert factory_name(factory) == "lgpio"
        assert opened == [0] and factory.chip == 0
        assert factory.board_info.model == "Zero2W"  # its pin map comes from our revision
    finally:
        factory.close()


def test_without_a_gpiochip_every_candidate_is_named(tmp_path: Path) -> None:
    # lgpio for real: it imports, reads our revision, then cannot open /dev/gpiochip0.
    with pytest.raises(GatewayError) as info:
        choose_pin_factory(tmp_path / "state", devicetree=devicetree(tmp_path / "dt"))
    message = str(info.value)
    assert "lgpio: " in message and "native: " in message
    assert 'backend = "none"' in message


def test_lgpio_missing_falls_back_to_the_next_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lgpio(work_dir: Path | None, tree: Path) -> Any:
        raise ModuleNotFoundError("No module named 'lgpio'")

    monkeypatch.setattr(
        factory_module,
        "CANDIDATES",
        (("lgpio", no_lgpio), ("mock", lambda work_dir, tree: MockFactory())),
    )
    chosen = choose_pin_factory(tmp_path)
    assert factory_name(chosen) == "mock"


def test_gpiozero_pin_factory_env_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert factory_name(choose_pin_factory()) == "mock"
