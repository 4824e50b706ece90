"""The ingest's buffered paho socket (homehub_backend.mqttsock, issue 9).

The buffer must hand paho exactly the bytes, in order, that the socket delivered, in
the pieces paho asks for; say through `pending()` what is waiting, so paho's loop never
waits in `select` for bytes it already has; and pass the socket's own errors through.
Then a real worker over TLS and plain TCP, with a backlog larger than one chunk.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from homehub_backend.config import BackendConfig
from homehub_backend.mqttsock import READ_CHUNK, BufferedSocket

from gateway.sim.broker import MosquittoBroker, free_port
from tests.backend.support import Publisher, ThreadWorker, reading_doc, reading_ids
from tests.helpers import wait_until
from tests.test_tls import make_pki


@pytest.fixture
def pair() -> Iterator[tuple[BufferedSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield BufferedSocket(ours), theirs
    ours.close()
    theirs.close()


def test_small_reads_are_served_from_one_recv_in_order(
    pair: tuple[BufferedSocket, socket.socket],
) -> None:
    buffered, peer = pair
    # Two PUBACK-sized packets and a PUBLISH, in one segment (as a backlog arrives).
    data = bytes.fromhex("4002 0001") + bytes.fromhex("4002 0002") + b"\x30\x05\x00\x01t" + b"ab"
    peer.sendall(data)
    wait_until(lambda: _readable(buffered), 5, "bytes to read")
    got = [buffered.recv(1)]  # paho: the command byte...
    assert buffered.pending() == len(data) - 1  # ...the rest is buffered, and paho is told
    got += [buffered.recv(1), buffered.recv(2)]
    got += [buffered.recv(1), buffered.recv(1), buffered.recv(2)]
    got += [buffered.recv(1), buffered.recv(1), buffered.recv(5)]
    assert b"".join(got) == data
    assert got[-1] == b"\x00\x01tab"
    assert buffered.pending() == 0
    with pytest.raises(BlockingIOError):  # nothing left: the socket's own error
        buffered.recv(1)


def test_a_read_larger_than_the_buffer_returns_what_there_is(
    pair: tuple[BufferedSocket, socket.socket],
) -> None:
    buffered, peer = pair
    peer.sendall(b"x" * 10)
    wait_until(lambda: _readable(buffered), 5, "bytes to read")
    assert buffered.recv(3) == b"xxx"
    assert buffered.recv(100) == b"x" * 7  # a short read, as recv gives one
    peer.sendall(b"y" * 4)
    wait_until(lambda: _readable(buffered), 5, "bytes to read")
    assert buffered.recv(100) == b"y" * 4  # an empty buffer: straight from the socket
    assert buffered.pending() == 0


def test_more_than_one_chunk_arrives_whole(pair: tuple[BufferedSocket, socket.socket]) -> None:
    buffered, peer = pair
    data = bytes(range(256)) * (3 * READ_CHUNK // 256 + 7)
    received = bytearray()
    sent = 0
    while len(received) < len(data):
        if sent < len(data):
            sent += peer.send(data[sent : sent + 65536])
        try:
            received += buffered.recv(1 if len(received) % 3 else 777)
        except BlockingIOError:
            continue
    assert bytes(received) == data


def test_a_closed_peer_reads_as_end_of_stream(pair: tuple[BufferedSocket, socket.socket]) -> None:
    buffered, peer = pair
    peer.sendall(b"z")
    peer.close()
    wait_until(lambda: _readable(buffered), 5, "bytes to read")
    assert buffered.recv(1) == b"z"
    assert buffered.recv(1) == b""  # paho: MQTT_ERR_CONN_LOST


def test_everything_else_is_the_sockets(pair: tuple[BufferedSocket, socket.socket]) -> None:
    buffered, _ = pair
    assert buffered.fileno() >= 0
    assert buffered.getsockname() == buffered.getsockname()


def _readable(buffered: BufferedSocket) -> bool:
    import select

    return bool(select.select([buffered], [], [], 0)[0]) or buffered.pending() > 0


def test_a_worker_over_tls_stores_a_backlog_of_several_chunks(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    backend_config: Callable[..., tuple[Path, BackendConfig]],
    database: str,
) -> None:
    """TLS records and the buffer: the SSL socket's own pending bytes count as well."""
    pki = make_pki(tmp_path / "pki")
    plain = free_port()
    broker = broker_factory(
        tls=(pki["ca.crt"], pki["server.crt"], pki["server.key"]),
        extra=[f"listener {plain} 127.0.0.1"],
        subscriber=False,
    )
    _, config = backend_config(
        broker.port,
        broker={
            "ca_file": pki["ca.crt"],
            "cert_file": pki["client.crt"],
            "key_file": pki["client.key"],
        },
    )
    worker = ThreadWorker(config).start()
    publisher = Publisher(plain)
    try:
        # ~600 bytes each: 400 of them are several READ_CHUNKs, sent as fast as they go.
        docs = [reading_doc("hub-tls", n) for n in range(400)]
        publisher.readings(docs)
        wait_until(lambda: worker.worker.counters.stored >= 400, 30, "400 stored")
    finally:
        publisher.close()
        worker.stop()
    assert sorted(reading_ids(database)) == sorted(d["id"] for d in docs)
