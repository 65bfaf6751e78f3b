"""What a node does with an IPv6 packet it received (sans-IO): keep it, or route it on.

RPL non-storing mode leaves a router two cases (RFC 6550 §9.7, RFC 6554 §4.2):

- **upward**: a packet for an address that is not ours goes to the preferred parent (the
  caller picks the parent, and the next one when that fails), hop limit − 1;
- **downward**: a packet for us with a source routing header that still has segments left is
  advanced (destination swapped with the next address, segments left and hop limit − 1) and
  sent to the next hop, whose MAC follows from its address's IID.

Everything else addressed to us is delivered. Only the headers are looked at: an upper-layer
checksum is checked once, by the final destination, not at every hop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from firmware_agent.mesh import ipv6
from firmware_agent.mesh.ipv6 import Ipv6Packet, PacketError


class Verdict(enum.Enum):
    DELIVER = "deliver"
    UP = "up"
    DOWN = "down"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    packet: Ipv6Packet  # DELIVER/DROP: as received; UP/DOWN: as it goes on
    next_hop: bytes | None = None  # DOWN: the MAC to send to
    reason: str = ""  # DROP: why


def is_link_local(addr: bytes) -> bool:
    return addr[:8] == ipv6.LINK_LOCAL_PREFIX


def decide(packet: Ipv6Packet, own: frozenset[bytes] | set[bytes]) -> Decision:
    """The fate of ``packet`` at a node whose unicast and multicast addresses are ``own``."""
    dst = packet.dst
    if dst in own:
        if packet.next_header != ipv6.ROUTING:
            return Decision(Verdict.DELIVER, packet)
        try:
            route, _ = ipv6.decode_srh(packet.payload, dst)
            if not route.segments_left:
                return Decision(Verdict.DELIVER, packet)
            onward = ipv6.advance_srh(packet)
        except PacketError as exc:
            return Decision(Verdict.DROP, packet, reason=f"source route: {exc}")
        return Decision(Verdict.DOWN, onward, ipv6.eui64_from_address(onward.dst))
    if ipv6.is_multicast(dst):
        return Decision(Verdict.DROP, packet, reason="multicast group we are not in")
    if is_link_local(dst):
        return Decision(Verdict.DROP, packet, reason="link-local address of another node")
    if packet.hop_limit <= 1:
        return Decision(Verdict.DROP, packet, reason=f"hop limit {packet.hop_limit}")
    return Decision(Verdict.UP, replace(packet, hop_limit=packet.hop_limit - 1))
