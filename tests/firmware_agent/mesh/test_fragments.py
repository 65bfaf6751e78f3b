"""RFC 4944 fragmentation and reassembly: headers, uncompressed offsets, limits, errors."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.mesh import fragments, ipv6, lowpan
from firmware_agent.mesh.fragments import Reassembler

PREFIX = bytes.fromhex("fd00007a00010000")
GW = bytes.fromhex("02124b0000000001")
NODE = bytes.fromhex("02124b0000000a01")
OTHER = bytes.fromhex("02124b0000000a02")


def _udp(payload_len: int, mac_src: bytes = GW, mac_dst: bytes = NODE) -> ipv6.Ipv6Packet:
    src, dst = ipv6.address_in_prefix(PREFIX, mac_src), ipv6.address_in_prefix(PREFIX, mac_dst)
    body = bytes(random.Random(payload_len).randbytes(payload_len))
    udp = ipv6.encode_udp(src, dst, ipv6.UdpDatagram(4059, 4059, body))
    return ipv6.Ipv6Packet(src, dst, ipv6.UDP, udp)


def _frags(packet: ipv6.Ipv6Packet, room: int = 104, tag: int = 7) -> tuple[bytes, list[bytes]]:
    compressed = lowpan.compress(packet, GW, NODE)
    return compressed, fragments.fragment(compressed, 40 + len(packet.payload), tag, room)


def test_headers_layout() -> None:
    assert fragments.frag1_header(600, 0x1234) == bytes.fromhex("c2581234")
    assert fragments.fragn_header(600, 0x1234, 13) == bytes.fromhex("e25812340d")
    header, data = fragments.parse_header(bytes.fromhex("e25812340d") + b"abc")
    assert header == fragments.FragmentHeader(600, 0x1234, 13) and data == b"abc"
    assert fragments.parse_header(bytes.fromhex("c0500001") + b"x")[0].offset is None


def test_offsets_count_uncompressed_octets() -> None:
    packet = _udp(552)  # 600-byte datagram
    compressed, frags = _frags(packet)
    # IPHC with both global addresses inline + UDP NHC: 2 + 32 + 1 + 4 + 2 = 41 bytes stand for
    # 48, so every compressed byte after the header sits 7 bytes later in the datagram.
    assert lowpan.header_sizes(compressed) == (41, 48)
    assert all(len(f) <= 104 for f in frags)
    first = frags[0]
    assert first[:4] == fragments.frag1_header(600, 7)
    carried = len(first) - 4
    assert (carried + 7) % 8 == 0 and carried == 97  # 104 uncompressed bytes
    expected_offset = (carried + 7) // 8
    for frag in frags[1:]:
        header, data = fragments.parse_header(frag)
        assert (header.size, header.tag) == (600, 7)
        assert header.offset == expected_offset
        expected_offset += len(data) // 8
        if frag is not frags[-1]:
            assert len(data) % 8 == 0 and len(frag) <= 104
    covered = 104 + sum(len(f) - 5 for f in frags[1:])
    assert covered == 600
    assert b"".join([first[4:], *(f[5:] for f in frags[1:])]) == compressed


def test_payload_that_fits_is_not_fragmented() -> None:
    compressed, frags = _frags(_udp(20))
    assert frags == [compressed]


def test_uncompressed_dispatch_fragments_too() -> None:
    packet = _udp(300)
    raw = b"\x41" + ipv6.encode_ipv6(packet)
    frags = fragments.fragment(raw, len(raw) - 1, 1, 80)
    assert (len(frags[0]) - 4 - 1) % 8 == 0  # the dispatch byte is not part of the datagram
    r = Reassembler()
    out = [r.feed(GW, NODE, f, 0.0) for f in frags]
    assert out[:-1] == [None] * (len(frags) - 1) and out[-1] == raw
    assert lowpan.decompress(raw, GW, NODE) == packet


def test_fragment_refuses_bad_arguments() -> None:
    compressed = lowpan.compress(_udp(300), GW, NODE)
    with pytest.raises(fragments.FragmentError, match="does not match the payload"):
        fragments.fragment(compressed, 300, 1, 104)
    with pytest.raises(fragments.FragmentError, match="41-byte compressed header does not fit"):
        fragments.fragment(compressed, 348, 1, 40)
    with pytest.raises(fragments.FragmentError, match="datagram size 4000"):
        fragments.fragment(compressed, 4000, 1, 104)
    with pytest.raises(fragments.FragmentError, match="tag 70000"):
        fragments.fragment(compressed, 348, 70000, 104)
    with pytest.raises(fragments.FragmentError, match="room 12"):
        fragments.fragment(compressed, 348, 1, 12)


def test_reassembly_in_any_order_with_duplicates() -> None:
    packet = _udp(552)
    compressed, frags = _frags(packet)
    r = Reassembler()
    order = [*reversed(frags[1:]), frags[2], frags[0]]  # FRAG1 last, one FRAGN twice
    results = [r.feed(GW, NODE, f, 1.0) for f in order]
    assert results[:-1] == [None] * (len(order) - 1)
    assert results[-1] == compressed
    assert lowpan.decompress(compressed, GW, NODE) == packet
    assert r.stats.duplicates == 1 and r.stats.datagrams == 1
    assert r.stats.fragments == len(frags) and r.active == 0


def test_reassemblies_are_keyed_by_sender_and_tag() -> None:
    _, a = _frags(_udp(300), tag=5)
    _, b = _frags(_udp(300), tag=5)
    _, c = _frags(_udp(300), tag=6)
    r = Reassembler()
    done = []
    for fa, fb, fc in zip(a, b, c, strict=True):
        done += [r.feed(GW, NODE, fa, 0), r.feed(OTHER, NODE, fb, 0), r.feed(GW, NODE, fc, 0)]
        assert r.active in (0, 3)
    assert len([d for d in done if d is not None]) == 3


def test_overlap_with_other_bounds_discards_the_reassembly() -> None:
    _, frags = _frags(_udp(552))
    r = Reassembler()
    r.feed(GW, NODE, frags[0], 0)
    r.feed(GW, NODE, frags[1], 0)
    header, data = fragments.parse_header(frags[1])
    assert header.offset is not None
    shifted = fragments.fragn_header(600, 7, header.offset + 1) + data
    with pytest.raises(fragments.FragmentOverlap, match=r"overlaps \[104, 200\)"):
        r.feed(GW, NODE, shifted, 0)
    assert r.active == 0 and r.stats.overlaps == 1
    # The rest of the old datagram now only starts a new, incomplete one.
    assert [r.feed(GW, NODE, f, 0) for f in frags[2:]] == [None] * (len(frags) - 2)


def test_same_bounds_other_bytes_is_an_overlap() -> None:
    _, frags = _frags(_udp(552))
    r = Reassembler()
    r.feed(GW, NODE, frags[1], 0)
    changed = frags[1][:-1] + bytes([frags[1][-1] ^ 1])
    with pytest.raises(fragments.FragmentOverlap):
        r.feed(GW, NODE, changed, 0)


def test_fragment_past_the_end_is_refused() -> None:
    r = Reassembler()
    with pytest.raises(fragments.FragmentOverlap, match=r"\[592, 608\) runs past the 600"):
        r.feed(GW, NODE, fragments.fragn_header(600, 1, 74) + bytes(16), 0)


def test_limits() -> None:
    r = Reassembler(max_reassemblies=2, max_datagram=640)
    with pytest.raises(fragments.DatagramTooLarge, match="700 bytes exceeds the 640-byte"):
        r.feed(GW, NODE, fragments.fragn_header(700, 1, 1) + bytes(8), 0)
    r.feed(GW, NODE, fragments.fragn_header(600, 1, 1) + bytes(8), 0)
    r.feed(GW, NODE, fragments.fragn_header(600, 2, 1) + bytes(8), 0)
    with pytest.raises(fragments.ReassemblyLimit, match="limit 2"):
        r.feed(GW, NODE, fragments.fragn_header(600, 3, 1) + bytes(8), 0)
    r.feed(GW, NODE, fragments.fragn_header(600, 2, 2) + bytes(8), 0)  # a running one goes on
    assert (r.stats.too_large, r.stats.over_limit, r.active) == (1, 1, 2)
    with pytest.raises(ValueError, match="bad reassembly limits"):
        Reassembler(max_datagram=4096)


def test_timeout_expires_and_reports() -> None:
    _, frags = _frags(_udp(552))
    r = Reassembler(timeout_s=60.0)
    r.feed(GW, NODE, frags[0], 100.0)
    r.feed(GW, NODE, frags[1], 130.0)
    assert r.expire(159.9) == []
    [gone] = r.expire(160.0)
    assert (gone.src, gone.dst, gone.size, gone.tag) == (GW, NODE, 600, 7)
    assert gone.started == 100.0 and gone.received == 200 and gone.fragments == 2
    assert r.active == 0 and r.stats.timeouts == 1
    # A stale reassembly is also dropped when a new fragment arrives; expire() reports it then.
    r.feed(GW, NODE, frags[0], 200.0)
    assert r.feed(GW, NODE, frags[1], 261.0) is None
    assert r.active == 1
    assert [e.started for e in r.expire(261.0)] == [200.0]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc0\x50", "FRAG1 header truncated"),
        (b"\xe0\x50\x00\x01", "FRAGN header truncated"),
        (b"\xc0\x50\x00\x01", "no data"),
        (b"\xc0\x00\x00\x01\x7e", "datagram size 0"),
        (b"\xe0\x50\x00\x01\x00" + bytes(8), "FRAGN with offset 0"),
        (b"\xc0\x50\x00\x01\x7e", "first fragment: truncated in IPHC header"),
        (b"\xc0\x50\x00\x01\x12\x34", "first fragment: unknown 6LoWPAN dispatch"),
        (b"\x7e\x33", "not a fragment: dispatch 0x7e"),
    ],
)
def test_malformed_fragments_get_named_errors(payload: bytes, message: str) -> None:
    r = Reassembler()
    with pytest.raises(fragments.FragmentError, match=message):
        r.feed(GW, NODE, payload, 0)
    assert r.stats.malformed == 1 and r.active == 0


@settings(max_examples=120, deadline=None)
@given(
    payload_len=st.integers(0, 1180),
    room=st.integers(50, 200),
    tag=st.integers(0, 0xFFFF),
    seed=st.integers(0, 2**32 - 1),
)
def test_fragment_and_reassemble_round_trip(
    payload_len: int, room: int, tag: int, seed: int
) -> None:
    packet = _udp(payload_len)
    compressed, frags = _frags(packet, room, tag)
    assert all(len(f) <= room for f in frags)
    random.Random(seed).shuffle(frags)
    r = Reassembler()
    results = [r.feed(GW, NODE, f, 0.0) if fragments.is_fragment(f) else f for f in frags]
    assert results[-1] == compressed and all(x is None for x in results[:-1])
    assert lowpan.decompress(compressed, GW, NODE) == packet


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_reassembler_never_crashes(payloads: list[bytes]) -> None:
    r = Reassembler()
    for p in payloads:
        data = bytes([0xC0 | (p[0] & 0x27)]) + p[1:] if p else p
        with contextlib.suppress(fragments.FragmentError):
            r.feed(GW, NODE, data, 0.0)


@pytest.mark.parametrize(
    ("packet", "sizes"),
    [
        (_udp(10), (41, 48)),  # global addresses inline + UDP NHC
        (
            ipv6.Ipv6Packet(ipv6.link_local(GW), ipv6.link_local(NODE), ipv6.ICMPV6, b"abcd"),
            (3, 40),  # IPHC, next header inline, both addresses elided
        ),
    ],
)
def test_header_sizes(packet: ipv6.Ipv6Packet, sizes: tuple[int, int]) -> None:
    compressed = lowpan.compress(packet, GW, NODE)
    assert lowpan.header_sizes(compressed) == sizes
    assert lowpan.header_sizes(b"\x41" + ipv6.encode_ipv6(packet)) == (41, 40)
    with pytest.raises(lowpan.LowpanError, match="uncompressed IPv6 header"):
        lowpan.header_sizes(b"\x41" + bytes(20))
