"""IPv6 packets, addresses derived from link-layer addresses, and UDP (sans-IO)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

UDP = 17
ICMPV6 = 58
LINK_LOCAL_PREFIX = bytes.fromhex("fe80000000000000")


class PacketError(ValueError):
    """An IPv6 or UDP packet that does not parse or check out; the message says why."""


@dataclass(frozen=True)
class Ipv6Packet:
    src: bytes  # 16 bytes
    dst: bytes  # 16 bytes
    next_header: int
    payload: bytes
    hop_limit: int = 64


@dataclass(frozen=True)
class UdpDatagram:
    src_port: int
    dst_port: int
    payload: bytes


def iid_from_mac(mac: bytes) -> bytes:
    """The interface identifier for an EUI-64 (U/L bit flipped) or a 16-bit short address."""
    if len(mac) == 8:
        return bytes([mac[0] ^ 0x02]) + mac[1:]
    if len(mac) == 2:
        return bytes.fromhex("000000fffe00") + mac
    raise PacketError(f"link-layer address must be 2 or 8 bytes, got {len(mac)}")


def link_local(mac: bytes) -> bytes:
    return LINK_LOCAL_PREFIX + iid_from_mac(mac)


def format_address(addr: bytes) -> str:
    return str(ipaddress.IPv6Address(addr))


def checksum(src: bytes, dst: bytes, next_header: int, upper: bytes) -> int:
    """The Internet checksum over the IPv6 pseudo-header and an upper-layer message."""
    pseudo = src + dst + struct.pack("!I3xB", len(upper), next_header)
    data = pseudo + upper + (b"\0" if len(upper) % 2 else b"")
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_udp(src: bytes, dst: bytes, datagram: UdpDatagram) -> bytes:
    """The UDP header and payload, with the checksum computed over the pseudo-header."""
    length = 8 + len(datagram.payload)
    header = struct.pack("!HHHH", datagram.src_port, datagram.dst_port, length, 0)
    csum = checksum(src, dst, UDP, header + datagram.payload) or 0xFFFF
    return (
        struct.pack("!HHHH", datagram.src_port, datagram.dst_port, length, csum) + datagram.payload
    )


def decode_udp(packet: Ipv6Packet) -> UdpDatagram:
    data = packet.payload
    if packet.next_header != UDP:
        raise PacketError(f"not UDP (next header {packet.next_header})")
    if len(data) < 8:
        raise PacketError(f"UDP header truncated ({len(data)} bytes)")
    sport, dport, length, csum = struct.unpack_from("!HHHH", data)
    if length != len(data):
        raise PacketError(f"UDP length field {length} but {len(data)} bytes present")
    if csum == 0:
        raise PacketError("UDP checksum is zero, which IPv6 forbids")
    if checksum(packet.src, packet.dst, UDP, data) != 0:
        raise PacketError("bad UDP checksum")
    return UdpDatagram(sport, dport, data[8:])


def encode_ipv6(packet: Ipv6Packet) -> bytes:
    """The uncompressed IPv6 packet: what a pcap of the reassembled traffic would show."""
    header = struct.pack(
        "!IHBB", 6 << 28, len(packet.payload), packet.next_header, packet.hop_limit
    )
    return header + packet.src + packet.dst + packet.payload


def decode_ipv6(data: bytes) -> Ipv6Packet:
    if len(data) < 40:
        raise PacketError(f"IPv6 header truncated ({len(data)} bytes)")
    word, length, nh, hlim = struct.unpack_from("!IHBB", data)
    if word >> 28 != 6:
        raise PacketError(f"IP version {word >> 28}, expected 6")
    if 40 + length != len(data):
        raise PacketError(f"IPv6 payload length {length} but {len(data) - 40} bytes present")
    return Ipv6Packet(data[8:24], data[24:40], nh, data[40:], hlim)
