"""The `serial.line` driver: devices that print a text line per measurement.

The installer gives a regular expression with named groups and maps each group
to an MDC code and a UCUM unit; every line it matches (`re.search`) becomes one
reading, stamped with the hub's clock. Lines that do not match are counted and
logged at DEBUG (they may hold patient values). A group whose text is not a
plain number ("---", "Err") is a missing value: null in the reading; a line
with no number at all gives no reading.
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import mdc
from gateway.drivers.serial.base import GarbageMonitor, SerialDriver
from gateway.drivers.serial.line_proto import LineDecoder, LineMatch
from gateway.drivers.serial.options import SerialOptions
from gateway.drivers.serial.port import LineSettings, SerialPort
from gateway.reading import Kind, Reading, Value

_CODES = {code.name: code for code in mdc.ALL_CODES}


class LineValue(BaseModel):
    """What one named group of the pattern measures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(description="MDC reference id, e.g. MDC_MASS_BODY_ACTUAL.")
    unit: str = Field(min_length=1, description="UCUM unit of the number, e.g. kg.")

    @field_validator("code")
    @classmethod
    def _known(cls, code: str) -> str:
        if code not in _CODES:
            raise ValueError(f"unknown MDC code {code!r} (known: {', '.join(sorted(_CODES))})")
        return code


class LineOptions(SerialOptions):
    baudrate: int = Field(default=9600, ge=50, le=4_000_000, description="Baud rate.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Parity: N, E or O.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")
    kind: Literal["blood_pressure", "pulse_oximeter", "weight", "glucose", "temperature"] = Field(
        description="What the device measures."
    )
    pattern: str = Field(
        min_length=1,
        description="Python regular expression with a named group per value, searched in "
        "each line.",
    )
    values: dict[str, LineValue] = Field(
        min_length=1, description="Group name -> {code, unit}, one per named group."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _groups_mapped(self) -> LineOptions:
        groups = set(re.compile(self.pattern).groupindex)
        if not groups:
            raise ValueError("pattern has no named group, e.g. (?P<weight>[0-9.]+)")
        if groups != set(self.values):
            raise ValueError(
                "every named group of pattern needs an entry in values and vice versa "
                f"(groups: {sorted(groups)}, values: {sorted(self.values)})"
            )
        return self


class LineDriver(SerialDriver):
    Options = LineOptions

    @property
    def protocol_name(self) -> str:
        return "text lines"

    def first_settings(self) -> LineSettings:
        o = self.options
        assert isinstance(o, LineOptions)
        return LineSettings(o.baudrate, o.bytesize, o.parity, o.stopbits)

    async def session(self, port: SerialPort) -> None:
        options = self.options
        assert isinstance(options, LineOptions)
        decoder = LineDecoder(re.compile(options.pattern))
        loop = asyncio.get_running_loop()
        monitor = GarbageMonitor(decoder.stats, loop.time())
        log = self.context.logger
        while True:
            data = await port.read()
            for item in decoder.feed(data) if data else ():
                if isinstance(item, str):
                    log.debug("device %s: line did not match: %r", options.id, item)
                else:
                    await self._emit(options, item)
            verdict = monitor.check(loop.time())
            if verdict is not None:
                bad, total, unknown = verdict
                if bad:
                    self.set_problem(
                        f"receiving data but {unknown} of {total} bytes are not lines the "
                        "pattern matches: wrong baud rate, pattern or port?"
                    )
                elif self._problem is not None and self._problem.startswith("receiving"):
                    self.set_problem(None)

    async def _emit(self, options: LineOptions, match: LineMatch) -> None:
        if all(v is None for v in match.values.values()):
            self.context.logger.debug("device %s: matched line without a number", options.id)
            return
        values = tuple(
            Value.of(_CODES[spec.code], match.values[group], spec.unit)
            for group, spec in sorted(options.values.items())
        )
        reading = Reading(
            device_id=options.id,
            driver=options.driver,
            kind=Kind(options.kind),
            measured_at=self.context.clock.now(),
            measured_at_source="hub",
            values=values,
        )
        stored = await self.context.emit(reading)
        self.context.logger.info("device %s: reading stored", options.id)
        self.context.logger.debug("device %s: reading %s: %s", options.id, stored.id, match.values)
