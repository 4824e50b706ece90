"""Nonin serial data formats #2 and #8: pure decoders and the encoders the simulator uses.

Both at 9600 baud 8N1. Source: Nonin's OEM specifications ("OEM III Module
Specification and Technical Information", "WristOx2 Model 3150 OEM
Specification", sections "Serial Data Format #2/#8 Definition"), as also
implemented in uk.ac.ox.ibme.nonin `NoninPacket`/`NoninFrame` (frame layout,
float-byte positions, missing values 511 and 127) and drphrozen's `Format8`.

**Format #2**: 5-byte frames, 75 a second: `01 STATUS PLETH FLOAT CHK`, with
CHK = (sum of the first four bytes) mod 256. STATUS has bit 7 always set, bit 6
SNSD (sensor disconnected), bit 5 ARTF (artifact), bit 4 OOT (out of track),
bit 3 SNSA (sensor alarm: unusable data, e.g. finger removed), bit 2 YPRF and
bit 1 RPRF (perfusion: yellow only = marginal, red only = low, both = green),
bit 0 SYNC (set on the first frame of a packet). 25 frames make a packet (3 a
second); the FLOAT byte of frame k carries item k of the packet. We use items
0/1 (HR MSB/LSB: HR bits 8-7 in bits 1-0 of the MSB, bits 6-0 in the LSB) and 2
(SpO2), the 4-beat averages "formatted for recording": they change to the
missing value at once when the finger comes out, unlike the "display" items,
which hold the last value for 10 s and would report a stale number.

**Format #8**: 4 bytes, once a second: STATUS (bit 7 set; bit 6 SNSD, bit 5
OOT, bit 4 LPRF low perfusion, bit 3 MPRF marginal perfusion, bit 2 ARTF,
bits 1-0 HR bits 8-7), HR LSB (bits 6-0), SpO2, STATUS2 (battery and
SmartPoint flags, unused here); bit 7 is clear in bytes 2-4. No checksum.

Missing values: HR 511, SpO2 127; frames with checksum failures are counted
and dropped, and a packet missing a frame is dropped whole.
"""

from __future__ import annotations

from gateway.drivers.serial.framing import SYNC, DecoderStats, LeadSyncDecoder
from gateway.drivers.serial.session import OxiSample

START = 0x01
FRAME2 = 5
FRAMES_PER_PACKET = 25
FRAME8 = 4
HR_MISSING = 511
SPO2_MISSING = 127
HR_MAX = 321  # the top of Nonin's specified pulse rate range (18-321/min)
#: Format #8 has no checksum: trust values after this many frames in a row.
FORMAT8_TRUST_RUN = 4

SNSD, ARTF, OOT, SNSA, YPRF, RPRF, SYNC_BIT = 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01


def _hr(value: int) -> int | None:
    return value if 0 < value <= HR_MAX else None  # 511: missing


def _spo2(value: int) -> int | None:
    return value if 0 < value <= 100 else None  # 127: missing


def checksum(frame_head: bytes) -> int:
    return sum(frame_head) & 0xFF


# -- format #2 --------------------------------------------------------------------------


def encode_format2_packet(
    spo2: int | None,
    pulse: int | None,
    *,
    sensor_off: bool = False,
    perfusion: str = "green",
    artifact: bool = False,
    pleth: int = 128,
) -> bytes:
    """The 25 frames (125 bytes) of one format #2 packet. None sends the missing value."""
    hr = HR_MISSING if pulse is None else pulse
    sat = SPO2_MISSING if spo2 is None else spo2
    floats = [0] * FRAMES_PER_PACKET
    floats[0], floats[1], floats[2] = (hr >> 7) & 0x03, hr & 0x7F, sat & 0x7F
    floats[3] = 0x2A  # firmware revision
    status = SYNC
    if sensor_off:
        status |= SNSD | SNSA
    else:
        status |= {"green": YPRF | RPRF, "yellow": YPRF, "red": RPRF}.get(perfusion, 0)
    if artifact:
        status |= ARTF
    out = bytearray()
    for k, value in enumerate(floats):
        head = bytes([START, status | (SYNC_BIT if k == 0 else 0), pleth & 0xFF, value])
        out += head + bytes([checksum(head)])
    return bytes(out)


def decode_format2_packet(frames: list[bytes]) -> OxiSample:
    """A complete packet (25 frames of 5 bytes, the first with the SYNC bit)."""
    statuses = [f[1] for f in frames]
    floats = [f[3] for f in frames]
    any_status = 0
    for s in statuses:
        any_status |= s
    flags: set[str] = set()
    if any_status & ARTF:
        flags.add("artifact")
    perf = {s & (YPRF | RPRF) for s in statuses}
    if RPRF in perf:
        flags.add("low_perfusion")
    elif YPRF in perf:
        flags.add("marginal_perfusion")
    if any_status & (SNSD | SNSA):
        return OxiSample(None, None, finger_out=True, flags=frozenset(flags))
    if any_status & OOT:
        return OxiSample(None, None, flags=frozenset(flags))
    hr = ((floats[0] & 0x03) << 7) | (floats[1] & 0x7F)
    return OxiSample(_spo2(floats[2] & 0x7F), _hr(hr), flags=frozenset(flags))


class Format2Decoder:
    """Stream of format #2 frames -> one sample per complete packet."""

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._packet: list[bytes] | None = None
        self._in_sync = False

    def feed(self, data: bytes) -> list[OxiSample]:
        self.stats.bytes_in += len(data)
        buf = self._buf
        buf += data
        out: list[OxiSample] = []
        i, n = 0, len(buf)
        while n - i >= FRAME2:
            head = bytes(buf[i : i + 4])
            plausible = head[0] == START and head[1] & SYNC
            if plausible and checksum(head) == buf[i + 4]:
                self._frame(bytes(buf[i : i + FRAME2]), out)
                i += FRAME2
                continue
            if plausible and self._in_sync:
                # Where a frame should be, with a bad checksum: drop that frame.
                self.stats.checksum_errors += 1
                self.stats.garbage_bytes += FRAME2
                i += FRAME2
            else:
                self.stats.garbage_bytes += 1
                i += 1
            self._in_sync = False
            self._drop_packet()
        del buf[:i]
        return out

    def _frame(self, frame: bytes, out: list[OxiSample]) -> None:
        self.stats.frames += 1
        self.stats.frame_bytes += FRAME2
        self._in_sync = True
        if frame[1] & SYNC_BIT:
            self._drop_packet()
            self._packet = [frame]
        elif self._packet is not None:
            self._packet.append(frame)
        if self._packet is not None and len(self._packet) == FRAMES_PER_PACKET:
            out.append(decode_format2_packet(self._packet))
            self._packet = None

    def _drop_packet(self) -> None:
        self._packet = None


# -- format #8 --------------------------------------------------------------------------


def encode_format8(
    spo2: int | None,
    pulse: int | None,
    *,
    sensor_off: bool = False,
    perfusion: str = "green",
    artifact: bool = False,
) -> bytes:
    hr = HR_MISSING if pulse is None else pulse
    sat = SPO2_MISSING if spo2 is None else spo2
    status = SYNC | ((hr >> 7) & 0x03)
    if sensor_off:
        status |= SNSD
    status |= {"red": 0x10, "yellow": 0x08}.get(perfusion, 0)
    if artifact:
        status |= 0x04
    return bytes([status, hr & 0x7F, sat & 0x7F, 0x00])


def decode_format8(frame: bytes) -> OxiSample:
    status, hr_lsb, sat, _ = frame
    flags: set[str] = set()
    if status & 0x10:
        flags.add("low_perfusion")
    elif status & 0x08:
        flags.add("marginal_perfusion")
    if status & 0x04:
        flags.add("artifact")
    if status & SNSD:
        return OxiSample(None, None, finger_out=True, flags=frozenset(flags))
    if status & 0x20:  # out of track: no trustworthy value
        return OxiSample(None, None, flags=frozenset(flags))
    hr = ((status & 0x03) << 7) | (hr_lsb & 0x7F)
    return OxiSample(_spo2(sat & 0x7F), _hr(hr), flags=frozenset(flags))


class Format8Decoder(LeadSyncDecoder[OxiSample]):
    """Stream of format #8 packets -> one sample each."""

    def __init__(self) -> None:
        super().__init__(FRAME8, decode_format8, FORMAT8_TRUST_RUN)
