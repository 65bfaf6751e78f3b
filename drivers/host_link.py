"""The host end of a Spinel link: requests matched to their replies by TID, and one reader that
sorts the link's frames into replies and unsolicited frames.

Why one piece: the RCP driver (``drivers/rcp_host.py``) and the TI NCP backend
(``firmware_agent/mesh/ti_ncp.py``) speak the same request/reply half of Spinel; they differ only
in what an unsolicited frame means to them (a received 802.15.4 frame, an IPv6 packet, a board
reset). Each owns a ``SpinelHost`` and hands it a callback for those.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from drivers.framing import FrameTransport, FramingError
from drivers.spinel import (
    TID_MAX,
    Cmd,
    Prop,
    SpinelError,
    SpinelFrame,
    decode_frame,
    encode,
    prop_name,
)
from drivers.transceiver import RadioError, RadioTimeout

log = logging.getLogger(__name__)


@dataclass
class LinkStats:
    """What the link and the request/reply matching count; hosts extend it with their own."""

    framing_errors: int = 0  # any framing (HDLC or SPI) error
    hdlc_errors: int = 0  # the HDLC-lite share of framing_errors
    spinel_errors: int = 0  # frames that framed but do not decode as Spinel
    unmatched_replies: int = 0  # a TID nobody waits for (e.g. the reply to a timed-out request)
    timeouts: int = 0
    retries: int = 0


class SpinelHost:
    """Requests over ``link`` (a frame transport), each on a free TID 1..15, answered by the
    PROP_VALUE_IS of the same TID for that property (or LAST_STATUS). Frames with TID 0 go to
    ``on_unsolicited``. When the link fails or the host closes, every waiting request and every
    later one raises the failure, and ``on_failure`` is told once."""

    def __init__(
        self,
        link: FrameTransport,
        *,
        name: str,
        stats: LinkStats,
        on_unsolicited: Callable[[SpinelFrame], None],
        on_failure: Callable[[RadioError], None] | None = None,
        describe: Callable[[int], str] = prop_name,
    ) -> None:
        self.name = name
        self.stats = stats
        self.failure: RadioError | None = None
        self._link = link
        self._on_unsolicited = on_unsolicited
        self._on_failure = on_failure
        self._describe = describe
        self._pending: dict[int, tuple[int, asyncio.Future[SpinelFrame]]] = {}
        self._tids = asyncio.Semaphore(TID_MAX)
        self._last_tid = 0
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._link.open()
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.name}-spinel-reader")

    async def close(self, reason: str = "link closed") -> None:
        reader, self._reader = self._reader, None
        try:
            if reader is not None:
                reader.cancel()
                await asyncio.wait([reader])
        finally:
            self._link.close()
            self.fail(RadioError(f"{self.name}: {reason}"))
            await self._link.wait_closed()

    async def send(self, spinel_frame: bytes) -> None:
        """One frame to the board, whole (frames from concurrent callers never interleave)."""
        async with self._write_lock:
            await self._link.send_frame(spinel_frame)

    async def request(
        self, command: int, prop: int, payload: bytes, *, timeout: float, retries: int = 0
    ) -> SpinelFrame:
        """The board's reply to ``command`` on ``prop``: its PROP_VALUE_IS, or a LAST_STATUS
        (the caller decides whether that status is a refusal). Raises RadioTimeout after
        ``retries + 1`` unanswered attempts, or the link's failure."""
        what = f"{Cmd(command).name} {self._describe(prop)}"
        loop = asyncio.get_running_loop()
        for attempt in range(retries + 1):
            self.check()
            async with self._tids:
                tid = self._alloc_tid()
                future: asyncio.Future[SpinelFrame] = loop.create_future()
                self._pending[tid] = (prop, future)
                try:
                    await self.send(encode(tid, command, prop, payload))
                    async with asyncio.timeout(timeout):
                        return await future
                except TimeoutError:
                    self.stats.timeouts += 1
                    if attempt < retries:
                        self.stats.retries += 1
                        log.warning("%s: %s timed out (TID %d), retrying", self.name, what, tid)
                finally:
                    del self._pending[tid]
        raise RadioTimeout(
            f"{self.name}: no reply to {what} after {retries + 1} attempt(s) of {timeout:g} s"
        )

    def check(self) -> None:
        """Raise the link's failure, if it has failed."""
        if self.failure is not None:
            raise self.failure

    def fail(self, error: RadioError) -> None:
        """The link is gone: every request now and later raises ``error`` (the first one)."""
        first = self.failure is None
        failure = self.failure = self.failure or error
        self.abandon(lambda _prop: failure)
        if first and self._on_failure is not None:
            self._on_failure(failure)

    def abandon(self, error_for: Callable[[int], BaseException]) -> None:
        """Fail the requests waiting now with ``error_for(their property)`` (a board that reset
        answers nothing it was asked before); later requests go ahead."""
        for prop, future in self._pending.values():
            if not future.done():
                future.set_exception(error_for(prop))

    def _alloc_tid(self) -> int:
        for step in range(1, TID_MAX + 1):
            tid = (self._last_tid + step - 1) % TID_MAX + 1
            if tid not in self._pending:
                self._last_tid = tid
                return tid
        raise RadioError(f"{self.name}: no free TID")  # pragma: no cover - semaphore prevents it

    async def _read_loop(self) -> None:
        try:
            while True:
                item = await self._link.recv_frame()
                if isinstance(item, FramingError):
                    self.stats.framing_errors += 1
                    if item.kind == "hdlc":
                        self.stats.hdlc_errors += 1
                    log.warning("%s: %s: %s", self.name, item, item.data.hex())
                    continue
                try:  # a value the host cannot decode (in a reply or a stream) is one bad frame
                    self._dispatch(decode_frame(item))
                except SpinelError as exc:
                    self.stats.spinel_errors += 1
                    log.warning("%s: bad Spinel frame %s: %s", self.name, item.hex(), exc)
        except RadioError as exc:
            self.fail(exc)
        except Exception as exc:  # a bug here must not leave requests hanging forever
            log.exception("%s: Spinel reader failed", self.name)
            self.fail(RadioError(f"{self.name}: Spinel reader failed: {exc!r}"))

    def _dispatch(self, frame: SpinelFrame) -> None:
        if not frame.tid:
            self._on_unsolicited(frame)
            return
        pending = self._pending.get(frame.tid)
        if (
            pending is not None
            and not pending[1].done()
            and frame.command == Cmd.PROP_VALUE_IS
            and frame.prop in (pending[0], Prop.LAST_STATUS)
        ):
            pending[1].set_result(frame)
        else:
            self.stats.unmatched_replies += 1
            log.warning("%s: reply matches no request: %s", self.name, frame.describe())
