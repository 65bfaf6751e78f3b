"""The frame-level link between a Spinel host and its board, and the HDLC adapter for byte links.

Spinel itself is framing-neutral: a UART (or a PTY) carries it in HDLC-lite, SPI carries raw
frames behind a 5-byte transfer header. :class:`FrameTransport` is what the Spinel host needs —
send one Spinel frame, receive the next one (or a typed framing error it can count) — so the host
is the same code whichever wire is below it. :class:`HdlcFrameTransport` turns any async byte
stream (:class:`ByteTransport`: pyserial port, spawned PTY, in-memory pipe) into one.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, runtime_checkable

from drivers.hdlc import HdlcDecoder, HdlcError, hdlc_encode


class FramingError(Exception):
    """Received bytes the link layer could not turn into a frame. ``kind`` names the framing
    (``"hdlc"``, ``"spi"``) so counters can tell them apart; ``data`` holds (up to 64 of) the
    offending bytes for a hex log line."""

    kind = "framing"

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = bytes(data[:64])


class HdlcFramingError(FramingError):
    """An HDLC-lite decoder error (garbage, bad FCS, ...); ``cause`` is the decoder's error."""

    kind = "hdlc"

    def __init__(self, cause: HdlcError) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}", cause.data)
        self.cause = cause


@runtime_checkable
class ByteTransport(Protocol):
    """An async byte stream to the board (UART, PTY, in-memory pipe)."""

    async def open(self) -> None: ...

    async def read(self) -> bytes:
        """Some received bytes (at least one); raises RadioError when the link is gone."""
        ...

    async def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


@runtime_checkable
class FrameTransport(Protocol):
    """What the Spinel host needs from a link to the board: whole Spinel frames."""

    async def open(self) -> None: ...

    async def send_frame(self, frame: bytes) -> None:
        """Put one Spinel frame on the link (returns once the link has taken it)."""
        ...

    async def recv_frame(self) -> bytes | FramingError:
        """The next Spinel frame from the board, or a framing error to count and log.
        Raises RadioError when the link is gone."""
        ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class HdlcFrameTransport:
    """HDLC-lite framing over a :class:`ByteTransport` (the UART and PTY links)."""

    def __init__(self, transport: ByteTransport, *, max_frame: int | None = None) -> None:
        self.transport = transport
        self._decoder = HdlcDecoder() if max_frame is None else HdlcDecoder(max_frame)
        self._ready: deque[bytes | FramingError] = deque()

    async def open(self) -> None:
        await self.transport.open()

    async def send_frame(self, frame: bytes) -> None:
        await self.transport.write(hdlc_encode(frame))

    async def recv_frame(self) -> bytes | FramingError:
        while not self._ready:
            for item in self._decoder.feed(await self.transport.read()):
                self._ready.append(HdlcFramingError(item) if isinstance(item, HdlcError) else item)
        return self._ready.popleft()

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        await self.transport.wait_closed()


def as_frame_transport(link: FrameTransport | ByteTransport) -> FrameTransport:
    """A frame transport as is; a byte transport wrapped in HDLC-lite (the UART default)."""
    if isinstance(link, FrameTransport):
        return link
    return HdlcFrameTransport(link)
