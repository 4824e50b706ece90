"""Devices that stream while connected: heart-rate sensors and the Nonin 3230 oximeter."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import Field

if TYPE_CHECKING:
    from bleak import BleakClient

from gateway import mdc
from gateway.drivers.ble.base import BleDriver, BleOptions, next_item
from gateway.drivers.ble.profiles import heart_rate, nonin
from gateway.errors import DecodeError
from gateway.mdc import Ucum
from gateway.reading import Kind, Reading, Value


class HeartRateOptions(BleOptions):
    set_time: bool = Field(default=False, description="Heart-rate sensors keep no time.")
    interval_s: float = Field(
        default=60.0, ge=0, le=86400, description="At most one reading this often."
    )
    idle_s: float = Field(default=10.0, gt=0, le=600, description="Disconnect after this silence.")


class HeartRateDriver(BleDriver):
    """ble.heart_rate: Heart Rate Service 0x180D; one reading per `interval_s`."""

    Options = HeartRateOptions

    async def session(self, client: BleakClient, disconnected: asyncio.Event) -> bool:
        options = self.options
        assert isinstance(options, HeartRateOptions)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(
            heart_rate.MEASUREMENT_UUID, lambda _c, d: queue.put_nowait(bytes(d))
        )
        last: float | None = None
        while (data := await next_item(queue, disconnected, options.idle_s)) is not None:
            now = self.context.clock.monotonic()
            if last is not None and now - last < options.interval_s:
                continue
            try:
                m = heart_rate.decode_measurement(data)
            except DecodeError as exc:
                self.decode_failed(exc)
                continue
            values = [Value.of(mdc.ECG_HEART_RATE, float(m.heart_rate), Ucum.PER_MIN)]
            values += [Value.of(mdc.ECG_TIME_PD_RR_GL, rr, Ucum.MS) for rr in m.rr_intervals_ms]
            await self.context.emit(
                Reading(
                    device_id=options.id,
                    driver=options.driver,
                    kind=Kind.HEART_RATE,
                    measured_at=self.context.clock.now(),
                    measured_at_source="hub",
                    values=tuple(values),
                    status=("no_skin_contact",) if m.contact is False else (),
                )
            )
            last = now
        return True


class NoninOptions(BleOptions):
    set_time: bool = Field(default=False, description="The 3230 keeps no time.")
    measure_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="Give up without a SmartPoint reading after this."
    )


class Nonin3230Driver(BleDriver):
    """ble.nonin_3230: the Nonin Oximetry Service; stores the first SmartPoint measurement.

    The 3230 streams a packet a second while on the finger; the SmartPoint bit
    marks the device's own verdict that the measurement is good. One reading per
    finger placement, then the hub disconnects.
    """

    Options = NoninOptions

    async def session(self, client: BleakClient, disconnected: asyncio.Event) -> bool:
        options = self.options
        assert isinstance(options, NoninOptions)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(nonin.OXIMETRY_UUID, lambda _c, d: queue.put_nowait(bytes(d)))
        deadline = self.context.clock.monotonic() + options.measure_timeout_s
        while True:
            remaining = deadline - self.context.clock.monotonic()
            if remaining <= 0:
                self.context.logger.info("no SmartPoint measurement in time")
                return True
            data = await next_item(queue, disconnected, remaining)
            if data is None:
                return True
            try:
                m = nonin.decode_oximetry(data)
            except DecodeError as exc:
                self.decode_failed(exc)
                continue
            if not m.smartpoint or m.spo2 is None or m.pulse_rate is None:
                continue
            status = tuple(s for s in m.status if s in ("weak_signal", "low_battery"))
            await self.context.emit(
                Reading(
                    device_id=options.id,
                    driver=options.driver,
                    kind=Kind.PULSE_OXIMETER,
                    measured_at=self.context.clock.now(),
                    measured_at_source="hub",
                    values=(
                        Value.of(mdc.PULS_OXIM_SAT_O2, float(m.spo2), Ucum.PERCENT),
                        Value.of(mdc.PULS_OXIM_PULS_RATE, float(m.pulse_rate), Ucum.PER_MIN),
                    ),
                    status=status,
                )
            )
            return True
