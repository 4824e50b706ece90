"""The common life of a BLE health device driver.

Real devices advertise only after a measurement and drop the link soon after,
so a driver loops: wait for its device's advertisement, connect (bounded
timeout, a few quick retries with backoff via tenacity, one connection attempt
at a time on the adapter), pair if the device needs it, write the current time
where the device lets us, run the profile's session, disconnect.

Pairing (issue 12): a device with `pair = true` and no bond is paired only inside
the installer's pairing window (`context.pairing`, the long press). Outside it the
driver says so once (a WARNING, `needs_pairing` and the message in the status) and
waits for the window instead of trying; once bonded, later visits re-encrypt with
the bond and need no window.

Nothing patient-related is logged at INFO or above: no values, no addresses.

Bounded waits use `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11
`wait_for` can swallow a cancellation that arrives as its inner task finishes,
and a driver that misses the daemon's one cancel never stops.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.device import BLEDevice

from gateway.backoff import Backoff
from gateway.clockcheck import EARLIEST_PLAUSIBLE
from gateway.drivers.base import Driver, DriverContext, DriverOptions
from gateway.drivers.ble.profiles.date_time import (
    CURRENT_TIME_UUID,
    DATE_TIME_UUID,
    decode_current_time,
    encode_current_time,
    encode_date_time,
)
from gateway.drivers.ble.recovery import AdapterError
from gateway.drivers.ble.runtime import BleRuntime, bleak_error
from gateway.errors import DecodeError, DriverError
from gateway.reading import Reading

MAC_PATTERN = r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$"
CONNECT_ATTEMPTS = 3
#: consecutive failed sessions before the driver reports itself failing
FAILURES_BEFORE_ERROR = 5
#: bound on a disconnect (the link may already be gone)
DISCONNECT_S = 2.0
#: a device clock this far ahead of the hub's is wrong; the hub's time is used
FUTURE_TOLERANCE = timedelta(minutes=10)
#: A device time this long before the hub's build (clockcheck) was stamped by a clock
#: never set: real stored records are months old at most when a device is first paired.
DEVICE_CLOCK_UNSET_BEFORE = EARLIEST_PLAUSIBLE - timedelta(days=365)


class BleOptions(DriverOptions):
    address: str = Field(pattern=MAC_PATTERN, description="The device's Bluetooth address.")
    pair: bool = Field(
        default=False,
        description="Pair (and bond) before reading; the first pairing waits for the "
        "installer's pairing window (a long press on the hub's button).",
    )
    passkey: int | None = Field(
        default=None,
        ge=0,
        le=999999,
        description="A device that asks for a fixed passkey (it shows none): that passkey "
        "(six digits, from its manual). Not set: Just Works pairing.",
    )
    set_time: bool = Field(
        default=True, description="Write the hub's time to the device's Current Time."
    )
    cooldown_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="After a visit, ignore the device's advertisements this long.",
    )

    @field_validator("address")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _passkey_pairs(self) -> BleOptions:
        if self.passkey is not None and not self.pair:
            raise ValueError("passkey is for a device that pairs: set pair = true")
        return self


class BleDriver(Driver):
    """Subclasses implement `session`: what to do once connected."""

    Options: ClassVar[type[DriverOptions]] = BleOptions

    def __init__(self, options: DriverOptions, context: DriverContext) -> None:
        super().__init__(options, context)
        self.decode_errors = 0
        #: reported as waiting for the pairing window (once per episode)
        self.needs_pairing = False
        #: the pairing window's request count when a failed bond was last forgotten
        self._forgot_in = -1
        #: issue 13: the device's clock minus the hub's, measured at this connection
        #: (the coincident timestamp; None: not known), and when it is corrected
        self.clock_offset_s: float | None = None
        self._clock_synced_at_read = False
        self._clock_correct_s = 60.0

    @property
    def ble_options(self) -> BleOptions:
        assert isinstance(self.options, BleOptions)
        return self.options

    async def run(self) -> None:
        runtime = self.context.service(BleRuntime)
        backoff = Backoff(0.5, 30.0)
        log = self.context.logger
        ble_error = bleak_error()
        options = self.ble_options
        if options.pair:
            await runtime.expect_pairing(options.address, options.passkey, self.context.pairing)
        while True:
            _honour_cancellation()
            device = await runtime.wait_for_advertisement(options.address)
            log.debug("advertisement seen")
            try:
                if options.pair and not await self._may_pair(runtime, device):
                    # Not bonded, window closed: wait for the installer, then for the
                    # device's next advertisement (they wake it after the long press).
                    await self.context.pairing.wait_open()
                    continue
                complete = await self._visit(runtime, device)
            except (ble_error, AdapterError, TimeoutError, EOFError, ConnectionError) as exc:
                if await self._forget_failed_bond(runtime, device, exc):
                    continue
                delay = backoff.next_delay()
                # The type only: stack messages may name the device's address.
                log.warning(
                    "connection failed (%s); %d in a row, next try in %.1f s",
                    type(exc).__name__,
                    backoff.failures,
                    delay,
                )
                log.debug("connection failure detail: %s", exc)
                if backoff.failures >= FAILURES_BEFORE_ERROR:
                    raise DriverError(
                        f"{backoff.failures} connection attempts in a row failed: "
                        f"{type(exc).__name__}"
                    ) from exc
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if self.needs_pairing:
                self.needs_pairing = False
                log.info("paired; the device is read from now on")
                self.context.needs_pairing(False)
                self.context.report(None)
            if self.finished():
                return
            if complete:
                # A device that keeps advertising must not be visited in a hot loop;
                # an interrupted transfer is resumed at once.
                await asyncio.sleep(self.ble_options.cooldown_s)

    def finished(self) -> bool:
        """Whether run() should return after a successful visit (finite tests)."""
        return False

    async def _forget_failed_bond(
        self, runtime: BleRuntime, device: BLEDevice, exc: BaseException
    ) -> bool:
        """Inside the pairing window, a bonded device that fails to connect may have lost its
        bond (a reset, new batteries): forget ours, so the next advertisement pairs again.
        At most once per long press, so a failure for another reason cannot loop."""
        window = self.context.pairing
        if not self.ble_options.pair or not window.is_open:
            return False
        if self._forgot_in == window.requests:
            return False
        try:
            if not await runtime.bonded(device):
                return False
            await runtime.forget(device)
        except (bleak_error(), AdapterError, TimeoutError) as forget_exc:
            self.context.logger.debug("forgetting the bond failed: %s", forget_exc)
            return False
        self._forgot_in = window.requests
        self.context.logger.warning(
            "connection failed (%s) inside the pairing window: bond removed, pairing again",
            type(exc).__name__,
        )
        return True

    async def _may_pair(self, runtime: BleRuntime, device: BLEDevice) -> bool:
        """Whether to connect now: bonded, or not bonded and inside the pairing window
        (then the agent is made ready). Outside it, say so once and return False."""
        if await runtime.bonded(device):
            return True
        if self.context.pairing.is_open:
            await runtime.ready_to_pair()
            return True
        if not self.needs_pairing:
            self.needs_pairing = True
            device_id = self.options.id
            message = (
                f"not paired: long-press the hub's button (5 s, installer mode), "
                f"then wake {device_id} to pair it"
            )
            self.context.logger.warning("%s", message)
            self.context.needs_pairing(True)
            self.context.report(message)
        return False

    async def _connect(
        self, runtime: BleRuntime, device: BLEDevice
    ) -> tuple[BleakClient, asyncio.Event]:
        """A connected client, and the event its disconnection sets."""
        disconnected = asyncio.Event()
        async with runtime.connect_lock:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(CONNECT_ATTEMPTS),
                wait=wait_exponential_jitter(multiplier=0.1, max=1.0, jitter=0.1),
                retry=retry_if_exception_type((bleak_error(), TimeoutError)),
                reraise=True,
            ):
                with attempt:
                    client = runtime.client(
                        device,
                        pair=self.ble_options.pair,
                        disconnected_callback=lambda _c: disconnected.set(),
                    )
                    await client.connect()
        return client, disconnected

    async def _visit(self, runtime: BleRuntime, device: BLEDevice) -> bool:
        # No recovery step (a power cycle) while the hub talks to a device (issue 12).
        async with runtime.visiting():
            client, disconnected = await self._connect(runtime, device)
            try:
                # Before the time is written: afterwards the device would agree with us.
                self._clock_correct_s = runtime.section.clock_correct_s
                await self._read_device_clock(client)
                if self.ble_options.set_time:
                    await self._set_time(client)
                return await self.session(client, disconnected)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(DISCONNECT_S):
                        await client.disconnect()

    async def _read_device_clock(self, client: BleakClient) -> None:
        """Issue 13, the PHD IG's coincident timestamp: the device's Current Time read
        against the hub's clock at the same moment, as `clock_offset_s`."""
        self.clock_offset_s = None
        char = client.services.get_characteristic(CURRENT_TIME_UUID)
        if char is None or "read" not in char.properties:
            return
        try:
            current = decode_current_time(await client.read_gatt_char(char))
        except (DecodeError, bleak_error()) as exc:
            self.context.logger.debug("device time not read (%s)", type(exc).__name__)
            return
        hub_now = self.context.clock.now()
        if current.time is None:
            return  # the device does not know the time
        # Local wall time without a zone, read in the hub's zone (as its records are).
        self.clock_offset_s = (current.time.astimezone() - hub_now).total_seconds()
        self._clock_synced_at_read = self.context.clock_synced() is True

    def with_clock_offset(self, reading: Reading) -> Reading:
        """The reading with the measured device clock offset, when the hub's own clock
        was synchronised to measure it against (else the offset means nothing)."""
        if self.clock_offset_s is None or not self._clock_synced_at_read:
            return reading
        return reading.model_copy(update={"device_clock_offset_s": round(self.clock_offset_s, 1)})

    async def _set_time(self, client: BleakClient) -> None:
        if self.context.clock_synced() is not True:
            # Issue 13: the hub's own clock may be the stale time a Pi boots with;
            # the device keeps its time rather than learn a wrong one.
            self.context.logger.debug("device time not set: the hub's clock is not synchronised")
            return
        now = self.context.clock.now().replace(tzinfo=None)  # the device wants local time
        for uuid, payload in (
            (CURRENT_TIME_UUID, encode_current_time(now)),
            (DATE_TIME_UUID, encode_date_time(now)),
        ):
            char = client.services.get_characteristic(uuid)
            if char is not None and "write" in char.properties:
                try:
                    await client.write_gatt_char(char, payload, response=True)
                    self.context.logger.debug("device time set")
                except bleak_error() as exc:
                    self.context.logger.warning(
                        "could not set the device's time (%s)", type(exc).__name__
                    )
                return

    @abc.abstractmethod
    async def session(self, client: BleakClient, disconnected: asyncio.Event) -> bool:
        """Read what the device has; return whether it completed (False: interrupted)."""

    # -- helpers for sessions -----------------------------------------------------------------

    def measured_at(
        self, device_time: datetime | None, *, time_fault: bool = False
    ) -> tuple[datetime, Literal["device", "hub"], tuple[str, ...]]:
        """The device's local time in the hub's zone, or the hub's time when it has none.

        `time_fault`: the record itself says its time may be wrong (a glucose meter's
        Sensor Status Annunciation bit 11); it is never corrected by the offset.
        """
        now = self.context.clock.now()
        if device_time is None:
            return now, "hub", ()
        # A naive datetime's astimezone() takes it as the system's local time,
        # the hub's zone, with the DST rule of that date.
        aware = device_time.astimezone()
        if aware < DEVICE_CLOCK_UNSET_BEFORE:
            # Issue 13: stamped before the device's clock was set (a meter counting from
            # its epoch after a battery change). Its time is kept, flagged: the offset
            # measured now says nothing about a clock that was set since.
            return aware, "device", ("device_clock_unset",)
        offset = self.clock_offset_s
        if (
            not time_fault
            and offset is not None
            and self._clock_synced_at_read
            and abs(offset) > self._clock_correct_s
        ):
            # Issue 13, the PHD IG's rule: a device clock off by more than the threshold
            # (either way; a clock behind used to be taken as it was) is corrected by
            # the offset measured at this connection, against a synchronised hub clock.
            aware = (aware - timedelta(seconds=offset)).astimezone()
        if aware - now > FUTURE_TOLERANCE:
            return now, "hub", ("device_clock_ahead",)
        return aware, "device", ()

    def decode_failed(self, exc: DecodeError) -> None:
        self.decode_errors += 1
        self.context.logger.warning(
            "undecodable data from the device (%d so far): %s", self.decode_errors, exc
        )


def _honour_cancellation() -> None:
    """Raise if this task was asked to stop: Python 3.11's `asyncio.wait_for`, used
    inside Bumble and bleak, can swallow a cancellation that races its inner
    task, and the daemon cancels a driver only once."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def next_item(
    queue: asyncio.Queue[bytes], disconnected: asyncio.Event, timeout_s: float
) -> bytes | None:
    """The next queued value; None when the device disconnected (and nothing is left) or idled."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    gone = asyncio.ensure_future(disconnected.wait())
    try:
        await asyncio.wait({getter, gone}, timeout=timeout_s, return_when="FIRST_COMPLETED")
    finally:
        gone.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None
