"""The adaptation pipeline end to end: packets → MAC payloads → 802.15.4 frames and back, across
several hops with a source route, fragmentation on every hop, and the packet helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.mesh import fragments, frames, ipv6, rpl
from firmware_agent.mesh.adaptation import LowpanAdaptation, parse_packet, rpl_packet, udp_packet

PREFIX = bytes.fromhex("fd00007a00010000")
GW = bytes.fromhex("02124b0000000001")
N1, N2, N3 = (bytes.fromhex(f"02124b0000000a0{i}") for i in (1, 2, 3))
PAN = 0xABCD


def g(mac: bytes) -> bytes:
    return ipv6.address_in_prefix(PREFIX, mac)


ROOM = frames.payload_room(frames.data_frame(0, PAN, N1, GW, b""), 127)


def test_payload_room() -> None:
    assert ROOM == 127 - 21 - 2
    with_rsl = frames.Frame(
        frames.FrameType.DATA, 0, dst_pan=PAN, dst=N1, src=GW, header_ies=(frames.rsl_ie(-80),)
    )
    assert frames.payload_room(with_rsl, 127) == ROOM - 4 - 2  # RSL IE + HT2
    with pytest.raises(frames.FrameError, match="no room left"):
        frames.payload_room(with_rsl, 20)


def test_small_packet_is_one_payload() -> None:
    a = LowpanAdaptation(ROOM)
    pkt = udp_packet(g(GW), g(N1), 4059, 4059, b"hello")
    [payload] = a.encode(pkt, GW, N1)
    assert payload[0] >> 5 == 0b011  # IPHC
    assert LowpanAdaptation(ROOM).decode(payload, GW, N1, 0.0) == pkt
    assert a.stats.datagrams_tx == 1 and a.stats.fragmented_tx == 0


def test_large_packet_is_fragmented_and_reassembled_through_frames() -> None:
    tx, rx = LowpanAdaptation(ROOM, first_tag=0xFFFF), LowpanAdaptation(ROOM)
    pkt = udp_packet(g(GW), g(N1), 4059, 4059, bytes(range(256)) * 2 + bytes(40))
    assert 40 + len(pkt.payload) == 600
    payloads = tx.encode(pkt, GW, N1)
    psdus = [frames.encode(frames.data_frame(i, PAN, N1, GW, p)) for i, p in enumerate(payloads)]
    assert len(psdus) == 7 and max(len(p) for p in psdus) <= 127
    got = [rx.decode(frames.decode(p).payload, GW, N1, 5.0) for p in psdus]
    assert got[:-1] == [None] * 6 and got[-1] == pkt
    assert (tx.stats.fragmented_tx, tx.stats.fragments_tx) == (1, 7)
    assert (rx.stats.fragments_rx, rx.stats.datagrams_rx) == (7, 1)
    assert rx.reassembly_stats.datagrams == 1
    # The tag counter wraps and each fragmented datagram gets the next one.
    assert fragments.parse_header(payloads[0])[0].tag == 0xFFFF
    assert fragments.parse_header(tx.encode(pkt, GW, N1)[0])[0].tag == 0


def test_limits_and_expiry() -> None:
    a = LowpanAdaptation(ROOM, reassembly_timeout_s=10.0, max_datagram=500)
    with pytest.raises(fragments.DatagramTooLarge, match="600 bytes exceeds the 500"):
        a.encode(udp_packet(g(GW), g(N1), 1, 2, bytes(552)), GW, N1)
    frags = LowpanAdaptation(ROOM).encode(udp_packet(g(GW), g(N1), 1, 2, bytes(400)), GW, N1)
    assert a.decode(frags[0], GW, N1, 0.0) is None
    assert a.expire(9.0) == [] and len(a.expire(10.0)) == 1
    with pytest.raises(ValueError, match="too small"):
        LowpanAdaptation(10)
    with pytest.raises(ValueError, match="first datagram tag"):
        LowpanAdaptation(ROOM, first_tag=-1)


def test_udp_with_source_route_layout_and_parse() -> None:
    pkt = udp_packet(g(GW), g(N3), 4059, 4059, b"read", route=[g(N1), g(N2)])
    assert pkt.dst == g(N1) and pkt.next_header == ipv6.ROUTING
    parsed = parse_packet(pkt)
    assert parsed.srh is not None
    assert parsed.srh.addresses == (g(N2), g(N3)) and parsed.srh.segments_left == 2
    assert parsed.final_dst == g(N3)
    assert parsed.udp == ipv6.UdpDatagram(4059, 4059, b"read")
    assert parsed.next_header == ipv6.UDP and parsed.rpl is None


def test_route_that_loops_is_refused() -> None:
    with pytest.raises(ipv6.SourceRouteLoop, match="twice"):
        udp_packet(g(GW), g(N3), 1, 2, b"", route=[g(N1), g(N3)])
    with pytest.raises(ipv6.SourceRouteLoop, match="twice"):
        udp_packet(g(GW), g(N3), 1, 2, b"", route=[g(N1), g(GW)])


def test_rpl_packets_parse_back() -> None:
    dio = rpl.Dio(1, 0, 256, g(GW), config=rpl.DodagConfig())
    pkt = rpl_packet(ipv6.link_local(GW), rpl.ALL_RPL_NODES, dio)
    assert parse_packet(pkt).rpl == dio
    ack = rpl.DaoAck(1, 7, 0, g(GW))
    down = rpl_packet(g(GW), g(N2), ack, route=[g(N1)])
    parsed = parse_packet(down)
    assert parsed.rpl == ack and parsed.final_dst == g(N2)
    assert parse_packet(ipv6.advance_srh(down)).rpl == ack  # still checks out at the end


def test_parse_skips_hop_by_hop_and_keeps_other_upper_layers() -> None:
    udp = ipv6.encode_udp(g(N1), g(GW), ipv6.UdpDatagram(1, 2, b"x"))
    hbh = bytes((ipv6.UDP, 0, 0x63, 4, 0, 0, 0, 0))  # RPL option (RFC 6553), 8 bytes
    parsed = parse_packet(ipv6.Ipv6Packet(g(N1), g(GW), ipv6.HOP_BY_HOP, hbh + udp))
    assert parsed.udp == ipv6.UdpDatagram(1, 2, b"x")
    echo = ipv6.encode_icmpv6(g(N1), g(GW), 128, 0, b"ping")
    parsed = parse_packet(ipv6.Ipv6Packet(g(N1), g(GW), ipv6.ICMPV6, echo))
    assert (parsed.udp, parsed.rpl, parsed.upper) == (None, None, echo)
    with pytest.raises(ipv6.PacketError, match="Hop-by-Hop options header truncated"):
        parse_packet(ipv6.Ipv6Packet(g(N1), g(GW), ipv6.HOP_BY_HOP, hbh[:4]))
    with pytest.raises(ipv6.PacketError, match="bad UDP checksum"):
        parse_packet(ipv6.Ipv6Packet(g(N1), g(N2), ipv6.UDP, udp))


def test_eui64_from_address_inverts_the_iid() -> None:
    assert ipv6.eui64_from_address(g(N2)) == N2
    assert ipv6.eui64_from_address(ipv6.link_local(GW)) == GW


class _Node:
    """A router in the test mesh: its own adaptation, forwarding on its source routes."""

    def __init__(self, mac: bytes) -> None:
        self.mac = mac
        self.lowpan = LowpanAdaptation(ROOM)
        self.delivered: list[ipv6.UdpDatagram] = []

    def receive(self, src_mac: bytes, payload: bytes, now: float) -> list[tuple[bytes, bytes]]:
        """(next MAC, payload) to send on, if any."""
        packet = self.lowpan.decode(payload, src_mac, self.mac, now)
        if packet is None:
            return []
        parsed = parse_packet(packet)
        if parsed.srh is not None and parsed.srh.segments_left:
            onward = ipv6.advance_srh(packet)
            nxt = ipv6.eui64_from_address(onward.dst)
            return [(nxt, p) for p in self.lowpan.encode(onward, self.mac, nxt)]
        assert parsed.udp is not None
        self.delivered.append(parsed.udp)
        return []


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 1100), hops=st.integers(0, 3))
def test_source_routed_datagram_crosses_the_mesh(size: int, hops: int) -> None:
    macs = [bytes.fromhex(f"02124b00000b00{i:02x}") for i in range(hops + 1)]
    nodes = {m: _Node(m) for m in macs}
    body = bytes(i & 0xFF for i in range(size))
    route = [g(m) for m in macs[:-1]]
    pkt = udp_packet(g(GW), g(macs[-1]), 4059, 4059, body, route=route or None)
    gateway = LowpanAdaptation(ROOM)
    first = ipv6.eui64_from_address(pkt.dst)
    air = [(GW, first, p) for p in gateway.encode(pkt, GW, first)]
    while air:
        src, dst, payload = air.pop(0)
        psdu = frames.encode(frames.data_frame(0, PAN, dst, src, payload))
        assert len(psdu) <= 127
        air += [(dst, n, p) for n, p in nodes[dst].receive(src, frames.decode(psdu).payload, 0)]
    assert nodes[macs[-1]].delivered == [ipv6.UdpDatagram(4059, 4059, body)]
