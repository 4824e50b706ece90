"""`homehub-backend fleet`: the care organisation's first question every morning.

Which hubs are offline and since when, which have a backlog that grows, which have failing
devices; from the `hubs` table the ingest workers keep from each hub's retained status.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg


@dataclass(frozen=True)
class HubRow:
    gateway: str
    online: bool
    offline_since: datetime | None
    last_seen: datetime
    version: str
    unsent: int | None
    previous_unsent: int | None
    oldest_unsent_age_s: float | None
    failing_devices: list[str]
    backlog: bool  # oldest unsent older than [fleet] backlog_age_s
    growing: bool  # more unsent than in the status before

    @property
    def attention(self) -> bool:
        return not self.online or self.backlog or bool(self.failing_devices)


def fleet(conn: psycopg.Connection[Any], backlog_age_s: float) -> list[HubRow]:
    """Every hub: those that need attention first (offline longest first), then the rest."""
    rows = conn.execute(
        "SELECT gateway, online, offline_since, last_seen, version, unsent, previous_unsent,"
        " oldest_unsent_age_s, failing_devices FROM hubs ORDER BY gateway"
    ).fetchall()
    hubs = [
        HubRow(
            gateway=r[0],
            online=r[1],
            offline_since=r[2],
            last_seen=r[3],
            version=r[4],
            unsent=r[5],
            previous_unsent=r[6],
            oldest_unsent_age_s=r[7],
            failing_devices=list(r[8]),
            backlog=bool(r[5]) and (r[7] or 0) >= backlog_age_s,
            growing=r[5] is not None and r[6] is not None and r[5] > r[6],
        )
        for r in rows
    ]
    hubs.sort(
        key=lambda h: (
            not h.attention,
            h.online,
            h.offline_since.timestamp() if h.offline_since else 0.0,
            h.gateway,
        )
    )
    return hubs


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def format_table(hubs: list[HubRow], now: datetime) -> str:
    header = ("HUB", "STATE", "SINCE", "UNSENT", "OLDEST", "BACKLOG", "FAILING DEVICES", "VERSION")
    lines = [header]
    for h in hubs:
        since = h.offline_since if not h.online else None
        lines.append(
            (
                h.gateway,
                "online" if h.online else "OFFLINE",
                f"{_age((now - since).total_seconds())} ago" if since else "",
                "" if h.unsent is None else str(h.unsent),
                "" if h.oldest_unsent_age_s is None else _age(h.oldest_unsent_age_s),
                "growing" if h.growing else ("yes" if h.backlog else ""),
                ",".join(h.failing_devices),
                h.version,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    ]
    attention = sum(1 for h in hubs if h.attention)
    text.append(f"{len(hubs)} hub(s), {attention} need attention")
    return "\n".join(text)


def format_json(hubs: list[HubRow]) -> str:
    def plain(h: HubRow) -> dict[str, Any]:
        doc = asdict(h)
        for key in ("offline_since", "last_seen"):
            value = doc[key]
            doc[key] = value.isoformat().replace("+00:00", "Z") if value else None
        doc["attention"] = h.attention
        return doc

    return json.dumps({"hubs": [plain(h) for h in hubs]}, indent=2)
