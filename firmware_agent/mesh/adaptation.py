"""The 6LoWPAN adaptation layer both the gateway stack and the emulated nodes use (sans-IO).

One way to carry IPv6 over 802.15.4 here: :class:`LowpanAdaptation` compresses a packet (IPHC,
UDP NHC) and fragments it when it does not fit one frame (RFC 4944), and on the way in
reassembles fragments and expands the result. MAC framing, acks and retries stay with the
caller, which passes the MAC payloads and the two link-layer addresses.

Packet helpers build and take apart what RPL non-storing mode sends: UDP and ICMPv6 RPL
packets, with a source routing header (RFC 6554) when the root sends downwards through
routers. Upper-layer checksums use the final destination, as RFC 8200 §8.1 says.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_agent.mesh import fragments, ipv6, lowpan, rpl
from firmware_agent.mesh.fragments import ExpiredReassembly, Reassembler, ReassemblyStats
from firmware_agent.mesh.ipv6 import Ipv6Packet, PacketError, SourceRoute, UdpDatagram

ICMPV6_RPL = rpl.ICMPV6_RPL


@dataclass
class AdaptationStats:
    datagrams_tx: int = 0
    fragmented_tx: int = 0  # datagrams that needed fragments
    fragments_tx: int = 0
    payloads_rx: int = 0  # MAC payloads given to decode
    fragments_rx: int = 0
    datagrams_rx: int = 0  # packets decode returned (whole or reassembled)


class LowpanAdaptation:
    """IPv6 packets ⇄ 6LoWPAN MAC payloads for one interface.

    ``max_frame_payload`` is the room a data frame leaves for its payload (see
    ``frames.payload_room``). ``first_tag`` seeds the datagram tag counter (pass a random value
    from an injected ``random.Random`` so restarts do not reuse tags)."""

    def __init__(
        self,
        max_frame_payload: int,
        reassembly_timeout_s: float = fragments.DEFAULT_TIMEOUT_S,
        max_reassemblies: int = fragments.DEFAULT_MAX_REASSEMBLIES,
        *,
        max_datagram: int = fragments.DEFAULT_MAX_DATAGRAM,
        first_tag: int = 0,
    ) -> None:
        if max_frame_payload < fragments.FRAGN_HEADER_LEN + 8:
            raise ValueError(f"frame payload room {max_frame_payload} is too small to fragment")
        if not 0 <= first_tag <= 0xFFFF:
            raise ValueError(f"first datagram tag {first_tag} is not 0..65535")
        self.max_frame_payload = max_frame_payload
        self.max_datagram = max_datagram
        self.stats = AdaptationStats()
        self.reassembler = Reassembler(reassembly_timeout_s, max_reassemblies, max_datagram)
        self._tag = first_tag

    @property
    def reassembly_stats(self) -> ReassemblyStats:
        return self.reassembler.stats

    def encode(self, packet: Ipv6Packet, src_mac: bytes, dst_mac: bytes) -> list[bytes]:
        """The MAC payloads, in order, that carry ``packet`` from ``src_mac`` to ``dst_mac``."""
        size = 40 + len(packet.payload)
        if size > self.max_datagram:
            raise fragments.DatagramTooLarge(
                f"datagram of {size} bytes exceeds the {self.max_datagram}-byte limit"
            )
        compressed = lowpan.compress(packet, src_mac, dst_mac)
        self.stats.datagrams_tx += 1
        if len(compressed) <= self.max_frame_payload:
            return [compressed]
        tag = self._tag
        self._tag = (tag + 1) & 0xFFFF
        out = fragments.fragment(compressed, size, tag, self.max_frame_payload)
        self.stats.fragmented_tx += 1
        self.stats.fragments_tx += len(out)
        return out

    def decode(
        self, payload: bytes, src_mac: bytes, dst_mac: bytes, now: float
    ) -> Ipv6Packet | None:
        """The packet a MAC payload completes, or None while a fragmented datagram is still
        incomplete. Raises LowpanError (FragmentError for fragments) naming what was wrong."""
        self.stats.payloads_rx += 1
        if fragments.is_fragment(payload):
            self.stats.fragments_rx += 1
            whole = self.reassembler.feed(src_mac, dst_mac, payload, now)
            if whole is None:
                return None
            payload = whole
        packet = lowpan.decompress(payload, src_mac, dst_mac)
        self.stats.datagrams_rx += 1
        return packet

    def expire(self, now: float) -> list[ExpiredReassembly]:
        """Give up reassemblies older than the timeout; call it now and then (each second)."""
        return self.reassembler.expire(now)


# --- packet helpers -----------------------------------------------------------------------------


def _routed(
    src: bytes,
    dst: bytes,
    next_header: int,
    upper: bytes,
    route: list[bytes] | None,
    hop_limit: int,
) -> Ipv6Packet:
    if not route:
        return Ipv6Packet(src, dst, next_header, upper, hop_limit)
    hops = [*route, dst]
    if len(set(hops)) != len(hops) or src in hops:
        names = ", ".join(ipv6.format_address(a) for a in [src, *hops])
        raise ipv6.SourceRouteLoop(f"route visits an address twice: {names}")
    srh = ipv6.encode_srh([*route[1:], dst], next_header, dst=route[0])
    return Ipv6Packet(src, route[0], ipv6.ROUTING, srh + upper, hop_limit)


def udp_packet(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    route: list[bytes] | None = None,
    *,
    hop_limit: int = 64,
) -> Ipv6Packet:
    """A UDP packet from ``src`` to ``dst``. With ``route`` (the routers to pass, in order,
    not including ``dst``) it is addressed to the first router and carries a source routing
    header listing the others and ``dst``."""
    datagram = ipv6.encode_udp(src, dst, UdpDatagram(sport, dport, payload))
    return _routed(src, dst, ipv6.UDP, datagram, route, hop_limit)


def rpl_packet(
    src: bytes,
    dst: bytes,
    message: rpl.RplMessage,
    route: list[bytes] | None = None,
    *,
    hop_limit: int = 64,
) -> Ipv6Packet:
    """An ICMPv6 RPL packet (``route`` as for :func:`udp_packet`, e.g. a DAO-ACK going down)."""
    return _routed(src, dst, ipv6.ICMPV6, rpl.encode_rpl(src, dst, message), route, hop_limit)


@dataclass(frozen=True)
class ParsedPacket:
    """What a packet carries. ``final_dst`` is where it ends up; when ``srh`` still has
    segments left, this node is a router on the way and should forward it (``ipv6.advance_srh``)."""

    packet: Ipv6Packet
    final_dst: bytes
    srh: SourceRoute | None
    next_header: int  # the upper-layer protocol
    upper: bytes  # the upper-layer message as carried
    udp: UdpDatagram | None = None
    rpl: rpl.RplMessage | None = None


def parse_packet(packet: Ipv6Packet) -> ParsedPacket:
    """Walk a Hop-by-Hop header (skipped) and a source routing header, then decode UDP or an
    RPL message (checksums checked against the final destination). Other upper layers come
    back undecoded in ``upper``. Raises PacketError (SrhError, RplError) naming the problem."""
    nh, data = packet.next_header, packet.payload
    if nh == ipv6.HOP_BY_HOP:
        if len(data) < 8 or len(data) < (data[1] + 1) * 8:
            raise PacketError(f"Hop-by-Hop options header truncated ({len(data)} bytes)")
        nh, data = data[0], data[(data[1] + 1) * 8 :]
    srh: SourceRoute | None = None
    final = packet.dst
    if nh == ipv6.ROUTING:
        srh, data = ipv6.decode_srh(data, packet.dst)
        nh = srh.next_header
        if srh.segments_left:
            final = srh.addresses[-1]
    if nh == ipv6.UDP:
        udp = ipv6.decode_udp(Ipv6Packet(packet.src, final, ipv6.UDP, data))
        return ParsedPacket(packet, final, srh, nh, data, udp=udp)
    if nh == ipv6.ICMPV6 and data[:1] == bytes((ICMPV6_RPL,)):
        message = rpl.decode_rpl(packet.src, final, data)
        return ParsedPacket(packet, final, srh, nh, data, rpl=message)
    return ParsedPacket(packet, final, srh, nh, data)
