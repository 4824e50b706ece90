"""What every BLE driver of one hub shares: the stack, one scanner, one connection at a time.

Drivers use bleak's public API only (`BleakScanner`, `BleakClient`) and do not
know which stack runs: the runtime supplies bleak's `backend=` and the Bumble
adapter for `stack = "bumble"`, nothing for `stack = "bluez"`.

One scan loop serves all drivers, while any driver waits for its device's
advertisement (issue 12):

- **Duty.** While the measure window is open (the patient's short press) it scans
  all the time; outside it, `idle_scan_s` in every `idle_period_s` (a Pi Zero 2 W's
  radio and CPU are not free). Each scan is a fresh discovery, which also clears
  BlueZ's and the controller's duplicate filters.
- **Silence** (no advertisement for `scan_stall_s`) takes recovery steps in turn
  (`recovery.LADDER`: restart discovery, power-cycle the adapter, reset it), logged
  and counted in the status. In a quiet home silence is normal, so it never fails
  a driver nor asks for help by itself.
- **Help** is for an adapter that does not come back: a power-on that fails, a
  discovery that cannot start, an adapter that vanished. That is published once
  per episode (`BleAdapterFailing`) and cleared once discovery runs again
  (`BleAdapterOk`); meanwhile discovery is retried with backoff, so a removed and
  re-added adapter is used again. Drivers just keep waiting.

The decisions are in `recovery.py` (pure); this module only acts on them.

Pairing (issue 12 part 1): drivers of devices with `pair = true` announce them
(`expect_pairing`); on BlueZ that registers the hub's pairing agent (`agent.py`),
which answers only those devices and only inside the installer's pairing window.
`bonded` tells a driver whether the stack already holds a bond for its device.
Connection attempts are serialised on the adapter (`connect_lock`): most
controllers handle one pending LE connection at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bleak import BleakClient, BleakScanner
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    from gateway.drivers.ble.agent import PairingAgent

from gateway.backoff import Backoff
from gateway.config import BleSection
from gateway.drivers.ble.pairing import PairingPolicy
from gateway.drivers.ble.recovery import AdapterError, AdapterHealth, SilencePolicy, Step
from gateway.events import BleAdapterFailing, BleAdapterOk, BleRecoveryStep, Event
from gateway.windows import CommandWindow

log = logging.getLogger(__name__)

#: bound on stopping a scan (the stack may be gone)
STOP_S = 2.0
#: bound on starting one
START_S = 10.0
#: bound on one recovery step (a power cycle waits for the kernel)
STEP_S = 30.0
#: the adapter's time off in a power cycle; the reset step waits longer
POWER_OFF_S = 1.0
RESET_OFF_S = 5.0
#: a step due while a device is connected waits this long (never cut a visit short)
BUSY_RETRY_S = 10.0
#: retrying a discovery that cannot start: first retry, then doubling up to
RETRY_S, RETRY_MAX_S = 2.0, 60.0


def _no_publish(_event: Event) -> None:
    """Default publish: nobody listens (the runtime used outside the hub)."""


class BleRuntime:
    def __init__(
        self,
        section: BleSection,
        keystore_path: Path | None = None,
        *,
        measure: CommandWindow | None = None,
        publish: Callable[[Event], None] = _no_publish,
    ) -> None:
        self.section = section
        #: where the Bumble stack keeps its bonds (BlueZ keeps its own)
        self.keystore_path = keystore_path
        #: the patient's "measure now" window: full scan duty while it is open
        self.measure = measure if measure is not None else CommandWindow("measure", 120.0)
        self._publish = publish
        self.connect_lock = asyncio.Lock()
        self._adapter: Any = None  # BumbleAdapter, imported only for stack = "bumble"
        self._waiters: dict[str, list[asyncio.Future[BLEDevice]]] = {}
        self._scanner: BleakScanner | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._visits = 0
        self._hot_until = 0.0
        self.policy = SilencePolicy(section.scan_stall_s)
        #: recovery steps taken and whether the adapter needs help (the status's ble)
        self.health = AdapterHealth()
        #: discovery starts and stops since the hub started (tests and the bench watch them)
        self.scan_starts = 0
        self.scan_stops = 0
        #: the adapter's time off in a power cycle, and in the reset step (tests shorten them)
        self.power_off_s = POWER_OFF_S
        self.reset_off_s = RESET_OFF_S
        #: the first retry of a discovery that cannot start
        self.retry_s = RETRY_S
        #: devices that pair, and the window they may pair in (set by expect_pairing)
        self.pairing_policy: PairingPolicy | None = None
        #: the BlueZ pairing agent, once a device that pairs was announced (stack = "bluez")
        self.agent: PairingAgent | None = None

    def _backend_kwargs(self, scanner: bool) -> dict[str, Any]:
        if self.section.stack == "bluez":
            return {}
        # Bumble is imported only where it is used (stack = "bumble").
        from gateway.drivers.ble.bumble import (
            BumbleAdapter,
            BumbleClient,
            BumbleScanner,
        )

        if self._adapter is None:
            self._adapter = BumbleAdapter(self.section.transport, keystore_path=self.keystore_path)
        backend = BumbleScanner if scanner else BumbleClient
        return {"backend": backend, "bumble": self._adapter}

    def scanner(self, callback: Any, service_uuids: list[str] | None = None) -> BleakScanner:
        from bleak import BleakScanner  # bleak only where BLE is used (~2 MiB)

        return BleakScanner(callback, service_uuids, **self._backend_kwargs(scanner=True))

    def client(self, device: BLEDevice, *, pair: bool = False, **kwargs: Any) -> BleakClient:
        from bleak import BleakClient

        return BleakClient(
            device,
            pair=pair,
            timeout=self.section.connect_timeout_s,
            **kwargs,
            **self._backend_kwargs(scanner=False),
        )

    # -- pairing -----------------------------------------------------------------------------

    async def expect_pairing(
        self, address: str, passkey: int | None, window: CommandWindow
    ) -> None:
        """A configured device pairs (`pair = true`), inside `window`, with this passkey if
        it asks for one. On BlueZ the agent registers now, so that it is there to refuse
        a request outside the window; if bluetoothd is not up yet, `ready_to_pair` tries
        again before pairing."""
        if self.pairing_policy is None:
            self.pairing_policy = PairingPolicy(window)
        self.pairing_policy.expect(address, passkey)
        if self.section.stack != "bluez":
            # Bumble asks the policy itself (its pairing delegate); the adapter opens later.
            self._backend_kwargs(scanner=False)
            self._adapter.pairing = self.pairing_policy
            return
        from gateway.drivers.ble.agent import PairingAgent

        if self.agent is None:
            self.agent = PairingAgent(self.pairing_policy)
        try:
            await self.agent.register()
        except Exception as exc:
            log.debug("ble: the pairing agent could not register yet: %s", _describe(exc))

    async def ready_to_pair(self) -> None:
        """Before pairing: the agent is registered (again, if bluetoothd restarted)."""
        if self.agent is not None:
            await self.agent.register()

    async def bonded(self, device: BLEDevice) -> bool:
        """Whether the stack holds a bond (pairing keys) for this device."""
        if self.section.stack == "bluez":
            from gateway.drivers.ble import bluez

            details = device.details if isinstance(device.details, dict) else {}
            path = details.get("path")
            if not isinstance(path, str):
                return False
            return await bluez.is_paired(path)
        self._backend_kwargs(scanner=False)  # the adapter, opened by the scan that found it
        assert self._adapter is not None
        return bool(await self._adapter.bonded(device.details))

    async def forget(self, device: BLEDevice) -> None:
        """Remove the stack's bond for this device (it lost its own): it pairs anew."""
        if self.section.stack == "bluez":
            from gateway.drivers.ble import bluez

            details = device.details if isinstance(device.details, dict) else {}
            path = details.get("path")
            if isinstance(path, str):
                await bluez.remove_device(path)
            return
        self._backend_kwargs(scanner=False)
        assert self._adapter is not None
        await self._adapter.forget(device.details)

    @contextlib.asynccontextmanager
    async def visiting(self) -> AsyncIterator[None]:
        """Around a driver's visit: the radio works, and no recovery step cuts it short."""
        self._visits += 1
        self.policy.heard(asyncio.get_running_loop().time())
        try:
            yield
        finally:
            self._visits -= 1
            now = asyncio.get_running_loop().time()
            self.policy.heard(now)
            # A device that dropped its link mid-transfer advertises again at once, and a
            # patient who just measured may measure again: full duty for a while.
            self._hot_until = now + self.section.idle_period_s
            self._wake.set()

    @property
    def scanning(self) -> bool:
        return self._scanner is not None

    # -- one shared scan ---------------------------------------------------------------------

    async def wait_for_advertisement(self, address: str) -> BLEDevice:
        """Wait (without limit; cancel to stop) until `address` advertises."""
        key = address.upper()
        future: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        # The scan runs in a task of its own: a cancelled driver never cancels an HCI
        # command halfway (that can leave a host waiting forever).
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._scan_loop(), name="ble-scan")
        try:
            return await future
        finally:
            waiters = self._waiters.get(key, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(key, None)
            task = self._task
            if not self._waiters and task is not None:
                # The loop stops scanning and ends; connecting while the controller
                # still stops its scan fails on some (and on Bumble), so wait for it.
                self._wake.set()
                await asyncio.wait({task}, timeout=STOP_S * 2)

    def _on_advertisement(self, device: BLEDevice, _adv: AdvertisementData) -> None:
        if self.policy.taken:
            log.warning("ble: advertisements arrive again")
        self.policy.heard(asyncio.get_running_loop().time())
        for future in self._waiters.get(device.address.upper(), []):
            if not future.done():
                future.set_result(device)

    def _full_duty(self) -> bool:
        return (
            self.measure.is_open
            or self.section.idle_scan_s >= self.section.idle_period_s
            or asyncio.get_running_loop().time() < self._hot_until
        )

    async def _scan_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self.policy.heard(loop.time())
        retry = Backoff(self.retry_s, RETRY_MAX_S)
        try:
            while self._waiters:
                if self._scanner is None:
                    try:
                        await self._start_scan()
                    except Exception as exc:
                        self._adapter_failed(f"discovery cannot start: {_describe(exc)}", exc)
                        await self._pause(retry.next_delay(), watch_window=False)
                        continue
                    retry.reset()
                    self._adapter_worked()
                full = self._full_duty()
                burst_end = None if full else loop.time() + self.section.idle_scan_s
                await self._scan_phase(burst_end, full)
                if not self._waiters or self._scanner is None or self._full_duty():
                    continue  # done, or a recovery step stopped the scan, or full duty now
                await self._stop_scan()
                rest = self.section.idle_period_s - self.section.idle_scan_s
                await self._pause(rest, watch_window=True)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_S):
                    await self._stop_scan()

    async def _scan_phase(self, burst_end: float | None, full: bool) -> None:
        """Scan until the burst ends, the duty changes or nobody waits; take recovery steps."""
        loop = asyncio.get_running_loop()
        while self._waiters and self._scanner is not None and self._full_duty() == full:
            now = loop.time()
            if burst_end is not None and now >= burst_end:
                return
            if self._visits and self.policy.due_at <= now:
                self.policy.postpone(now, BUSY_RETRY_S)
            step = self.policy.due(now)
            if step is not None:
                await self._recover(step, now)
                continue
            ends = [burst_end, self._hot_until if now < self._hot_until else None]
            if self.section.scan_stall_s > 0:
                ends.append(self.policy.due_at)
            deadline = min((end for end in ends if end is not None), default=None)
            await self._pause(None if deadline is None else deadline - now, watch_window=True)

    async def _pause(self, seconds: float | None, *, watch_window: bool) -> None:
        """Sleep until `seconds` pass, nobody waits any more, or (watch_window) the
        measure window opens or closes."""
        if not self._waiters:
            return
        self._wake.clear()
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if watch_window:
            window = self.measure
            change = window.wait_closed() if window.is_open else window.wait_open()
            waits.append(asyncio.ensure_future(change))
        try:
            await asyncio.wait(
                waits,
                timeout=None if seconds is None else max(0.0, seconds),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for wait in waits:
                wait.cancel()

    async def _start_scan(self) -> None:
        scanner = self.scanner(self._on_advertisement)
        async with asyncio.timeout(START_S):
            await scanner.start()
        self._scanner = scanner
        self.scan_starts += 1
        log.debug("ble: scanning")

    async def _stop_scan(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        self.scan_stops += 1
        try:
            async with asyncio.timeout(STOP_S):
                await scanner.stop()
        except Exception as exc:  # the adapter may be gone; starting again tells
            log.debug("ble: stopping the scan failed: %s", _describe(exc))
        log.debug("ble: scanning stopped")

    # -- recovery ----------------------------------------------------------------------------

    async def _recover(self, step: Step, now: float) -> None:
        log.warning(
            "ble: no advertisement for %.0f s; recovery step %s (silence alone is no fault)",
            now - self.policy.heard_at,
            step.value,
        )
        self.health.took(step)
        self._publish(BleRecoveryStep(step.value))
        try:
            async with asyncio.timeout(STEP_S):
                await self._stop_scan()
                if step is not Step.RESTART_SCAN:
                    await self._cycle_adapter(
                        self.reset_off_s if step is Step.RESET else self.power_off_s
                    )
                await self._start_scan()
        except Exception as exc:
            # The adapter did not come back: the loop retries with backoff.
            await self._stop_scan()
            self._adapter_failed(f"{step.value} failed: {_describe(exc)}", exc)
            return
        self._adapter_worked()

    async def _cycle_adapter(self, off_s: float) -> None:
        if self.section.stack == "bluez":
            from gateway.drivers.ble import bluez

            await bluez.power_cycle(off_s)
        elif self._adapter is not None:
            # Bumble: the host closes its transport and opens it again, and powering on
            # sends HCI_Reset (Bumble has no lighter power switch of its own).
            await self._adapter.reset()
            await asyncio.sleep(off_s)  # the controller's own time to settle
            await self._adapter.open()

    def _adapter_failed(self, reason: str, exc: BaseException) -> None:
        log.debug("ble: adapter failure detail", exc_info=exc)
        if self.health.failed(reason):
            log.error("ble: the Bluetooth adapter needs help: %s", reason)
            self._publish(BleAdapterFailing(reason))
        else:
            log.warning("ble: %s; retrying", reason)

    def _adapter_worked(self) -> None:
        if self.health.worked():
            log.warning("ble: the Bluetooth adapter works again")
            self._publish(BleAdapterOk())

    async def close(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                future.cancel()
        self._waiters.clear()  # the loop ends now, not once the drivers have run
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_S * 2):
                    await asyncio.gather(task, return_exceptions=True)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._stop_scan()
        if self.agent is not None:
            await self.agent.close()
        if self._adapter is not None:
            await self._adapter.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AdapterError):
        return str(exc)
    from gateway.drivers.ble.bluez import describe

    return describe(exc)


def bleak_error() -> type[Exception]:
    """bleak's error class, imported on first use: a hub without BLE devices never
    imports bleak at all (about 2 MiB of its memory)."""
    from bleak.exc import BleakError

    return BleakError
