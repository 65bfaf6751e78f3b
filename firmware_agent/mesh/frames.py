"""IEEE 802.15.4-2015 MAC frames: encode and decode data and ack frames (sans-IO).

Frames are PSDUs with a 2-byte FCS (CRC-16/KERMIT, as 802.15.4 specifies for 2-octet FCS).
Extended addresses are carried least significant octet first on the air; this module takes and
returns them in the usual written (big-endian EUI-64) order so that callers never reverse bytes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from drivers.hdlc import fcs16_update

FCS_LEN = 2
MAX_PSDU = 2047  # IEEE 802.15.4g MR-FSK PHR allows 2047 octets


class FrameError(ValueError):
    """A PSDU that is not a frame this codec accepts; the message says what is wrong."""


class FrameType(enum.IntEnum):
    BEACON = 0
    DATA = 1
    ACK = 2
    COMMAND = 3


class AddrMode(enum.IntEnum):
    NONE = 0
    SHORT = 2
    EXTENDED = 3


@dataclass(frozen=True)
class HeaderIE:
    element_id: int
    content: bytes


@dataclass(frozen=True)
class Frame:
    frame_type: FrameType
    seq: int | None
    dst_pan: int | None = None
    dst: bytes | None = None  # 2 bytes (short) or 8 bytes (EUI-64, written order)
    src_pan: int | None = None
    src: bytes | None = None
    ack_request: bool = False
    frame_pending: bool = False
    version: int = 2
    header_ies: tuple[HeaderIE, ...] = field(default_factory=tuple)
    payload: bytes = b""


HT1 = 0x7E  # header termination: payload IEs follow
HT2 = 0x7F  # header termination: payload follows, no payload IEs


def fcs16(data: bytes) -> int:
    """CRC-16/KERMIT (ITU-T poly, reflected, init 0): the 802.15.4 2-octet FCS."""
    return fcs16_update(0, data)


def _mode_of(addr: bytes | None) -> AddrMode:
    if addr is None:
        return AddrMode.NONE
    if len(addr) == 2:
        return AddrMode.SHORT
    if len(addr) == 8:
        return AddrMode.EXTENDED
    raise FrameError(f"address must be 2 or 8 bytes, got {len(addr)}")


def _pan_ids_present(
    version: int, dst: AddrMode, src: AddrMode, compress: bool
) -> tuple[bool, bool]:
    """Which PAN ids are in the header (IEEE 802.15.4-2015 table 7-2 for version 2)."""
    if version < 2:
        if dst and src:
            return True, not compress
        return dst != AddrMode.NONE, src != AddrMode.NONE
    if not dst and not src:
        return compress, False
    if dst and not src:
        return not compress, False
    if src and not dst:
        return False, not compress
    if dst == AddrMode.EXTENDED and src == AddrMode.EXTENDED:
        return not compress, False
    return True, not compress


def _choose_compression(frame: Frame) -> bool:
    """Pick the PAN ID Compression bit that yields exactly the PAN ids the frame carries."""
    dmode, smode = _mode_of(frame.dst), _mode_of(frame.src)
    want = (frame.dst_pan is not None, frame.src_pan is not None)
    for compress in (False, True):
        if _pan_ids_present(frame.version, dmode, smode, compress) == want:
            return compress
    raise FrameError(
        f"no PAN ID Compression setting gives dst_pan={frame.dst_pan is not None}, "
        f"src_pan={frame.src_pan is not None} for these address modes"
    )


def encode(frame: Frame) -> bytes:
    """The PSDU for ``frame``, FCS included."""
    dmode, smode = _mode_of(frame.dst), _mode_of(frame.src)
    compress = _choose_compression(frame)
    has_ies = bool(frame.header_ies)
    fc = (
        int(frame.frame_type)
        | frame.frame_pending << 4
        | frame.ack_request << 5
        | compress << 6
        | (frame.seq is None) << 8
        | has_ies << 9
        | int(dmode) << 10
        | frame.version << 12
        | int(smode) << 14
    )
    out = bytearray(struct.pack("<H", fc))
    if frame.seq is not None:
        out.append(frame.seq & 0xFF)
    if frame.dst_pan is not None:
        out += struct.pack("<H", frame.dst_pan)
    if frame.dst is not None:
        out += frame.dst[::-1]
    if frame.src_pan is not None:
        out += struct.pack("<H", frame.src_pan)
    if frame.src is not None:
        out += frame.src[::-1]
    for ie in frame.header_ies:
        if len(ie.content) > 127:
            raise FrameError(
                f"header IE 0x{ie.element_id:02x} content too long ({len(ie.content)})"
            )
        out += struct.pack("<H", len(ie.content) | ie.element_id << 7) + ie.content
    if has_ies and frame.payload:
        out += struct.pack("<H", HT2 << 7)
    out += frame.payload
    if len(out) + FCS_LEN > MAX_PSDU:
        raise FrameError(
            f"frame of {len(out) + FCS_LEN} bytes exceeds the {MAX_PSDU}-byte PSDU limit"
        )
    return bytes(out) + struct.pack("<H", fcs16(bytes(out)))


def decode(psdu: bytes, *, check_fcs: bool = True) -> Frame:
    """Parse a PSDU (FCS included). Raises FrameError naming the first problem."""
    if len(psdu) < 3 + FCS_LEN - 1:
        raise FrameError(f"frame too short ({len(psdu)} bytes)")
    body, (fcs,) = psdu[:-FCS_LEN], struct.unpack("<H", psdu[-FCS_LEN:])
    if check_fcs and fcs16(body) != fcs:
        raise FrameError(f"bad FCS: got 0x{fcs:04x}, computed 0x{fcs16(body):04x}")
    (fc,) = struct.unpack_from("<H", body)
    ftype = fc & 7
    if ftype not in FrameType._value2member_map_:
        raise FrameError(f"unsupported frame type {ftype}")
    if fc & 0x08:
        raise FrameError("security-enabled frames are not supported yet")
    version = (fc >> 12) & 3
    if version == 3:
        raise FrameError("reserved frame version 3")
    try:
        dmode, smode = AddrMode((fc >> 10) & 3), AddrMode((fc >> 14) & 3)
    except ValueError:
        raise FrameError("reserved addressing mode 1") from None
    seq_suppressed = bool(fc & 0x100) and version == 2
    has_ies = bool(fc & 0x200) and version == 2
    dpan_present, span_present = _pan_ids_present(version, dmode, smode, bool(fc & 0x40))
    reader = _Reader(body, 2)
    seq = None if seq_suppressed else reader.take(1)[0]
    dst_pan = reader.u16() if dpan_present else None
    dst = reader.take(8 if dmode == AddrMode.EXTENDED else 2)[::-1] if dmode else None
    src_pan = reader.u16() if span_present else None
    src = reader.take(8 if smode == AddrMode.EXTENDED else 2)[::-1] if smode else None
    ies: list[HeaderIE] = []
    if has_ies:
        while reader.remaining():
            (hdr,) = struct.unpack("<H", reader.take(2))
            if hdr & 0x8000:
                raise FrameError("payload IE found where a header IE was expected")
            eid, length = (hdr >> 7) & 0xFF, hdr & 0x7F
            if eid in (HT1, HT2):
                if eid == HT1:
                    _skip_payload_ies(reader)
                break
            ies.append(HeaderIE(eid, reader.take(length)))
    return Frame(
        frame_type=FrameType(ftype),
        seq=seq,
        dst_pan=dst_pan,
        dst=dst,
        src_pan=src_pan,
        src=src,
        ack_request=bool(fc & 0x20),
        frame_pending=bool(fc & 0x10),
        version=version,
        header_ies=tuple(ies),
        payload=reader.rest(),
    )


def _skip_payload_ies(reader: _Reader) -> None:
    while reader.remaining():
        (hdr,) = struct.unpack("<H", reader.take(2))
        group, length = (hdr >> 11) & 0xF, hdr & 0x7FF
        reader.take(length)
        if group == 0xF:
            return


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self._data, self._pos = data, pos

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise FrameError(f"frame truncated: needed {n} bytes at offset {self._pos}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u16(self) -> int:
        (value,) = struct.unpack("<H", self.take(2))
        return int(value)

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk


def data_frame(
    seq: int, pan_id: int, dst: bytes, src: bytes, payload: bytes, *, ack_request: bool = True
) -> Frame:
    """A unicast data frame between two EUI-64s in one PAN (dst PAN present, src PAN elided)."""
    return Frame(
        FrameType.DATA,
        seq,
        dst_pan=pan_id,
        dst=dst,
        src=src,
        ack_request=ack_request,
        payload=payload,
    )


def ack_for(frame: Frame) -> Frame:
    """The Enh-Ack (frame version 2) answering ``frame``: same sequence number, addressed back."""
    return Frame(FrameType.ACK, frame.seq, dst=frame.src, dst_pan=None, version=2)
