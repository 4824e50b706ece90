"""The daemon: wires drivers, store, uplink and status together in one asyncio loop.

Each driver runs as a supervised task: a driver that raises is logged, reported
in the status and restarted with backoff; it never takes the daemon down. On
stop (SIGTERM/SIGINT in `homehub run`) the drivers stop first, readings being
committed are committed, in-flight publishes get a short grace period for their
PUBACKs, the status goes "offline" and the store closes: all within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from gateway import __version__
from gateway.backoff import Backoff
from gateway.clock import Clock, SystemClock
from gateway.config import HubConfig
from gateway.drivers.base import DriverContext, DriverOptions, StoredReading
from gateway.drivers.registry import DriverRegistry
from gateway.errors import DriverError, StoreFullError
from gateway.events import (
    DeviceFailing,
    DeviceRecovered,
    DiskFull,
    DiskOk,
    Event,
    EventBus,
    ReadingDelivered,
    ReadingsDropped,
    ReadingStored,
    UplinkDown,
    UplinkUp,
)
from gateway.reading import Reading
from gateway.status import DeviceStatus, StatusTracker
from gateway.store import Store
from gateway.uplink.mqtt import MqttUplink
from gateway.uplink.payload import encode_status

log = logging.getLogger(__name__)

DRIVER_BACKOFF_INITIAL_S = 1.0
DRIVER_BACKOFF_MAX_S = 120.0
# A driver that ran this long before failing was healthy: its backoff starts over.
DRIVER_STABLE_S = 60.0
UPLINK_GRACE_S = 2.0


def describe_error(exc: BaseException) -> str:
    """An error's description that is safe to log at ERROR and put in the status.

    pydantic quotes the offending input in its messages; a driver that built a
    Reading from bad device data would put a patient's value into the journal
    and onto the broker. Name the fields, never the values.
    """
    if isinstance(exc, ValidationError):
        fields = sorted({".".join(str(p) for p in e["loc"]) or "(reading)" for e in exc.errors()})
        return f"invalid {exc.title}: {exc.error_count()} error(s) in {', '.join(fields)}"
    return f"{type(exc).__name__}: {exc}"


class Hub:
    """The running hub. `run()` until `stop()` (or cancellation)."""

    def __init__(
        self,
        config: HubConfig,
        registry: DriverRegistry,
        *,
        clock: Clock | None = None,
        events: EventBus | None = None,
        on_ready: Callable[[], None] | None = None,
        max_page_count: int | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.events = events or EventBus()
        self.status = StatusTracker(gateway_id=config.gateway.id)
        self._on_ready = on_ready
        self._max_page_count = max_page_count
        self._stop = asyncio.Event()
        self.store: Store | None = None
        self.uplink: MqttUplink | None = None
        self._driver_tasks: dict[str, asyncio.Task[None]] = {}

    def stop(self) -> None:
        """Ask the hub to stop; `run()` returns once it has shut down cleanly."""
        self._stop.set()

    async def run(self) -> None:
        cfg = self.config
        store = await Store.open(
            cfg.store_path,
            gateway_id=cfg.gateway.id,
            synchronous=cfg.store.synchronous,
            max_readings=cfg.store.max_readings,
            max_page_count=self._max_page_count,
            on_dropped=self._on_dropped,
        )
        self.store = store
        uplink = MqttUplink(
            cfg.mqtt,
            gateway_id=cfg.gateway.id,
            client_id=cfg.client_id,
            store=store,
            events=self.events,
            status_document=self._status_payload,
            version=__version__,
        )
        self.uplink = uplink
        self.events.subscribe(self._track_uplink)
        background = [
            asyncio.create_task(uplink.run(), name="uplink"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        for options in cfg.devices:
            self.status.devices[options.id] = DeviceStatus(driver=options.driver)
            self._driver_tasks[options.id] = asyncio.create_task(
                self._supervise(options), name=f"driver-{options.id}"
            )
        log.info(
            "homehub %s started: gateway %s, %d device(s)",
            __version__,
            cfg.gateway.id,
            len(cfg.devices),
        )
        if self._on_ready is not None:
            self._on_ready()
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(store, uplink, background)

    async def _shutdown(
        self, store: Store, uplink: MqttUplink, background: list[asyncio.Task[None]]
    ) -> None:
        log.info("stopping: drivers first, then the uplink, then the store")
        for task in self._driver_tasks.values():
            task.cancel()
        await asyncio.gather(*self._driver_tasks.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(uplink.stop(UPLINK_GRACE_S), UPLINK_GRACE_S + 1.5)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await store.close()
        log.info("stopped")

    # -- drivers -----------------------------------------------------------------

    def _context(self, options: DriverOptions) -> DriverContext:
        async def emit(reading: Reading) -> StoredReading:
            return await self._emit(options, reading)

        def report(problem: str | None) -> None:
            self._report(options.id, problem)

        return DriverContext(
            device_id=options.id,
            clock=self.clock,
            logger=logging.getLogger(f"gateway.device.{options.id}"),
            emit=emit,
            report=report,
        )

    def _report(self, device_id: str, problem: str | None) -> None:
        """A driver reports a problem it handles itself (or that it is over)."""
        device = self.status.devices[device_id]
        if problem is not None:
            if device.state == "failing" and device.last_error == problem:
                return
            device.state = "failing"
            device.last_error = problem
            self.events.publish(DeviceFailing(device_id, problem))
        elif device.state == "failing":
            device.state = "ok"
            device.last_error = None
            self.events.publish(DeviceRecovered(device_id))
        else:
            return
        self._status_changed()

    async def _emit(self, options: DriverOptions, reading: Reading) -> StoredReading:
        if reading.device_id != options.id or reading.driver != options.driver:
            raise DriverError(
                f"device {options.id}: driver emitted a reading for "
                f"{reading.device_id}/{reading.driver}"
            )
        store = self.store
        assert store is not None
        try:
            stored = await store.add(reading, self.clock.now())
        except StoreFullError:
            if not self.status.disk_full:
                self.status.disk_full = True
                self.events.publish(DiskFull())
                self._status_changed()
            raise
        if self.status.disk_full:
            self.status.disk_full = False
            self.events.publish(DiskOk())
            self._status_changed()
        device = self.status.devices[options.id]
        if device.state != "ok":
            was_failing = device.state == "failing"
            device.state = "ok"
            device.last_error = None
            if was_failing:
                self.events.publish(DeviceRecovered(options.id))
            self._status_changed()
        self.events.publish(ReadingStored(options.id, stored.id, stored.duplicate))
        if self.uplink is not None and not stored.duplicate:
            self.uplink.notify_new_reading()
        return stored

    async def _supervise(self, options: DriverOptions) -> None:
        driver_class = self.registry.get(options.driver)
        device = self.status.devices[options.id]
        backoff = Backoff(DRIVER_BACKOFF_INITIAL_S, DRIVER_BACKOFF_MAX_S)
        while True:
            started = time.monotonic()
            try:
                driver = driver_class(options, self._context(options))
                await driver.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - started >= DRIVER_STABLE_S:
                    backoff.reset()
                delay = backoff.next_delay()
                device.state = "failing"
                device.restarts += 1
                device.last_error = describe_error(exc)
                # The message, not the traceback, at ERROR; drivers must not put
                # patient values into exception messages.
                log.error(
                    "device %s: driver %s failed (%s); restart %d in %.1f s",
                    options.id,
                    options.driver,
                    device.last_error,
                    device.restarts,
                    delay,
                )
                log.debug("device %s: traceback", options.id, exc_info=True)
                self.events.publish(DeviceFailing(options.id, device.last_error))
                self._status_changed()
                await asyncio.sleep(delay)
                continue
            device.state = "stopped"
            log.info("device %s: driver finished", options.id)
            self._status_changed()
            return

    # -- status and housekeeping ---------------------------------------------------

    def _on_dropped(self, count: int) -> None:
        self.status.store_full = True
        self.events.publish(ReadingsDropped(count))
        self._status_changed()

    def _track_uplink(self, event: Event) -> None:
        if isinstance(event, UplinkUp):
            self.status.uplink_connected = True
        elif isinstance(event, UplinkDown):
            self.status.uplink_connected = False
        elif isinstance(event, ReadingDelivered) and self.status.store_full:
            # Readings flow again: the store is draining, no longer dropping.
            self.status.store_full = False
            self._status_changed()

    def _status_changed(self) -> None:
        if self.uplink is not None:
            self.uplink.request_status()

    async def _status_payload(self) -> bytes:
        assert self.store is not None
        stats = await self.store.stats()
        return encode_status(self.status.document(stats))

    async def _housekeeping(self) -> None:
        """Purge delivered readings after the retention; checkpoint in NORMAL mode."""
        store_cfg = self.config.store
        assert self.store is not None
        interval = store_cfg.purge_interval_s
        if store_cfg.synchronous == "normal":
            interval = min(interval, store_cfg.checkpoint_interval_s)
        last_purge = 0.0
        while True:
            now = time.monotonic()
            try:
                if now - last_purge >= store_cfg.purge_interval_s:
                    last_purge = now
                    purged = await self.store.purge_delivered(store_cfg.retention_hours * 3600)
                    if purged:
                        log.info("store: purged %d delivered readings", purged)
                if store_cfg.synchronous == "normal":
                    await self.store.checkpoint()
            except Exception:
                log.exception("store housekeeping failed; will try again")
            await asyncio.sleep(interval)
