"""UDP and TCP edges serving emulated meters on loopback (DLMS WRAPPER, normally port 4059).

One listening address serves a dict of meters keyed by server wPort (see ``MeterRouter``); for the
one-meter-per-address layout of a real network, serve each meter on its own port. UDP carries one
frame per datagram; TCP frames are cut out of the stream by their WRAPPER length, and a stream whose
header is not WRAPPER is closed (its framing cannot be recovered).

A meter may be a ``FaultyMeter`` (hil/meter/faults.py): its replies can carry a delay, which the
edges apply here (UDP schedules the datagram, TCP holds the stream, as a slow meter would).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from firmware_agent.collector.link import read_wrapper_frame
from firmware_agent.collector.wrapper import WrapperError, parse_header

from .dlms_server import MeterServer
from .faults import FaultyMeter, Reply
from .router import MeterRouter

Meter = MeterServer | FaultyMeter


class _Responder:
    """The router's rule, with faulty meters answering through their fault layer."""

    def __init__(self, meters: Mapping[int, Meter]) -> None:
        self.router = MeterRouter(
            {w: m.server if isinstance(m, FaultyMeter) else m for w, m in meters.items()}
        )
        self.faulty = {w: m for w, m in meters.items() if isinstance(m, FaultyMeter)}
        self.only = next(iter(meters.values())) if len(meters) == 1 else None

    def respond(self, frame: bytes) -> Reply | None:
        if self.faulty:
            try:
                meter = self.faulty.get(parse_header(frame).destination)
            except WrapperError:
                meter = None
            if meter is None and isinstance(self.only, FaultyMeter):
                meter = self.only
            if meter is not None:
                return meter.respond(frame)
        reply = self.router.route(frame)
        return None if reply is None else Reply(reply)


class _UdpMeters(asyncio.DatagramProtocol):
    def __init__(self, responder: _Responder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport here

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = self.responder.respond(data)
        if reply is None or self.transport is None:
            return
        if reply.delay_s > 0:
            asyncio.get_running_loop().call_later(reply.delay_s, self._send, reply.frame, addr)
        else:
            self.transport.sendto(reply.frame, addr)

    def _send(self, frame: bytes, addr: tuple[str | object, ...]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(frame, addr)


@dataclass
class UdpMeterService:
    transport: asyncio.DatagramTransport
    router: MeterRouter
    host: str
    port: int

    def close(self) -> None:
        self.transport.close()


async def serve_udp(
    servers: Mapping[int, Meter], host: str = "127.0.0.1", port: int = 0
) -> UdpMeterService:
    """Serve ``servers`` (keyed by server wPort) on a UDP socket; port 0 picks a free port."""
    responder = _Responder(servers)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpMeters(responder), local_addr=(host, port)
    )
    bound = transport.get_extra_info("sockname")
    return UdpMeterService(transport, responder.router, host, int(bound[1]))


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
    servers: Mapping[int, Meter], host: str = "127.0.0.1", port: int = 0
) -> TcpMeterService:
    """Serve ``servers`` over TCP; each connection may carry many frames in sequence."""
    responder = _Responder(servers)
    router = responder.router
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections[task] = writer
        try:
            while True:
                frame = await read_wrapper_frame(reader)
                reply = responder.respond(frame)
                if reply is not None:
                    if reply.delay_s > 0:
                        await asyncio.sleep(reply.delay_s)
                    writer.write(reply.frame)
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
