"""Shared pieces of the benchmarks: results, work directories, readings, brokers, configs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from homehub_contract import reading_topic

from gateway.config import HubConfig, validate_config
from gateway.drivers.registry import DriverRegistry
from gateway.drivers.simulated import simulated_values
from gateway.reading import Kind, Reading, reading_id
from gateway.sim.broker import MosquittoBroker
from gateway.uplink.payload import encode_reading

GATEWAY_ID = "bench-hub"
TOPIC_PREFIX = "homehub"
# The demo's five device classes; readings cycle through them so topics and payload
# sizes are those of a real mixed home (blood pressure is the largest payload).
DEVICES: tuple[tuple[str, Kind], ...] = (
    ("bp-1", Kind.BLOOD_PRESSURE),
    ("oxi-1", Kind.PULSE_OXIMETER),
    ("scale-1", Kind.WEIGHT),
    ("glucose-1", Kind.GLUCOSE),
    ("thermo-1", Kind.TEMPERATURE),
)
# Durable files go on a real disk: tmpfs would make fsync free and the numbers lie.
SCRATCH_PARENTS = (Path("/var/tmp"), Path(__file__).resolve().parent / "results")

Better = Literal["higher", "lower"]


@dataclass
class Result:
    """One benchmark's headline: a measured value, its same-run baseline and the target."""

    name: str
    metric: str
    unit: str
    value: float
    baseline: float | None  # None: nothing to compare with (information only)
    baseline_label: str
    better: Better
    target: str
    passed: bool | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """value / baseline (for "higher is better" metrics 1.0 means as fast as the baseline)."""
        if not self.baseline:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        return doc


# -- files ---------------------------------------------------------------------------------


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts), e.g. "ext4"."""
    best, fstype = "", "unknown"
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, fstype = mount, parts[2]
    return fstype


def scratch_parent() -> Path:
    """A directory on a real disk (not tmpfs/ramfs) for store files."""
    for parent in SCRATCH_PARENTS:
        with contextlib.suppress(OSError):
            parent.mkdir(parents=True, exist_ok=True)
            if os.access(parent, os.W_OK) and filesystem_type(parent) not in ("tmpfs", "ramfs"):
                return parent
    raise RuntimeError(f"no writable non-tmpfs directory among {SCRATCH_PARENTS}")


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"homehub-bench-{prefix}-", dir=scratch_parent()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


# -- readings ------------------------------------------------------------------------------


def make_readings(
    count: int,
    *,
    seed: int = 1,
    tag: str = "r",
    devices: Sequence[tuple[str, Kind]] = DEVICES,
    driver: str = "simulated",
) -> list[Reading]:
    """`count` plausible readings cycling through `devices`, each with its own id."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 22, 9, 0, tzinfo=UTC).astimezone()
    readings = []
    for i in range(count):
        device_id, kind = devices[i % len(devices)]
        values, status = simulated_values(kind, rng)
        readings.append(
            Reading(
                device_id=device_id,
                driver=driver,
                kind=kind,
                measured_at=start + timedelta(seconds=i),
                measured_at_source="device",
                values=values,
                status=status,
                source_key=f"{tag}#{i}",
            )
        )
    return readings


@dataclass(frozen=True, slots=True)
class Encoded:
    """A reading as the store keeps it and the uplink publishes it."""

    id: str
    device_id: str
    topic: str
    payload: bytes
    received_at: datetime


def encode_all(readings: Sequence[Reading]) -> list[Encoded]:
    received_at = datetime.now(UTC).astimezone()
    out = []
    for reading in readings:
        rid = reading_id(GATEWAY_ID, reading)
        payload = encode_reading(
            reading, reading_id=rid, gateway_id=GATEWAY_ID, received_at=received_at
        )
        topic = reading_topic(TOPIC_PREFIX, GATEWAY_ID, reading.device_id)
        out.append(Encoded(rid, reading.device_id, topic, payload, received_at))
    return out


# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- broker and config ---------------------------------------------------------------------


@contextlib.contextmanager
def private_broker(workdir: Path) -> Iterator[MosquittoBroker]:
    """Debian's real mosquitto on a free loopback port, quiet (no per-client log lines).

    With a subscriber on '#' (in this process): without one every reading gets PUBACK
    0x10, which the hub does not count as delivered (issue 9).
    """
    broker = MosquittoBroker(workdir / "broker", subscriber=True)
    with broker:
        yield broker


def hub_config(
    state_dir: Path,
    port: int,
    *,
    registry: DriverRegistry | None = None,
    devices: Sequence[dict[str, Any]] = (),
    mqtt: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
) -> HubConfig:
    data: dict[str, Any] = {
        "gateway": {"id": GATEWAY_ID, "state_dir": str(state_dir)},
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "topic_prefix": TOPIC_PREFIX,
            "client_id": f"bench-hub-{os.getpid()}",
            # This VM's clock is not NTP-synchronised: with the default hold (issue 13)
            # hub-stamped readings would wait 300 s. A benchmark measures the data path.
            "unsynced_hold_s": 0.0,
            **(mqtt or {}),
        },
        "store": {"synchronous": "full", **(store or {})},
        "devices": list(devices),
    }
    if "panel" in HubConfig.model_fields:
        # No lights to drive in a benchmark (and no "no GPIO found" warning).
        data["panel"] = {"backend": "none"}
    return validate_config(data, registry or DriverRegistry.from_entry_points())


def toml_text(data: dict[str, Any]) -> str:
    """TOML for a config-shaped dict: tables of scalars and arrays of such tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        if isinstance(v, int | float):
            return repr(v)
        raise TypeError(f"cannot write {v!r} as a TOML value")

    lines: list[str] = []
    for key, section in data.items():
        tables = section if isinstance(section, list) else [section]
        header = f"[[{key}]]" if isinstance(section, list) else f"[{key}]"
        for table in tables:
            lines.append(header)
            lines.extend(f"{k} = {value(v)}" for k, v in table.items())
            lines.append("")
    return "\n".join(lines)
