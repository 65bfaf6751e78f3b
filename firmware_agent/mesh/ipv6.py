"""IPv6 packets, addresses derived from link-layer addresses, UDP, ICMPv6 and the RPL source
routing header (RFC 6554) with the step a forwarding node takes on it (sans-IO)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

HOP_BY_HOP = 0
UDP = 17
ROUTING = 43
ICMPV6 = 58
LINK_LOCAL_PREFIX = bytes.fromhex("fe80000000000000")
ROUTING_TYPE_RPL_SRH = 3  # RFC 6554


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


def address_in_prefix(prefix: bytes, mac: bytes) -> bytes:
    """A /64 address from an 8-byte prefix and the IID of a link-layer address (SLAAC style)."""
    if len(prefix) != 8:
        raise PacketError(f"a /64 prefix is 8 bytes, got {len(prefix)}")
    return prefix + iid_from_mac(mac)


def eui64_from_address(addr: bytes) -> bytes:
    """The EUI-64 an address's IID was made from (U/L bit flipped back): the MAC to send a
    packet for this address to, when addresses come from EUI-64s as in this mesh."""
    _check_address("address", addr)
    return bytes([addr[8] ^ 0x02]) + addr[9:]


def is_multicast(addr: bytes) -> bool:
    return addr[:1] == b"\xff"


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


def _check_address(what: str, addr: bytes) -> None:
    if len(addr) != 16:
        raise PacketError(f"{what} must be a 16-byte IPv6 address, got {len(addr)} bytes")


def encode_icmpv6(src: bytes, dst: bytes, icmp_type: int, code: int, body: bytes) -> bytes:
    """An ICMPv6 message with its checksum over the pseudo-header (``dst`` = final destination)."""
    _check_address("ICMPv6 source", src)
    _check_address("ICMPv6 destination", dst)
    header = struct.pack("!BBH", icmp_type, code, 0)
    csum = checksum(src, dst, ICMPV6, header + body)
    return struct.pack("!BBH", icmp_type, code, csum) + body


def decode_icmpv6(src: bytes, dst: bytes, data: bytes) -> tuple[int, int, bytes]:
    """(type, code, body) of an ICMPv6 message whose checksum checks out."""
    if len(data) < 4:
        raise PacketError(f"ICMPv6 header truncated ({len(data)} bytes)")
    if checksum(src, dst, ICMPV6, data) != 0:
        (got,) = struct.unpack_from("!H", data, 2)
        raise PacketError(f"bad ICMPv6 checksum 0x{got:04x}")
    return data[0], data[1], data[4:]


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


# --- RFC 6554 source routing header (routing type 3) ---------------------------------------


class SrhError(PacketError):
    """A source routing header that does not parse or cannot be processed (says which)."""


class SegmentsExhausted(SrhError):
    """Segments Left is 0: this node is the final destination, there is no hop to advance to."""


class HopLimitExceeded(SrhError):
    """The hop limit would reach 0 on forwarding (ICMPv6 Time Exceeded, RFC 6554 §4.2)."""


class SourceRouteLoop(SrhError):
    """An address occurs twice in the route with another address between (RFC 6554 §4.2)."""


@dataclass(frozen=True)
class SourceRoute:
    """A decoded RPL source routing header.

    ``addresses`` is the address vector Address[1..n] with every address expanded to 16 bytes;
    ``cmpr_i``/``cmpr_e`` are the prefix octets elided on the wire (relative to the packet's
    destination address) for Address[1..n-1] and Address[n]."""

    next_header: int
    segments_left: int
    addresses: tuple[bytes, ...]
    cmpr_i: int = 0
    cmpr_e: int = 0


def _common_prefix(a: bytes, b: bytes) -> int:
    n = 0
    while n < 16 and a[n] == b[n]:
        n += 1
    return n


def _srh_compression(addresses: list[bytes], dst: bytes) -> tuple[int, int]:
    """CmprI/CmprE that stay valid at every hop: as the destination is swapped with the vector
    entries, each slot is read back against every address the destination takes on."""
    visited = [dst, *addresses[:-1]]
    last = addresses[-1]
    cmpr_e = min(_common_prefix(last, a) for a in visited)
    everything = [*visited, last]
    cmpr_i = min(_common_prefix(dst, a) for a in everything) if len(addresses) > 1 else cmpr_e
    return min(cmpr_i, 15), min(cmpr_e, 15)


def encode_srh(
    addresses: list[bytes] | tuple[bytes, ...],
    next_header: int,
    segments_left: int | None = None,
    *,
    dst: bytes | None = None,
) -> bytes:
    """The RFC 6554 routing header carrying ``addresses`` (Address[1..n], the last one being the
    final destination). ``segments_left`` defaults to n. With ``dst`` (the IPv6 destination the
    header travels under: the first hop) the prefix octets every address shares with it are
    elided (CmprI/CmprE); without it every address is carried in full."""
    addrs = list(addresses)
    if not addrs:
        raise SrhError("a source route needs at least one address")
    for k, addr in enumerate(addrs, 1):
        _check_address(f"source route Address[{k}]", addr)
        if is_multicast(addr):
            raise SrhError(f"source route Address[{k}] is multicast ({format_address(addr)})")
    if dst is None:
        cmpr_i = cmpr_e = 0
    else:
        _check_address("source route destination", dst)
        cmpr_i, cmpr_e = _srh_compression(addrs, dst)
    left = len(addrs) if segments_left is None else segments_left
    return _pack_srh(SourceRoute(next_header, left, tuple(addrs), cmpr_i, cmpr_e), dst)


def _pack_srh(route: SourceRoute, dst: bytes | None) -> bytes:
    n = len(route.addresses)
    if not 0 <= route.segments_left <= n:
        raise SrhError(f"segments left {route.segments_left} is not 0..{n}")
    if not (0 <= route.cmpr_i <= 15 and 0 <= route.cmpr_e <= 15):
        raise SrhError(f"CmprI {route.cmpr_i} / CmprE {route.cmpr_e} must be 0..15")
    if not 0 <= route.next_header <= 0xFF:
        raise SrhError(f"next header {route.next_header} is not 0..255")
    body = bytearray()
    for k, addr in enumerate(route.addresses, 1):
        elide = route.cmpr_e if k == n else route.cmpr_i
        if elide and (dst is None or addr[:elide] != dst[:elide]):
            raise SrhError(
                f"source route Address[{k}] {format_address(addr)} does not share the "
                f"{elide} elided prefix octets with the destination"
            )
        body += addr[elide:]
    pad = -len(body) % 8
    total = 8 + len(body) + pad
    if total > 8 * 256:
        raise SrhError(f"source routing header of {total} bytes exceeds 2048")
    header = struct.pack(
        "!BBBBBBH",
        route.next_header,
        total // 8 - 1,
        ROUTING_TYPE_RPL_SRH,
        route.segments_left,
        route.cmpr_i << 4 | route.cmpr_e,
        pad << 4,
        0,
    )
    return header + bytes(body) + bytes(pad)


def decode_srh(data: bytes, dst: bytes | None = None) -> tuple[SourceRoute, bytes]:
    """(the source route, the bytes after the header). ``dst`` (the packet's IPv6 destination)
    is needed to expand addresses whose prefix was elided."""
    if dst is not None:
        _check_address("source route destination", dst)
    if len(data) < 8:
        raise SrhError(f"routing header truncated ({len(data)} bytes)")
    nh, ext_len, rtype, left, cmpr, pad_byte = struct.unpack_from("!BBBBBB", data)
    if rtype != ROUTING_TYPE_RPL_SRH:
        raise SrhError(f"routing type {rtype}, expected {ROUTING_TYPE_RPL_SRH} (RPL SRH)")
    total = 8 * (ext_len + 1)
    if total > len(data):
        raise SrhError(f"routing header says {total} bytes, {len(data)} present")
    cmpr_i, cmpr_e, pad = cmpr >> 4, cmpr & 0xF, pad_byte >> 4
    area = total - 8 - pad
    first, last = 16 - cmpr_i, 16 - cmpr_e
    if area < last or (area - last) % first:
        raise SrhError(
            f"routing header of {total} bytes with CmprI {cmpr_i}, CmprE {cmpr_e}, Pad {pad} "
            "holds no whole number of addresses"
        )
    n = (area - last) // first + 1
    if left > n:
        raise SrhError(f"segments left {left} exceeds the {n} addresses in the header")
    if ((cmpr_i and n > 1) or cmpr_e) and dst is None:
        raise SrhError("compressed source route needs the packet's destination to expand")
    prefix = dst or bytes(16)
    addrs: list[bytes] = []
    pos = 8
    for k in range(1, n + 1):
        elide = cmpr_e if k == n else cmpr_i
        addrs.append(prefix[:elide] + data[pos : pos + 16 - elide])
        pos += 16 - elide
    return SourceRoute(nh, left, tuple(addrs), cmpr_i, cmpr_e), data[total:]


def final_destination(packet: Ipv6Packet) -> bytes:
    """Where the packet ends up: the last source-route address while segments remain, else its
    destination. Upper-layer checksums use this address (RFC 8200 §8.1)."""
    if packet.next_header != ROUTING:
        return packet.dst
    route, _ = decode_srh(packet.payload, packet.dst)
    return route.addresses[-1] if route.segments_left else packet.dst


def advance_srh(packet: Ipv6Packet) -> Ipv6Packet:
    """The packet as a forwarding node sends it on (RFC 6554 §4.2): the destination swapped
    with the next address of the route, Segments Left and the hop limit decremented. The
    header keeps its size and compression. Raises SegmentsExhausted, HopLimitExceeded,
    SourceRouteLoop or SrhError (multicast, malformed, prefix mismatch)."""
    if packet.next_header != ROUTING:
        raise SrhError(
            f"no routing header after the IPv6 header (next header {packet.next_header})"
        )
    route, rest = decode_srh(packet.payload, packet.dst)
    n = len(route.addresses)
    if route.segments_left == 0:
        raise SegmentsExhausted(f"segments left is 0: {format_address(packet.dst)} is the end")
    idx = n - route.segments_left  # 0-based index of Address[i]
    nxt = route.addresses[idx]
    if is_multicast(nxt) or is_multicast(packet.dst):
        raise SrhError("multicast address in the source route or as the destination")
    itinerary = [*route.addresses[:idx], packet.dst, *route.addresses[idx:]]
    seen: dict[bytes, int] = {}
    for pos, addr in enumerate(itinerary):
        before = seen.get(addr)
        if before is not None and pos - before > 1:
            raise SourceRouteLoop(
                f"{format_address(addr)} occurs twice in the source route "
                f"(hops {before + 1} and {pos + 1}) with another address between"
            )
        seen[addr] = pos
    if packet.hop_limit <= 1:
        raise HopLimitExceeded(f"hop limit {packet.hop_limit} cannot be forwarded")
    addrs = list(route.addresses)
    addrs[idx] = packet.dst
    swapped = SourceRoute(
        route.next_header, route.segments_left - 1, tuple(addrs), route.cmpr_i, route.cmpr_e
    )
    return Ipv6Packet(
        packet.src, nxt, ROUTING, _pack_srh(swapped, nxt) + rest, packet.hop_limit - 1
    )
