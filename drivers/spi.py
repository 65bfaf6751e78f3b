"""Spinel over SPI: a :class:`~drivers.framing.FrameTransport` on anything with spidev's contract.

The bus object needs only ``xfer2(list[int]) -> list[int]``, ``max_speed_hz``, ``mode`` and
``close()``: the real ``spidev.SpiDev`` in production, ``hil.spidev_emu.EmulatedSpiDev`` in CI.
One pump task runs the :class:`~drivers.spi_frame.SpiHost` state machine: it clocks a transfer
when we have a frame to send, when the slave announced a frame too big for the last transfer,
or when the data-ready line says the slave has something; otherwise it waits on that line
(or, without one, polls the bus every ``poll_interval``). Everything that blocks — ``xfer2``
and the GPIO wait — runs in this transport's own worker threads (``run_in_executor``), so the
agent's event loop never blocks on the bus.

A slave header with a bad pattern (or otherwise invalid: all 00/FF, lengths beyond the limit) is
retried every 10 ms; after 200 in a row the link is declared failed (the Spinel draft's advice).
Our pending frame stays queued across retries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from drivers.framing import FramingError
from drivers.gpio import InputLine, OutputLine, SysfsGpioLine, SysfsResetLine
from drivers.spi_frame import (
    MAX_ALIGN,
    MAX_FRAME,
    SMALL_PACKET,
    SpiHost,
    SpiTransferResult,
)
from drivers.transceiver import RadioError
from drivers.uart import parse_bool

log = logging.getLogger(__name__)

BAD_PATTERN_RETRY_S = 0.010
BAD_PATTERN_RETRIES = 200
POLL_INTERVAL_S = 0.005  # no data-ready line: clock an empty transfer this often
GPIO_WAIT_S = 0.1  # longest single blocking wait on the line (keeps close() prompt)
RX_QUEUE = 256


class SpiDevice(Protocol):
    """The part of ``spidev.SpiDev`` we use."""

    max_speed_hz: int
    mode: int

    def xfer2(self, data: list[int]) -> list[int]: ...

    def close(self) -> None: ...


@dataclass
class SpiStats:
    transfers: int = 0
    frames_tx: int = 0
    frames_rx: int = 0
    refused: int = 0  # our frame did not fit the slave's accept length: sent again
    bad_headers: int = 0  # invalid slave headers (bad pattern, unresponsive, over-long): retried
    framing_errors: int = 0
    slave_resets: int = 0
    crc_resends: int = 0


@dataclass(frozen=True)
class SpiOptions:
    device: str
    speed_hz: int = 1_000_000
    mode: int = 0
    int_gpio: int | None = None
    reset_gpio: int | None = None
    align_allowance: int = MAX_ALIGN
    small_packet: int = SMALL_PACKET
    crc: bool = False
    timeout: float | None = None  # per-request timeout (s) for the Spinel layer
    retries: int | None = None


_INT_OPTIONS = ("speed_hz", "mode", "int_gpio", "reset_gpio", "align_allowance", "small_packet")


def parse_spi_url(url: str) -> SpiOptions:
    """``spinel+spi:///dev/spidev0.0?speed_hz=1000000&int_gpio=N&reset_gpio=M`` plus ``mode``,
    ``align_allowance``, ``small_packet``, ``crc``, ``timeout``, ``retries``."""
    parts = urlsplit(url)
    if parts.netloc:
        raise RadioError(
            f"radio URL {url!r}: put the device path after three slashes, "
            f"e.g. spinel+spi:///dev/spidev0.0"
        )
    if not parts.path:
        raise RadioError(f"radio URL {url!r} names no SPI device")
    opts = SpiOptions(device=parts.path)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key in _INT_OPTIONS:
                ints: dict[str, int] = {key: int(value)}
                opts = replace(opts, **ints)  # type: ignore[arg-type]
            elif key == "crc":
                opts = replace(opts, crc=parse_bool(key, value))
            elif key == "timeout":
                opts = replace(opts, timeout=float(value))
            elif key == "retries":
                opts = replace(opts, retries=int(value))
            else:
                known = ", ".join((*_INT_OPTIONS, "crc", "timeout", "retries"))
                raise RadioError(f"unknown option {key!r} in radio URL {url!r}; known: {known}")
        except ValueError:
            raise RadioError(
                f"option {key}={value!r} in radio URL {url!r} is not a number"
            ) from None
    if not 0 <= opts.mode <= 3:
        raise RadioError(f"radio URL {url!r}: SPI mode {opts.mode} out of range 0..3")
    if not 0 <= opts.align_allowance <= MAX_ALIGN:
        raise RadioError(
            f"radio URL {url!r}: align_allowance {opts.align_allowance} out of range 0..{MAX_ALIGN}"
        )
    if opts.speed_hz <= 0:
        raise RadioError(f"radio URL {url!r}: speed_hz must be positive")
    return opts


def open_spidev(opts: SpiOptions) -> SpiDevice:
    """Open a real ``/dev/spidevB.C`` with the ``spidev`` package (imported only here)."""
    name = opts.device.rsplit("/", 1)[-1]
    try:
        bus, cs = (int(n) for n in name.removeprefix("spidev").split("."))
    except ValueError:
        raise RadioError(f"SPI device {opts.device!r} is not /dev/spidevB.C") from None
    try:
        import spidev  # optional: only needed on SPI hardware
    except ImportError as exc:
        raise RadioError(f"spinel+spi needs the 'spidev' package: {exc}") from exc
    dev = spidev.SpiDev()
    try:
        dev.open(bus, cs)
    except OSError as exc:
        raise RadioError(f"cannot open SPI device {opts.device}: {exc}") from exc
    dev.max_speed_hz = opts.speed_hz
    dev.mode = opts.mode
    dev.bits_per_word = 8
    return dev  # type: ignore[no-any-return]


SpiOpener = Callable[[SpiOptions], SpiDevice]
InputOpener = Callable[[int], InputLine]
OutputOpener = Callable[[int], OutputLine]


class SpiTransport:
    """Spinel frames over SPI (a :class:`~drivers.framing.FrameTransport`)."""

    def __init__(
        self,
        opts: SpiOptions,
        *,
        open_device: SpiOpener = open_spidev,
        open_int_line: InputOpener = SysfsGpioLine,
        open_reset_line: OutputOpener = SysfsResetLine,
        bad_pattern_retry: float = BAD_PATTERN_RETRY_S,
        bad_pattern_retries: int = BAD_PATTERN_RETRIES,
        poll_interval: float = POLL_INTERVAL_S,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.opts = opts
        self.stats = SpiStats()
        self._open_device = open_device
        self._open_int_line = open_int_line
        self._open_reset_line = open_reset_line
        self._bad_pattern_retry = bad_pattern_retry
        self._bad_pattern_retries = bad_pattern_retries
        self._poll_interval = poll_interval
        self._host = SpiHost(
            small_packet=opts.small_packet,
            align_allowance=opts.align_allowance,
            max_frame=max_frame,
            crc=opts.crc,
        )
        self._dev: SpiDevice | None = None
        self._int: InputLine | None = None
        self._reset: OutputLine | None = None
        self._bus = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spi-bus")
        self._gpio = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spi-int")
        self._gpio_wait: asyncio.Future[bool] | None = None
        self._tx: deque[tuple[bytes, asyncio.Future[None] | None]] = deque()
        self._last_sent: bytes | None = None
        self._rx: asyncio.Queue[bytes | FramingError] = asyncio.Queue(RX_QUEUE)
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._error: RadioError | None = None
        self._closed = False

    # --- FrameTransport --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the bus (on the loop thread: an open(2) and a few ioctls that never wait), then
        the GPIO lines and the reset pulse (in the worker threads: sysfs exports and a 10 ms
        hold do wait)."""
        loop = asyncio.get_running_loop()
        try:
            self._dev = self._open_device(self.opts)
            if self.opts.int_gpio is not None:
                self._int = await loop.run_in_executor(
                    self._gpio, self._open_int_line, self.opts.int_gpio
                )
            if self.opts.reset_gpio is not None:
                self._reset = await loop.run_in_executor(
                    self._bus, self._open_reset_line, self.opts.reset_gpio
                )
                await loop.run_in_executor(self._bus, self._reset.pulse_reset)
        except OSError as exc:
            self.close()
            raise RadioError(f"cannot open SPI radio {self.opts.device}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self._pump = asyncio.create_task(self._run(), name=f"spi-pump {self.opts.device}")

    async def send_frame(self, frame: bytes) -> None:
        self._check()
        if not 0 < len(frame) <= self._host.max_frame:
            raise RadioError(
                f"SPI {self.opts.device}: frame of {len(frame)} bytes; limit {self._host.max_frame}"
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tx.append((frame, done))
        self._wake.set()
        await done

    async def recv_frame(self) -> bytes | FramingError:
        if self._rx.empty():
            self._check()
        item = await self._rx.get()
        if isinstance(item, _Closed):
            self._rx.put_nowait(item)  # wake later readers too
            self._check()
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        self._set_error(RadioError(f"SPI {self.opts.device} closed"))
        # Close each resource on the thread that uses it, after the call in progress there.
        if self._int is not None:
            self._gpio.submit(_quietly, self._int.close)
        if self._reset is not None:
            self._bus.submit(_quietly, self._reset.close)
        if self._dev is not None:
            self._bus.submit(_quietly, self._dev.close)
        self._int = self._reset = None
        self._dev = None

    async def wait_closed(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._bus.shutdown)
        await loop.run_in_executor(None, self._gpio.shutdown)

    # --- the pump --------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _set_error(self, error: RadioError) -> None:
        if self._error is None:
            self._error = error
        while self._tx:
            _, done = self._tx.popleft()
            if done is not None and not done.done():
                done.set_exception(self._error)
        if self._rx.full():
            self._rx.get_nowait()
        self._rx.put_nowait(_Closed(str(self._error)))

    async def _run(self) -> None:
        bad_in_a_row = 0
        slave_pending = 0
        try:
            while True:
                if not self._tx and not slave_pending:
                    await self._idle()
                head = self._tx[0] if self._tx else None
                result = await self._transfer(head[0] if head is not None else None)
                if not result.header_valid:
                    self.stats.bad_headers += 1
                    self.stats.framing_errors += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= self._bad_pattern_retries:
                        raise RadioError(
                            f"SPI {self.opts.device}: {bad_in_a_row} transfers in a row "
                            f"with a bad header (last: {result.error}); "
                            "is the radio powered and wired right?"
                        )
                    await asyncio.sleep(self._bad_pattern_retry)
                    continue
                bad_in_a_row = 0
                slave_pending = result.slave_pending
                if result.slave_reset:
                    self.stats.slave_resets += 1
                    log.info("SPI %s: slave signalled a reset (RST)", self.opts.device)
                previous, self._last_sent = self._last_sent, None
                if head is not None:
                    if result.tx_accepted:
                        self.stats.frames_tx += 1
                        self._tx.popleft()
                        self._last_sent = head[0]
                        if head[1] is not None and not head[1].done():
                            head[1].set_result(None)
                    else:
                        self.stats.refused += 1
                if result.previous_rejected and previous is not None:
                    self.stats.crc_resends += 1  # the slave dropped it on a bad CRC: again
                    self._tx.appendleft((previous, None))
                if result.error is not None:
                    self.stats.framing_errors += 1
                    await self._rx.put(result.error)
                if result.frame is not None:
                    self.stats.frames_rx += 1
                    await self._rx.put(result.frame)  # back-pressure: a lagging host stops us
                if head is not None and not result.tx_accepted:
                    await asyncio.sleep(0.001)  # the slave is busy: don't hammer it
        except asyncio.CancelledError:
            raise
        except RadioError as exc:
            log.error("%s", exc)
            self._set_error(exc)
        except Exception as exc:  # a bus error must fail the link, not hang it
            error = RadioError(f"SPI {self.opts.device} failed: {exc!r}")
            log.error("%s", error)
            self._set_error(error)

    async def _transfer(self, frame: bytes | None) -> SpiTransferResult:
        dev = self._dev
        if dev is None:
            raise RadioError(f"SPI {self.opts.device} is not open")
        tx = self._host.prepare(frame)
        loop = asyncio.get_running_loop()
        try:
            rx = await loop.run_in_executor(self._bus, dev.xfer2, list(tx))
        except OSError as exc:
            raise RadioError(f"SPI {self.opts.device} vanished: {exc}") from exc
        self.stats.transfers += 1
        if len(rx) != len(tx):
            raise RadioError(
                f"SPI {self.opts.device}: xfer2 returned {len(rx)} bytes for {len(tx)}"
            )
        return self._host.complete(bytes(rx))

    async def _idle(self) -> None:
        """Wait for a frame to send, or for the slave to have one (data-ready asserted; without
        a line, one poll interval)."""
        line = self._int
        loop = asyncio.get_running_loop()
        while not self._tx:
            self._wake.clear()
            if line is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await self._wake.wait()
                return
            if self._gpio_wait is None:
                self._gpio_wait = loop.run_in_executor(self._gpio, line.wait_asserted, GPIO_WAIT_S)
            waker: asyncio.Future[bool] = asyncio.ensure_future(self._woken())
            try:
                await asyncio.wait({self._gpio_wait, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
            if self._gpio_wait.done():
                asserted = self._gpio_wait.result()
                self._gpio_wait = None
                if asserted:
                    return

    async def _woken(self) -> bool:
        return await self._wake.wait()


class _Closed(FramingError):
    """Queue marker: the link is closed (never handed to the Spinel host)."""


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except OSError as exc:
        log.debug("closing SPI resource: %s", exc)
