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
- **counting**: round trips, resends, request bytes, stale replies and the last reply (the
  garbage, when a read ends in garbage, for the quarantine).

**Stale replies.** Over the mesh a reply can arrive seconds late, after its request timed out
and the next one went out. The exchange recognises it (``StaleReply``: another request's
invoke-id or response type, or other wPorts) before it changes any state; the driver logs it,
counts it and keeps waiting for the real reply within what is left of the timeout. A link that
can wait for the next frame without sending (``ReceivingLink.receive``) is asked to; one that
cannot is sent the exchange's ``retry_frame()`` (the meter answers again; a duplicate answer is
stale to the next request and discarded the same way). At most ``max_stale`` frames are
discarded per request sent, so a peer that only ever answers something else is a timeout, not a
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, runtime_checkable

from .link import LinkError, LinkTimeout, MeterLink
from .session import DlmsError, DlmsSession, Exchange, StaleReply

_log = logging.getLogger(__name__)

T = TypeVar("T")

Pace = Callable[[int], Awaitable[None]]
"""Awaited with a frame's length before the frame is sent (e.g. ``ThroughputLimit.take``)."""

RELEASE_TIMEOUT_S = 1.0
"""How long a best-effort release waits: the meter drops a stale association by itself anyway."""


MAX_STALE = 8
"""Stale frames discarded per request sent before the request counts as timed out."""


@runtime_checkable
class ReceivingLink(Protocol):
    """A ``MeterLink`` that can also wait for the next frame from the meter without sending
    one: what the driver uses after discarding a stale reply."""

    async def receive(self, timeout: float) -> bytes: ...


class StaleTimeout(LinkTimeout):
    """Only stale replies came back within the timeout (or more than ``max_stale`` of them):
    retried like a silent meter."""


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
        max_stale: int = MAX_STALE,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must not be negative, got {retries}")
        if max_stale < 0:
            raise ValueError(f"max_stale must not be negative, got {max_stale}")
        self.max_stale = max_stale
        self.stale = 0  # replies discarded as not answering the outstanding request
        self.stale_reasons: list[str] = []  # the last few, for a read's warnings
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
            frame = await self.step(exchange, frame, wait)
        return exchange.result

    async def step(self, exchange: Exchange[T], frame: bytes, timeout: float) -> bytes | None:
        """Send one request of ``exchange`` and feed it its reply, stale replies discarded,
        with the retries; returns what ``exchange.feed`` returned (the next frame or None)."""
        for attempt in range(self.retries + 1):
            try:
                return await self._attempt(exchange, frame, timeout)
            except self.retry_on:
                if attempt == self.retries:
                    raise
                self.resends += 1
                frame = exchange.retry_frame()
        raise AssertionError("unreachable")

    async def _send(self, frame: bytes, timeout: float) -> bytes:
        if self.pace is not None:
            await self.pace(len(frame))
        self.round_trips += 1
        self.frame_bytes += len(frame)
        return await self.link.request(frame, timeout)

    async def _attempt(self, exchange: Exchange[T], frame: bytes, timeout: float) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reply = await self._send(frame, timeout)
        discarded = 0
        while True:
            self.last_reply = reply
            try:
                return exchange.feed(reply)
            except StaleReply as exc:
                discarded += 1
                self._discard(exc)
            left = deadline - loop.time()
            if left <= 0 or discarded > self.max_stale:
                raise StaleTimeout(
                    f"{exchange.target}: {discarded} stale repl{'y' if discarded == 1 else 'ies'}"
                    f" (the last: {self.stale_reasons[-1]}) and no answer in {timeout:g} s"
                )
            if isinstance(self.link, ReceivingLink):
                try:
                    reply = await self.link.receive(left)
                except LinkTimeout:
                    raise StaleTimeout(
                        f"{exchange.target}: {discarded} stale repl"
                        f"{'y' if discarded == 1 else 'ies'} (the last: "
                        f"{self.stale_reasons[-1]}) and no answer in {timeout:g} s"
                    ) from None
            else:  # the link cannot wait without sending: ask again, the meter answers again
                self.resends += 1
                reply = await self._send(exchange.retry_frame(), left)

    def _discard(self, exc: StaleReply) -> None:
        self.stale += 1
        self.stale_reasons = [*self.stale_reasons[-7:], exc.reason]
        _log.debug("%s; frame %s", exc, exc.frame_hex)


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
