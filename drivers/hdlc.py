"""HDLC-lite framing as Spinel uses it on a UART (sans-IO).

A frame on the wire is ``7E`` + escaped(payload + FCS) + ``7E``. The FCS is CRC-16/X-25 appended
low byte first, so a good frame's CRC over payload+FCS leaves the residue 0xF0B8. We escape the
same bytes OpenThread does (``7E 7D 11 13 F8``) so a board that expects XON/XOFF-safe output is
not surprised; the decoder unescapes whatever follows ``7D``.

The decoder is incremental and never raises on input: bad frames come back as typed
:class:`HdlcError` values in the output list, so the caller can count and log them and carry on.

Speed: this sits on every radio frame, so the per-byte work is done by C code from the standard
library (``bytes.split``/``find``/``replace``/``translate`` and ``binascii.crc_hqx``); Python
only runs per frame and per escape, never per byte.
"""

from __future__ import annotations

from binascii import crc_hqx

FLAG = 0x7E
ESCAPE = 0x7D
XON = 0x11
XOFF = 0x13
VENDOR = 0xF8

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

#: Each byte with its bits in reverse order (a ``bytes.translate`` table).
_REVERSE = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def _reverse16(value: int) -> int:
    return (_REVERSE[value & 0xFF] << 8) | _REVERSE[value >> 8]


#: The good-frame residue as the bit-reversed (XMODEM-order) CRC register holds it.
_GOOD_RESIDUE_REVERSED = _reverse16(FCS_GOOD_RESIDUE)


def fcs16_update(fcs: int, data: bytes | bytearray | memoryview) -> int:
    """Run reflected CRC-16 (poly 0x8408) over ``data`` starting from ``fcs``.

    Computed in C: the reflected CRC is the MSB-first CRC (poly 0x1021, ``binascii.crc_hqx``)
    of the bit-reversed bytes from the bit-reversed register, read back bit-reversed."""
    if not 0 <= fcs <= 0xFFFF:  # not a 16-bit register: keep the table's exact arithmetic
        for byte in data:
            fcs = (fcs >> 8) ^ _TABLE[(fcs ^ byte) & 0xFF]
        return fcs
    return _reverse16(crc_hqx(bytes(data).translate(_REVERSE), _reverse16(fcs)))


def fcs16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25 of ``data``: init 0xFFFF, final xor 0xFFFF."""
    return fcs16_update(FCS_INIT, data) ^ 0xFFFF


def hdlc_encode(payload: bytes) -> bytes:
    """Frame one payload: flag, escaped payload and FCS (low byte first), flag."""
    body = bytes(payload)
    # fcs16 inlined: the bit-reversed register, complemented, is the FCS with its bytes in
    # wire order (low byte first) once each byte's bits are reversed back.
    fcs = crc_hqx(body.translate(_REVERSE), FCS_INIT) ^ 0xFFFF
    body += fcs.to_bytes(2, "big").translate(_REVERSE)
    # 7D first: the later replacements insert 7D bytes that must stay as they are. None of the
    # escaped forms (5D 5E 31 33 D8) is itself a byte that needs escaping.
    body = (
        body.replace(b"\x7d", b"\x7d\x5d")
        .replace(b"\x7e", b"\x7d\x5e")
        .replace(b"\x11", b"\x7d\x31")
        .replace(b"\x13", b"\x7d\x33")
        .replace(b"\xf8", b"\x7d\xd8")
    )
    return b"\x7e" + body + b"\x7e"


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


_FLIPPED = [bytes((byte ^ 0x20,)) for byte in range(256)]


def _unescape(raw: bytes) -> tuple[bytes, bool]:
    """Undo the escaping of one frame's bytes (no flags inside). Returns the bytes and whether
    they ended in a lone escape byte (dropped). ``7D x`` is ``x ^ 0x20`` for any ``x``, so
    ``7D 7D`` is ``5D``.

    Works on the pieces between escape bytes: each piece after a ``7D`` starts with the escaped
    byte; an empty piece is a ``7D`` that was itself escaped (or a lone one at the end)."""
    parts = raw.split(b"\x7d")
    if len(parts) == 1:
        return raw, False
    out = [parts[0]]
    i, last = 1, len(parts) - 1
    while i <= last:
        part = parts[i]
        if part:
            out.append(_FLIPPED[part[0]])
            out.append(part[1:])
            i += 1
        elif i == last:
            return b"".join(out), True
        else:  # 7D 7D: the escaped byte is 7D itself, and the next piece is all literal
            out.append(b"\x5d")
            out.append(parts[i + 1])
            i += 2
    return b"".join(out), False


class HdlcDecoder:
    """Incremental HDLC-lite decoder: ``feed`` bytes, get back frames and errors in order.

    Starts unsynchronised: bytes before the first flag are reported as :class:`HdlcGarbage`.
    After any error it resynchronises on the next flag.

    Between flags it keeps the frame's bytes as received (still escaped) and decodes them when
    the closing flag arrives; a frame whose escaped bytes already prove it too long is decoded
    early, remembered only by its head, and the rest of it skipped.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max = max_frame
        # Escaped bytes: each decodes to at least half a byte, so this many prove "too long".
        self._max_raw = 2 * max_frame + 2
        self._synced = False
        self._pending = b""  # escaped bytes of the open frame since its flag
        self._overflow: bytes | None = None  # head of an open frame already known too long
        self._garbage = 0
        self._garbage_head = b""

    def feed(self, data: bytes) -> list[bytes | HdlcError]:
        out: list[bytes | HdlcError] = []
        data = bytes(data)
        if not self._synced:
            start = data.find(b"\x7e")
            if start < 0:
                self._note_garbage(data)
                return out
            self._note_garbage(data[:start])
            self._flush_garbage(out)
            self._synced = True
            data = data[start + 1 :]
        pieces = data.split(b"\x7e")
        tail = pieces.pop()
        if pieces:  # at least one flag: the open frame ends at the first
            if self._overflow is not None:
                out.append(self._too_long(self._overflow))
                self._overflow = None
                pieces[0] = b""
            elif self._pending:
                pieces[0] = self._pending + pieces[0]
            self._pending = b""
            for raw in pieces:
                if not raw:
                    continue  # back-to-back flags: an idle line, not an error
                buf, aborted = _unescape(raw) if b"\x7d" in raw else (raw, False)
                if (
                    3 <= len(buf) <= self._max
                    and not aborted
                    and crc_hqx(buf.translate(_REVERSE), FCS_INIT) == _GOOD_RESIDUE_REVERSED
                ):
                    out.append(buf[:-2])
                else:
                    out.append(self._bad_frame(buf, aborted))
        if self._overflow is None and tail:
            pending = self._pending + tail if self._pending else tail
            if len(pending) >= self._max_raw:
                self._overflow = _unescape(pending)[0][: self._max]
                pending = b""
            self._pending = pending
        return out

    def _note_garbage(self, data: bytes) -> None:
        self._garbage += len(data)
        if len(self._garbage_head) < 64:
            self._garbage_head = (self._garbage_head + data)[:64]

    def _flush_garbage(self, out: list[bytes | HdlcError]) -> None:
        if self._garbage:
            out.append(
                HdlcGarbage(
                    f"{self._garbage} byte(s) outside any frame discarded",
                    self._garbage_head,
                )
            )
        self._garbage = 0
        self._garbage_head = b""

    def _too_long(self, head: bytes) -> HdlcTooLong:
        return HdlcTooLong(f"frame longer than {self._max} bytes dropped", head)

    def _bad_frame(self, buf: bytes, aborted: bool) -> HdlcError:
        """The error for a closed frame (unescaped ``buf``) that is not a good one."""
        if len(buf) > self._max:
            return self._too_long(buf[: self._max])
        if aborted:
            return HdlcBadEscape("escape byte 7D followed by flag: frame aborted", buf)
        if len(buf) < 3:
            return HdlcTooShort(f"frame of {len(buf)} byte(s) is shorter than payload+FCS", buf)
        got = buf[-2] | (buf[-1] << 8)
        want = fcs16(buf[:-2])
        return HdlcBadFcs(f"bad FCS: frame carries {got:04X}, payload gives {want:04X}", buf)
