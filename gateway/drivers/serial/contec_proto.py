"""Contec CMS50D+/E/F serial protocols: pure decoders and the encoders the simulator uses.

Two protocols exist, depending on the firmware:

**Legacy live frames** (CMS50D+ firmware 4.x and older units): 5 bytes, about
60 a second, sent unprompted while a finger is in; 19200 baud 8-O-1 (older
units 4800 8N1). Bit 7 is set in byte 1 only (the sync bit):

    byte 1: bit 6 beep, bit 5 SpO2 dropping, bit 4 finger out / searching too long,
            bits 3-0 signal strength
    byte 2: pleth waveform (7 bits)
    byte 3: bit 6 pulse rate bit 7, bit 5 searching, bit 4 probe error, bits 3-0 bar graph
    byte 4: pulse rate bits 6-0
    byte 5: SpO2 (7 bits)

Sources: atbrask/CMS50Dplus, cms50dplus/cms50dplus.py (`LiveDataPoint`), and the
translated Contec manual quoted in picbasic.co.uk forum thread 11311 (4800 8N1).

**Protocol v7.0** (newer CMS50D+/E/F firmware): 115200 8N1; the device streams
only after a "start real-time" command and wants a keep-alive about every 5 s.
A packet is a type byte (bit 7 clear) followed by a "high byte" and data bytes,
all with bit 7 set; bit i of the high byte is bit 7 of data byte i (so a pulse
above 127 has its top bit in the high byte). A command is the same shape with
type 0x7D: `7D 81 A1 80 80 80 80 80 80` starts real-time data. Real-time
packets (type 0x01) carry 7 data bytes:

    d0: bit 7 probe error, bit 6 beep, bit 5 low SpO2, bit 4 searching too long,
        bits 3-0 signal strength
    d1: bit 7 searching pulse, bits 6-0 pleth
    d2: bit 4 PI valid, bits 3-0 bar graph
    d3: pulse rate (8 bits, 0xFF = invalid)
    d4: SpO2 (0x7F = invalid)
    d5, d6: perfusion index, little-endian (0xFFFF = invalid)

Source: timegrid/CMS50Dplus7, cms50dplus7.py (`RealtimeDataPoint`,
`decode_package`, `encode_package`, commands 0xA1 start, 0xA2 stop, 0xAF
keep-alive every 5 s), which follows Contec's "Communication protocol of pulse
oximeter V7.0".

Missing values: SpO2 127, pulse 255 and zeros (while the device acquires) are
markers, never values; searching, probe-error and finger-out frames carry none.
"""

from __future__ import annotations

from gateway.drivers.serial.framing import SYNC, DecoderStats, LeadSyncDecoder
from gateway.drivers.serial.session import OxiSample

LEGACY_FRAME = 5
V7_REALTIME = 0x01
V7_COMMAND = 0x7D
V7_REALTIME_LEN = 9  # type, high byte, 7 data bytes
CMD_START_REALTIME = 0xA1
CMD_STOP_REALTIME = 0xA2
CMD_KEEPALIVE = 0xAF
KEEPALIVE_S = 5.0

SPO2_MISSING = 0x7F
PULSE_MISSING = 0xFF
#: Frames in a row (since the last garbage) before values are trusted.
LEGACY_TRUST_RUN = 6
V7_TRUST_RUN = 2


def _spo2(raw: int) -> int | None:
    return raw if 0 < raw <= 100 else None  # 0: acquiring; 127: missing; >100: impossible


def _pulse(raw: int) -> int | None:
    return raw if 0 < raw < PULSE_MISSING else None


# -- legacy -------------------------------------------------------------------------


def decode_legacy_frame(frame: bytes) -> OxiSample:
    """One 5-byte legacy live frame (already framed: sync bit on byte 1 only)."""
    b0, _, b2, b3, b4 = frame
    finger_out = bool(b0 & 0x10) or bool(b2 & 0x10)  # finger out / probe error
    searching = bool(b2 & 0x20)
    pulse = ((b2 & 0x40) << 1) | (b3 & 0x7F)
    spo2 = b4 & 0x7F
    if finger_out or searching:
        return OxiSample(None, None, finger_out=finger_out)
    return OxiSample(_spo2(spo2), _pulse(pulse))


def encode_legacy_frame(
    spo2: int,
    pulse: int,
    *,
    finger_out: bool = False,
    searching: bool = False,
    signal: int = 8,
    pleth: int = 64,
) -> bytes:
    """The frame a legacy CMS50 sends (for simulators and tests)."""
    b0 = SYNC | (signal & 0x0F) | (0x10 if finger_out else 0)
    b2 = (0x20 if searching else 0) | ((pulse & 0x80) >> 1) | 0x05
    return bytes([b0, pleth & 0x7F, b2, pulse & 0x7F, spo2 & 0x7F])


class LegacyDecoder(LeadSyncDecoder[OxiSample]):
    """Stream of legacy live frames -> samples."""

    def __init__(self) -> None:
        super().__init__(LEGACY_FRAME, decode_legacy_frame, LEGACY_TRUST_RUN)


# -- protocol v7.0 --------------------------------------------------------------------


def v7_packet(kind: int, data: bytes) -> bytes:
    """Type byte, high byte carrying each data byte's bit 7, then the data with bit 7 set."""
    if len(data) > 7 or kind & SYNC:
        raise ValueError("a v7 packet has a 7-bit type and at most 7 data bytes")
    high = SYNC
    for i, byte in enumerate(data):
        high |= ((byte & 0x80) >> 7) << i
    return bytes([kind, high, *(b | SYNC for b in data)])


def v7_command(command: int, args: bytes = b"") -> bytes:
    """A command to the device, padded to 7 data bytes as the protocol wants."""
    return v7_packet(V7_COMMAND, (bytes([command]) + args).ljust(7, b"\x00"))


def v7_unpack(packet: bytes) -> tuple[int, bytes]:
    """(type, data bytes with their bit 7 restored from the high byte)."""
    high = packet[1]
    data = bytes((b & 0x7F) | (((high >> i) & 1) << 7) for i, b in enumerate(packet[2:]))
    return packet[0], data


def decode_v7_realtime(data: bytes) -> OxiSample:
    """The 7 data bytes of a real-time packet (type 0x01)."""
    d0, d1, _, pulse, spo2, _, _ = data
    finger_out = bool(d0 & 0x80) or bool(d0 & 0x10)  # probe error / searching too long
    searching = bool(d1 & 0x80)
    if finger_out or searching:
        return OxiSample(None, None, finger_out=finger_out)
    return OxiSample(_spo2(spo2), _pulse(pulse))


def encode_v7_realtime(
    spo2: int,
    pulse: int,
    *,
    finger_out: bool = False,
    searching: bool = False,
    signal: int = 8,
    pleth: int = 64,
) -> bytes:
    d0 = (signal & 0x0F) | (0x10 if finger_out else 0)
    d1 = (pleth & 0x7F) | (0x80 if searching else 0)
    pi = 0xFFFF if finger_out or searching else 523
    return v7_packet(
        V7_REALTIME, bytes([d0, d1, 0x15, pulse & 0xFF, spo2 & 0xFF, pi & 0xFF, pi >> 8])
    )


class V7Decoder:
    """Stream of protocol v7.0 packets -> samples from the real-time packets."""

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self.commands: list[int] = []  # commands seen (the simulator decodes the host's side)
        self.run = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[OxiSample]:
        self.stats.bytes_in += len(data)
        buf = self._buf
        buf += data
        out: list[OxiSample] = []
        i, n = 0, len(buf)
        while i < n:
            if buf[i] & SYNC:  # not a type byte: we are not at a packet start
                self._garbage(1)
                i += 1
                continue
            # A packet runs from its type byte to the next byte with bit 7 clear.
            end = i + 1
            while end < n and end - i <= 8 and buf[end] & SYNC:
                end += 1
            if end == n and end - i <= 8:
                break  # the packet may go on in the next chunk
            packet = bytes(buf[i:end])
            i = end
            if len(packet) < 2:
                self._garbage(len(packet))
                continue
            kind, body = v7_unpack(packet)
            if kind == V7_REALTIME:
                if len(packet) != V7_REALTIME_LEN:
                    self._garbage(len(packet))
                    continue
                self.stats.frames += 1
                self.stats.frame_bytes += len(packet)
                self.run += 1
                if self.run >= V7_TRUST_RUN:
                    out.append(decode_v7_realtime(body))
            elif kind == V7_COMMAND and len(packet) == V7_REALTIME_LEN:
                self.commands.append(body[0])
                self.stats.frames += 1
                self.stats.frame_bytes += len(packet)
            else:
                self.stats.other_packets += 1
                self.run = 0
        del buf[:i]
        return out

    def _garbage(self, count: int) -> None:
        self.stats.garbage_bytes += count
        self.run = 0
