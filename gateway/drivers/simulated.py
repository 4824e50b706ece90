"""The `simulated` driver: plausible readings with the right codes and units.

Stands in for real devices in the demo, the tests and the benchmarks. Values
wander around a plausible centre so a reader of the demo sees them change.
"""

from __future__ import annotations

import asyncio
import random
from typing import Literal

from pydantic import Field

from gateway import mdc
from gateway.drivers.base import Driver, DriverOptions
from gateway.mdc import Ucum
from gateway.reading import Kind, Reading, Value


class SimulatedOptions(DriverOptions):
    kind: Literal["blood_pressure", "pulse_oximeter", "weight", "glucose", "temperature"] = Field(
        description="Which device class to imitate."
    )
    interval_s: float = Field(default=5.0, ge=0.0, le=86400.0, description="Time between readings.")
    count: int = Field(
        default=0, ge=0, description="Readings to make before stopping; 0 = forever."
    )
    seed: int | None = Field(default=None, description="Random seed, for repeatable values.")
    burst: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Readings handed over together each time (like a meter sending its "
        "memory); they are stored in one transaction.",
    )
    trigger: Literal["interval", "measure"] = Field(
        default="interval",
        description="'interval': a reading every interval_s; 'measure': one reading interval_s "
        "after each 'measure now' (the panel's button), like a patient measuring.",
    )


def simulated_values(kind: Kind, rng: random.Random) -> tuple[tuple[Value, ...], tuple[str, ...]]:
    """One plausible set of values (and status flags) for a device class."""
    if kind is Kind.BLOOD_PRESSURE:
        sys_ = round(rng.gauss(128, 8))
        dia = round(rng.gauss(82, 5))
        status = ("irregular_pulse",) if rng.random() < 0.05 else ()
        return (
            Value.of(mdc.PRESS_BLD_NONINV_SYS, float(sys_), Ucum.MMHG),
            Value.of(mdc.PRESS_BLD_NONINV_DIA, float(dia), Ucum.MMHG),
            Value.of(mdc.PRESS_BLD_NONINV_MEAN, round(dia + (sys_ - dia) / 3, 1), Ucum.MMHG),
            Value.of(mdc.PULS_RATE_NON_INV, float(round(rng.gauss(72, 6))), Ucum.PER_MIN),
        ), status
    if kind is Kind.PULSE_OXIMETER:
        return (
            Value.of(
                mdc.PULS_OXIM_SAT_O2, float(min(100, round(rng.gauss(94, 1.5)))), Ucum.PERCENT
            ),
            Value.of(mdc.PULS_OXIM_PULS_RATE, float(round(rng.gauss(78, 6))), Ucum.PER_MIN),
        ), ()
    if kind is Kind.WEIGHT:
        return (Value.of(mdc.MASS_BODY_ACTUAL, round(rng.gauss(82.0, 0.4), 1), Ucum.KG),), ()
    if kind is Kind.GLUCOSE:
        return (
            Value.of(mdc.CONC_GLU_CAPILLARY_PLASMA, round(rng.gauss(7.2, 1.1), 1), Ucum.MMOL_PER_L),
        ), ()
    if kind is Kind.TEMPERATURE:
        return (Value.of(mdc.TEMP_BODY, round(rng.gauss(36.9, 0.25), 1), Ucum.CEL),), ()
    raise ValueError(f"the simulated driver cannot imitate {kind.value}")


class SimulatedDriver(Driver):
    """Emits `count` readings (or forever), one every `interval_s`."""

    Options = SimulatedOptions

    async def run(self) -> None:
        options = self.options
        assert isinstance(options, SimulatedOptions)
        rng = random.Random(options.seed)  # noqa: S311 - plausible values, not secrets
        kind = Kind(options.kind)
        made = 0
        requests = self.context.measure.requests
        while options.count == 0 or made < options.count:
            if options.trigger == "measure":
                requests = await self.context.measure.wait_request(requests)
                await asyncio.sleep(options.interval_s)  # the patient measuring
            burst = (
                options.burst if options.count == 0 else min(options.burst, options.count - made)
            )
            readings = [self._reading(kind, rng, made + i) for i in range(burst)]
            # Handed over together, so the store commits them together (group commit).
            await asyncio.gather(*(self.context.emit(reading) for reading in readings))
            made += burst
            if options.trigger == "measure":
                continue
            if options.interval_s > 0:
                await asyncio.sleep(options.interval_s)
            else:
                await asyncio.sleep(0)  # let the loop breathe even at full speed

    def _reading(self, kind: Kind, rng: random.Random, number: int) -> Reading:
        options = self.options
        values, status = simulated_values(kind, rng)
        measured_at = self.context.clock.now()
        return Reading(
            device_id=options.id,
            driver=options.driver,
            kind=kind,
            measured_at=measured_at,
            measured_at_source="device",
            values=values,
            status=status,
            # The virtual device's identity for this record: its own timestamp
            # (microseconds) and counter, as a real device's would be.
            source_key=f"{measured_at.isoformat()}#{number}",
        )
