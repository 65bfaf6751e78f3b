"""UDP and TCP edges serving emulated meters on loopback (DLMS WRAPPER, normally port 4059).

One listening address serves a dict of meters keyed by server wPort (see ``MeterRouter``); for the
one-meter-per-address layout of a real network, serve each meter on its own port. UDP carries one
frame per datagram; TCP frames are cut out of the stream by their WRAPPER length, and a stream whose
header is not WRAPPER is closed (its framing cannot be recovered).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from firmware_agent.collector.link import read_wrapper_frame
from firmware_agent.collector.wrapper import WrapperError

from .dlms_server import MeterServer
from .router import MeterRouter


class _UdpMeters(asyncio.DatagramProtocol):
    def __init__(self, router: MeterRouter) -> None:
        self.router = router
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport here

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = self.router.route(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@dataclass
class UdpMeterService:
    transport: asyncio.DatagramTransport
    router: MeterRouter
    host: str
    port: int

    def close(self) -> None:
        self.transport.close()


async def serve_udp(
    servers: Mapping[int, MeterServer], host: str = "127.0.0.1", port: int = 0
) -> UdpMeterService:
    """Serve ``servers`` (keyed by server wPort) on a UDP socket; port 0 picks a free port."""
    router = MeterRouter(servers)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpMeters(router), local_addr=(host, port)
    )
    bound = transport.get_extra_info("sockname")
    return UdpMeterService(transport, router, host, int(bound[1]))


@dataclass
class TcpMeterService:
    server: asyncio.Server
    router: MeterRouter
    host: str
    port: int
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def close(self) -> None:
        """Stop listening, close every connection and wait for their handlers to finish (so no
        handler is left to be cancelled when the loop ends)."""
        self.server.close()
        for writer in self.connections.values():
            writer.close()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=5.0)
        await self.server.wait_closed()


async def serve_tcp(
    servers: Mapping[int, MeterServer], host: str = "127.0.0.1", port: int = 0
) -> TcpMeterService:
    """Serve ``servers`` over TCP; each connection may carry many frames in sequence."""
    router = MeterRouter(servers)
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections[task] = writer
        try:
            while True:
                frame = await read_wrapper_frame(reader)
                reply = router.route(frame)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except WrapperError as exc:
            router.counters[f"tcp-{exc.reason}"] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                connections.pop(task, None)

    server = await asyncio.start_server(client, host, port)
    bound = server.sockets[0].getsockname()
    return TcpMeterService(server, router, host, int(bound[1]), connections)
