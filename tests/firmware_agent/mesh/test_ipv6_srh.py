"""RFC 6554 source routing header: layout, compression, the forwarding step, bad input; ICMPv6."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.mesh import ipv6

PREFIX = bytes.fromhex("fd00007a00010000")


def addr(last: int, prefix: bytes = PREFIX) -> bytes:
    return prefix + last.to_bytes(8, "big")


A, B, C, D = addr(1), addr(2), addr(3), addr(4)


def _packet(dst: bytes, route: list[bytes], hop_limit: int = 64) -> ipv6.Ipv6Packet:
    srh = ipv6.encode_srh(route, ipv6.UDP, dst=dst)
    return ipv6.Ipv6Packet(addr(0xAA), dst, ipv6.ROUTING, srh + b"upper", hop_limit)


def test_compressed_layout() -> None:
    srh = ipv6.encode_srh([B, C, D], ipv6.UDP, dst=A)
    # NH 17, length 1 (16 bytes), type 3, segments left 3, CmprI=CmprE=15, Pad 5; one octet each.
    assert srh == bytes.fromhex("11 01 03 03 ff 50 0000 02 03 04 0000000000")
    route, rest = ipv6.decode_srh(srh + b"after", A)
    assert route == ipv6.SourceRoute(ipv6.UDP, 3, (B, C, D), 15, 15)
    assert rest == b"after"


def test_uncompressed_without_destination() -> None:
    srh = ipv6.encode_srh([B, C], ipv6.ICMPV6, 1)
    assert srh[:8] == bytes.fromhex("3a 04 03 01 00 00 0000")
    assert srh[8:] == B + C
    assert ipv6.decode_srh(srh) == (ipv6.SourceRoute(ipv6.ICMPV6, 1, (B, C)), b"")


def test_compression_follows_the_shared_prefix() -> None:
    other = bytes.fromhex("fd00007a000200000000000000000009")  # differs from A at octet 5
    srh = ipv6.encode_srh([B, other], ipv6.UDP, dst=A)
    route, _ = ipv6.decode_srh(srh, A)
    assert (route.cmpr_i, route.cmpr_e) == (5, 5)
    assert route.addresses == (B, other)
    assert len(srh) % 8 == 0


def test_forwarding_walks_the_route_and_keeps_the_header_size() -> None:
    pkt = _packet(A, [B, C, D])
    seen = [pkt.dst]
    size = len(pkt.payload)
    while True:
        try:
            pkt = ipv6.advance_srh(pkt)
        except ipv6.SegmentsExhausted:
            break
        seen.append(pkt.dst)
        assert len(pkt.payload) == size
        assert pkt.payload.endswith(b"upper")
    assert seen == [A, B, C, D]
    assert pkt.hop_limit == 61
    route, _ = ipv6.decode_srh(pkt.payload, pkt.dst)
    assert route.segments_left == 0
    assert route.addresses == (A, B, C)  # the visited hops, in order
    assert ipv6.final_destination(pkt) == D


def test_final_destination_before_forwarding() -> None:
    assert ipv6.final_destination(_packet(A, [B, C, D])) == D
    plain = ipv6.Ipv6Packet(A, B, ipv6.UDP, b"")
    assert ipv6.final_destination(plain) == B


def test_hop_limit_one_is_not_forwarded() -> None:
    with pytest.raises(ipv6.HopLimitExceeded, match="hop limit 1"):
        ipv6.advance_srh(_packet(A, [B, C], hop_limit=1))


def test_loop_is_refused() -> None:
    with pytest.raises(ipv6.SourceRouteLoop, match="fd00:7a:1::1 occurs twice"):
        ipv6.advance_srh(_packet(A, [B, A, C]))
    # A repeat further down the route is found at the first hop already.
    with pytest.raises(ipv6.SourceRouteLoop, match="fd00:7a:1::2 occurs twice"):
        ipv6.advance_srh(_packet(A, [B, C, B, D]))


def test_adjacent_repeat_is_not_a_loop() -> None:
    assert ipv6.advance_srh(_packet(A, [A, B])).dst == A


def test_multicast_in_route_is_refused() -> None:
    group = bytes.fromhex("ff020000000000000000000000000001")
    with pytest.raises(ipv6.SrhError, match="multicast"):
        ipv6.encode_srh([B, group], ipv6.UDP)
    srh = ipv6.encode_srh([B], ipv6.UDP)
    with pytest.raises(ipv6.SrhError, match="multicast"):
        ipv6.advance_srh(ipv6.Ipv6Packet(A, group, ipv6.ROUTING, srh))


def test_prefix_that_cannot_be_reencoded_is_named() -> None:
    # Another node's header: CmprI 15 holds while the destination is in fd00:7a:1::/64, but its
    # last hop is in another prefix, so the visited slot cannot be written once we get there.
    y = bytes.fromhex("20010db8000000000000000000000005")
    srh = bytes.fromhex("11 03 03 02 f0 70 0000 02") + y + bytes(7)
    pkt = ipv6.Ipv6Packet(addr(0xAA), A, ipv6.ROUTING, srh)
    assert ipv6.decode_srh(srh, A)[0].addresses == (B, y)
    pkt = ipv6.advance_srh(pkt)
    assert pkt.dst == B
    with pytest.raises(ipv6.SrhError, match=r"Address\[1\] fd00:7a:1::1 does not share the 15"):
        ipv6.advance_srh(pkt)
    # Our own encoder picks compression that stays valid all the way.
    own = _packet(A, [B, y])
    assert ipv6.advance_srh(ipv6.advance_srh(own)).dst == y


@pytest.mark.parametrize(
    ("data", "dst", "message"),
    [
        (b"\x11\x00\x03", A, "truncated"),
        (bytes.fromhex("11 00 00 00 00 00 0000"), A, "routing type 0, expected 3"),
        (bytes.fromhex("11 02 03 00 00 00 0000"), A, "says 24 bytes"),
        (bytes.fromhex("11 00 03 00 00 00 0000"), A, "no whole number of addresses"),
        (bytes.fromhex("11 01 03 02 ff 50 0000 02 03 04 0000000000"), A, None),
        (bytes.fromhex("11 01 03 04 ff 50 0000 02 03 04 0000000000"), A, "exceeds the 3"),
        (bytes.fromhex("11 01 03 01 ff 50 0000 02 03 04 0000000000"), None, "needs the packet"),
        (bytes.fromhex("11 01 03 01 df 50 0000 02 03 04 0000000000"), A, "no whole number"),
    ],
)
def test_bad_headers_get_named_errors(data: bytes, dst: bytes | None, message: str | None) -> None:
    if message is None:
        assert ipv6.decode_srh(data, dst)[0].addresses == (B, C, D)
        return
    with pytest.raises(ipv6.SrhError, match=message):
        ipv6.decode_srh(data, dst)


def test_advance_needs_a_routing_header_with_segments_left() -> None:
    with pytest.raises(ipv6.SrhError, match="no routing header"):
        ipv6.advance_srh(ipv6.Ipv6Packet(A, B, ipv6.UDP, b""))
    pkt = ipv6.Ipv6Packet(A, B, ipv6.ROUTING, ipv6.encode_srh([C], ipv6.UDP, 0, dst=B))
    with pytest.raises(ipv6.SegmentsExhausted, match="segments left is 0"):
        ipv6.advance_srh(pkt)


def test_encode_refuses_bad_arguments() -> None:
    with pytest.raises(ipv6.SrhError, match="at least one address"):
        ipv6.encode_srh([], ipv6.UDP)
    with pytest.raises(ipv6.PacketError, match=r"Address\[2\] must be a 16-byte"):
        ipv6.encode_srh([A, b"short"], ipv6.UDP)
    with pytest.raises(ipv6.SrhError, match=r"segments left 3 is not 0\.\.2"):
        ipv6.encode_srh([A, B], ipv6.UDP, 3)
    with pytest.raises(ipv6.SrhError, match="exceeds 2048"):
        ipv6.encode_srh([addr(i) for i in range(1, 130)], ipv6.UDP)


def test_icmpv6_checksum_round_trip_and_corruption() -> None:
    msg = ipv6.encode_icmpv6(A, B, 155, 1, b"\x00\x01body")
    assert ipv6.checksum(A, B, ipv6.ICMPV6, msg) == 0
    assert ipv6.decode_icmpv6(A, B, msg) == (155, 1, b"\x00\x01body")
    with pytest.raises(ipv6.PacketError, match="bad ICMPv6 checksum"):
        ipv6.decode_icmpv6(A, C, msg)  # wrong pseudo-header destination
    with pytest.raises(ipv6.PacketError, match="ICMPv6 header truncated"):
        ipv6.decode_icmpv6(A, B, msg[:3])


def test_address_in_prefix_uses_the_eui64_iid() -> None:
    eui = bytes.fromhex("02124b0000000001")
    assert ipv6.format_address(ipv6.address_in_prefix(PREFIX, eui)) == "fd00:7a:1:0:12:4b00:0:1"
    with pytest.raises(ipv6.PacketError, match="8 bytes"):
        ipv6.address_in_prefix(PREFIX[:4], eui)


iids = st.binary(min_size=8, max_size=8)
prefixes = st.sampled_from(
    [PREFIX, bytes.fromhex("fd00007a00020000"), bytes.fromhex("20010db800000000")]
)


@settings(max_examples=150)
@given(
    hops=st.lists(st.tuples(prefixes, iids), min_size=1, max_size=12, unique=True),
    first=st.tuples(prefixes, iids),
    hop_limit=st.integers(13, 255),
)
def test_any_distinct_route_round_trips_and_walks(
    hops: list[tuple[bytes, bytes]], first: tuple[bytes, bytes], hop_limit: int
) -> None:
    route = [p + i for p, i in hops]
    dst = first[0] + first[1]
    if dst in route or any(a[0] == 0xFF for a in [*route, dst]):
        return
    srh = ipv6.encode_srh(route, ipv6.UDP, dst=dst)
    assert len(srh) % 8 == 0
    decoded, rest = ipv6.decode_srh(srh, dst)
    assert decoded.addresses == tuple(route) and rest == b""
    pkt = ipv6.Ipv6Packet(addr(0xAA), dst, ipv6.ROUTING, srh, hop_limit)
    visited = [dst]
    for _ in route:
        pkt = ipv6.advance_srh(pkt)
        visited.append(pkt.dst)
        assert len(pkt.payload) == len(srh)
    assert visited == [dst, *route]
    assert pkt.hop_limit == hop_limit - len(route)
    assert ipv6.decode_srh(pkt.payload, pkt.dst)[0].addresses == (dst, *route[:-1])


@given(st.binary(max_size=80), st.sampled_from([None, A]))
def test_decoder_never_crashes(data: bytes, dst: bytes | None) -> None:
    with contextlib.suppress(ipv6.SrhError):
        ipv6.decode_srh(data, dst)
    with contextlib.suppress(ipv6.SrhError):
        ipv6.advance_srh(ipv6.Ipv6Packet(B, A, ipv6.ROUTING, data))
