"""The `serial.contec_cms50` driver: Contec CMS50D+/E/F pulse oximeters.

`protocol = "auto"` finds out which protocol the device speaks: it asks for
v7.0 real-time data at 115200 baud, then listens for legacy frames at 19200
8-O-1 and at 4800 8N1, DETECT_S each, until one of them yields frames; then it
stays with it (and detects again after the port is reopened). The two
protocols cannot be mistaken for each other: a legacy frame is one byte with
bit 7 set and four without, a v7 packet one without and eight with.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field, model_validator

from gateway.drivers.serial.contec_proto import (
    CMD_KEEPALIVE,
    CMD_START_REALTIME,
    KEEPALIVE_S,
    LegacyDecoder,
    V7Decoder,
    v7_command,
)
from gateway.drivers.serial.framing import DecoderStats
from gateway.drivers.serial.options import OximeterOptions
from gateway.drivers.serial.oximeter import OximeterDriver
from gateway.drivers.serial.port import LineSettings, SerialPort

#: How long auto-detection listens for one protocol and line setting.
DETECT_S = 2.5
#: Frames that prove a protocol.
DETECT_FRAMES = 3

V7_LINE = LineSettings(115200)
LEGACY_LINE = LineSettings(19200, parity="O")
OLD_LEGACY_LINE = LineSettings(4800)
_LINE_BY_BAUD = {115200: V7_LINE, 19200: LEGACY_LINE, 4800: OLD_LEGACY_LINE}

Protocol = Literal["v7", "legacy"]


class ContecOptions(OximeterOptions):
    protocol: Literal["auto", "legacy", "v7"] = Field(
        default="auto",
        description="'legacy' (5-byte live frames; firmware 4.x and older), 'v7' (protocol "
        "v7.0; newer firmware), or 'auto' to detect it.",
    )
    baudrate: Literal[4800, 19200, 115200] | None = Field(
        default=None,
        description="Default (not set): the protocol's own (v7: 115200 8N1; legacy: 19200 "
        "8-O-1, then 4800 8N1 for older units). Set it to skip the others.",
    )

    @model_validator(mode="after")
    def _check_baud(self) -> ContecOptions:
        if self.protocol == "v7" and self.baudrate not in (None, 115200):
            raise ValueError("protocol v7 runs at 115200 baud")
        if self.protocol == "legacy" and self.baudrate == 115200:
            raise ValueError("the legacy protocol runs at 19200 or 4800 baud")
        return self


def candidates(protocol: str, baudrate: int | None) -> list[tuple[Protocol, LineSettings]]:
    """(protocol, line settings) to try, in order."""
    found: list[tuple[Protocol, LineSettings]] = []
    if protocol in ("auto", "v7") and baudrate in (None, 115200):
        found.append(("v7", V7_LINE))
    if protocol in ("auto", "legacy"):
        for baud in (19200, 4800):
            if baudrate in (None, baud):
                found.append(("legacy", _LINE_BY_BAUD[baud]))
    return found


class ContecCms50Driver(OximeterDriver):
    Options = ContecOptions
    _decoder: LegacyDecoder | V7Decoder | None = None
    _speaking: str = "Contec CMS50"

    @property
    def protocol_name(self) -> str:
        return self._speaking

    def _candidates(self) -> list[tuple[Protocol, LineSettings]]:
        options = self.options
        assert isinstance(options, ContecOptions)
        return candidates(options.protocol, options.baudrate)

    def first_settings(self) -> LineSettings:
        return self._candidates()[0][1]

    def decoder_stats(self) -> DecoderStats | None:
        return None if self._decoder is None else self._decoder.stats

    async def session(self, port: SerialPort) -> None:
        tries = self._candidates()
        if len(tries) == 1:
            await self._speak(port, *tries[0])
            return
        log = self.context.logger
        noisy_cycles = 0
        while True:
            unrecognised = 0
            for protocol, line in tries:
                await port.reconfigure(line)
                decoder = await self._listen(port, protocol)
                if decoder.stats.frames >= DETECT_FRAMES:
                    log.info("device %s: speaks Contec %s at %s", self.options.id, protocol, line)
                    if self._problem is not None and self._problem.startswith("receiving"):
                        self.set_problem(None)
                    await self._speak(port, protocol, line, decoder)
                    return
                unrecognised += decoder.stats.garbage_bytes + decoder.stats.other_packets
            # One cycle may catch a v7 device starting to stream (on our start command)
            # while we listen for legacy frames; two in a row are a real problem.
            noisy_cycles = noisy_cycles + 1 if unrecognised else 0
            if noisy_cycles >= 2:
                self.set_problem(
                    f"receiving data but no Contec frames at any of "
                    f"{', '.join(str(line) for _, line in tries)}: wrong driver or port?"
                )

    async def _listen(self, port: SerialPort, protocol: Protocol) -> LegacyDecoder | V7Decoder:
        decoder: LegacyDecoder | V7Decoder = V7Decoder() if protocol == "v7" else LegacyDecoder()
        self._decoder = decoder
        if protocol == "v7":
            await port.write(v7_command(CMD_START_REALTIME))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DETECT_S
        await self.pump(
            port,
            decoder,
            until=lambda: decoder.stats.frames >= DETECT_FRAMES or loop.time() >= deadline,
        )
        return decoder

    async def _speak(
        self,
        port: SerialPort,
        protocol: Protocol,
        line: LineSettings,
        decoder: LegacyDecoder | V7Decoder | None = None,
    ) -> None:
        self._speaking = f"Contec {protocol} at {line}"
        if decoder is None:
            await port.reconfigure(line)
            decoder = V7Decoder() if protocol == "v7" else LegacyDecoder()
        self._decoder = decoder
        if protocol == "legacy":
            await self.pump(port, decoder)
            return
        v7 = decoder
        assert isinstance(v7, V7Decoder)
        loop = asyncio.get_running_loop()
        state = {"sent": loop.time(), "frames": v7.stats.frames}
        if decoder.stats.frames == 0:
            await port.write(v7_command(CMD_START_REALTIME))

        async def keep_alive() -> None:
            # v7 devices stop streaming without a keep-alive about every 5 s; one that
            # was switched off and on again needs the start command again.
            now = loop.time()
            if now - state["sent"] < KEEPALIVE_S:
                return
            quiet = v7.stats.frames == state["frames"]
            await port.write(v7_command(CMD_START_REALTIME if quiet else CMD_KEEPALIVE))
            state["sent"], state["frames"] = now, v7.stats.frames

        await self.pump(port, v7, periodic=keep_alive)
