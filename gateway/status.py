"""The hub's status: what `homehub.status/1` reports and `homehub status` prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from homehub_contract import STATUS_SCHEMA

from gateway import __version__
from gateway.reading import utc_iso_ms
from gateway.store import StoreStats

DeviceState = Literal["starting", "ok", "failing", "stopped"]


def iso_utc(ts: float | None) -> str | None:
    """A Unix time as `received_at` is written (UTC, milliseconds, Z), or None."""
    return None if ts is None else utc_iso_ms(datetime.fromtimestamp(ts, UTC))


def _recovery(stats: StoreStats) -> dict[str, Any] | None:
    """The last salvage of a damaged store file (kept in the store across restarts)."""
    r = stats.recovery
    if r is None:
        return None
    return {
        "at": iso_utc(r.at),
        "salvaged": r.salvaged,
        "unsent": r.unsent,
        "unreadable": r.unreadable,
        "quarantined": r.quarantined,
    }


@dataclass(slots=True)
class DeviceStatus:
    driver: str
    state: DeviceState = "starting"
    restarts: int = 0
    last_error: str | None = None
    #: events the driver counted (DriverContext.count), e.g. skipped_other_user
    counts: dict[str, int] = field(default_factory=dict)
    #: a BLE device with `pair = true` and no bond waits for the pairing window (issue 12)
    needs_pairing: bool = False


class BleHealth(Protocol):
    """The BLE runtime's adapter health (gateway.drivers.ble.recovery.AdapterHealth)."""

    @property
    def failing(self) -> bool: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def steps(self) -> dict[str, int]: ...


@dataclass(slots=True)
class StatusTracker:
    """Live state the daemon's parts update; combined with store stats on demand."""

    gateway_id: str
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    devices: dict[str, DeviceStatus] = field(default_factory=dict)
    uplink_connected: bool = False
    disk_full: bool = False
    store_full: bool = False
    clock_wrong: bool = False
    #: issue 13: the clock is synchronised (None: cannot tell), and since when (wall time)
    clock_synced: bool | None = None
    clock_synced_since: float | None = None
    #: the client certificate's validity (issue 14); None without a client certificate
    tls: dict[str, Any] | None = None
    #: set once the BLE runtime took a recovery step or its adapter changed (issue 12)
    ble: BleHealth | None = None
    #: what the panel shows now (PanelShows; issue 10), None before it showed anything
    panel_state: str | None = None
    #: the care plan in force (issue 10; CarePlanService.status()); None: no plan
    care_plan: dict[str, Any] | None = None

    def document(
        self, stats: StoreStats, *, now: float | None = None, held_back: int = 0
    ) -> dict[str, Any]:
        """The `homehub.status/1` document (online)."""
        now = time.time() if now is None else now
        oldest = stats.oldest_unsent_at
        unconfirmed = stats.oldest_unconfirmed_at
        return {
            "schema": STATUS_SCHEMA,
            "gateway": self.gateway_id,
            "state": "online",
            "version": __version__,
            "published_at": iso_utc(now),
            "started_at": iso_utc(self.started_at),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "unsent": stats.unsent,
            "oldest_unsent_age_s": None if oldest is None else round(max(0.0, now - oldest), 1),
            "last_delivery_at": iso_utc(stats.last_delivery_at),
            # Issue 9: published (PUBACK) but not yet confirmed by the backend.
            "unconfirmed": stats.unconfirmed,
            "oldest_unconfirmed_age_s": (
                None if unconfirmed is None else round(max(0.0, now - unconfirmed), 1)
            ),
            "last_confirmation_at": iso_utc(stats.last_confirmation_at),
            "uplink": {"connected": self.uplink_connected, "held_back": held_back},
            "clock_ok": not self.clock_wrong,
            "clock": {"synced": self.clock_synced, "since": iso_utc(self.clock_synced_since)},
            "tls": self.tls,
            "store": {
                "dropped": stats.dropped,
                "full": self.store_full,
                "disk_full": self.disk_full,
                "recovered": _recovery(stats),
            },
            **({} if self.ble is None else {"ble": _ble(self.ble)}),
            "panel": {"state": self.panel_state},
            "care_plan": self.care_plan,
            "devices": {
                device_id: {
                    "driver": device.driver,
                    "state": device.state,
                    "last_reading_at": iso_utc(stats.devices.get(device_id)),
                    "restarts": device.restarts,
                    "last_error": device.last_error,
                    "counts": dict(sorted(device.counts.items())),
                    "needs_pairing": device.needs_pairing,
                }
                for device_id, device in sorted(self.devices.items())
            },
        }


def _ble(health: BleHealth) -> dict[str, Any]:
    return {
        "adapter": "failing" if health.failing else "ok",
        "last_error": health.last_error if health.failing else None,
        "recoveries": dict(sorted(health.steps.items())),
    }
