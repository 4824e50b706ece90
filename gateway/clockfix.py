"""Hold and correct readings the hub stamped on an unsynchronised clock (issue 13, part 2).

A Pi boots with the time fake-hwclock saved at shutdown, hours or days old. A reading
the hub stamps before NTP synchronises (`measured_at_source: "hub"`,
`measured_at_quality: "unsynced"`) is stored with the monotonic moment of its stamp:
CLOCK_BOOTTIME (counts from boot, through suspend, never jumps) and the kernel's boot
id. It is held back from publishing. Once the clock is synchronised the time elapsed
since the stamp is known exactly, so

    measured_at = now_wall - (now_boottime - stamp_boottime)

and the payload says `measured_at_quality: "corrected"`. After a reboot the boottime
of the stamp means nothing (the boot id differs): the reading keeps its flag and its
original time, never a wrong correction. A reading still held `hold_s` after its stamp
(no sync came) goes out as it is, flagged.

The store keeps payloads encoded; a correction re-encodes the stored payload (one
UPDATE per held reading, once, at sync time), so every later resend and every renderer
(`[mqtt] payload`) sees the corrected reading.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from gateway.reading import Reading, utc_iso_ms
from gateway.store import ClockStamp, HeldRow
from gateway.uplink.payload import iso_with_offset

#: The kernel's random id of this boot (a new one at each boot).
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


class BootClock(Protocol):
    """The monotonic clock a stamp is taken on, and which boot it belongs to."""

    def boottime(self) -> float:
        """CLOCK_BOOTTIME in seconds."""
        ...

    def boot_id(self) -> str: ...


class SystemBootClock:
    """The kernel's CLOCK_BOOTTIME and boot id."""

    def __init__(self, path: Path = BOOT_ID_PATH) -> None:
        self._path = path
        self._boot_id: str | None = None

    def boottime(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def boot_id(self) -> str:
        if self._boot_id is None:  # fixed for the life of the process
            self._boot_id = self._path.read_text().strip()
        return self._boot_id


def needs_hold(reading: Reading) -> bool:
    """Only the hub's own stamp on a clock known to be unsynchronised is held: a
    device's clock is the device's (its offset is measured separately), and "unknown"
    (the hub cannot tell) would wait for a sync that it can never see."""
    return reading.measured_at_source == "hub" and reading.measured_at_quality == "unsynced"


def stamp_of(reading: Reading, received_at: datetime, boot: BootClock) -> ClockStamp:
    """The boottime at `reading.measured_at`: now, less the (wall) time since its stamp."""
    delay = max(0.0, (received_at - reading.measured_at).total_seconds())
    return ClockStamp(boot.boottime() - delay, boot.boot_id())


def corrected_payload(payload: bytes, measured_at: datetime) -> bytes:
    """The stored `homehub.reading/1` payload with its measured_at corrected.

    received_at (stamped by the same wrong clock when the reading was stored) moves by
    the same amount: the clock's jump.
    """
    doc = json.loads(payload)
    shift = measured_at - datetime.fromisoformat(doc["measured_at"])
    received_at = datetime.fromisoformat(doc["received_at"]) + shift
    doc["measured_at"] = iso_with_offset(measured_at)
    doc["received_at"] = utc_iso_ms(received_at)
    doc["measured_at_quality"] = "corrected"
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


@dataclass(slots=True)
class Releases:
    """What to do with the held readings now."""

    #: (seq, corrected payload or None: published as it is)
    items: list[tuple[int, bytes | None]]
    corrected: int = 0
    other_boot: int = 0  # stamped before a reboot: kept flagged
    expired: int = 0  # held `hold_s` without a sync: published flagged


def plan_releases(
    rows: Sequence[HeldRow],
    *,
    synced: bool,
    now: datetime,
    boot: BootClock,
    hold_s: float,
) -> Releases:
    """Which held readings go out now, and with which payload."""
    boottime, boot_id = boot.boottime(), boot.boot_id()
    plan = Releases([])
    for row in rows:
        stamp = row.stamp
        if stamp is None or stamp.boot_id != boot_id:
            plan.items.append((row.seq, None))
            plan.other_boot += 1
            continue
        elapsed = max(0.0, boottime - stamp.boottime)
        if synced:
            try:
                payload = corrected_payload(row.payload, now - timedelta(seconds=elapsed))
            except (ValueError, KeyError, TypeError):  # not ours to fix: out as it is
                plan.items.append((row.seq, None))
                continue
            plan.items.append((row.seq, payload))
            plan.corrected += 1
        elif elapsed >= hold_s:
            plan.items.append((row.seq, None))
            plan.expired += 1
    return plan
