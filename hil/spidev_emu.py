"""An emulated spidev with a virtual RCP behind it, so the SPI driver path runs in CI.

:class:`EmulatedSpiDev` has ``spidev.SpiDev``'s contract (``xfer2``, ``max_speed_hz``, ``mode``,
``close``) and plays the slave side of Spinel's SPI framing (:class:`drivers.spi_frame.SpiSlave`):
it prepares its half (pending frame, accept length, RST after a reboot) before it sees the host's
header, as on a real full-duplex bus, hands whole frames to :meth:`VirtualRcp.handle_frame`, and
drives an emulated data-ready line (:class:`EmulatedIntLine`, active while it has something to
send). Fault knobs: ``garbage_transfers`` (answer the next N transfers with a bad-pattern
header, taking nothing), ``align_bytes`` (0xFF bytes before the header), ``crc``.

The virtual RCP lives on the event loop; ``xfer2`` is called from the SPI transport's worker
thread, so it runs the slave on the RCP's loop (``call_soon_threadsafe``) and waits for the
answer — the RCP is never touched from two threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import threading

from drivers.spi_frame import MAX_FRAME, SpiSlave
from hil.rcp import VirtualRcp

XFER_TIMEOUT_S = 10.0
GARBAGE_HEADER = bytes.fromhex("5311aa0000")  # pattern bits 11: never a valid header


class EmulatedIntLine:
    """The slave's data-ready line, as the SPI transport's :class:`~drivers.gpio.InputLine`."""

    def __init__(self) -> None:
        self._level = threading.Event()

    def drive(self, asserted: bool) -> None:
        if asserted:
            self._level.set()
        else:
            self._level.clear()

    def asserted(self) -> bool:
        return self._level.is_set()

    def wait_asserted(self, timeout: float) -> bool:
        return self._level.wait(timeout)

    def close(self) -> None:
        return None


class EmulatedSpiDev:
    """A spidev whose slave is a :class:`VirtualRcp`. ``open(loop)`` before use."""

    def __init__(self, rcp: VirtualRcp, *, accept_len: int = MAX_FRAME, crc: bool = False) -> None:
        self.rcp = rcp
        self.max_speed_hz = 1_000_000
        self.mode = 0
        self.bits_per_word = 8
        self.int_line = EmulatedIntLine()
        self.slave = SpiSlave(accept_len=accept_len, crc=crc)
        #: Fault knobs (set from the test, on the loop thread).
        self.garbage_transfers = 0
        self.align_bytes = 0
        #: What happened, for tests to assert on.
        self.transfers = 0
        self.frames_from_host = 0
        self.frames_to_host = 0
        self.host_resets = 0
        self.errors = 0
        self._pending: bytes | None = None
        self._last_sent: bytes | None = None
        self._resets_seen = rcp.counters.resets
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def crc(self) -> bool:
        return self.slave.crc

    @crc.setter
    def crc(self, enabled: bool) -> None:
        self.slave.crc = enabled

    def open(self, loop: asyncio.AbstractEventLoop) -> EmulatedSpiDev:
        """Attach to the RCP (its output drives the data-ready line) on ``loop``."""
        if self._loop is not None:
            raise OSError(errno.EBUSY, "emulated spidev already open")
        self._loop = loop
        self.rcp.set_output_listener(self._update_line)
        self._update_line()
        return self

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.rcp.set_output_listener, None)

    def xfer2(self, data: list[int]) -> list[int]:
        loop = self._loop
        if loop is None:
            raise OSError(errno.EBADF, "emulated spidev is not open")
        tx = bytes(data)
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            return list(self._transfer(tx))
        result: concurrent.futures.Future[bytes] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(self._transfer(tx))
            except BaseException as exc:  # handed to the calling thread
                result.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError as exc:  # the loop is closed: the "device" is gone
            raise OSError(errno.ENODEV, f"emulated spidev's loop is gone: {exc}") from exc
        return list(result.result(XFER_TIMEOUT_S))

    # --- the slave, on the RCP's loop ------------------------------------------------------------

    def _update_line(self) -> None:
        self.int_line.drive(self._pending is not None or self.rcp.has_output())

    def _transfer(self, tx: bytes) -> bytes:
        self.transfers += 1
        if self.rcp.counters.resets != self._resets_seen:
            self._resets_seen = self.rcp.counters.resets
            self.slave.reset_pending = True  # RST on the first header after a reboot
            self._pending = None  # a rebooted board forgot what it was sending
        if self.garbage_transfers > 0:
            self.garbage_transfers -= 1
            return (GARBAGE_HEADER + bytes(len(tx)))[: len(tx)]
        if self._pending is None:
            self._pending = self.rcp.take_frame()
        rx = self.slave.prepare(self._pending, len(tx), align=self.align_bytes)
        result = self.slave.complete(tx)
        if result.host_reset:
            self.host_resets += 1
        if result.error is not None:
            self.errors += 1
        previous, self._last_sent = self._last_sent, None
        if result.tx_accepted:
            self._last_sent, self._pending = self._pending, None
            self.frames_to_host += 1
        if result.previous_rejected and previous is not None and self._pending is None:
            self._pending = previous  # the host dropped it on a bad CRC: send it again
        if result.frame is not None:
            self.frames_from_host += 1
            self.rcp.handle_frame(result.frame)
        self._update_line()
        return rx
