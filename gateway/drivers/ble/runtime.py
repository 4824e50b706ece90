"""What every BLE driver of one hub shares: the stack, one scanner, one connection at a time.

Drivers use bleak's public API only (`BleakScanner`, `BleakClient`) and do not
know which stack runs: the runtime supplies bleak's `backend=` and the Bumble
adapter for `stack = "bumble"`, nothing for `stack = "bluez"`.

One scanner serves all drivers: it runs while any driver waits for its
device's advertisement. A watchdog notices a scanner that stops delivering
advertisements (none at all for `scan_stall_s`) and answers in stages: restart
scanning, then reset the adapter, then fail the waiting drivers with a
DriverError, so the daemon shows them failing in the status and restarts them.
Connection attempts are serialised on the adapter (`connect_lock`): most
controllers handle one pending LE connection at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bleak import BleakClient, BleakScanner
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

from gateway.config import BleSection
from gateway.errors import DriverError

log = logging.getLogger(__name__)

#: bound on stopping a scan (the stack may be gone)
STOP_S = 2.0


class BleRuntime:
    def __init__(self, section: BleSection, keystore_path: Path | None = None) -> None:
        self.section = section
        #: where the Bumble stack keeps its bonds (BlueZ keeps its own)
        self.keystore_path = keystore_path
        self.connect_lock = asyncio.Lock()
        self._adapter: Any = None  # BumbleAdapter, imported only for stack = "bumble"
        self._waiters: dict[str, list[asyncio.Future[BLEDevice]]] = {}
        self._scanner: BleakScanner | None = None
        self._scan_lock = asyncio.Lock()
        self._last_advertisement = 0.0
        self._watchdog: asyncio.Task[None] | None = None
        #: recovery stages taken since the last advertisement (0: healthy)
        self.stall_stage = 0

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

    # -- one shared scan ---------------------------------------------------------------------

    async def wait_for_advertisement(self, address: str) -> BLEDevice:
        """Wait (without limit; cancel to stop) until `address` advertises."""
        key = address.upper()
        future: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        try:
            # Shielded: a cancelled HCI command can leave a host waiting forever.
            await asyncio.shield(self._ensure_scanning())
            return await future
        finally:
            waiters = self._waiters.get(key, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(key, None)
            if not self._waiters:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_S):
                        await asyncio.shield(self._stop_scanning_if_idle())

    def _on_advertisement(self, device: BLEDevice, _adv: AdvertisementData) -> None:
        self._last_advertisement = asyncio.get_running_loop().time()
        if self.stall_stage:
            log.warning("ble: advertisements arrive again")
            self.stall_stage = 0
        for future in self._waiters.get(device.address.upper(), []):
            if not future.done():
                future.set_result(device)

    async def _ensure_scanning(self) -> None:
        async with self._scan_lock:
            if self._scanner is None:
                scanner = self.scanner(self._on_advertisement)
                await scanner.start()
                self._scanner = scanner
                self._last_advertisement = asyncio.get_running_loop().time()
                log.debug("ble: scanning")
                if self.section.scan_stall_s > 0 and self._watchdog is None:
                    self._watchdog = asyncio.create_task(self._watch(), name="ble-watchdog")

    async def _stop_scanning_if_idle(self) -> None:
        async with self._scan_lock:
            if self._scanner is not None and not self._waiters:
                scanner, self._scanner = self._scanner, None
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_S):
                        await scanner.stop()
                log.debug("ble: scanning stopped")

    async def _watch(self) -> None:
        """Staged recovery when no advertisement arrives while drivers wait."""
        stall_s = self.section.scan_stall_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(stall_s / 4, 5.0))
            if not self._waiters:
                continue
            quiet = loop.time() - self._last_advertisement
            stage = int(quiet // stall_s)
            if stage <= self.stall_stage:
                continue
            self.stall_stage = stage
            try:
                if stage == 1:
                    log.warning("ble: no advertisement for %.0f s; restarting the scan", quiet)
                    async with asyncio.timeout(STOP_S * 2):
                        await self.restart_scanning()
                    continue
                if stage == 2:
                    log.error("ble: no advertisement for %.0f s; resetting the adapter", quiet)
                    async with asyncio.timeout(STOP_S * 4):
                        await self.reset_adapter()
                    continue
            except Exception as exc:
                log.error("ble: recovery stage %d failed: %s", stage, exc)
                continue
            if stage >= 3:
                log.error("ble: scanner stalled for %.0f s; reporting the devices failing", quiet)
                error = DriverError(f"BLE scanner delivered no advertisement for {quiet:.0f} s")
                for waiters in self._waiters.values():
                    for future in waiters:
                        if not future.done():
                            future.set_exception(error)
                self._last_advertisement = loop.time()
                self.stall_stage = 0

    async def restart_scanning(self) -> None:
        """First recovery stage when the scanner stops delivering advertisements."""
        async with self._scan_lock:
            if self._scanner is not None:
                with contextlib.suppress(Exception):
                    await self._scanner.stop()
                await self._scanner.start()

    async def reset_adapter(self) -> None:
        """Second recovery stage: reopen the Bumble host (BlueZ: only scanning restarts)."""
        async with self._scan_lock:
            scanner, self._scanner = self._scanner, None
            if scanner is not None:
                with contextlib.suppress(Exception):
                    await scanner.stop()
            if self._adapter is not None:
                await self._adapter.reset()
        if self._waiters:
            await self._ensure_scanning()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        for waiters in self._waiters.values():
            for future in waiters:
                future.cancel()
        await self._stop_scanning_if_idle()
        if self._adapter is not None:
            await self._adapter.close()


def bleak_error() -> type[Exception]:
    """bleak's error class, imported on first use: a hub without BLE devices never
    imports bleak at all (about 2 MiB of its memory)."""
    from bleak.exc import BleakError

    return BleakError
