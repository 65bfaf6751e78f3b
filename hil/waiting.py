"""Waiting for something to become true, for tests and the rig: one helper, one message style."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(
    condition: Callable[[], bool], timeout: float, what: str, *, poll_s: float = 0.01
) -> None:
    """Return once ``condition()`` is true; AssertionError naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll_s)
