"""The virtual radio: a Bumble LocalLink that virtual devices and the hub's controller share."""

from __future__ import annotations

import logging

from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import Transport

log = logging.getLogger(__name__)


class VirtualAir:
    """Virtual devices live on `link`; `expose` gives a host (the hub) a controller on it."""

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self._transports: list[Transport] = []

    async def expose(self, transport_spec: str) -> Transport:
        """Attach a controller for the hub on an HCI transport, e.g. tcp-server:127.0.0.1:0."""
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
        for transport in self._transports:
            await transport.close()
        self._transports.clear()


def tcp_port(transport: Transport) -> int:
    """The port a `tcp-server:HOST:0` transport actually listens on."""
    server = getattr(transport, "server", None)
    if server is None:
        raise ValueError("not a tcp-server transport")
    return int(server.sockets[0].getsockname()[1])
