"""HDLC-lite framing as Spinel uses it on a UART (sans-IO).

A frame on the wire is ``7E`` + escaped(payload + FCS) + ``7E``. The FCS is CRC-16/X-25 appended
low byte first, so a good frame's CRC over payload+FCS leaves the residue 0xF0B8. We escape the
same bytes OpenThread does (``7E 7D 11 13 F8``) so a board that expects XON/XOFF-safe output is
not surprised; the decoder unescapes whatever follows ``7D``.

The decoder is incremental and never raises on input: bad frames come back as typed
:class:`HdlcError` values in the output list, so the caller can count and log them and carry on.
"""

from __future__ import annotations

FLAG = 0x7E
ESCAPE = 0x7D
XON = 0x11
XOFF = 0x13
VENDOR = 0xF8
_ESCAPED = frozenset({FLAG, ESCAPE, XON, XOFF, VENDOR})

FCS_INIT = 0xFFFF
FCS_GOOD_RESIDUE = 0xF0B8

#: Longest decoded frame (payload + FCS) we accept; Spinel frames are far shorter.
DEFAULT_MAX_FRAME = 2048


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def fcs16_update(fcs: int, data: bytes | bytearray | memoryview) -> int:
    """Run reflected CRC-16 (poly 0x8408) over ``data`` starting from ``fcs``."""
    for byte in data:
        fcs = (fcs >> 8) ^ _TABLE[(fcs ^ byte) & 0xFF]
    return fcs


def fcs16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25 of ``data``: init 0xFFFF, final xor 0xFFFF."""
    return fcs16_update(FCS_INIT, data) ^ 0xFFFF


def hdlc_encode(payload: bytes) -> bytes:
    """Frame one payload: flag, escaped payload and FCS (low byte first), flag."""
    fcs = fcs16(payload)
    out = bytearray([FLAG])
    for byte in bytes(payload) + bytes((fcs & 0xFF, fcs >> 8)):
        if byte in _ESCAPED:
            out.append(ESCAPE)
            out.append(byte ^ 0x20)
        else:
            out.append(byte)
    out.append(FLAG)
    return bytes(out)


class HdlcError(Exception):
    """A span of input that did not make a good frame; ``data`` holds (up to 64 of) its bytes."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = bytes(data[:64])


class HdlcGarbage(HdlcError):
    """Bytes outside any frame (before the first flag, or after an aborted frame)."""


class HdlcBadFcs(HdlcError):
    """A complete frame whose FCS does not check out."""


class HdlcTooShort(HdlcError):
    """A frame too short to hold even the 2-byte FCS plus one payload byte."""


class HdlcTooLong(HdlcError):
    """A frame longer than the decoder's limit; dropped up to the next flag."""


class HdlcBadEscape(HdlcError):
    """An escape byte immediately followed by a flag (an aborted frame)."""


class HdlcDecoder:
    """Incremental HDLC-lite decoder: ``feed`` bytes, get back frames and errors in order.

    Starts unsynchronised: bytes before the first flag are reported as :class:`HdlcGarbage`.
    After any error it resynchronises on the next flag.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max = max_frame
        self._synced = False
        self._buf = bytearray()
        self._escape = False
        self._overflow = False
        self._garbage = 0
        self._garbage_head = bytearray()

    def feed(self, data: bytes) -> list[bytes | HdlcError]:
        out: list[bytes | HdlcError] = []
        for byte in data:
            if not self._synced:
                if byte == FLAG:
                    self._flush_garbage(out)
                    self._synced = True
                    self._reset_frame()
                else:
                    self._garbage += 1
                    if len(self._garbage_head) < 64:
                        self._garbage_head.append(byte)
                continue
            if byte == FLAG:
                self._end_frame(out)
                continue
            if self._overflow:
                continue
            if byte == ESCAPE and not self._escape:
                self._escape = True
                continue
            if self._escape:
                byte ^= 0x20
                self._escape = False
            if len(self._buf) >= self._max:
                self._overflow = True
                continue
            self._buf.append(byte)
        return out

    def _reset_frame(self) -> None:
        self._buf.clear()
        self._escape = False
        self._overflow = False

    def _flush_garbage(self, out: list[bytes | HdlcError]) -> None:
        if self._garbage:
            out.append(
                HdlcGarbage(
                    f"{self._garbage} byte(s) outside any frame discarded",
                    bytes(self._garbage_head),
                )
            )
        self._garbage = 0
        self._garbage_head.clear()

    def _end_frame(self, out: list[bytes | HdlcError]) -> None:
        buf = bytes(self._buf)
        if self._overflow:
            out.append(HdlcTooLong(f"frame longer than {self._max} bytes dropped", buf))
        elif self._escape:
            out.append(HdlcBadEscape("escape byte 7D followed by flag: frame aborted", buf))
        elif not buf:
            pass  # back-to-back flags: an idle line, not an error
        elif len(buf) < 3:
            out.append(
                HdlcTooShort(f"frame of {len(buf)} byte(s) is shorter than payload+FCS", buf)
            )
        else:
            residue = fcs16_update(FCS_INIT, buf)
            if residue == FCS_GOOD_RESIDUE:
                out.append(buf[:-2])
            else:
                got = buf[-2] | (buf[-1] << 8)
                want = fcs16(buf[:-2])
                out.append(
                    HdlcBadFcs(f"bad FCS: frame carries {got:04X}, payload gives {want:04X}", buf)
                )
        self._reset_frame()
