"""``SerialTransport`` on a real PTY pair: write coalescing, back-pressure, a vanished port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import tty
from collections.abc import Awaitable, Callable, Iterator

import pytest

from drivers.transceiver import RadioError
from drivers.uart import WRITE_HIGH_WATER, SerialTransport


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 30)

    asyncio.run(bounded())


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """The master descriptor (the "board" side) and the slave's path (the port we open)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    yield master, path
    with contextlib.suppress(OSError):  # the test may have closed it already
        os.close(master)


def read_exactly(fd: int, size: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    out = bytearray()
    os.set_blocking(fd, False)
    while len(out) < size:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(out)} of {size} bytes arrived")
        try:
            out += os.read(fd, size - len(out))
        except BlockingIOError:
            time.sleep(0.001)
    return bytes(out)


def test_writes_in_one_turn_arrive_whole_and_in_order(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    chunks = [bytes([i]) * (i + 1) for i in range(200)]

    async def body() -> None:
        port = SerialTransport(path)
        await port.open()
        for chunk in chunks:  # no await that yields between them: one event-loop turn
            await port.write(chunk)
        await asyncio.sleep(0)  # the turn ends: what was queued goes out
        got = await asyncio.to_thread(read_exactly, master, sum(map(len, chunks)))
        assert got == b"".join(chunks)
        port.close()

    run(body)


def test_write_waits_while_the_board_does_not_read(pty_pair: tuple[int, str]) -> None:
    """More than the high-water mark queued for a port nobody drains: ``write`` waits, and
    finishes once the other side reads; no byte is lost or reordered."""
    master, path = pty_pair
    data = os.urandom(WRITE_HIGH_WATER * 3)

    async def body() -> None:
        port = SerialTransport(path)
        await port.open()
        writer = asyncio.create_task(port.write(data))
        await asyncio.sleep(0.3)
        assert not writer.done(), "write returned with far more than its high-water mark queued"
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(read_exactly(master, len(data))))
        reader.start()
        await asyncio.wait_for(writer, 10)
        await asyncio.to_thread(reader.join, 10)
        assert got == [data]
        port.close()

    run(body)


def test_port_that_vanishes_fails_later_writes_and_reads(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair

    async def body() -> None:
        port = SerialTransport(path)
        await port.open()
        await port.write(b"\x7e\x81\x02\x7e")
        await asyncio.sleep(0.05)
        os.close(master)  # the board's end goes away (a PTY's equivalent of a USB unplug)
        with pytest.raises(RadioError, match="vanished"):
            await asyncio.wait_for(port.read(), 5)
        with pytest.raises(RadioError, match="vanished"):
            await port.write(b"more")
        port.close()

    run(body)


def test_write_after_close_is_a_clear_error(pty_pair: tuple[int, str]) -> None:
    _, path = pty_pair

    async def body() -> None:
        port = SerialTransport(path)
        await port.open()
        port.close()
        with pytest.raises(RadioError, match=f"serial port {path} closed"):
            await port.write(b"x")

    run(body)


def test_close_sends_what_was_queued(pty_pair: tuple[int, str]) -> None:
    """A reset request written just before close still reaches the board."""
    master, path = pty_pair

    async def body() -> None:
        port = SerialTransport(path)
        await port.open()
        await port.write(b"first")
        await port.write(b"second")  # queued behind the first, same turn
        port.close()
        assert await asyncio.to_thread(read_exactly, master, 11) == b"firstsecond"

    run(body)
