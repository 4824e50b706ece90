"""A paho client that reads its socket in large chunks (the ingest's receive path).

paho 2.x reads every packet with three or four `recv` calls (the command byte, each
byte of the Remaining Length, then the rest; `Client._packet_read`), and its loop
waits in `select` before each packet unless the socket says bytes are `pending()`.
For a worker draining a backlog that is ~5 system calls per reading, and each one
gives up and takes back the GIL that the batch writer and the validator need: a
yappi profile of one worker put paho's receive path at about half of its CPU (issue
9; bench/README.md, backend_ingest).

`BufferedSocket` wraps the connected socket (plain or TLS): one `recv` of up to
READ_CHUNK bytes fills a buffer that serves paho's small reads, and `pending()`
reports the buffered bytes, which paho's loop already honours (it is how it drains
an SSL socket's own buffer, and how its `_WebsocketWrapper` works) so no packet
waits in the buffer for a `select` that would never fire. Everything else is the
wrapped socket's.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import paho.mqtt.client as paho

#: One read takes what the kernel has, up to this; a backlog of ~600-byte readings
#: is ~100 of them per call.
READ_CHUNK = 64 * 1024


class BufferedSocket:
    """A socket whose reads are served from a buffer filled READ_CHUNK at a time."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self._sock = sock
        # bytearray: deleting from the front is O(1) in CPython (it moves a start offset).
        self._buffer = bytearray()

    def recv(self, bufsize: int) -> bytes:
        buffer = self._buffer
        if not buffer:
            # Raises what the socket raises (BlockingIOError, ssl.SSLWantReadError, ...)
            # exactly as paho expects from the socket itself.
            data = self._sock.recv(max(bufsize, READ_CHUNK))
            if len(data) <= bufsize:
                return data
            buffer += data
        chunk = bytes(buffer[:bufsize])
        del buffer[:bufsize]
        return chunk

    def pending(self) -> int:
        """Bytes paho can read without waiting (ours, and a TLS socket's own)."""
        inner = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        return len(self._buffer) + inner

    def __getattr__(self, name: str) -> Any:
        # send, fileno, setblocking, close, shutdown, setsockopt, ...
        return getattr(self._sock, name)


class BufferedClient(paho.Client):
    """paho's Client with a BufferedSocket (`_create_socket` is paho's hook for the
    transport: its websocket wrapper comes from the same place)."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one too
            return BufferedSocket(sock)
        return sock  # a websocket wrapper buffers by itself
