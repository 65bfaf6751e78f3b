"""The one way an ``Exchange`` is driven through a ``MeterLink``: send, feed replies, resend.

Reads, firmware pushes, the security reset and the ping all do the same thing with a sans-IO
exchange: send its request, feed each reply frame back, send what it asks for next, until it is
done. What differs is policy, and that is a parameter here, not a copy of the loop:

- **retries**: after a ``LinkTimeout`` (or any error of ``retry_on``) the exchange's
  ``retry_frame()`` is sent, never the same bytes again: under suite 0 that is the plain request
  re-protected with a fresh invocation counter, so a meter that processed the first copy (only
  its reply was lost) does not see a replay and answer with a false "MAC Fail";
- **pace**: awaited with each frame's size before it goes out (the firmware push's byte-rate
  limit), so a shared limit meters every frame a run puts on the link, resends included;
- **counting**: round trips, resends, request bytes and the last reply (the garbage, when a read
  ends in garbage, for the quarantine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .link import LinkError, LinkTimeout, MeterLink
from .session import DlmsError, DlmsSession, Exchange

T = TypeVar("T")

Pace = Callable[[int], Awaitable[None]]
"""Awaited with a frame's length before the frame is sent (e.g. ``ThroughputLimit.take``)."""

RELEASE_TIMEOUT_S = 1.0
"""How long a best-effort release waits: the meter drops a stale association by itself anyway."""


class ExchangeDriver:
    """Drives exchanges over one link with one retry policy, and counts what it did.

    Keep one per operation (a read, a push run) to sum its round trips over its exchanges."""

    def __init__(
        self,
        link: MeterLink,
        timeout: float,
        retries: int = 0,
        *,
        retry_on: tuple[type[LinkError], ...] = (LinkTimeout,),
        pace: Pace | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must not be negative, got {retries}")
        self.link = link
        self.timeout = timeout
        self.retries = retries
        self.retry_on = retry_on
        self.pace = pace
        self.round_trips = 0  # requests sent, resends included
        self.resends = 0
        self.frame_bytes = 0  # request bytes put on the link
        self.last_reply: bytes | None = None

    async def run(self, exchange: Exchange[T], timeout: float | None = None) -> T:
        """Drive ``exchange`` to completion; returns its result. Link errors that outlast the
        retries and the exchange's own ``DlmsError`` propagate unchanged."""
        wait = self.timeout if timeout is None else timeout
        frame: bytes | None = exchange.request
        while frame is not None:
            reply = await self.request(exchange, frame, wait)
            self.last_reply = reply
            frame = exchange.feed(reply)
        return exchange.result

    async def request(self, exchange: Exchange[T], frame: bytes, timeout: float) -> bytes:
        """One request of ``exchange`` and its reply, with the retries."""
        for attempt in range(self.retries + 1):
            if self.pace is not None:
                await self.pace(len(frame))
            self.round_trips += 1
            self.frame_bytes += len(frame)
            try:
                return await self.link.request(frame, timeout)
            except self.retry_on:
                if attempt == self.retries:
                    raise
                self.resends += 1
                frame = exchange.retry_frame()
        raise AssertionError("unreachable")


async def run_exchange(
    link: MeterLink, exchange: Exchange[T], timeout: float, retries: int = 0
) -> T:
    """Drive one exchange (resending ``retry_frame()`` after a LinkTimeout, ``retries`` times)."""
    return await ExchangeDriver(link, timeout, retries).run(exchange)


async def release_quietly(
    link: MeterLink, session: DlmsSession, timeout: float = RELEASE_TIMEOUT_S
) -> None:
    """Best-effort RLRQ after a failed or finished operation, so the meter does not keep a stale
    association; whatever goes wrong is ignored (the operation's own outcome stands)."""
    with contextlib.suppress(DlmsError, LinkError):
        await run_exchange(link, session.release(), timeout)
