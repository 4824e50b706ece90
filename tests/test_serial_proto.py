"""Serial protocol decoders: byte vectors, frames split anywhere, garbage, random streams."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.drivers.serial.base import GARBAGE_WINDOW_S, GarbageMonitor
from gateway.drivers.serial.contec_proto import (
    CMD_KEEPALIVE,
    CMD_START_REALTIME,
    LegacyDecoder,
    V7Decoder,
    decode_legacy_frame,
    decode_v7_realtime,
    encode_legacy_frame,
    encode_v7_realtime,
    v7_command,
    v7_unpack,
)
from gateway.drivers.serial.framing import DecoderStats
from gateway.drivers.serial.line_proto import LineDecoder, LineMatch, parse_number
from gateway.drivers.serial.nonin_proto import (
    Format2Decoder,
    Format8Decoder,
    decode_format8,
    encode_format2_packet,
    encode_format8,
)
from gateway.drivers.serial.session import OxiSample, SessionAggregator

# -- byte vectors -------------------------------------------------------------------------


def test_legacy_frame_vector() -> None:
    # SpO2 97, pulse 72, signal 8: as atbrask's LiveDataPoint lays the bytes out.
    frame = bytes([0x88, 0x40, 0x05, 0x48, 0x61])
    assert decode_legacy_frame(frame) == OxiSample(97, 72)
    assert encode_legacy_frame(97, 72) == frame


def test_legacy_pulse_above_127_takes_bit_7_from_byte_3() -> None:
    frame = bytes([0x88, 0x40, 0x45, 0x0A, 0x5F])  # byte 3 bit 6 -> pulse bit 7: 128 + 10
    assert decode_legacy_frame(frame) == OxiSample(95, 138)
    assert encode_legacy_frame(95, 138) == frame


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (bytes([0x88, 0x40, 0x45, 0x7F, 0x7F]), OxiSample(None, None)),  # 127 / 255 markers
        (bytes([0x88, 0x40, 0x05, 0x00, 0x00]), OxiSample(None, None)),  # zeros: acquiring
        (bytes([0x98, 0x40, 0x05, 0x48, 0x61]), OxiSample(None, None, finger_out=True)),
        (bytes([0x88, 0x40, 0x15, 0x48, 0x61]), OxiSample(None, None, finger_out=True)),  # probe
        (bytes([0x88, 0x40, 0x25, 0x48, 0x61]), OxiSample(None, None)),  # searching
        (bytes([0x88, 0x40, 0x05, 0x48, 0x65]), OxiSample(None, 72)),  # SpO2 101: impossible
    ],
)
def test_legacy_missing_markers_are_never_values(frame: bytes, expected: OxiSample) -> None:
    assert decode_legacy_frame(frame) == expected


def test_v7_command_bytes() -> None:
    # "7D 81 A1 80 80 80 80 80 80" starts real-time data (timegrid/CMS50Dplus7).
    assert v7_command(CMD_START_REALTIME).hex(" ") == "7d 81 a1 80 80 80 80 80 80"
    assert v7_command(CMD_KEEPALIVE).hex(" ") == "7d 81 af 80 80 80 80 80 80"


def test_v7_realtime_vector_with_pulse_above_127() -> None:
    # pulse 150 = 0x96: its bit 7 travels in bit 3 of the high byte.
    packet = bytes([0x01, 0x88, 0x88, 0xC0, 0x95, 0x96, 0xE1, 0x8B, 0x82])
    kind, data = v7_unpack(packet)
    assert kind == 0x01
    assert data == bytes([0x08, 0x40, 0x15, 0x96, 0x61, 0x0B, 0x02])
    assert decode_v7_realtime(data) == OxiSample(97, 150)
    assert encode_v7_realtime(97, 150) == packet


@pytest.mark.parametrize(
    ("spo2", "pulse", "kw", "expected"),
    [
        (0x7F, 0xFF, {}, OxiSample(None, None)),
        (0, 0, {}, OxiSample(None, None)),
        (97, 72, {"finger_out": True}, OxiSample(None, None, finger_out=True)),
        (97, 72, {"searching": True}, OxiSample(None, None)),
    ],
)
def test_v7_missing_markers(spo2: int, pulse: int, kw: Any, expected: OxiSample) -> None:
    _, data = v7_unpack(encode_v7_realtime(spo2, pulse, **kw))
    assert decode_v7_realtime(data) == expected


def test_nonin_format2_packet_vector() -> None:
    packet = encode_format2_packet(96, 200)
    assert len(packet) == 125
    # Frame 1: START, STATUS (bit 7, green perfusion, SYNC), PLETH, HR MSB (200 >> 7), CHK.
    assert packet[:5] == bytes([0x01, 0x87, 0x80, 0x01, 0x09])
    assert packet[5:10] == bytes([0x01, 0x86, 0x80, 0x48, 0x4F])  # HR LSB 200 & 0x7F
    assert packet[10:15] == bytes([0x01, 0x86, 0x80, 0x60, 0x67])  # SpO2 96
    decoder = Format2Decoder()
    assert decoder.feed(packet) == [OxiSample(96, 200)]


def test_nonin_format2_markers_flags_and_checksum() -> None:
    decoder = Format2Decoder()
    assert decoder.feed(encode_format2_packet(None, None)) == [OxiSample(None, None)]
    off = decoder.feed(encode_format2_packet(None, None, sensor_off=True))
    assert off[0].finger_out and off[0].spo2 is None
    red = decoder.feed(encode_format2_packet(93, 80, perfusion="red", artifact=True))
    assert red == [OxiSample(93, 80, flags=frozenset({"low_perfusion", "artifact"}))]
    bad = bytearray(encode_format2_packet(95, 70))
    bad[12] ^= 0x01  # SpO2 frame's float byte: its checksum no longer matches
    assert decoder.feed(bytes(bad)) == []  # the packet lost a frame: dropped whole
    assert decoder.stats.checksum_errors == 1
    assert decoder.feed(encode_format2_packet(95, 70)) == [OxiSample(95, 70)]


def test_nonin_format8_vector() -> None:
    frame = bytes([0x81, 0x0A, 0x5E, 0x00])  # HR 128 + 10 = 138, SpO2 94
    assert decode_format8(frame) == OxiSample(94, 138)
    assert encode_format8(94, 138) == frame
    assert decode_format8(encode_format8(None, None)) == OxiSample(None, None)  # 511 / 127
    assert decode_format8(encode_format8(None, None, sensor_off=True)).finger_out
    assert decode_format8(encode_format8(97, 60, perfusion="yellow")).flags == {
        "marginal_perfusion"
    }


def test_line_numbers() -> None:
    assert parse_number(" 82.40") == 82.4
    assert parse_number("---") is None
    assert parse_number("1,5") is None
    assert parse_number("nan") is None
    assert parse_number("inf") is None


# -- streams: split anywhere, garbage between frames ------------------------------------

Factory = Callable[[], Any]


def _stream(kind: str) -> tuple[Factory, bytes, list[OxiSample]]:
    values = [(97, 72), (96, 150), (95, 128), (98, 61), (94, 201), (99, 99)]
    if kind == "legacy":
        data = b"".join(encode_legacy_frame(s, p) for s, p in values * 3)
        return LegacyDecoder, data, [OxiSample(s, p) for s, p in values * 3]
    if kind == "v7":
        data = b"".join(encode_v7_realtime(s, p) for s, p in values * 3)
        return V7Decoder, data, [OxiSample(s, p) for s, p in values * 3]
    if kind == "nonin2":
        data = b"".join(encode_format2_packet(s, p) for s, p in values)
        return Format2Decoder, data, [OxiSample(s, p) for s, p in values]
    data = b"".join(encode_format8(s, p) for s, p in values * 3)
    return Format8Decoder, data, [OxiSample(s, p) for s, p in values * 3]


KINDS = ["legacy", "v7", "nonin2", "nonin8"]


def decode_all(factory: Factory, chunks: list[bytes]) -> list[OxiSample]:
    decoder = factory()
    out: list[OxiSample] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_split_at_every_byte_boundary_decodes_the_same(kind: str) -> None:
    factory, data, expected = _stream(kind)
    whole = decode_all(factory, [data])
    # The first frames of a stream only build trust (see *_TRUST_RUN): a suffix of the values.
    assert whole and whole == expected[len(expected) - len(whole) :]
    for cut in range(1, len(data)):
        assert decode_all(factory, [data[:cut], data[cut:]]) == whole, cut
    assert decode_all(factory, [bytes([b]) for b in data]) == whole


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_between_frames_is_skipped(kind: str) -> None:
    factory, data, _ = _stream(kind)
    clean = decode_all(factory, [data])
    rng = random.Random(4)
    noise = bytes(rng.randrange(256) for _ in range(300))
    got = decode_all(factory, [noise + data + noise[:37] + data])
    # Whatever noise yields around them, the clean stream's values come through, in order.
    assert got[-len(clean) :] == clean
    # And the noise (fixed seed) made no value of its own.
    assert {(s.spo2, s.pulse) for s in got if s.valid} <= {(s.spo2, s.pulse) for s in clean}


@pytest.mark.parametrize("kind", KINDS)
def test_all_garbage_gives_no_trusted_value(kind: str) -> None:
    factory, _, _ = _stream(kind)
    rng = random.Random(kind)
    decoder = factory()
    valid = 0
    for _ in range(50):
        valid += sum(s.valid for s in decoder.feed(rng.randbytes(1000)))
    assert valid <= 2, valid  # a rare fluke at most, never a steady signal
    assert decoder.stats.garbage_ratio() > 0.5


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_random_streams_never_crash_any_decoder(data: bytes, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if c <= len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    for kind in KINDS:
        factory, _, _ = _stream(kind)
        for sample in decode_all(factory, chunks):
            assert sample.spo2 is None or 0 < sample.spo2 <= 100
            assert sample.pulse is None or 0 < sample.pulse < 511
    line = LineDecoder(re.compile(r"W=(?P<w>\S+)"))
    for chunk in chunks:
        for item in line.feed(chunk):
            assert isinstance(item, str | LineMatch)


def test_line_decoder_splits_matches_and_counts() -> None:
    decoder = LineDecoder(re.compile(r"^ST,\+?(?P<weight>[-0-9.]+)\s*kg"))
    stream = b"ST,+0082.40 kg\r\nUS,+0081.10 kg\r\n\xff\xfe\r\nST,+----.-- kg\r\n"
    out: list[object] = []
    for b in stream:
        out.extend(decoder.feed(bytes([b])))
    assert out == [LineMatch({"weight": 82.4}), "US,+0081.10 kg", LineMatch({"weight": None})]
    assert decoder.unmatched == 1
    assert decoder.stats.garbage_bytes > 0
    decoder.feed(b"x" * 5000)  # a runaway line is dropped, up to its end
    assert decoder.feed(b"tail\nST,+0070.00 kg\n") == [LineMatch({"weight": 70.0})]


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    chunks=st.lists(st.tuples(st.binary(max_size=200), st.floats(0, 1.5)), max_size=40),
    clean=st.booleans(),
)
def test_random_streams_through_decoder_and_session_never_crash(
    kind: str, chunks: list[tuple[bytes, float]], clean: bool
) -> None:
    """The driver's pipeline (decoder -> session) on random bytes, mixed with real frames."""
    factory, data, _ = _stream(kind)
    decoder = factory()
    aggregator = SessionAggregator(mode="spot", window_s=1, max_session_s=3)
    t = 0.0
    for chunk, dt in chunks:
        t += dt
        for sample in decoder.feed(chunk + (data if clean else b"")):
            for result in aggregator.feed(t, sample):
                assert 0 < result.spo2 <= 100 and 0 < result.pulse < 511
    aggregator.tick(t + 10)


def test_garbage_monitor_reports_lasting_garbage_not_a_burst() -> None:
    stats = DecoderStats()
    monitor = GarbageMonitor(stats, 0.0)

    def window(t: float, framed: int, garbage: int) -> tuple[bool, int, int] | None:
        stats.bytes_in += framed + garbage
        stats.frame_bytes += framed
        return monitor.check(t * GARBAGE_WINDOW_S)

    assert window(1, 20, 64) is None  # one burst (a replug): not reported
    assert window(2, 100, 0) is None
    assert window(3, 0, 500) is None
    assert window(4, 0, 500) == (True, 500, 500)  # two windows of it: reported
    assert window(5, 10, 500) is None  # still bad: said once
    assert window(6, 500, 0) == (False, 500, 0)  # good again: cleared
    assert window(7, 0, 10) is None  # too few bytes to judge
