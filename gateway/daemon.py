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
import math
import time
from typing import Any, Literal

from homehub_contract import confirm_topic
from pydantic import ValidationError

from gateway import __version__
from gateway.backoff import Backoff
from gateway.careplan import CarePlanService
from gateway.clock import Clock, SystemClock
from gateway.clockcheck import clock_problem
from gateway.clockfix import BootClock, SystemBootClock, needs_hold, plan_releases, stamp_of
from gateway.clocksync import SyncSource, SystemSync
from gateway.commands import CommandChannel, CommandRegistry, RemoteDevices
from gateway.commands.builtin import identify_command, status_command
from gateway.commands.cert import CertCommands
from gateway.commands.channel import MAX_ROUTE_BYTES
from gateway.commands.registry import FieldError, FieldProblem
from gateway.config import HubConfig
from gateway.drivers.base import DriverContext, DriverOptions, StoredReading
from gateway.drivers.ble.runtime import BleRuntime
from gateway.drivers.registry import DriverRegistry
from gateway.errors import CarePlanError, DriverError, StoreError, StoreFullError
from gateway.events import (
    BleAdapterFailing,
    BleAdapterOk,
    BleRecoveryStep,
    CertificateOk,
    CertificateTrouble,
    ClockOk,
    ClockWrong,
    DeviceFailing,
    DeviceRecovered,
    DiskFull,
    DiskOk,
    Event,
    EventBus,
    HubStarted,
    Identify,
    PanelShows,
    ReadingDelivered,
    ReadingsDropped,
    ReadingStored,
    StoreRecovered,
    UplinkDown,
    UplinkUp,
)
from gateway.identity import CertificateCheck, check_certificate
from gateway.memory import FIRST_TRIM_S, TRIM_INTERVAL_S, release_free_heap
from gateway.panel import Panel, create_panel
from gateway.reading import Reading
from gateway.sdnotify import SystemdNotifier
from gateway.status import DeviceStatus, StatusTracker, iso_utc
from gateway.store import Recovery, Store
from gateway.uplink.confirm import (
    CONFIRM_LINGER_S,
    MAX_CONFIRM_BYTES,
    ConfirmHandler,
    ConfirmWatch,
)
from gateway.uplink.inbox import Inbox
from gateway.uplink.mqtt import MqttUplink
from gateway.uplink.payload import encode_status
from gateway.windows import CommandWindow

log = logging.getLogger(__name__)

DRIVER_BACKOFF_INITIAL_S = 1.0
DRIVER_BACKOFF_MAX_S = 120.0
# A driver that ran this long before failing was healthy: its backoff starts over.
DRIVER_STABLE_S = 60.0
UPLINK_GRACE_S = 2.0
# SIGTERM to exit in under 5 s: the shutdown steps share this, the panel gets the rest.
SHUTDOWN_BUDGET_S = 4.2
PANEL_CLOSE_S = 0.5
CLOCK_CHECK_S = 60.0
#: How often the clock's synchronisation state is read (one syscall).
CLOCK_SYNC_CHECK_S = 5.0
_CLOCK_QUALITY: dict[bool | None, Literal["synced", "unsynced", "unknown"]] = {
    True: "synced",
    False: "unsynced",
    None: "unknown",
}


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


DRIVER_STOP_S = 1.0

#: certificate states that need help -> the panel's reason
_CERT_HELP = {
    "expired": "certificate expired",
    "not_yet_valid": "certificate not yet valid",
    "unreadable": "certificate unreadable",
}


def _tls_status(check: CertificateCheck) -> dict[str, Any]:
    """The status document's `tls` block (contract: status-1.json)."""
    return {
        "cert_expires_at": None
        if check.not_after is None
        else iso_utc(check.not_after.timestamp()),
        "cert_valid_from": None
        if check.not_before is None
        else iso_utc(check.not_before.timestamp()),
        "days_left": check.days_left,
        "state": check.state,
        "problem": check.problem,
    }


async def _cancel_bounded(
    tasks: list[asyncio.Task[None]], what: str, stop_s: float | None = None
) -> set[asyncio.Task[None]]:
    """Cancel tasks and wait for them, but never for ever.

    Python 3.11's asyncio.wait_for can swallow a cancellation that arrives as
    its inner future completes (bleak and bumble use it inside), so a task may
    need a second cancel; one that ignores both is left behind, logged, so the
    shutdown still ends within its 5 s.
    """
    pending = {task for task in tasks if not task.done()}
    for attempt in range(2):
        if not pending:
            return pending
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=stop_s or DRIVER_STOP_S)
        if attempt == 0 and pending:
            log.warning("%s: %d task(s) ignored a cancel; cancelling again", what, len(pending))
    if pending:
        log.error("%s: %d task(s) would not stop; going on without them", what, len(pending))
    return pending


class Hub:
    """The running hub. `run()` until `stop()` (or cancellation)."""

    def __init__(
        self,
        config: HubConfig,
        registry: DriverRegistry,
        *,
        clock: Clock | None = None,
        events: EventBus | None = None,
        notifier: SystemdNotifier | None = None,
        max_page_count: int | None = None,
        pin_factory: Any | None = None,
        clock_sync: SyncSource | None = None,
        boot_clock: BootClock | None = None,
    ) -> None:
        #: as the installer's file says; `config` adds the remote devices (issue 10)
        self.installer_config = config
        self.config = config
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.clock_sync: SyncSource = clock_sync or SystemSync()
        self.clock_sync_interval_s = CLOCK_SYNC_CHECK_S
        #: issue 13: CLOCK_BOOTTIME + boot id, for readings stamped unsynchronised
        self.boot_clock: BootClock = boot_clock or SystemBootClock()
        #: the store may hold readings for the clock (True at start: a restart kept them)
        self._maybe_held = True
        self.events = events or EventBus()
        self.status = StatusTracker(gateway_id=config.gateway.id)
        self.notifier = notifier or SystemdNotifier(environ={})
        self._max_page_count = max_page_count
        self._stop = asyncio.Event()
        self.store: Store | None = None
        self.uplink: MqttUplink | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        #: [mqtt] confirm = true only (issue 9)
        self.confirmations: ConfirmHandler | None = None
        self.confirm_watch: ConfirmWatch | None = None
        self._confirm_task: asyncio.Task[None] | None = None
        self._driver_tasks: dict[str, asyncio.Task[None]] = {}
        self._reload_lock = asyncio.Lock()
        #: driver tasks that ignored their cancellation (see _cancel_bounded)
        self._stray: set[asyncio.Task[None]] = set()
        #: 0 after a requested stop; 1 when the hub stopped itself because a part failed.
        self.exit_code = 0
        # The panel's commands; drivers consult them through their DriverContext.
        self.measure = CommandWindow("measure", config.panel.measure_window_s, self.events.publish)
        # Issue 12: BLE devices pair only inside the long press's window; with no button
        # nobody can open it, so it stays open (pairing whenever a device is met), unseen
        # by the panel (no "installer mode" for ever).
        self._no_button = config.panel.backend == "none" or config.panel.button_pin is None
        self.pairing = CommandWindow(
            "pairing",
            config.panel.pairing_window_s,
            None if self._no_button else self.events.publish,
        )
        self._pin_factory = pin_factory  # gpiozero's; None: chosen by [panel] backend
        self.panel: Panel | None = None
        #: shared by the BLE drivers; opens nothing until a driver scans
        self.ble = BleRuntime(
            config.ble,
            config.gateway.state_dir / "ble-bonds.json",
            measure=self.measure,
            publish=self.events.publish,
        )
        #: what was last logged about the client certificate (state, days left when expiring)
        self._cert_logged: tuple[str, int] | None = None
        self._cert_trouble: str | None = None  # the panel's reason, while there is one
        # Issue 10: the care team's commands. Register more before run() (the care plan).
        self.remote_devices = RemoteDevices(config.gateway.state_dir, registry)
        self.commands = CommandRegistry()
        self.command_channel: CommandChannel | None = None
        #: issue 10: the `care-plan/get` and `care-plan/set` commands are its
        #: `get_command` / `set_command` (CarePlanError -> the response's field errors)
        self.care_plan = CarePlanService(
            config.gateway.state_dir,
            now=self.clock.now,
            publish=self.events.publish,
            on_change=self._status_changed,
        )
        self._register_commands()

    def stop(self) -> None:
        """Ask the hub to stop; `run()` returns once it has shut down cleanly."""
        self._stop.set()

    async def run(self) -> None:
        cfg = self.config
        # First, so the patient sees "starting" (and a broken gpio backend fails early).
        self.panel = create_panel(
            cfg.panel,
            self.events,
            pin_factory=self._pin_factory,
            work_dir=cfg.gateway.state_dir,  # lgpio's notification FIFO (issue 11)
            on_measure=self.measure.open,
            on_pairing=self.pairing.open,
        )
        self.panel.start()
        if self._no_button:
            log.info("no button: the pairing window stays open")
            self.pairing.open(math.inf)
        try:
            await self._run()
        finally:
            self.measure.close()
            self.pairing.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.panel.close(), PANEL_CLOSE_S)

    async def _run(self) -> None:
        # Issue 10: the installer's devices plus the remote ones (gateway.commands.devices).
        self.config = cfg = self.remote_devices.merge(self.installer_config)
        store = await Store.open(
            cfg.store_path,
            gateway_id=cfg.gateway.id,
            synchronous=cfg.store.synchronous,
            max_readings=cfg.store.max_readings,
            max_page_count=self._max_page_count,
            on_dropped=self._on_dropped,
            on_committed=self._on_committed,
            on_recovered=self._on_recovered,
        )
        self.store = store
        self.care_plan.load()
        self.events.subscribe(self._track_uplink)
        if self.panel is not None and self.panel.state is not None:
            self.status.panel_state = self.panel.state.value  # shown before we listened
        self._check_certificate()  # before the first status goes out
        self.command_channel = CommandChannel(
            self.commands,
            gateway_id=cfg.gateway.id,
            prefix=cfg.mqtt.topic_prefix,
            state_dir=cfg.gateway.state_dir,
            publish=self._publish_response,
            clock_trusted=lambda: not self.status.clock_wrong,
        )
        self._start_uplink(cfg)
        # Known before the first reading is stored (each says whether the clock was synced).
        with contextlib.suppress(Exception):
            self._check_clock_sync()
        background = [
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
            asyncio.create_task(self._watch_clock_sync(), name="clock-sync"),
            asyncio.create_task(self.care_plan.run(), name="care-plan"),
            asyncio.create_task(_trim_heap(), name="heap-trim"),
        ]
        if self.notifier.watchdog_interval_s is not None:
            background.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        for options in cfg.devices:
            self._start_driver(options)
        log.info(
            "homehub %s started: gateway %s, %d device(s)",
            __version__,
            cfg.gateway.id,
            len(cfg.devices),
        )
        self.events.publish(HubStarted())
        # Issue 6: READY=1 only once the config is valid and the store is open.
        self.notifier.ready(f"running with {len(cfg.devices)} device(s)")
        try:
            await self._stop.wait()
        finally:
            self.notifier.stopping()
            await self._shutdown(store, background)

    async def _shutdown(self, store: Store, background: list[asyncio.Task[None]]) -> None:
        # A reload in progress finishes first, so nothing it starts outlives the stop.
        async with self._reload_lock:
            await self._shutdown_locked(store, background)

    async def _shutdown_locked(self, store: Store, background: list[asyncio.Task[None]]) -> None:
        # The contract is "exit within 5 s": every step gets a share of one
        # deadline, and the store (fast, and what matters most) always closes.
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        log.info("stopping: drivers first, then the uplink, then the store")
        drivers = [*self._driver_tasks.values(), *self._stray]
        self._stray = await _cancel_bounded(drivers, "device drivers", stop_s=0.6)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(0.1, min(1.0, deadline - time.monotonic() - 2.5))):
                await self.ble.close()
        await self._stop_uplink(
            grace_s=max(0.1, min(UPLINK_GRACE_S, deadline - time.monotonic() - 1.0))
        )
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await store.close()
        log.info("stopped")

    def _start_uplink(self, cfg: HubConfig) -> None:
        assert self.store is not None
        # Everything the hub receives comes through one inbox on the uplink's session.
        inbox = Inbox()
        handler = None
        if cfg.mqtt.confirm:
            handler = ConfirmHandler(cfg.gateway.id, self.store.mark_confirmed, self.events)
            topic = confirm_topic(cfg.mqtt.topic_prefix, cfg.gateway.id)
            inbox.route(
                topic,
                handler,
                max_bytes=MAX_CONFIRM_BYTES,
                batch=handler.many,
                linger_s=CONFIRM_LINGER_S,
            )
        channel = self.command_channel
        if channel is not None:  # issue 10: {prefix}/{gateway}/command/#
            channel.prefix = cfg.mqtt.topic_prefix
            inbox.prefix_route(channel.command_prefix, channel, max_bytes=MAX_ROUTE_BYTES)
        self.uplink = MqttUplink(
            cfg.mqtt,
            gateway_id=cfg.gateway.id,
            client_id=cfg.client_id,
            store=self.store,
            events=self.events,
            status_document=self._status_payload,
            version=__version__,
            inbox=inbox,
        )
        self._uplink_task = asyncio.create_task(self.uplink.run(), name="uplink")
        self._uplink_task.add_done_callback(self._uplink_ended)
        self.confirmations = handler
        self.confirm_watch = None
        if handler is not None:
            self.confirm_watch = ConfirmWatch(
                cfg.mqtt.confirm_timeout_s,
                self.store.requeue_unconfirmed,
                self.uplink.republish,
                handler,
            )
            self._confirm_task = asyncio.create_task(self.confirm_watch.run(), name="confirm-watch")

    def _publish_response(self, topic: str, payload: bytes, correlation: bytes | None) -> bool:
        uplink = self.uplink
        return uplink is not None and uplink.publish_response(topic, payload, correlation)

    def _register_commands(self) -> None:
        """The hub's own commands (issue 10; README, "Commands")."""
        self.commands.register("status", status_command(self._status_document))
        self.commands.register(
            "identify", identify_command(lambda seconds: self.events.publish(Identify(seconds)))
        )
        self.commands.register(
            "devices/get", lambda args: self.remote_devices.get(self.installer_config)
        )

        async def devices_set(args: dict[str, Any]) -> dict[str, Any]:
            async def apply() -> HubConfig:
                # The reload path: unchanged devices keep running, nothing is lost.
                await self.reload(self.installer_config)
                return self.config

            return await self.remote_devices.set(args, self.installer_config, apply)

        self.commands.register("devices/set", devices_set, mutates=True)

        def care_plan_set(args: dict[str, Any]) -> dict[str, Any]:
            # `args` is the plan itself; persisted before this returns (CarePlanService.set).
            try:
                return self.care_plan.set_command(args)
            except CarePlanError as exc:
                raise FieldError(
                    [FieldProblem(f"args.{path}", message) for path, message in exc.problems]
                ) from exc

        self.commands.register("care-plan/get", self.care_plan.get_command)
        self.commands.register("care-plan/set", care_plan_set, mutates=True)

        # Issue 14: renewal over the air, on the uplink running at the time.
        cert = CertCommands(
            self.config.gateway.id,
            lambda: self.config.mqtt,
            lambda: None if self.uplink is None else self.uplink.try_identity,
            now=self.clock.now,
            on_change=self._check_certificate,
        )
        cert.finish_interrupted()
        cert.register(self.commands)

    def _uplink_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stop.is_set() or task is not self._uplink_task:
            return
        # The uplink never ends on its own; if it did, readings would pile up
        # unseen. Exit non-zero so systemd (Restart=on-failure) starts us afresh.
        exc = task.exception()
        log.critical("the uplink stopped unexpectedly (%r); exiting to be restarted", exc)
        self.exit_code = 1
        self.stop()

    async def _stop_uplink(self, grace_s: float = UPLINK_GRACE_S) -> None:
        watch, self._confirm_task = self._confirm_task, None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        uplink, task = self.uplink, self._uplink_task
        if uplink is None or task is None:
            return
        with contextlib.suppress(Exception):
            # grace for PUBACKs, then ~0.5 s for "offline" and closing the socket
            await asyncio.wait_for(uplink.stop(grace_s), grace_s + 0.8)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Issue 11: every PUBACK marked before the store closes, even when stop()
        # ran out of time (its session is closed now, so nothing new comes).
        await uplink.finish_deliveries()
        self.uplink, self._uplink_task = None, None

    def _start_driver(self, options: DriverOptions) -> None:
        self._stray = {task for task in self._stray if not task.done()}
        if any(task.get_name() == f"driver-{options.id}" for task in self._stray):
            log.error(
                "device %s: its old driver would not stop; not starting another on the"
                " same device (restart the service)",
                options.id,
            )
            return
        self.status.devices[options.id] = DeviceStatus(driver=options.driver)
        self._driver_tasks[options.id] = asyncio.create_task(
            self._supervise(options), name=f"driver-{options.id}"
        )

    async def _stop_driver(self, device_id: str) -> None:
        task = self._driver_tasks.pop(device_id, None)
        if task is not None:
            # One that will not stop is kept track of (and cancelled again at
            # shutdown); its device gets no second driver while it lives.
            self._stray |= await _cancel_bounded([task], f"device {device_id}'s driver")
        self.status.devices.pop(device_id, None)

    # -- reload (SIGHUP) -----------------------------------------------------------

    async def reload(self, new: HubConfig) -> None:
        """Apply a validated new config: devices and [mqtt] take effect at once.

        A removed or changed device's driver is cancelled; anything it had
        handed to `emit` is committed regardless (the store's batch completes),
        and what it had not yet emitted its device still holds. [gateway] and
        [store] are where readings live and under which ids: they change only
        with a restart.
        """
        if self.store is None or self._stop.is_set():
            log.warning("reload: the hub is not running (yet); ignored")
            return
        async with self._reload_lock:
            if self._stop.is_set():
                return
            self.notifier.reloading()
            old = self.config
            # Issue 10: `new` is the installer's file; the remote devices join it here.
            self.installer_config = new
            new = self.remote_devices.merge(new)
            if new.gateway != old.gateway or new.store != old.store:
                log.warning("reload: [gateway] and [store] changes take effect on restart only")
                new = new.model_copy(update={"gateway": old.gateway, "store": old.store})
            if new.panel != old.panel:
                # The pins and the windows belong to the running panel.
                log.warning("reload: [panel] changes take effect on restart only")
                new = new.model_copy(update={"panel": old.panel})
            if new.ble != old.ble:
                # The BLE drivers share one runtime on one adapter: it changes on restart.
                log.warning("reload: [ble] changes take effect on restart only")
                new = new.model_copy(update={"ble": old.ble})
            # Compare by content: each load builds fresh option classes, and two
            # pydantic models of different classes never compare equal.
            old_devices = {d.id: d.model_dump() for d in old.devices}
            new_devices = {d.id: d.model_dump() for d in new.devices}
            for device_id, options in old_devices.items():
                if new_devices.get(device_id) != options:
                    await self._stop_driver(device_id)
            self.config = new
            if new.mqtt != old.mqtt or new.client_id != old.client_id:
                log.info("reload: broker settings changed; reconnecting")
                await self._stop_uplink()
                self._start_uplink(new)
            for device in new.devices:
                if old_devices.get(device.id) != new_devices[device.id]:
                    self._start_driver(device)
            added = len(new_devices.keys() - old_devices.keys())
            removed = len(old_devices.keys() - new_devices.keys())
            log.info(
                "reload: %d device(s) now, %d added, %d removed", len(new_devices), added, removed
            )
            self._check_certificate()
            self._status_changed()
            self.notifier.ready(f"running with {len(new_devices)} device(s)")

    # -- watchdog ------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself, and only while the store answers.

        A blocked loop cannot run this task, and a store thread stuck on a dead
        SD card does not answer the ping: either way the pings stop and systemd
        restarts the service (WatchdogSec=).
        """
        interval = self.notifier.watchdog_interval_s
        assert interval is not None and self.store is not None
        tick = interval / 2  # sd_watchdog_enabled(3): ping at half the interval
        while True:
            uplink = self._uplink_task
            try:
                await asyncio.wait_for(self.store.ping(), tick)
            except Exception as exc:
                log.error("watchdog: the store did not answer (%s); not petting the watchdog", exc)
            else:
                if uplink is not None and uplink.done():
                    log.error("watchdog: the uplink is not running; not petting the watchdog")
                else:
                    self.notifier.watchdog()
            await asyncio.sleep(tick)

    # -- drivers -----------------------------------------------------------------

    def _context(self, options: DriverOptions) -> DriverContext:
        async def emit(reading: Reading) -> StoredReading:
            return await self._emit(options, reading)

        def report(problem: str | None) -> None:
            self._report(options.id, problem)

        def count(name: str) -> None:
            counts = self.status.devices[options.id].counts
            counts[name] = counts.get(name, 0) + 1
            self._status_changed()

        def needs_pairing(needed: bool) -> None:
            self.status.devices[options.id].needs_pairing = needed
            self._status_changed()

        return DriverContext(
            device_id=options.id,
            clock=self.clock,
            logger=logging.getLogger(f"gateway.device.{options.id}"),
            emit=emit,
            measure=self.measure,
            pairing=self.pairing,
            report=report,
            count=count,
            needs_pairing=needs_pairing,
            clock_synced=lambda: self.status.clock_synced,
            cursors=self.store,
            services={BleRuntime: self.ble},
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
        if reading.measured_at_quality is None:
            # Issue 13: say how far the hub's clock could be trusted at this moment.
            quality = _CLOCK_QUALITY[self.status.clock_synced]
            reading = reading.model_copy(update={"measured_at_quality": quality})
        received_at = self.clock.now()
        # Issue 13: stamped by the hub on an unsynchronised clock: held for a correction.
        stamp = None
        if needs_hold(reading) and self.config.mqtt.unsynced_hold_s > 0:
            try:
                stamp = stamp_of(reading, received_at, self.boot_clock)
            except OSError:
                log.exception("clock: no boot id; the reading is sent at once, flagged")
        # Issue 10: outside the care plan's thresholds -> flagged, and sent first. The
        # plan must never cost a reading: a failure there stores it unflagged.
        try:
            flags = self.care_plan.flags(reading)
        except Exception:
            log.exception("care plan: flagging a reading failed; storing it unflagged")
            flags = ()
        try:
            stored = await store.add(reading, received_at, flags, stamp)
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
        if stamp is not None and not stored.duplicate:
            self._maybe_held = True
        if not stored.duplicate:
            try:
                self.care_plan.stored(reading, received_at)
            except Exception:
                log.exception("care plan: following a stored reading failed")
        show_flag = bool(flags) and self.care_plan.plan.show_on_panel
        self.events.publish(ReadingStored(options.id, stored.id, stored.duplicate, show_flag))
        return stored

    def _on_committed(self) -> None:
        if self.uplink is not None:
            self.uplink.notify_new_reading()

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
                if self.store is not None and _disk_full(exc):
                    # Not the driver's fault (issue 11): restart it as soon as the store
                    # can write again (tried every second), not after a growing backoff.
                    # The store logged the full disk once; no ERROR per attempt here.
                    device.restarts += 1
                    log.debug("device %s: waiting for space to store readings", options.id)
                    await self.store.wait_writable()
                    continue
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

    def _on_recovered(self, recovery: Recovery) -> None:
        # Loud (issue 11): the store logged at ERROR; the status says so
        # (store.recovered) and the panel asks for help until a reading goes through.
        self.events.publish(StoreRecovered(recovery.salvaged, recovery.unreadable))
        self._status_changed()

    def _on_dropped(self, count: int) -> None:
        self.status.store_full = True
        self.events.publish(ReadingsDropped(count))
        self._status_changed()

    def _track_uplink(self, event: Event) -> None:
        if isinstance(event, BleRecoveryStep | BleAdapterFailing | BleAdapterOk):
            self.status.ble = self.ble.health
            self._status_changed()
        elif isinstance(event, PanelShows):
            # In the status (issue 10); not a reason to publish it (it changes per reading).
            self.status.panel_state = event.state
        elif isinstance(event, UplinkUp):
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

    async def _status_document(self) -> dict[str, Any]:
        assert self.store is not None
        if self.uplink is not None:
            # Delivery marks wait in batches (issue 11, wear): the status counts them.
            await self.uplink.flush_deliveries()
        stats = await self.store.stats()
        held_back = self.uplink.held_back if self.uplink is not None else 0
        self.status.care_plan = self.care_plan.status()
        return self.status.document(stats, held_back=held_back)

    async def _status_payload(self) -> bytes:
        return encode_status(await self._status_document())

    def _check_clock(self) -> None:
        problem = clock_problem(self.clock.now())
        if problem is not None and not self.status.clock_wrong:
            log.error("clock: %s; readings stamped by the hub will be wrong", problem)
            self.status.clock_wrong = True
            self.events.publish(ClockWrong(problem))
            self._status_changed()
        elif problem is None and self.status.clock_wrong:
            log.warning("clock: plausible again")
            self.status.clock_wrong = False
            self.events.publish(ClockOk())
            self._status_changed()

    def _check_clock_sync(self) -> None:
        """Issue 13: follow the clock's synchronisation state; log and report each change."""
        synced = self.clock_sync.synced()
        status = self.status
        if synced == status.clock_synced and status.clock_synced_since is not None:
            return
        first = status.clock_synced_since is None
        before = status.clock_synced_since
        status.clock_synced, status.clock_synced_since = synced, self.clock.now().timestamp()
        if synced is None:
            log.warning("clock: cannot tell whether it is synchronised (%s)", self.clock_sync.name)
        elif synced:
            if first:
                log.info("clock: synchronised (%s)", self.clock_sync.name)
            else:
                # The clock may just have jumped: the wait is told in the new time.
                waited = (
                    "" if before is None else f" after {status.clock_synced_since - before:.0f} s"
                )
                log.info("clock: synchronised%s (%s)", waited, self.clock_sync.name)
        else:
            log.warning(
                "clock: not synchronised (%s); readings the hub stamps may be misdated",
                self.clock_sync.name,
            )
        self._status_changed()

    async def _watch_clock_sync(self) -> None:
        while True:
            try:
                self._check_clock_sync()
            except Exception:
                log.exception("clock: reading its synchronisation state failed; will try again")
            try:
                await self._release_held()
            except StoreFullError:
                pass  # the store logged the full disk once; tried again next round
            except Exception:
                log.exception("clock: releasing held readings failed; will try again")
            await asyncio.sleep(self.clock_sync_interval_s)

    async def _release_held(self) -> None:
        """Issue 13: correct the held readings once the clock is synchronised; send
        those held too long, or stamped before a reboot, as they are (flagged)."""
        store = self.store
        if store is None or not self._maybe_held:
            return
        held = await store.held()
        if not held:
            self._maybe_held = False
            return
        plan = plan_releases(
            held,
            synced=self.status.clock_synced is True,
            now=self.clock.now(),
            boot=self.boot_clock,
            hold_s=self.config.mqtt.unsynced_hold_s,
        )
        if not plan.items:
            return
        released = await store.release_held(plan.items)
        log.info(
            "clock: %d held reading(s) released: %d corrected, %d held too long,"
            " %d stamped before a reboot (sent as they are, flagged)",
            released,
            plan.corrected,
            plan.expired,
            plan.other_boot,
        )
        if self.uplink is not None:
            self.uplink.republish()  # their seqs are behind the uplink's read cursor

    def _check_certificate(self) -> None:
        """The client certificate's validity into the status, the log and the panel (issue 14).

        Logged when its state changes (and once a day while it is running out), so a
        check every minute does not flood the journal.
        """
        cert_file = self.config.mqtt.cert_file
        check = None if cert_file is None else check_certificate(cert_file, self.clock.now())
        before = self.status.tls
        self.status.tls = None if check is None else _tls_status(check)
        logged = None
        if check is not None and check.state != "ok":
            logged = (check.state, int(check.days_left or 0) if check.state == "expiring" else 0)
        if logged != self._cert_logged and check is not None:
            if check.needs_help:
                log.error("tls: %s", check.problem)
            elif check.state == "expiring":
                log.warning("tls: %s", check.problem)
            elif self._cert_logged is not None:
                log.info("tls: the client certificate is valid again")
        self._cert_logged = logged
        trouble = None if check is None else _CERT_HELP.get(check.state)
        if trouble != self._cert_trouble:
            self._cert_trouble = trouble
            if trouble is None:
                self.events.publish(CertificateOk("check"))
            else:
                self.events.publish(CertificateTrouble("check", trouble))
        if (before or {}).get("state") != (self.status.tls or {}).get("state"):
            self._status_changed()

    async def _housekeeping(self) -> None:
        """Purge delivered readings after the retention; checkpoint in NORMAL mode."""
        store_cfg = self.config.store
        assert self.store is not None
        # The clock is checked on every round: at least once a minute.
        interval = min(store_cfg.purge_interval_s, CLOCK_CHECK_S)
        if store_cfg.synchronous == "normal":
            interval = min(interval, store_cfg.checkpoint_interval_s)
        last_purge = 0.0
        while True:
            self._check_clock()
            self._check_certificate()
            now = time.monotonic()
            try:
                if now - last_purge >= store_cfg.purge_interval_s:
                    last_purge = now
                    # With a confirming backend only confirmed readings go (issue 9):
                    # a published one may still be lost on the way.
                    purged = await self.store.purge_delivered(
                        store_cfg.retention_hours * 3600,
                        require_confirmed=self.config.mqtt.confirm,
                    )
                    if purged:
                        log.info("store: purged %d delivered readings", purged)
                if store_cfg.synchronous == "normal":
                    await self.store.checkpoint()
                # A slice of the rolling integrity check each round (issue 11).
                await self.store.check()
            except StoreError as exc:
                # Already explained by the store; a traceback a minute says nothing more.
                log.error("store housekeeping failed (%s); will try again", exc)
            except Exception:
                log.exception("store housekeeping failed; will try again")
            await asyncio.sleep(interval)


async def _trim_heap() -> None:
    """Give the heap's free pages back now and then (gateway/memory.py says why)."""
    await asyncio.sleep(FIRST_TRIM_S)
    while True:
        release_free_heap()
        await asyncio.sleep(TRIM_INTERVAL_S)


def _disk_full(exc: BaseException) -> bool:
    """A driver failed because the store could not write (it may wrap the error)."""
    return isinstance(exc, StoreFullError) or isinstance(exc.__cause__, StoreFullError)
