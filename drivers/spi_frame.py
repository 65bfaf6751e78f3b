"""Spinel's SPI framing (sans-IO): the 5-byte transfer header and one host-side transfer.

Every SPI transfer is full duplex. Each side starts its half with a header
``HDR, RECV_LEN (u16 LE), DATA_LEN (u16 LE)`` and, when the other side's RECV_LEN (its "accept
length") is at least DATA_LEN, the raw Spinel frame follows — no HDLC escaping. HDR bits:

- ``RST`` 0x80: the sender has reset since the last transfer (the host sets it until it has seen
  a valid header, so the slave knows the host started afresh);
- ``CRC`` 0x40: the sender can append a CRC-16 after its data (not counted in DATA_LEN). Only
  when *both* headers of a transfer carry it is the CRC sent and checked. It is the HDLC-lite
  FCS (CRC-16/X-25, low byte first) over the data bytes;
- ``CCF`` 0x20: "CRC check failure" — the frame the other side received in the previous transfer
  failed its CRC and was dropped;
- ``PATTERN`` (low two bits) must be ``0b10``: all-0x00 / all-0xFF (a slave that is off or
  still booting) can never pass for a header.

The slave's half may be preceded by up to 16 0xFF alignment bytes (OpenThread's host clips
leading 0xFF bytes only, up to its ``spi-align-allowance``), so the host clocks that many extra
bytes and looks for the header after them. Facts from openthread ``src/lib/spinel/spi_frame.hpp``
and ``src/posix/platform/spi_interface.cpp``; the host machine here follows the latter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers.framing import FramingError
from drivers.hdlc import fcs16

HEADER_LEN = 5
FLAG_RST = 0x80
FLAG_CRC = 0x40
FLAG_CCF = 0x20
PATTERN = 0x02
PATTERN_MASK = 0x03
ALIGN_BYTE = 0xFF
MAX_ALIGN = 16
CRC_LEN = 2
#: OpenThread's SpinelInterface::kMaxFrameSize: longer lengths in a header are garbage.
MAX_FRAME = 2048
#: Default smallest transfer payload, so short slave frames arrive in the transfer that
#: announces them (OpenThread's ``spi-small-packet`` default).
SMALL_PACKET = 32


class SpiFrameError(FramingError):
    """An SPI transfer whose slave half did not make a valid frame."""

    kind = "spi"


class SpiBadPattern(SpiFrameError):
    """The header's PATTERN bits are not 0b10 (garbage or a slave out of step): retry."""


class SpiUnresponsive(SpiBadPattern):
    """The header is all 0x00 or all 0xFF: the slave is off, resetting, or not clocking out."""


class SpiTruncated(SpiFrameError):
    """A transfer too short for the header, or for the data (and CRC) the header announces."""


class SpiTooLong(SpiFrameError):
    """A length in the header beyond :data:`MAX_FRAME`."""


class SpiBadCrc(SpiFrameError):
    """The data's CRC-16 does not check out; the frame was dropped (CCF goes out next)."""


@dataclass(frozen=True)
class SpiHeader:
    flags: int
    accept_len: int
    data_len: int

    @property
    def reset(self) -> bool:
        return bool(self.flags & FLAG_RST)

    @property
    def crc(self) -> bool:
        return bool(self.flags & FLAG_CRC)

    @property
    def crc_failed(self) -> bool:
        return bool(self.flags & FLAG_CCF)

    def encode(self) -> bytes:
        if not (0 <= self.accept_len <= 0xFFFF and 0 <= self.data_len <= 0xFFFF):
            raise ValueError(f"SPI header lengths out of range: {self}")
        flags = (self.flags & ~PATTERN_MASK & 0xFF) | PATTERN
        return struct.pack("<BHH", flags, self.accept_len, self.data_len)


def decode_header(data: bytes, max_frame: int = MAX_FRAME) -> SpiHeader:
    """Parse a 5-byte header; typed errors for short input, bad pattern, over-long lengths."""
    if len(data) < HEADER_LEN:
        raise SpiTruncated(f"SPI header needs {HEADER_LEN} bytes, got {len(data)}", data)
    head = bytes(data[:HEADER_LEN])
    if head in (b"\x00" * HEADER_LEN, b"\xff" * HEADER_LEN):
        raise SpiUnresponsive(f"SPI header is all {head[0]:02X}: slave not responding", head)
    flags, accept_len, data_len = struct.unpack("<BHH", head)
    if flags & PATTERN_MASK != PATTERN:
        raise SpiBadPattern(
            f"SPI header byte {flags:02X}: pattern bits {flags & PATTERN_MASK:02b}, need 10", head
        )
    if accept_len > max_frame or data_len > max_frame:
        raise SpiTooLong(
            f"SPI header announces accept {accept_len} / data {data_len} bytes; limit {max_frame}",
            head,
        )
    return SpiHeader(flags, accept_len, data_len)


def find_header(rx: bytes, align_allowance: int = MAX_ALIGN) -> int:
    """Offset of the header in a slave half: skip up to ``align_allowance`` leading 0xFF bytes.
    (If the whole window is 0xFF, offset ``align_allowance`` is returned and the header there,
    if all 0xFF too, reads as an unresponsive slave.)"""
    skip = 0
    while skip < align_allowance and skip < len(rx) and rx[skip] == ALIGN_BYTE:
        skip += 1
    return skip


def encode_half(
    header: SpiHeader, data: bytes, length: int, *, with_crc: bool = False, fill: int = 0x00
) -> bytes:
    """One side's half of a transfer of ``length`` bytes: header, data (+CRC), fill."""
    out = bytearray(header.encode())
    if header.data_len:
        out += data[: header.data_len]
        if with_crc:
            fcs = fcs16(data[: header.data_len])
            out += bytes((fcs & 0xFF, fcs >> 8))
    if len(out) > length:
        raise ValueError(f"SPI half of {len(out)} bytes does not fit a {length}-byte transfer")
    return bytes(out) + bytes([fill]) * (length - len(out))


def decode_data(body: bytes, header: SpiHeader, *, with_crc: bool) -> bytes:
    """The data a header announces, from the bytes after it; CRC checked when ``with_crc``."""
    need = header.data_len + (CRC_LEN if with_crc else 0)
    if len(body) < need:
        raise SpiTruncated(
            f"SPI frame announces {header.data_len} data bytes"
            f"{' + CRC' if with_crc else ''} but only {len(body)} were clocked",
            body,
        )
    data = bytes(body[: header.data_len])
    if with_crc:
        got = body[header.data_len] | body[header.data_len + 1] << 8
        want = fcs16(data)
        if got != want:
            raise SpiBadCrc(f"SPI frame CRC {got:04X}, data gives {want:04X}", data)
    return data


@dataclass(frozen=True)
class SpiTransferResult:
    """What one transfer did, seen from the host."""

    frame: bytes | None = None  # the slave's frame, when it came through whole
    tx_accepted: bool = False  # our pending frame went through
    slave_reset: bool = False  # the slave's RST bit was set
    previous_rejected: bool = False  # CCF: the frame we sent last time failed the slave's CRC
    slave_pending: int = 0  # the slave has this many bytes waiting for a bigger transfer
    error: SpiFrameError | None = None  # the slave half was not a valid frame
    header_valid: bool = True  # False: nothing of this transfer counts; retry after a pause


class SpiHost:
    """Host (master) side of Spinel-over-SPI for one transfer at a time.

    ``prepare(pending)`` gives the bytes to clock out: our header (accept length sized for what
    the slave announced last time, at least ``small_packet``), our pending frame if any, and room
    for ``align_allowance`` alignment bytes. ``complete(rx)`` reads the slave's half of that
    same transfer. Our frame went through when its length is within the slave's accept length
    *and* the slave header is valid; otherwise the caller keeps it for the next transfer.
    """

    def __init__(
        self,
        *,
        small_packet: int = SMALL_PACKET,
        align_allowance: int = MAX_ALIGN,
        max_frame: int = MAX_FRAME,
        crc: bool = False,
    ) -> None:
        if not 0 <= align_allowance <= MAX_ALIGN:
            raise ValueError(f"align allowance {align_allowance} out of range 0..{MAX_ALIGN}")
        self.small_packet = small_packet
        self.align_allowance = align_allowance
        self.max_frame = max_frame
        self.crc = crc
        self.valid_headers = 0
        self._slave_data_len = 0
        self._ccf_next = False
        self._tx: SpiHeader | None = None

    def prepare(self, pending: bytes | None) -> bytes:
        if pending is not None and not 0 < len(pending) <= self.max_frame:
            raise ValueError(f"SPI frame of {len(pending)} bytes; limit {self.max_frame}")
        data_len = len(pending) if pending is not None else 0
        accept = max(data_len, self._slave_data_len or self.small_packet)
        flags = (FLAG_RST if self.valid_headers == 0 else 0) | (FLAG_CRC if self.crc else 0)
        if self._ccf_next:
            flags |= FLAG_CCF
            self._ccf_next = False
        self._tx = SpiHeader(flags, accept, data_len)
        length = HEADER_LEN + accept + (CRC_LEN if self.crc else 0) + self.align_allowance
        return encode_half(self._tx, pending or b"", length, with_crc=self.crc)

    def complete(self, rx: bytes) -> SpiTransferResult:
        tx, self._tx = self._tx, None
        if tx is None:
            raise RuntimeError("SpiHost.complete() without prepare()")
        skip = find_header(rx, self.align_allowance)
        try:
            header = decode_header(rx[skip:], self.max_frame)
        except SpiFrameError as exc:
            self._slave_data_len = 0
            return SpiTransferResult(error=exc, header_valid=False)
        self.valid_headers += 1
        both_crc = tx.crc and header.crc
        tx_accepted = tx.data_len > 0 and tx.data_len <= header.accept_len
        frame: bytes | None = None
        error: SpiFrameError | None = None
        pending = 0
        if header.data_len:
            if header.data_len <= tx.accept_len:
                try:
                    frame = decode_data(rx[skip + HEADER_LEN :], header, with_crc=both_crc)
                except SpiBadCrc as exc:
                    self._ccf_next = True
                    error = exc
                except SpiTruncated as exc:
                    error = exc  # alignment ate the tail: ask for it again, sized right
                    pending = header.data_len
            else:
                pending = header.data_len
        self._slave_data_len = pending
        return SpiTransferResult(
            frame=frame,
            tx_accepted=tx_accepted,
            slave_reset=header.reset,
            previous_rejected=both_crc and header.crc_failed,
            slave_pending=pending,
            error=error,
        )


@dataclass(frozen=True)
class SpiSlaveResult:
    """What one transfer did, seen from the slave."""

    frame: bytes | None = None  # the host's frame, when it came through whole
    tx_accepted: bool = False  # our pending frame went through
    host_reset: bool = False  # the host's RST bit was set
    previous_rejected: bool = False  # CCF: the frame we sent last time failed the host's CRC
    error: SpiFrameError | None = None  # the host half was not a valid frame


class SpiSlave:
    """Slave side of one transfer (what an RCP's SPI driver does), for emulators and tests.

    ``prepare(pending, length)`` gives the slave's half — ``align`` 0xFF bytes, then our header
    (accept length ``accept_len``, RST if we reset since the last transfer) and our frame — before
    the slave has seen the host's header, as on a real full-duplex bus. ``complete(tx)`` reads
    the host's half."""

    def __init__(
        self, *, accept_len: int = MAX_FRAME, crc: bool = False, max_frame: int = MAX_FRAME
    ) -> None:
        self.accept_len = accept_len
        self.crc = crc
        self.max_frame = max_frame
        self.reset_pending = True  # a slave comes up reset
        self._ccf_next = False
        self._tx: SpiHeader | None = None
        self._tx_offset = 0
        self._length = 0

    def prepare(self, pending: bytes | None, length: int, *, align: int = 0) -> bytes:
        data_len = len(pending) if pending is not None else 0
        flags = (FLAG_RST if self.reset_pending else 0) | (FLAG_CRC if self.crc else 0)
        if self._ccf_next:
            flags |= FLAG_CCF
            self._ccf_next = False
        self.reset_pending = False
        self._tx = SpiHeader(flags, self.accept_len, data_len)
        self._tx_offset = align
        self._length = length
        half = bytes([ALIGN_BYTE]) * align + SpiHeader(flags, self.accept_len, data_len).encode()
        if data_len:
            assert pending is not None
            half += pending
            if self.crc:
                fcs = fcs16(pending)
                half += bytes((fcs & 0xFF, fcs >> 8))
        if len(half) < length:
            half += bytes([ALIGN_BYTE]) * (length - len(half))
        return half[:length]

    def complete(self, tx: bytes) -> SpiSlaveResult:
        ours, self._tx = self._tx, None
        if ours is None:
            raise RuntimeError("SpiSlave.complete() without prepare()")
        try:
            header = decode_header(tx, self.max_frame)
        except SpiFrameError as exc:
            return SpiSlaveResult(error=exc)
        both_crc = ours.crc and header.crc
        clocked = self._length - self._tx_offset - HEADER_LEN
        need = ours.data_len + (CRC_LEN if both_crc else 0)
        tx_accepted = 0 < ours.data_len <= header.accept_len and clocked >= need
        frame: bytes | None = None
        error: SpiFrameError | None = None
        if header.data_len and header.data_len <= ours.accept_len:
            try:
                frame = decode_data(tx[HEADER_LEN:], header, with_crc=both_crc)
            except SpiBadCrc as exc:
                self._ccf_next = True
                error = exc
            except SpiTruncated as exc:
                error = exc
        return SpiSlaveResult(
            frame=frame,
            tx_accepted=tx_accepted,
            host_reset=header.reset,
            previous_rejected=both_crc and header.crc_failed,
            error=error,
        )
