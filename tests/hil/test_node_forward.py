"""A node's forwarding decision: deliver, up towards the root, down a source route, or drop."""

from __future__ import annotations

from dataclasses import replace

from firmware_agent.mesh import ipv6, rpl
from firmware_agent.mesh.adaptation import parse_packet, udp_packet
from hil.node.forward import Verdict, decide

PREFIX = bytes.fromhex("fd00007a00010000")
ROOT = bytes.fromhex("00124b0000a00001")
ME = bytes.fromhex("0200000000000001")
NEXT = bytes.fromhex("0200000000000002")
FAR = bytes.fromhex("0200000000000003")


def g(mac: bytes) -> bytes:
    return ipv6.address_in_prefix(PREFIX, mac)


OWN = frozenset({g(ME), ipv6.link_local(ME), rpl.ALL_RPL_NODES})


def test_a_packet_for_us_is_delivered() -> None:
    for dst in (g(ME), ipv6.link_local(ME)):
        packet = udp_packet(g(ROOT), dst, 4059, 4059, b"x")
        assert decide(packet, OWN).verdict is Verdict.DELIVER
    dio = udp_packet(ipv6.link_local(ROOT), rpl.ALL_RPL_NODES, 1, 2, b"")
    assert decide(dio, OWN).verdict is Verdict.DELIVER


def test_a_packet_for_another_address_goes_up_with_one_hop_less() -> None:
    packet = udp_packet(g(FAR), g(ROOT), 4059, 4059, b"reading")
    decision = decide(packet, OWN)
    assert decision.verdict is Verdict.UP
    assert decision.packet == replace(packet, hop_limit=63)
    assert parse_packet(decision.packet).udp == ipv6.UdpDatagram(4059, 4059, b"reading")


def test_hop_limit_link_local_and_foreign_multicast_are_dropped() -> None:
    spent = udp_packet(g(FAR), g(ROOT), 1, 2, b"", hop_limit=1)
    assert decide(spent, OWN).verdict is Verdict.DROP
    assert "hop limit" in decide(spent, OWN).reason
    other_ll = udp_packet(g(FAR), ipv6.link_local(NEXT), 1, 2, b"")
    assert decide(other_ll, OWN).verdict is Verdict.DROP
    group = bytes.fromhex("ff020000000000000000000000000099")
    assert decide(udp_packet(g(FAR), group, 1, 2, b""), OWN).verdict is Verdict.DROP


def test_a_source_routed_packet_is_advanced_to_the_next_hop() -> None:
    packet = udp_packet(g(ROOT), g(FAR), 4059, 4059, b"read", route=[g(ME), g(NEXT)])
    assert packet.dst == g(ME)
    decision = decide(packet, OWN)
    assert decision.verdict is Verdict.DOWN and decision.next_hop == NEXT
    onward = decision.packet
    assert onward.dst == g(NEXT) and onward.hop_limit == 63
    # NEXT does the same, and FAR receives it whole.
    last = decide(onward, frozenset({g(NEXT)}))
    assert last.verdict is Verdict.DOWN and last.next_hop == FAR
    final = decide(last.packet, frozenset({g(FAR)}))
    assert final.verdict is Verdict.DELIVER
    parsed = parse_packet(final.packet)
    assert parsed.udp == ipv6.UdpDatagram(4059, 4059, b"read") and parsed.final_dst == g(FAR)


def test_a_broken_source_route_is_dropped_with_the_reason() -> None:
    packet = udp_packet(g(ROOT), g(FAR), 1, 2, b"", route=[g(ME), g(NEXT)])
    broken = replace(packet, payload=packet.payload[:5])
    decision = decide(broken, OWN)
    assert decision.verdict is Verdict.DROP and "source route" in decision.reason
    spent = replace(packet, hop_limit=1)
    assert decide(spent, OWN).verdict is Verdict.DROP
