"""Finds drivers through the `homehub.drivers` entry-point group.

A third-party package adds a driver by declaring, in its own pyproject.toml::

    [project.entry-points."homehub.drivers"]
    "vendor.thing" = "vendor_pkg.driver:ThingDriver"
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from gateway.drivers.base import Driver

ENTRY_POINT_GROUP = "homehub.drivers"

log = logging.getLogger(__name__)


class DriverRegistry:
    """Name -> Driver class. Built from entry points, or from a mapping in tests.

    Entry points are loaded when a driver is first asked for, not when the registry
    is built: a hub imports only the drivers its config names (the BLE drivers and
    their profiles are ~0.6 MiB of resident memory a serial-only hub does not need;
    bench/README.md, rss). `items()` loads every one (the JSON Schema of the config).
    """

    def __init__(
        self,
        drivers: dict[str, type[Driver]],
        broken: dict[str, str] | None = None,
        pending: dict[str, EntryPoint] | None = None,
    ):
        self._drivers = dict(drivers)
        #: plug-ins that failed to import: name -> reason (named in config errors)
        self.broken = dict(broken or {})
        self._pending = {n: ep for n, ep in (pending or {}).items() if n not in self._drivers}

    @classmethod
    def from_entry_points(cls) -> DriverRegistry:
        return cls({}, pending={ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)})

    def load(self, names: Iterable[str]) -> None:
        """Import the named drivers not imported yet; a failure goes to `broken`."""
        for name in names:
            ep = self._pending.pop(name, None)
            if ep is None:
                continue
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken plug-in must not take the hub down
                log.error("driver plug-in %r failed to load: %s", ep.name, exc)
                self.broken[ep.name] = f"{type(exc).__name__}: {exc}"
                continue
            if not (isinstance(loaded, type) and issubclass(loaded, Driver)):
                self.broken[ep.name] = f"{ep.value} is not a gateway.drivers.base.Driver subclass"
                log.error("driver plug-in %r: %s", ep.name, self.broken[ep.name])
                continue
            self._drivers[ep.name] = loaded

    def names(self) -> list[str]:
        """Drivers installed: imported, or not asked for yet (so not known to be broken)."""
        return sorted(set(self._drivers) | set(self._pending))

    def get(self, name: str) -> type[Driver]:
        self.load([name])
        return self._drivers[name]

    def items(self, only: Iterable[str] | None = None) -> list[tuple[str, type[Driver]]]:
        """(name, class) of every driver, or of those in `only`; importing them first."""
        wanted = set(self.names()) if only is None else set(only)
        self.load(wanted)
        return sorted((n, d) for n, d in self._drivers.items() if n in wanted)
