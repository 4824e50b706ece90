"""The virtual radio: a Bumble LocalLink that virtual devices and the hub's controller share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bumble import hci, ll
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import StreamPacketSource, Transport

log = logging.getLogger(__name__)


class VirtualAir:
    """Virtual devices live on `link`; `expose` gives a host (the hub) a controller on it."""

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self._transports: list[Transport] = []
        self._servers: list[HubPort] = []

    async def expose(self, transport_spec: str) -> Transport | HubPort:
        """Attach a controller for the hub on an HCI transport, e.g. tcp-server:127.0.0.1:0."""
        if transport_spec.startswith("tcp-server:"):
            host, port = transport_spec.removeprefix("tcp-server:").rsplit(":", 1)
            server = HubPort(self)
            await server.start(None if host == "_" else host, int(port))
            self._servers.append(server)
            return server
        transport = await open_transport(transport_spec)
        Controller(
            f"hub{len(self._transports)}",
            host_source=transport.source,
            host_sink=transport.sink,
            link=self.link,
        )
        self._transports.append(transport)
        return transport

    async def close(self) -> None:
        for server in self._servers:
            await server.close()
        for transport in self._transports:
            await transport.close()
        self._servers.clear()
        self._transports.clear()


class _Sink:
    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def on_packet(self, packet: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(packet)


class HubPort:
    """An HCI-over-TCP port for the hub, sturdier than a bare tcp-server transport.

    Every client (a hub starting, or restarting after a crash) gets a fresh
    controller on the link; the previous client's controller leaves the link
    and its links are terminated, so the devices see a disconnection and
    advertise again, as they would when a real hub lost power.
    """

    def __init__(self, air: VirtualAir) -> None:
        self.air = air
        self.controller: Controller | None = None
        self.server: asyncio.Server | None = None
        self._clients = 0

    async def start(self, host: str | None, port: int) -> None:
        port_ = self

        class Protocol(asyncio.Protocol):
            def __init__(self) -> None:
                self.source = StreamPacketSource()
                self.controller: Controller | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.controller = port_.attach(self.source, _Sink(transport))

            def data_received(self, data: bytes) -> None:
                self.source.data_received(data)

            def connection_lost(self, exc: Exception | None) -> None:
                if self.controller is not None and port_.controller is self.controller:
                    port_.retire(self.controller)
                    port_.controller = None

        self.server = await asyncio.get_running_loop().create_server(Protocol, host, port)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def attach(self, source: StreamPacketSource, sink: _Sink) -> Controller:
        if self.controller is not None:
            self.retire(self.controller)
        self._clients += 1
        self.controller = Controller(
            f"hub-{self._clients}", host_source=source, host_sink=sink, link=self.air.link
        )
        return self.controller

    def retire(self, controller: Controller) -> None:
        connections: dict[Any, Any] = controller.le_connections
        for connection in list(connections.values()):
            with contextlib.suppress(Exception):
                connection.send_ll_control_pdu(
                    ll.TerminateInd(hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR)
                )
            connections.pop(connection.peer_address, None)
        with contextlib.suppress(KeyError):
            self.air.link.remove_controller(controller)

    async def close(self) -> None:
        if self.controller is not None:
            self.retire(self.controller)
            self.controller = None
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def tcp_port(transport: Transport | HubPort) -> int:
    """The port a `tcp-server:HOST:0` transport actually listens on."""
    if isinstance(transport, HubPort):
        return transport.port
    server = getattr(transport, "server", None)
    if server is None:
        raise ValueError("not a tcp-server transport")
    return int(server.sockets[0].getsockname()[1])
