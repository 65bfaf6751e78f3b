"""A bare PTY whose master end a test drives by hand: a scripted "board" that answers (or
does not answer) the host's frames byte for byte, for the cases no well-behaved emulated board
produces (lost replies, stray TIDs, resets in the middle of a request)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from drivers.hdlc import HdlcDecoder


@contextlib.asynccontextmanager
async def raw_pty() -> AsyncIterator[tuple[int, str]]:
    """A bare PTY whose master the test drives by hand (a scripted 'board')."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


async def read_frames(master: int, decoder: HdlcDecoder) -> list[bytes]:
    """The next good frames the host wrote (waits for at least one)."""
    out: list[bytes] = []
    loop = asyncio.get_running_loop()
    while not out:
        ready: asyncio.Future[None] = loop.create_future()

        def wake(fut: asyncio.Future[None] = ready) -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(master, wake)
        try:
            await ready
        finally:
            loop.remove_reader(master)
        out += [f for f in decoder.feed(os.read(master, 4096)) if isinstance(f, bytes)]
    return out
