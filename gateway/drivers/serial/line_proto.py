"""Text-line devices: split a byte stream into lines and match them against a pattern.

Pure: the driver feeds chunks, gets matched groups. A line is ASCII text ended
by LF (a CR before it is dropped). Lines longer than MAX_LINE bytes, lines that
are not ASCII and lines the pattern does not match are counted, never guessed at.
A group whose text is not a plain decimal number (e.g. "---", which many
devices print for "no value") is None: a missing value, never a number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gateway.drivers.serial.framing import DecoderStats

MAX_LINE = 1024
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def parse_number(text: str | None) -> float | None:
    """A plain decimal number, or None. No locale guessing: "1,5" is not 1.5 (nor 15)."""
    if text is None:
        return None
    stripped = text.strip()
    if not _NUMBER.match(stripped):
        return None
    value = float(stripped)
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class LineMatch:
    values: dict[str, float | None]


class LineDecoder:
    """Bytes -> matched lines. `unmatched` holds the last few unmatched lines for DEBUG logs."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.stats = DecoderStats()
        self.unmatched = 0
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[LineMatch | str]:
        """Matches, and (as str) the lines that did not match, for the caller to log."""
        self.stats.bytes_in += len(data)
        self._buf += data
        out: list[LineMatch | str] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_LINE:
                    self.stats.garbage_bytes += len(self._buf)
                    self._buf.clear()
                    self._overflow = True  # drop the rest of this line too
                break
            raw = bytes(self._buf[: end + 1])
            del self._buf[: end + 1]
            if self._overflow or len(raw) > MAX_LINE + 1:
                self._overflow = False
                self.stats.garbage_bytes += len(raw)
                continue
            out.extend(self._line(raw))
        return out

    def _line(self, raw: bytes) -> list[LineMatch | str]:
        try:
            text = raw.decode("ascii").rstrip("\r\n")
        except UnicodeDecodeError:
            self.stats.garbage_bytes += len(raw)
            return []
        if not text.strip():
            self.stats.frame_bytes += len(raw)  # blank lines are harmless
            return []
        match = self.pattern.search(text)
        if match is None:
            self.unmatched += 1
            self.stats.garbage_bytes += len(raw)
            return [text]
        self.stats.frames += 1
        self.stats.frame_bytes += len(raw)
        return [LineMatch({k: parse_number(v) for k, v in match.groupdict().items()})]
