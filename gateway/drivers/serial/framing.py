"""Frame finding shared by the binary protocols, and the counters every decoder keeps.

Decoders are fed whatever chunks the port returns: a frame may be split
anywhere, and garbage (a replug, a wrong baud rate) may sit between frames.
Every decision here depends only on the bytes seen so far, never on how they
were chunked, so a stream decodes the same whichever way it is split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

SYNC = 0x80


@dataclass(slots=True)
class DecoderStats:
    """What a decoder did with the bytes it got (for status, logs and tests)."""

    bytes_in: int = 0
    frames: int = 0
    frame_bytes: int = 0
    garbage_bytes: int = 0
    checksum_errors: int = 0
    other_packets: int = 0  # well-formed packets of a kind the driver does not use

    def garbage_ratio(self) -> float:
        return 0.0 if self.bytes_in == 0 else 1.0 - self.frame_bytes / self.bytes_in


class LeadSyncFramer:
    """Fixed-length frames whose first byte alone has bit 7 set.

    Used by the Contec legacy live frames (5 bytes) and Nonin format #8 (4 bytes).
    Out of sync, a candidate frame counts only if the byte after it starts a
    frame too, so one stray byte with bit 7 set cannot fake a frame.
    `run` counts frames since the last garbage: a decoder trusts values only
    from a run of a few frames, which random bytes practically never make.
    """

    def __init__(self, length: int, stats: DecoderStats) -> None:
        self.length = length
        self.stats = stats
        self.run = 0
        self._buf = bytearray()
        self._in_sync = False

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """Complete frames, each with the length of its run so far (itself included)."""
        buf = self._buf
        buf += data
        out: list[tuple[bytes, int]] = []
        i, n, size = 0, len(buf), self.length
        while i < n:
            if not buf[i] & SYNC:
                self._garbage(1)
                i += 1
                continue
            if n - i < size:
                break
            frame = bytes(buf[i : i + size])
            broken = next((k for k in range(1, size) if frame[k] & SYNC), 0)
            if broken:
                self._garbage(broken)
                i += broken
                continue
            if not self._in_sync:
                if n - i < size + 1:
                    break
                if not buf[i + size] & SYNC:
                    self._garbage(size)
                    i += size
                    continue
            self.stats.frames += 1
            self.stats.frame_bytes += size
            self.run += 1
            out.append((frame, self.run))
            self._in_sync = True
            i += size
        del buf[:i]
        return out

    def _garbage(self, count: int) -> None:
        self.stats.garbage_bytes += count
        self._in_sync = False
        self.run = 0


class LeadSyncDecoder(Generic[T]):
    """A LeadSyncFramer stream -> decoded frames, trusted only within a run.

    Values count only from the `trust_run`-th frame in a row on, so random
    bytes that happen to look like one frame never become a number.
    """

    def __init__(self, length: int, decode: Callable[[bytes], T], trust_run: int) -> None:
        self.stats = DecoderStats()
        self._framer = LeadSyncFramer(length, self.stats)
        self._decode = decode
        self._trust_run = trust_run

    def feed(self, data: bytes) -> list[T]:
        self.stats.bytes_in += len(data)
        return [
            self._decode(frame) for frame, run in self._framer.feed(data) if run >= self._trust_run
        ]
