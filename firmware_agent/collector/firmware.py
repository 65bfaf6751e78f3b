"""Firmware push: DLMS image transfer (IC 18, 0.0.44.0.0.255) to one meter or a group.

The sequence is the Blue Book's: read image_block_size, image_transfer_initiate,
image_block_transfer for every block, check image_transferred_blocks_status and resend what is
missing, image_verify, check image_to_activate_info, image_activate. A verification or activation
the meter runs in the background answers temporary-failure; image_transfer_status (attribute 6)
is then polled.

Three things make it fit an RF mesh:

- **Throughput limit.** Every request frame takes tokens from a ``ThroughputLimit`` (bytes/s over
  the injected clock and sleep) before it goes out; a group push shares one limit, so pushing to
  many meters at once loads the mesh no more than pushing to one.
- **Resume.** Before initiating, the meter's status and image_to_activate_info are read; if it is
  already part way through *this* image (same identifier and size), only the blocks its
  image_transferred_blocks_status bit-string lacks are sent. An interrupted push therefore costs
  the missing blocks, not the whole image.
- **Isolation.** A group push reports one ``PushResult`` per meter; a meter that fails never stops
  the others.

Requests are the session's ``read_attribute``/``action``/``write`` exchanges (built by gurux's
client, ciphered under suite 0), driven the way reads are; a retry after a lost frame sends the
exchange's ``retry_frame()``, never the same ciphered bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from gurux_dlms.enums import DataType

from ..clock import Clock
from ..config import MeterConfig
from . import obis
from .drive import ExchangeDriver, release_quietly
from .link import LinkError, MeterLink
from .obis import IC_IMAGE_TRANSFER
from .session import (
    DataAccessError,
    DlmsError,
    DlmsSession,
    Exchange,
    SessionFactory,
    plain_session,
)

TEMPORARY_FAILURE = 2

Sleep = Callable[[float], Awaitable[None]]
ProgressCallback = Callable[["Progress"], None]


class TransferStatus(IntEnum):
    """image_transfer_status (attribute 6), Blue Book numbering. The one definition: the
    emulated meter (hil/meter/image.py) uses it too."""

    NOT_INITIATED = 0
    INITIATED = 1
    VERIFICATION_INITIATED = 2
    VERIFICATION_SUCCESSFUL = 3
    VERIFICATION_FAILED = 4
    ACTIVATION_INITIATED = 5
    ACTIVATION_SUCCESSFUL = 6
    ACTIVATION_FAILED = 7


class FirmwareError(Exception):
    """A push to one meter failed at ``stage``; ``cause`` is the DLMS/link error, if any."""

    def __init__(self, meter_id: str, stage: str, detail: str, cause: Exception | None = None):
        self.meter_id = meter_id
        self.stage = stage
        self.detail = detail
        self.cause = cause
        super().__init__(f"meter {meter_id}: firmware {stage}: {detail}")


@dataclass(frozen=True)
class FirmwareImage:
    """What to push: the image identifier the meter will report once active, and its bytes."""

    identifier: bytes
    data: bytes

    def __post_init__(self) -> None:
        if not self.identifier:
            raise ValueError("a firmware image needs an identifier")
        if not self.data:
            raise ValueError(f"firmware image {self.identifier!r} is empty")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Progress:
    """One step of a push, for a progress bar or a status topic."""

    meter_id: str
    stage: str
    blocks_done: int  # blocks the meter holds (resumed ones included)
    blocks_total: int
    bytes_per_s: float  # image bytes sent per second in this run


@dataclass(frozen=True)
class PushResult:
    meter_id: str
    ok: bool
    stage: str  # "done", or the stage that failed
    error: str | None
    blocks_total: int
    blocks_sent: int  # block transfers sent in this run, resends included
    resumed_blocks: int  # blocks the meter already held when this run started
    frame_bytes: int  # request bytes this run put on the link (what the limit meters)
    elapsed_s: float
    already_active: bool = False
    stale_replies: int = 0  # late replies to earlier requests, discarded


class ThroughputLimit:
    """A byte-rate limit (GCRA token bucket) on the injected clock; share one across a group.

    ``burst`` bytes may go at once; after that, sending n bytes advances the earliest next send by
    n / rate. Concurrent pushes queue on one lock, so their sum keeps to the rate.
    """

    def __init__(self, bytes_per_s: float, clock: Clock, sleep: Sleep, burst: int = 0) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"throughput limit must be positive, got {bytes_per_s}")
        if burst < 0:
            raise ValueError("burst must not be negative")
        self.rate = float(bytes_per_s)
        self.clock = clock
        self.sleep = sleep
        self.burst = burst
        self.sent_bytes = 0
        self.waited_s = 0.0
        self._tat: float | None = None  # theoretical arrival time of the next byte
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        """Wait until ``n`` more bytes may be sent, and count them as sent."""
        async with self._lock:
            now = self.clock.monotonic()
            tat = now if self._tat is None else max(self._tat, now)
            wait = tat - self.burst / self.rate - now
            if wait > 0:
                self.waited_s += wait
                # A late wake-up is not added to the schedule: the next send waits that much less.
                await self.sleep(wait)
            self._tat = tat + n / self.rate
            self.sent_bytes += n


# ---------------------------------------------------------------------------------- exchanges


def read_attribute(session: DlmsSession, logical_name: str, attribute: int) -> Exchange[Any]:
    """An IC 18 attribute as gurux decodes it (bit-string -> GXBitString, octets -> bytes)."""
    return session.read_attribute(logical_name, IC_IMAGE_TRANSFER, attribute)


def action(
    session: DlmsSession, logical_name: str, method: int, params: bytes | int
) -> Exchange[Any]:
    """An IC 18 method: ``params`` is encoded A-XDR data (bytes) or an integer(8)."""
    return session.action(logical_name, method, params, IC_IMAGE_TRANSFER)


def write_transfer_enabled(
    session: DlmsSession, logical_name: str, enabled: bool
) -> Exchange[None]:
    """SET-Request-Normal of image_transfer_enabled (attribute 5)."""
    return session.write(logical_name, 5, enabled, DataType.BOOLEAN, IC_IMAGE_TRANSFER)


def _axdr_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def initiate_params(identifier: bytes, size: int) -> bytes:
    """structure {image_identifier octet-string, image_size double-long-unsigned}"""
    return (
        b"\x02\x02\x09"
        + _axdr_len(len(identifier))
        + identifier
        + b"\x06"
        + size.to_bytes(4, "big")
    )


def block_params(number: int, block: bytes) -> bytes:
    """structure {image_block_number double-long-unsigned, image_block_value octet-string}"""
    return b"\x02\x02\x06" + number.to_bytes(4, "big") + b"\x09" + _axdr_len(len(block)) + block


def _bits(value: Any) -> str:
    text = "" if value is None else str(value)  # gurux's GXBitString prints as "0101..."
    if any(c not in "01" for c in text):
        raise ValueError(f"image_transferred_blocks_status {text!r} is not a bit-string")
    return text


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is {value!r}, not an integer")
    return value


# ---------------------------------------------------------------------------------- one meter


class _Push:
    """One run of the push sequence against one meter."""

    def __init__(
        self,
        link: MeterLink,
        meter: MeterConfig,
        image: FirmwareImage,
        session: DlmsSession,
        limit: ThroughputLimit,
        *,
        logical_name: str,
        timeout: float,
        retries: int,
        poll_interval_s: float,
        settle_timeout_s: float,
        progress: ProgressCallback | None,
    ) -> None:
        self.link = link
        self.meter = meter
        self.image = image
        self.session = session
        self.limit = limit
        self.ln = logical_name
        self.poll_interval_s = poll_interval_s
        self.settle_timeout_s = settle_timeout_s
        self.progress = progress
        self.driver = ExchangeDriver(link, timeout, retries, retry_on=(LinkError,), pace=limit.take)
        self.clock = limit.clock
        self.stage = "associate"
        self.blocks_total = 0
        self.blocks_sent = 0
        self.resumed_blocks = 0
        self.held = 0
        self.image_bytes = 0
        self.started = self.clock.monotonic()
        self.already_active = False

    async def run(self, exchange: Exchange[Any]) -> Any:
        """Every request within the limit; after any link failure the exchange's
        ``retry_frame()`` (re-protected with a fresh invocation counter under suite 0)."""
        return await self.driver.run(exchange)

    def _report(self) -> None:
        if self.progress is None:
            return
        elapsed = self.clock.monotonic() - self.started
        rate = self.image_bytes / elapsed if elapsed > 0 else 0.0
        self.progress(Progress(self.meter.id, self.stage, self.held, self.blocks_total, rate))

    async def push(self) -> None:
        s, ln = self.session, self.ln
        await self.run(s.associate())

        self.stage = "prepare"
        block_size = _int(await self.run(read_attribute(s, ln, 2)), "image_block_size")
        if block_size <= 0:
            raise ValueError(f"image_block_size is {block_size}")
        data = self.image.data
        self.blocks_total = -(-len(data) // block_size)
        if not await self.run(read_attribute(s, ln, 5)):
            await self.run(write_transfer_enabled(s, ln, True))
        status = TransferStatus(_int(await self.run(read_attribute(s, ln, 6)), "status"))
        ours = await self._meter_has_our_image()

        missing: list[int]
        if ours and status == TransferStatus.ACTIVATION_SUCCESSFUL:
            self.already_active = True
            self.held = self.resumed_blocks = self.blocks_total
            self.stage = "done"
            self._report()
            return
        if ours and status != TransferStatus.NOT_INITIATED:
            self.stage = "resume"
            missing = await self._missing()
            self.resumed_blocks = self.blocks_total - len(missing)
        else:
            self.stage = "initiate"
            await self.run(action(s, ln, 1, initiate_params(self.image.identifier, len(data))))
            missing = list(range(self.blocks_total))
        self.held = self.blocks_total - len(missing)
        self._report()

        self.stage = "blocks"
        for _round in range(3):
            for n in missing:
                block = data[n * block_size : (n + 1) * block_size]
                await self.run(action(s, ln, 2, block_params(n, block)))
                self.blocks_sent += 1
                self.held += 1
                self.image_bytes += len(block)
                self._report()
            missing = await self._missing()
            if not missing:
                break
            self.held = self.blocks_total - len(missing)
        else:
            raise ValueError(f"blocks {missing[:8]} still missing after 3 rounds")

        self.stage = "verify"
        await self._settle(
            3, TransferStatus.VERIFICATION_SUCCESSFUL, TransferStatus.VERIFICATION_FAILED
        )
        if not await self._meter_has_our_image():
            raise ValueError("image_to_activate_info does not list the image just verified")

        self.stage = "activate"
        await self._settle(
            4, TransferStatus.ACTIVATION_SUCCESSFUL, TransferStatus.ACTIVATION_FAILED
        )
        self.stage = "release"
        with contextlib.suppress(DlmsError, LinkError):  # metered like every frame of the push
            await self.run(s.release())
        self.stage = "done"
        self._report()

    async def _missing(self) -> list[int]:
        bits = _bits(await self.run(read_attribute(self.session, self.ln, 3)))
        if len(bits) < self.blocks_total:
            raise ValueError(
                f"blocks status has {len(bits)} bits for an image of {self.blocks_total} blocks"
            )
        return [n for n in range(self.blocks_total) if bits[n] != "1"]

    async def _meter_has_our_image(self) -> bool:
        info = await self.run(read_attribute(self.session, self.ln, 7))
        for entry in info or []:
            if not isinstance(entry, list) or len(entry) < 2:
                raise ValueError(f"image_to_activate_info entry {entry!r} is malformed")
            size, ident = entry[0], entry[1]
            if bytes(ident or b"") == self.image.identifier and size == len(self.image.data):
                return True
        return False

    async def _settle(self, method: int, success: TransferStatus, failure: TransferStatus) -> None:
        """Invoke verify/activate; on temporary-failure poll attribute 6 until it settles."""
        try:
            await self.run(action(self.session, self.ln, method, 0))
            return
        except DataAccessError as exc:
            if exc.code != TEMPORARY_FAILURE:
                raise
        deadline = self.clock.monotonic() + self.settle_timeout_s
        while True:
            await self.limit.sleep(self.poll_interval_s)
            raw = await self.run(read_attribute(self.session, self.ln, 6))
            status = TransferStatus(_int(raw, "image_transfer_status"))
            if status == success:
                return
            if status == failure:
                raise ValueError(f"meter reports {status.name.lower()}")
            if self.clock.monotonic() >= deadline:
                raise TimeoutError(f"still {status.name.lower()} after {self.settle_timeout_s} s")

    def result(self, error: FirmwareError | None) -> PushResult:
        return PushResult(
            meter_id=self.meter.id,
            ok=error is None,
            stage=self.stage,
            error=None if error is None else str(error),
            blocks_total=self.blocks_total,
            blocks_sent=self.blocks_sent,
            resumed_blocks=self.resumed_blocks,
            frame_bytes=self.driver.frame_bytes,
            elapsed_s=self.clock.monotonic() - self.started,
            already_active=self.already_active,
            stale_replies=self.driver.stale,
        )


async def push_image(
    link: MeterLink,
    meter: MeterConfig,
    image: FirmwareImage,
    limit: ThroughputLimit,
    *,
    logical_name: str = obis.IMAGE_TRANSFER,
    timeout: float = 5.0,
    retries: int = 2,
    attempts: int = 1,
    poll_interval_s: float = 1.0,
    settle_timeout_s: float = 300.0,
    progress: ProgressCallback | None = None,
    session_factory: SessionFactory = plain_session,
) -> PushResult:
    """Push ``image`` to one meter and activate it. Never raises for the meter's or the link's
    failures: the result says what happened. With ``attempts`` > 1 a failed run is followed by a
    fresh association that resumes from the blocks the meter already holds."""
    result: PushResult | None = None
    blocks_sent = frame_bytes = stale = 0
    started = limit.clock.monotonic()
    resumed_first: int | None = None
    error: FirmwareError | None = None
    for _ in range(max(1, attempts)):
        try:
            session = session_factory(meter)
        except DlmsError as exc:  # no keys for a secured meter: a configuration error
            detail = f"{type(exc).__name__}: {exc}"
            error = FirmwareError(meter.id, "associate", detail, exc)
            elapsed = limit.clock.monotonic() - started
            return PushResult(meter.id, False, "associate", str(error), 0, 0, 0, 0, elapsed)
        run = _Push(
            link,
            meter,
            image,
            session,
            limit,
            logical_name=logical_name,
            timeout=timeout,
            retries=retries,
            poll_interval_s=poll_interval_s,
            settle_timeout_s=settle_timeout_s,
            progress=progress,
        )
        error = None
        try:
            await run.push()
        except (DlmsError, LinkError, ValueError, TimeoutError) as exc:
            error = FirmwareError(meter.id, run.stage, f"{type(exc).__name__}: {exc}", exc)
            if run.session.associated and isinstance(exc, DlmsError):
                await release_quietly(link, run.session)
        result = run.result(error)
        blocks_sent += result.blocks_sent
        frame_bytes += result.frame_bytes
        stale += result.stale_replies
        if resumed_first is None:
            resumed_first = result.resumed_blocks
        if result.ok:
            break
    assert result is not None
    return PushResult(
        meter_id=result.meter_id,
        ok=result.ok,
        stage=result.stage,
        error=result.error,
        blocks_total=result.blocks_total,
        blocks_sent=blocks_sent,
        resumed_blocks=resumed_first or 0,
        frame_bytes=frame_bytes,
        elapsed_s=limit.clock.monotonic() - started,
        already_active=result.already_active,
        stale_replies=stale,
    )


# ---------------------------------------------------------------------------------- a group


async def push_group(
    targets: Sequence[tuple[MeterConfig, MeterLink]],
    image: FirmwareImage,
    limit: ThroughputLimit,
    exclusive: Callable[[str], AbstractAsyncContextManager[Any]] | None = None,
    /,
    *,
    concurrency: int = 4,
    **kwargs: Any,
) -> list[PushResult]:
    """Push to every meter of ``targets`` (at most ``concurrency`` at once) under one shared
    ``limit``; one result per meter, in the order given. ``kwargs`` go to ``push_image``.

    ``exclusive(meter_id)`` (the collector's ``Collector.exclusive``) is entered around each
    meter's push: a push and the scheduler's read of the same meter share one link, and
    interleaved they would take each other's replies; the push waits for the read to end.
    (Positional so that a caller's ``**kwargs`` for ``push_image`` cannot fill it.)"""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    gate = asyncio.Semaphore(concurrency)

    async def one(meter: MeterConfig, link: MeterLink) -> PushResult:
        async with gate:
            try:
                if exclusive is None:
                    return await push_image(link, meter, image, limit, **kwargs)
                async with exclusive(meter.id):
                    return await push_image(link, meter, image, limit, **kwargs)
            except Exception as exc:  # a bug for one meter must not end the group's push
                return PushResult(meter.id, False, "internal", repr(exc), 0, 0, 0, 0, 0.0)

    return list(await asyncio.gather(*(one(m, link) for m, link in targets)))
