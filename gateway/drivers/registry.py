"""Finds drivers through the `homehub.drivers` entry-point group.

A third-party package adds a driver by declaring, in its own pyproject.toml::

    [project.entry-points."homehub.drivers"]
    "vendor.thing" = "vendor_pkg.driver:ThingDriver"
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from gateway.drivers.base import Driver

ENTRY_POINT_GROUP = "homehub.drivers"

log = logging.getLogger(__name__)


class DriverRegistry:
    """Name -> Driver class. Built from entry points, or from a mapping in tests."""

    def __init__(self, drivers: dict[str, type[Driver]], broken: dict[str, str] | None = None):
        self._drivers = dict(drivers)
        #: plug-ins that failed to import: name -> reason (named in config errors)
        self.broken = dict(broken or {})

    @classmethod
    def from_entry_points(cls) -> DriverRegistry:
        drivers: dict[str, type[Driver]] = {}
        broken: dict[str, str] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken plug-in must not take the hub down
                log.error("driver plug-in %r failed to load: %s", ep.name, exc)
                broken[ep.name] = f"{type(exc).__name__}: {exc}"
                continue
            if not (isinstance(loaded, type) and issubclass(loaded, Driver)):
                broken[ep.name] = f"{ep.value} is not a gateway.drivers.base.Driver subclass"
                log.error("driver plug-in %r: %s", ep.name, broken[ep.name])
                continue
            drivers[ep.name] = loaded
        return cls(drivers, broken)

    def names(self) -> list[str]:
        return sorted(self._drivers)

    def get(self, name: str) -> type[Driver]:
        return self._drivers[name]

    def items(self) -> list[tuple[str, type[Driver]]]:
        return sorted(self._drivers.items())
