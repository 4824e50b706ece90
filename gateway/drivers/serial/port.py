"""A pyserial port used from asyncio: every blocking call runs on the port's own thread.

Each call is bounded: reads return after READ_TIMEOUT_S at most (with what has
arrived, possibly nothing), writes after WRITE_TIMEOUT_S. So a cancelled driver
leaves its thread within a fraction of a second, and the event loop never
waits on the device. A port that vanishes (cable pulled, USB re-enumerated,
pseudo-terminal closed) raises `PortLost`; the driver reopens it with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import serial

from gateway.errors import DriverError

READ_TIMEOUT_S = 0.1
WRITE_TIMEOUT_S = 1.0
MAX_CHUNK = 4096

T = TypeVar("T")


class PortLost(DriverError):
    """The port could not be opened, or stopped working."""


@dataclass(frozen=True, slots=True)
class LineSettings:
    """Baud rate and character framing."""

    baudrate: int
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class SerialPort:
    """One open serial port. Use `async with await SerialPort.open(...)`."""

    def __init__(self, path: str, handle: Any, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self._serial = handle
        self._executor = executor

    @classmethod
    async def open(cls, path: str, settings: LineSettings) -> SerialPort:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="homehub-serial")

        def do_open() -> Any:
            handle = serial.Serial(
                port=path,
                baudrate=settings.baudrate,
                bytesize=settings.bytesize,
                parity=settings.parity,
                stopbits=settings.stopbits,
                timeout=READ_TIMEOUT_S,
                write_timeout=WRITE_TIMEOUT_S,
                # No XON/XOFF: these protocols are binary, 0x11 and 0x13 are data.
                xonxoff=False,
                rtscts=False,
            )
            # Bytes queued before we opened are stale (or from another baud rate).
            handle.reset_input_buffer()
            return handle

        try:
            handle = await asyncio.get_running_loop().run_in_executor(executor, do_open)
        except (serial.SerialException, OSError, ValueError) as exc:
            executor.shutdown(wait=False)
            # No path in the message: it reaches the logs and the backend's status.
            raise PortLost(f"cannot open the port: {_reason(exc, path)}") from None
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, handle, executor)

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (serial.SerialException, OSError) as exc:
            raise PortLost(f"port {what} failed: {_reason(exc, self.path)}") from None

    async def read(self) -> bytes:
        """What arrived, waiting at most READ_TIMEOUT_S for the first byte; b"" if nothing."""

        def do_read() -> bytes:
            first: bytes = self._serial.read(1)
            if not first:
                return b""
            waiting = min(MAX_CHUNK, int(self._serial.in_waiting))
            rest: bytes = self._serial.read(waiting) if waiting else b""
            return first + rest

        return await self._call(do_read, "read")

    async def write(self, data: bytes) -> None:
        def do_write() -> None:
            self._serial.write(data)

        await self._call(do_write, "write")

    async def reconfigure(self, settings: LineSettings) -> None:
        """Change baud rate and framing on the open port (and drop what is queued)."""

        def do_apply() -> None:
            self._serial.apply_settings(
                {
                    "baudrate": settings.baudrate,
                    "bytesize": settings.bytesize,
                    "parity": settings.parity,
                    "stopbits": settings.stopbits,
                }
            )
            self._serial.reset_input_buffer()

        await self._call(do_apply, "reconfigure")

    async def close(self) -> None:
        def do_close() -> None:
            self._serial.close()

        try:
            await asyncio.shield(
                asyncio.get_running_loop().run_in_executor(self._executor, do_close)
            )
        except (serial.SerialException, OSError):
            pass  # it is gone either way
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> SerialPort:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _reason(exc: BaseException, path: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror} (errno {exc.errno})"
    else:
        text = str(exc) or type(exc).__name__
    # pyserial names the port in its messages; the path stays out of logs and status.
    return text.replace(str(path), "the port")
