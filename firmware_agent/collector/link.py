"""Transports that carry WRAPPER frames to a meter: the edge the DLMS session is driven through.

A ``MeterLink`` does one thing: send a frame and hand back the next frame the meter sends. The
session decides what to send next (block transfer loops through ``request`` again), so a mesh
link, an OS UDP socket and a TCP stream are interchangeable.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from .wrapper import HEADER_LEN, WrapperError, parse_header


class LinkError(Exception):
    """The transport failed (refused, closed, desynchronised); the meter may be fine."""


class LinkTimeout(LinkError):
    """No frame came back within the timeout."""


class MeterLink(Protocol):
    async def request(self, frame: bytes, timeout: float) -> bytes:
        """Send one WRAPPER frame; return the next WRAPPER frame received from the meter."""

    async def close(self) -> None:
        """Release the transport; a later ``request`` may reopen it."""


class _DatagramQueue(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.frames.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.frames.put_nowait(exc)


class UdpMeterLink:
    """A connected UDP socket to ``host:port`` (DLMS/UDP is port 4059): one datagram per frame."""

    def __init__(self, host: str, port: int = 4059) -> None:
        self.host = host
        self.port = port
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _DatagramQueue | None = None

    async def _open(self) -> tuple[asyncio.DatagramTransport, _DatagramQueue]:
        if self._transport is None or self._protocol is None or self._transport.is_closing():
            loop = asyncio.get_running_loop()
            self._transport, self._protocol = await loop.create_datagram_endpoint(
                _DatagramQueue, remote_addr=(self.host, self.port)
            )
        return self._transport, self._protocol

    async def request(self, frame: bytes, timeout: float) -> bytes:
        transport, protocol = await self._open()
        while not protocol.frames.empty():  # late replies to an earlier, timed-out request
            protocol.frames.get_nowait()
        transport.sendto(frame)
        return await self.receive(timeout)

    async def receive(self, timeout: float) -> bytes:
        """The next datagram from the meter without sending (after a stale reply)."""
        _, protocol = await self._open()
        try:
            async with asyncio.timeout(timeout):
                got = await protocol.frames.get()
        except TimeoutError:
            raise LinkTimeout(f"no reply from {self.host}:{self.port} in {timeout:g} s") from None
        if isinstance(got, Exception):
            raise LinkError(f"UDP {self.host}:{self.port}: {got}") from got
        return got

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._protocol = None


class TcpMeterLink:
    """A TCP stream to ``host:port``; replies are cut out of the stream by the WRAPPER length."""

    def __init__(self, host: str, port: int = 4059) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            try:
                async with asyncio.timeout(timeout):
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            except TimeoutError:
                raise LinkTimeout(f"TCP connect to {self.host}:{self.port} timed out") from None
            except OSError as exc:
                raise LinkError(f"TCP connect to {self.host}:{self.port}: {exc}") from exc
        return self._reader, self._writer

    async def request(self, frame: bytes, timeout: float) -> bytes:
        _, writer = await self._open(timeout)
        try:
            writer.write(frame)
            await writer.drain()
        except OSError as exc:
            await self.close()
            raise LinkError(f"TCP {self.host}:{self.port}: {exc}") from exc
        return await self.receive(timeout)

    async def receive(self, timeout: float) -> bytes:
        """The next frame from the stream without sending (after a stale reply)."""
        reader, _ = await self._open(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await read_wrapper_frame(reader)
        except TimeoutError:
            # The stream position is unknown now: start over on a fresh connection next time.
            await self.close()
            raise LinkTimeout(f"no reply from {self.host}:{self.port} in {timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, WrapperError) as exc:
            await self.close()
            raise LinkError(f"TCP {self.host}:{self.port}: {exc}") from exc

    async def close(self) -> None:
        writer = self._writer
        self._reader = None
        self._writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_wrapper_frame(reader: asyncio.StreamReader) -> bytes:
    """Read exactly one WRAPPER frame from a stream; raises WrapperError on a bad header and
    IncompleteReadError if the peer closes mid-frame."""
    head = await reader.readexactly(HEADER_LEN)
    header = parse_header(head)
    return head + await reader.readexactly(header.length)
