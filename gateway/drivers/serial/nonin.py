"""The `serial.nonin` driver: Nonin oximeters in serial data format #2 or #8 (9600 8N1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.drivers.serial.framing import DecoderStats
from gateway.drivers.serial.nonin_proto import Format2Decoder, Format8Decoder
from gateway.drivers.serial.options import OximeterOptions
from gateway.drivers.serial.oximeter import OximeterDriver
from gateway.drivers.serial.port import LineSettings, SerialPort


class NoninOptions(OximeterOptions):
    data_format: Literal[2, 8] = Field(
        default=2,
        description="The serial data format the oximeter is set to: 2 (5-byte frames with "
        "checksum, 25-frame packets, 3 a second) or 8 (4-byte packets, once a second).",
    )
    baudrate: int = Field(
        default=9600, ge=300, le=921600, description="Nonin's serial formats use 9600 baud."
    )


class NoninDriver(OximeterDriver):
    Options = NoninOptions
    _decoder: Format2Decoder | Format8Decoder | None = None

    @property
    def protocol_name(self) -> str:
        options = self.options
        assert isinstance(options, NoninOptions)
        return f"Nonin data format #{options.data_format}"

    def first_settings(self) -> LineSettings:
        options = self.options
        assert isinstance(options, NoninOptions)
        return LineSettings(options.baudrate)

    def decoder_stats(self) -> DecoderStats | None:
        return None if self._decoder is None else self._decoder.stats

    async def session(self, port: SerialPort) -> None:
        options = self.options
        assert isinstance(options, NoninOptions)
        self._decoder = Format2Decoder() if options.data_format == 2 else Format8Decoder()
        await self.pump(port, self._decoder)
