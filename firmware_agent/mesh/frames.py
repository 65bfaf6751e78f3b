"""IEEE 802.15.4-2015 MAC frames: encode and decode data and ack frames (sans-IO).

Frames are PSDUs with a 2-byte FCS (CRC-16/KERMIT, as 802.15.4 specifies for 2-octet FCS).
Extended addresses are carried least significant octet first on the air; this module takes and
returns them in the usual written (big-endian EUI-64) order so that callers never reverse bytes.

Information elements (IEEE 802.15.4-2015 §7.4): header IEs and payload IEs are both encoded and
decoded. The codec adds the termination IEs itself, following the standard's inclusion rules
(table 7-6): Header Termination 1 (0x7E) before payload IEs, Header Termination 2 (0x7F) between
header IEs and a MAC payload when there are no payload IEs, and a Payload Termination IE (group
0xF) between payload IEs and a MAC payload. Callers never put termination IEs in a frame.

Wi-SUN's RSL IE (a Wi-SUN header IE, element id 0x2A, sub-id 0x04, one byte = dBm + 174) is how a
peer tells us the level at which it hears us ("RSL out"); :func:`rsl_ie`, :func:`find_rsl` and
``ack_for(frame, rsl_dbm=...)`` build and read it.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field, replace

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
    element_id: int  # 0..255, not a termination id (0x7E, 0x7F)
    content: bytes  # up to 127 bytes


@dataclass(frozen=True)
class PayloadIE:
    group_id: int  # 0..14 (0xF is the payload termination the codec adds itself)
    content: bytes  # up to 2047 bytes


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
    payload_ies: tuple[PayloadIE, ...] = field(default_factory=tuple)


HT1 = 0x7E  # header termination: payload IEs follow
HT2 = 0x7F  # header termination: payload follows, no payload IEs
PAYLOAD_TERMINATION = 0xF  # payload IE group id that ends the payload IE list
MAX_HEADER_IE_CONTENT = 0x7F
MAX_PAYLOAD_IE_CONTENT = 0x7FF

WISUN_HEADER_IE = 0x2A  # Wi-SUN header IE (IEEE 802.15.4 ANA); content starts with a sub-id
WISUN_SUBID_RSL = 0x04  # Received Signal Level IE
RSL_OFFSET_DBM = 174  # RSL byte = dBm + 174, clamped to 0..255


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
    has_ies = bool(frame.header_ies or frame.payload_ies)
    if has_ies and frame.version != 2:
        raise FrameError(f"IEs need frame version 2, this frame is version {frame.version}")
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
    out += _encode_ies(frame)
    out += frame.payload
    if len(out) + FCS_LEN > MAX_PSDU:
        raise FrameError(
            f"frame of {len(out) + FCS_LEN} bytes exceeds the {MAX_PSDU}-byte PSDU limit"
        )
    return bytes(out) + struct.pack("<H", fcs16(bytes(out)))


def _header_ie_descriptor(element_id: int, length: int) -> bytes:
    return struct.pack("<H", length | element_id << 7)


def _encode_ies(frame: Frame) -> bytes:
    """Header IEs, payload IEs and the termination IEs the standard's table 7-6 asks for."""
    out = bytearray()
    for ie in frame.header_ies:
        if not 0 <= ie.element_id <= 0xFF:
            raise FrameError(f"header IE element id {ie.element_id} is not 0..255")
        if ie.element_id in (HT1, HT2):
            raise FrameError(
                f"header IE 0x{ie.element_id:02x} is a termination IE; the codec adds those"
            )
        if len(ie.content) > MAX_HEADER_IE_CONTENT:
            raise FrameError(
                f"header IE 0x{ie.element_id:02x} content too long ({len(ie.content)})"
            )
        out += _header_ie_descriptor(ie.element_id, len(ie.content)) + ie.content
    if frame.payload_ies:
        out += _header_ie_descriptor(HT1, 0)
        for pie in frame.payload_ies:
            if not 0 <= pie.group_id < PAYLOAD_TERMINATION:
                raise FrameError(
                    f"payload IE group id {pie.group_id} is not 0..14 "
                    "(0xF is the termination the codec adds)"
                )
            if len(pie.content) > MAX_PAYLOAD_IE_CONTENT:
                raise FrameError(
                    f"payload IE group 0x{pie.group_id:x} content too long ({len(pie.content)})"
                )
            out += struct.pack("<H", 0x8000 | pie.group_id << 11 | len(pie.content))
            out += pie.content
        if frame.payload:
            out += struct.pack("<H", 0x8000 | PAYLOAD_TERMINATION << 11)
    elif frame.header_ies and frame.payload:
        out += _header_ie_descriptor(HT2, 0)
    return bytes(out)


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
    pies: list[PayloadIE] = []
    if has_ies:
        while reader.remaining():
            hdr = reader.u16()
            if hdr & 0x8000:
                raise FrameError("payload IE found where a header IE was expected")
            eid, length = (hdr >> 7) & 0xFF, hdr & 0x7F
            if eid in (HT1, HT2):
                if length:
                    raise FrameError(f"header termination IE 0x{eid:02x} with length {length}")
                if eid == HT1:
                    pies = _decode_payload_ies(reader)
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
        payload_ies=tuple(pies),
    )


def _decode_payload_ies(reader: _Reader) -> list[PayloadIE]:
    """Payload IEs up to the Payload Termination IE (which may be omitted when no MAC payload
    follows, so the end of the frame also ends the list)."""
    out: list[PayloadIE] = []
    while reader.remaining():
        hdr = reader.u16()
        if not hdr & 0x8000:
            raise FrameError("header IE found among the payload IEs")
        group, length = (hdr >> 11) & 0xF, hdr & 0x7FF
        if group == PAYLOAD_TERMINATION:
            if length:
                raise FrameError(f"payload termination IE with length {length}")
            break
        out.append(PayloadIE(group, reader.take(length)))
    return out


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


def payload_room(frame: Frame, max_psdu: int) -> int:
    """How many payload bytes a frame shaped like ``frame`` (addresses, IEs) can carry in a PSDU
    of ``max_psdu`` bytes: what 6LoWPAN fragmentation needs as its per-frame budget."""
    overhead = len(encode(replace(frame, payload=b"\0"))) - 1  # with HT2 if header IEs exist
    if overhead >= max_psdu:
        raise FrameError(f"a {max_psdu}-byte PSDU has no room left after {overhead} header bytes")
    return max_psdu - overhead


def ack_for(frame: Frame, rsl_dbm: float | None = None) -> Frame:
    """The Enh-Ack (frame version 2) answering ``frame``: same sequence number, addressed back.

    With ``rsl_dbm`` the ack carries the RSL IE: how well we hear the sender, which the sender
    records as its "RSL out" towards us (Wi-SUN FAN link metrics)."""
    ies = (rsl_ie(rsl_dbm),) if rsl_dbm is not None else ()
    return Frame(FrameType.ACK, frame.seq, dst=frame.src, dst_pan=None, version=2, header_ies=ies)


def rsl_byte(rsl_dbm: float) -> int:
    """The one-byte RSL encoding: dBm + 174, rounded and clamped to 0..255."""
    if not math.isfinite(rsl_dbm):
        raise FrameError(f"RSL must be a finite number of dBm, got {rsl_dbm!r}")
    return max(0, min(255, round(rsl_dbm + RSL_OFFSET_DBM)))


def rsl_ie(rsl_dbm: float) -> HeaderIE:
    """The Wi-SUN RSL IE (header IE 0x2A, sub-id 0x04) for a received level in dBm."""
    return HeaderIE(WISUN_HEADER_IE, bytes((WISUN_SUBID_RSL, rsl_byte(rsl_dbm))))


def find_rsl(frame: Frame) -> float | None:
    """The RSL (dBm) the frame's RSL IE reports, or None when the frame carries none.

    A Wi-SUN header IE with the RSL sub-id but the wrong content length is a FrameError."""
    for ie in frame.header_ies:
        if ie.element_id != WISUN_HEADER_IE or not ie.content:
            continue
        if ie.content[0] != WISUN_SUBID_RSL:
            continue
        if len(ie.content) != 2:
            raise FrameError(
                f"RSL IE must carry 1 content byte after its sub-id, got {len(ie.content) - 1}"
            )
        return float(ie.content[1] - RSL_OFFSET_DBM)
    return None
