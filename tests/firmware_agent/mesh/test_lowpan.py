"""6LoWPAN IPHC + UDP NHC and UDP checksums: round trips, compression choices, bad input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.mesh import ipv6, lowpan

GW = bytes.fromhex("02124b0000000001")
METER = bytes.fromhex("0200000000000001")


def _udp_packet(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, hop_limit: int = 64
) -> ipv6.Ipv6Packet:
    udp = ipv6.encode_udp(src, dst, ipv6.UdpDatagram(sport, dport, payload))
    return ipv6.Ipv6Packet(src, dst, ipv6.UDP, udp, hop_limit)


def test_link_local_addresses_are_fully_elided() -> None:
    pkt = _udp_packet(ipv6.link_local(GW), ipv6.link_local(METER), 4059, 4059, b"\x00\x01")
    compressed = lowpan.compress(pkt, GW, METER)
    # IPHC 7e33: TF elided, NH compressed, HLIM 64, SAM=DAM=11; then UDP NHC with inline ports.
    assert compressed[:3] == bytes.fromhex("7e33f0")
    assert len(compressed) == 2 + 5 + 2 + 2
    assert lowpan.decompress(compressed, GW, METER) == pkt


def test_iid_flips_universal_local_bit() -> None:
    assert ipv6.format_address(ipv6.link_local(METER)) == "fe80::1"


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (
            bytes.fromhex("20010db8000000000000000000000001"),
            bytes.fromhex("20010db8000000000000000000000002"),
        ),
        (
            bytes.fromhex("fe800000000000000000000000001234"),
            bytes.fromhex("fe80000000000000000000fffe00abcd"),
        ),
        (
            bytes.fromhex("fe80000000000000aabbccddeeff0011"),
            bytes.fromhex("ff020000000000000000000000000001"),
        ),
        (
            bytes.fromhex("fe80000000000000aabbccddeeff0011"),
            bytes.fromhex("ff050000000000000000000000010003"),
        ),
        (
            bytes.fromhex("fe80000000000000aabbccddeeff0011"),
            bytes.fromhex("ff0e0000000000000000000102030405"),
        ),
        (
            bytes.fromhex("fe80000000000000aabbccddeeff0011"),
            bytes.fromhex("ff1e0000000000000000000000000000")[:15] + b"\x07",
        ),
    ],
)
def test_other_addresses_round_trip(src: bytes, dst: bytes) -> None:
    pkt = _udp_packet(src, dst, 0xF0B1, 0xF0B2, b"payload", hop_limit=17)
    assert lowpan.decompress(lowpan.compress(pkt, GW, METER), GW, METER) == pkt


def test_non_udp_next_header_is_carried_inline() -> None:
    pkt = ipv6.Ipv6Packet(
        ipv6.link_local(GW), ipv6.link_local(METER), ipv6.ICMPV6, b"\x9b\x01abc", 255
    )
    compressed = lowpan.compress(pkt, GW, METER)
    assert compressed[2] == ipv6.ICMPV6
    assert lowpan.decompress(compressed, GW, METER) == pkt


def test_udp_checksum_is_verified() -> None:
    pkt = _udp_packet(ipv6.link_local(GW), ipv6.link_local(METER), 4059, 4059, b"abcd")
    assert ipv6.decode_udp(pkt).payload == b"abcd"
    bad = ipv6.Ipv6Packet(pkt.src, pkt.dst, pkt.next_header, pkt.payload[:-1] + b"e")
    with pytest.raises(ipv6.PacketError, match="bad UDP checksum"):
        ipv6.decode_udp(bad)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\xc0\x50\x00\x01", "fragment header: reassemble"),
        (b"\x12", "unknown 6LoWPAN dispatch"),
        (b"\x7e", "truncated in IPHC header"),
        (b"\x7e\x33\xf0\x0f", "truncated in UDP ports"),
        (b"\x7e\xb3", "context-based"),
        (b"\x7e\x33\xf4\x0f\xdb\x0f\xdb", "elided UDP checksum"),
    ],
)
def test_bad_payloads_get_named_errors(data: bytes, message: str) -> None:
    with pytest.raises(lowpan.LowpanError, match=message):
        lowpan.decompress(data, GW, METER)


@given(st.binary(max_size=120))
def test_decompress_never_crashes(data: bytes) -> None:
    try:
        packet = lowpan.decompress(data, GW, METER)
    except lowpan.LowpanError:
        return
    with contextlib.suppress(ipv6.PacketError):
        ipv6.decode_udp(packet)


@given(
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=200),
    hop=st.integers(0, 255),
)
def test_udp_round_trip(sport: int, dport: int, payload: bytes, hop: int) -> None:
    pkt = _udp_packet(ipv6.link_local(GW), ipv6.link_local(METER), sport, dport, payload, hop)
    back = lowpan.decompress(lowpan.compress(pkt, GW, METER), GW, METER)
    assert back == pkt
    assert ipv6.decode_udp(back) == ipv6.UdpDatagram(sport, dport, payload)
