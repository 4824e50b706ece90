"""The panel's gpiozero pin factory, chosen here rather than by gpiozero (issue 11).

Order: `GPIOZERO_PIN_FACTORY` when set (gpiozero's own names, e.g. "mock" in tests);
else **lgpio** (Raspberry Pi OS Bookworm's library: `/dev/gpiochip*` only, PWM in
software), then gpiozero's **native** factory (no PWM; it maps `/dev/gpiomem`, which
the systemd unit does not grant, so it serves only a `panel-test` run by hand without
lgpio). RPi.GPIO and pigpio are legacy on Bookworm and not tried: RPi.GPIO does not
support the Pi 5, pigpio needs its own root daemon with `/dev/mem`.

Two things stop lgpio under the hardened unit (systemd/homehub.service); both are
handled here:

- lgpio's C library, when its Python module is imported (the module opens its
  notification FIFO at import), chdir()s the whole process to `$LG_WD` (default: the
  working directory, `/` under systemd) and creates the FIFO `.lgd-nfyN` there
  (lgpio 0.2.2 src/lgUtil.c `lguGetWorkDir`, src/lgNotify.c). `/` is read-only there
  (ProtectSystem=strict), so the import failed. We point `LG_WD` at a directory of
  ours (the hub's state directory) and give the process its working directory back.
- gpiozero reads the board's revision from `/proc/device-tree/system/linux,revision`,
  else `/proc/cpuinfo` (gpiozero/pins/local.py `get_pi_revision`); `ProcSubset=pid`
  hides both, and the factory fails to construct. The same devicetree is at
  `/sys/firmware/devicetree/base` (what `/proc/device-tree` links to), which the unit
  leaves readable: our factories read the revision there first.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import struct
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

#: where the kernel exposes the devicetree; /proc/device-tree is a link to it
DEVICETREE = Path("/sys/firmware/devicetree/base")

#: gpiozero's factory classes by the name we report (panel-test, the log)
_NAMES = {
    "LGPIOFactory": "lgpio",
    "NativeFactory": "native",
    "MockFactory": "mock",
    "RPiGPIOFactory": "rpigpio",
    "PiGPIOFactory": "pigpio",
}


def factory_name(factory: Any) -> str:
    """ "lgpio", "native", "mock", ... for a gpiozero pin factory (or its class name)."""
    for cls in type(factory).__mro__:
        if cls.__name__ in _NAMES:
            return _NAMES[cls.__name__]
    return type(factory).__name__


def board_revision(devicetree: Path = DEVICETREE) -> int:
    """The Pi's revision code, read as gpiozero does but from sysfs first (see above)."""
    try:
        raw = (devicetree / "system" / "linux,revision").read_bytes()
    except FileNotFoundError:
        from gpiozero.pins.local import get_pi_revision  # /proc, where it is visible

        try:
            return int(get_pi_revision())
        except OSError as exc:
            raise GatewayError(
                f"no Raspberry Pi revision in {devicetree}/system/linux,revision, "
                f"/proc/device-tree or /proc/cpuinfo ({exc})"
            ) from exc
    text = f"{struct.unpack('>L', raw[:4])[0]:x}"
    # gpiozero's rule: a leading "100" flags an over-volted board; the code is the rest.
    return int(text[-4:] if text.startswith("100") else text, 16)


def board_model(devicetree: Path = DEVICETREE) -> str | None:
    """The board's model line ("Raspberry Pi Zero 2 W Rev 1.0"), for the log."""
    try:
        return (devicetree / "model").read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return None


def _work_dir_for_lgpio(work_dir: Path | None) -> Path:
    if work_dir is None:
        # panel-test and other short runs: a private directory, removed at exit, so a
        # hand-run test never leaves a root-owned FIFO in the service's state directory.
        made = Path(tempfile.mkdtemp(prefix="homehub-lgpio-"))
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        return made
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return work_dir.resolve()


def import_lgpio(work_dir: Path | None) -> Any:
    """Import lgpio with its work directory (`LG_WD`) in `work_dir` and the process's
    working directory unchanged. lgpio fixes its directory at its first import in a
    process; later calls return the module as it is."""
    if "lgpio" in sys.modules:
        return sys.modules["lgpio"]
    directory = _work_dir_for_lgpio(work_dir)
    os.environ["LG_WD"] = str(directory)
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the working directory was removed
        cwd = None
    try:
        import lgpio  # chdir()s to LG_WD and creates .lgd-nfy0 there
    finally:
        os.chdir(cwd or "/")
    log.debug("panel: lgpio %s, notification FIFO in %s", lgpio.LGPIO_PY_VERSION, directory)
    return lgpio


def _lgpio_factory(work_dir: Path | None, devicetree: Path) -> Any:
    import_lgpio(work_dir)
    from gpiozero.pins.lgpio import LGPIOFactory

    class HubLGPIOFactory(LGPIOFactory):  # type: ignore[misc]
        def _get_revision(self) -> int:
            return board_revision(devicetree)

    return HubLGPIOFactory()


def _native_factory(work_dir: Path | None, devicetree: Path) -> Any:
    from gpiozero.pins.native import NativeFactory

    class HubNativeFactory(NativeFactory):  # type: ignore[misc]
        def _get_revision(self) -> int:
            return board_revision(devicetree)

    return HubNativeFactory()


#: what each candidate opens, as systemd's DeviceAllow= names it; the unit grants lgpio's
#: and nothing else (tests/test_systemd.py)
DEVICES: dict[str, tuple[str, ...]] = {
    "lgpio": ("char-gpiochip",),  # /dev/gpiochip*, character devices of class gpiochip
    "native": ("/dev/gpiomem", "/dev/mem"),
}

#: tried in this order; each takes (work_dir, devicetree)
CANDIDATES: tuple[tuple[str, Callable[[Path | None, Path], Any]], ...] = (
    ("lgpio", _lgpio_factory),
    ("native", _native_factory),
)


def choose_pin_factory(work_dir: Path | None = None, *, devicetree: Path = DEVICETREE) -> Any:
    """The first pin factory that works here (see the module's docstring); lgpio's
    notification FIFO goes in `work_dir` (None: a private temporary directory).
    Never installed as gpiozero's process-global `Device.pin_factory`.
    Raises GatewayError naming why each candidate failed."""
    if os.environ.get("GPIOZERO_PIN_FACTORY"):
        from gpiozero import Device

        try:
            return Device._default_pin_factory()  # gpiozero's own lookup by name
        except Exception as exc:
            raise GatewayError(
                f"panel: GPIOZERO_PIN_FACTORY={os.environ['GPIOZERO_PIN_FACTORY']!r} "
                f"does not work here: {type(exc).__name__}: {exc}"
            ) from exc
    failures: list[str] = []
    for name, make in CANDIDATES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gpiozero warns on what we report anyway
                factory = make(work_dir, devicetree)
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if failures:
            log.info("panel: pin factory %s (%s)", name, "; ".join(failures))
        return factory
    raise GatewayError(
        f"panel: no GPIO pin factory works here ({'; '.join(failures)}); "
        'on hardware without GPIO set [panel] backend = "none"'
    )
