"""6LoWPAN header compression (RFC 6282 IPHC + UDP NHC) between IPv6 packets and MAC payloads.

Sans-IO. Addresses that can be rebuilt from the MAC header are elided; anything else (global
addresses, for instance) is carried inline. Stateful (context-based) compression is not supported
and gets a LowpanError that says so. RFC 4944 fragments are handled a layer up, in
``fragments.py`` / ``adaptation.py``; :func:`header_sizes` is what reassembly needs from here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from firmware_agent.mesh.ipv6 import UDP, Ipv6Packet, PacketError, decode_ipv6, iid_from_mac

DISPATCH_IPV6 = 0x41
_HLIM_CODES = {1: 0b01, 64: 0b10, 255: 0b11}
_HLIM_VALUES = {0b01: 1, 0b10: 64, 0b11: 255}


class LowpanError(ValueError):
    """A 6LoWPAN payload this codec cannot expand; the message names the field."""


def _compress_unicast(addr: bytes, mac: bytes) -> tuple[int, bytes]:
    """(SAM/DAM code, inline bytes) for a unicast address, stateless (SAC/DAC = 0)."""
    if addr[:8] == bytes.fromhex("fe80000000000000"):
        if addr[8:] == iid_from_mac(mac):
            return 0b11, b""
        if addr[8:14] == bytes.fromhex("000000fffe00"):
            return 0b10, addr[14:]
        return 0b01, addr[8:]
    return 0b00, addr


def _compress_multicast(addr: bytes) -> tuple[int, bytes]:
    if addr[:2] == b"\xff\x02" and addr[2:15] == bytes(13):
        return 0b11, addr[15:]
    if addr[2:13] == bytes(11):
        return 0b10, addr[1:2] + addr[13:]
    if addr[2:11] == bytes(9):
        return 0b01, addr[1:2] + addr[11:]
    return 0b00, addr


def compress(packet: Ipv6Packet, src_mac: bytes, dst_mac: bytes) -> bytes:
    """The MAC payload (IPHC dispatch onwards) that carries ``packet``."""
    hlim_code = _HLIM_CODES.get(packet.hop_limit, 0)
    udp = packet.next_header == UDP
    sam, src_inline = _compress_unicast(packet.src, src_mac)
    multicast = packet.dst[0] == 0xFF
    dam, dst_inline = (
        _compress_multicast(packet.dst) if multicast else _compress_unicast(packet.dst, dst_mac)
    )
    b0 = 0b011_11_000 | udp << 2 | hlim_code
    b1 = sam << 4 | multicast << 3 | dam
    out = bytearray([b0, b1])
    if not udp:
        out.append(packet.next_header)
    if not hlim_code:
        out.append(packet.hop_limit)
    out += src_inline + dst_inline
    if udp:
        if len(packet.payload) < 8:
            raise LowpanError("UDP payload shorter than its header")
        sport, dport, _length, csum = struct.unpack_from("!HHHH", packet.payload)
        out += _compress_udp_ports(sport, dport)
        out += struct.pack("!H", csum) + packet.payload[8:]
    else:
        out += packet.payload
    return bytes(out)


def _compress_udp_ports(sport: int, dport: int) -> bytes:
    if sport & 0xFFF0 == 0xF0B0 and dport & 0xFFF0 == 0xF0B0:
        return bytes([0xF3, (sport & 0xF) << 4 | dport & 0xF])
    if dport & 0xFF00 == 0xF000:
        return bytes([0xF1]) + struct.pack("!HB", sport, dport & 0xFF)
    if sport & 0xFF00 == 0xF000:
        return bytes([0xF2]) + struct.pack("!BH", sport & 0xFF, dport)
    return bytes([0xF0]) + struct.pack("!HH", sport, dport)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise LowpanError(f"truncated in {what}: needed {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


@dataclass(frozen=True)
class _Iphc:
    """The fields of an IPHC header as read off the wire, addresses not yet expanded."""

    next_header: int | None  # None: UDP, compressed with NHC after the addresses
    hop_limit: int
    sam: int
    src_inline: bytes
    multicast: bool
    dam: int
    dst_inline: bytes


_UNICAST_INLINE = {0b00: 16, 0b01: 8, 0b10: 2, 0b11: 0}
_MULTICAST_INLINE = {0b00: 16, 0b01: 6, 0b10: 4, 0b11: 1}


def _read_iphc(cur: _Cursor) -> _Iphc:
    b0, b1 = cur.take(2, "IPHC header")
    if b0 >> 5 != 0b011:
        raise LowpanError(f"unknown 6LoWPAN dispatch 0x{b0:02x}")
    tf, nh, hlim_code = (b0 >> 3) & 3, (b0 >> 2) & 1, b0 & 3
    cid, sac, sam, m, dac, dam = (
        b1 >> 7,
        (b1 >> 6) & 1,
        (b1 >> 4) & 3,
        (b1 >> 3) & 1,
        (b1 >> 2) & 1,
        b1 & 3,
    )
    if cid or sac or dac:
        raise LowpanError("context-based address compression is not supported yet")
    cur.take({0: 4, 1: 3, 2: 1, 3: 0}[tf], "traffic class / flow label")
    next_header = None if nh else cur.take(1, "next header")[0]
    hop_limit = _HLIM_VALUES[hlim_code] if hlim_code else cur.take(1, "hop limit")[0]
    src_inline = cur.take(_UNICAST_INLINE[sam], "source address")
    dst_inline = cur.take((_MULTICAST_INLINE if m else _UNICAST_INLINE)[dam], "destination address")
    return _Iphc(next_header, hop_limit, sam, src_inline, bool(m), dam, dst_inline)


def _check_dispatch(data: bytes) -> None:
    if not data:
        raise LowpanError("empty 6LoWPAN payload")
    if data[0] & 0xF8 in (0xC0, 0xE0):
        raise LowpanError(
            "6LoWPAN fragment header: reassemble the datagram first (fragments.Reassembler)"
        )
    if data[0] != DISPATCH_IPV6 and data[0] >> 5 != 0b011:
        raise LowpanError(f"unknown 6LoWPAN dispatch 0x{data[0]:02x}")


def header_sizes(data: bytes) -> tuple[int, int]:
    """(compressed, uncompressed) length of the headers at the start of a 6LoWPAN payload.

    Compression only touches the IPv6 header and a UDP header, so every byte after them maps
    one to one: a receiver of a first fragment (RFC 4944) needs these two numbers to know how
    much of the uncompressed datagram that fragment covers."""
    _check_dispatch(data)
    if data[0] == DISPATCH_IPV6:  # the dispatch byte, then the IPv6 header as it is
        if len(data) < 41:
            raise LowpanError(f"truncated in uncompressed IPv6 header ({len(data) - 1} bytes)")
        return 41, 40
    cur = _Cursor(data)
    iphc = _read_iphc(cur)
    if iphc.next_header is None:
        _read_udp_nhc(cur)
        return cur.pos, 48
    return cur.pos, 40


def decompress(data: bytes, src_mac: bytes, dst_mac: bytes) -> Ipv6Packet:
    """Expand a MAC payload (unfragmented, or reassembled) into the IPv6 packet it carries."""
    _check_dispatch(data)
    if data[0] == DISPATCH_IPV6:
        try:
            return decode_ipv6(data[1:])
        except PacketError as exc:
            raise LowpanError(f"uncompressed IPv6: {exc}") from None
    cur = _Cursor(data)
    iphc = _read_iphc(cur)
    src = _expand_unicast(iphc.sam, iphc.src_inline, src_mac)
    dst = (
        _expand_multicast(iphc.dam, iphc.dst_inline)
        if iphc.multicast
        else _expand_unicast(iphc.dam, iphc.dst_inline, dst_mac)
    )
    if iphc.next_header is None:
        sport, dport, csum = _read_udp_nhc(cur)
        body = data[cur.pos :]
        payload = struct.pack("!HHHH", sport, dport, 8 + len(body), csum) + body
        return Ipv6Packet(src, dst, UDP, payload, iphc.hop_limit)
    return Ipv6Packet(src, dst, iphc.next_header, data[cur.pos :], iphc.hop_limit)


def _expand_unicast(mode: int, inline: bytes, mac: bytes) -> bytes:
    ll = bytes.fromhex("fe80000000000000")
    if mode == 0b00:
        return inline
    if mode == 0b01:
        return ll + inline
    if mode == 0b10:
        return ll + bytes.fromhex("000000fffe00") + inline
    try:
        return ll + iid_from_mac(mac)
    except PacketError as exc:
        raise LowpanError(f"elided address: {exc}") from None


def _expand_multicast(mode: int, inline: bytes) -> bytes:
    if mode == 0b00:
        return inline
    if mode == 0b01:
        return b"\xff" + inline[:1] + bytes(9) + inline[1:]
    if mode == 0b10:
        return b"\xff" + inline[:1] + bytes(11) + inline[1:]
    return b"\xff\x02" + bytes(13) + inline


def _read_udp_nhc(cur: _Cursor) -> tuple[int, int, int]:
    """(source port, destination port, checksum) of a UDP NHC header."""
    (nhc,) = cur.take(1, "UDP NHC")
    if nhc & 0xF8 != 0xF0:
        raise LowpanError(f"unsupported next-header compression 0x{nhc:02x}")
    if nhc & 0x04:
        raise LowpanError("elided UDP checksum is not accepted")
    ports = nhc & 3
    if ports == 0:
        sport, dport = struct.unpack("!HH", cur.take(4, "UDP ports"))
    elif ports == 1:
        sport, low = struct.unpack("!HB", cur.take(3, "UDP ports"))
        dport = 0xF000 | low
    elif ports == 2:
        low, dport = struct.unpack("!BH", cur.take(3, "UDP ports"))
        sport = 0xF000 | low
    else:
        (b,) = cur.take(1, "UDP ports")
        sport, dport = 0xF0B0 | b >> 4, 0xF0B0 | b & 0xF
    (csum,) = struct.unpack("!H", cur.take(2, "UDP checksum"))
    return sport, dport, csum
