"""A bare DODAG root on the medium, for node-level tests and benches without the gateway.

It is the gateway's root logic — :class:`~firmware_agent.mesh.root.RplRoot` and
:class:`~firmware_agent.mesh.routes.RoutingTable`, unchanged — over the same MAC and 6LoWPAN
adaptation a node uses, instead of the gateway's Spinel radio path. So the nodes are checked
against what the gateway really sends (DIOs from link-local to ff02::1a, DAO-ACKs and UDP from
the root's global address with a source routing header), and a mesh of nodes can be exercised
in virtual time without an agent. The real gateway is ``firmware_agent.mesh.stack.MeshStack``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from firmware_agent.mesh import ipv6, lowpan
from firmware_agent.mesh.adaptation import LowpanAdaptation, parse_packet, rpl_packet, udp_packet
from firmware_agent.mesh.frames import Frame
from firmware_agent.mesh.ipv6 import PacketError, UdpDatagram
from firmware_agent.mesh.root import Outgoing, RootConfig, RplRoot
from firmware_agent.mesh.routes import RoutingTable
from hil.medium import Medium, Scheduler, TimerHandle
from hil.node.mac import BROADCAST, MacConfig, NodeMac, TxResult

DEFAULT_PREFIX = bytes.fromhex("fd00007a00010000")  # fd00:7a:1::/64, the gateway's default


@dataclass(frozen=True)
class Received:
    """A UDP datagram that reached the root."""

    at: float
    src: bytes  # IPv6 source
    hop_limit: int
    datagram: UdpDatagram


class SimRoot:
    """The DODAG root as a radio on the medium. Attach it, then call :meth:`start`."""

    def __init__(
        self,
        eui64: bytes,
        medium: Medium,
        scheduler: Scheduler,
        rng: random.Random,
        *,
        channel: int = 0,
        config: RootConfig | None = None,
        routes: RoutingTable | None = None,
        mac: MacConfig | None = None,
        max_frame_payload: int = 200,
    ) -> None:
        self.eui64 = eui64
        self.medium = medium
        self.scheduler = scheduler
        self.config = config or RootConfig(prefix=DEFAULT_PREFIX)
        self.routes = routes or RoutingTable(eui64)
        self.root = RplRoot(eui64, self.config, self.routes, rng)
        self.address = self.root.address
        self.link_local = ipv6.link_local(eui64)
        self.mac = NodeMac(self, medium, rng, self._on_frame, channel=channel, config=mac)
        self.adaptation = LowpanAdaptation(max_frame_payload, first_tag=rng.getrandbits(16))
        self.received: list[Received] = []
        self.handlers: dict[int, Callable[[Received], None]] = {}
        self.errors = 0
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf

    def start(self) -> None:
        self.root.start(self.scheduler.time())
        self._reschedule()

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        return self.mac.on_air_frame(psdu, rssi_dbm, lqi, channel)

    def send_udp(
        self,
        node: bytes,
        src_port: int,
        dst_port: int,
        payload: bytes,
        on_done: Callable[[TxResult], None] | None = None,
    ) -> tuple[bytes, ...] | None:
        """Send a datagram to ``node`` (an EUI-64) over its source route; the route used, or
        None when the table has no path (then nothing is sent)."""
        route = self.routes.source_route(node, self.scheduler.time())
        if route is None:
            return None
        routers = [self.root.address_of(hop) for hop in route[:-1]]
        dst = self.root.address_of(node)
        packet = udp_packet(self.address, dst, src_port, dst_port, payload, routers or None)
        self.mac.send(route[0], self.adaptation.encode(packet, self.eui64, route[0]), on_done)
        return route

    # --- internals -----------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        assert frame.src is not None and frame.dst is not None
        now = self.scheduler.time()
        try:
            packet = self.adaptation.decode(frame.payload, frame.src, frame.dst, now)
            if packet is None:
                return
            parsed = parse_packet(packet)
        except (lowpan.LowpanError, PacketError):
            self.errors += 1
            return
        if parsed.final_dst not in (self.address, self.link_local) and not ipv6.is_multicast(
            parsed.final_dst
        ):
            return
        if parsed.rpl is not None:
            for out in self.root.on_message(packet.src, packet.dst, parsed.rpl, now):
                self._send_rpl(out)
            self._reschedule()
        elif parsed.udp is not None:
            got = Received(now, packet.src, packet.hop_limit, parsed.udp)
            self.received.append(got)
            handler = self.handlers.get(parsed.udp.dst_port)
            if handler is not None:
                handler(got)

    def _send_rpl(self, out: Outgoing) -> None:
        if ipv6.is_multicast(out.dst):
            packet = rpl_packet(self.link_local, out.dst, out.message)
            self.mac.send(BROADCAST, self.adaptation.encode(packet, self.eui64, BROADCAST))
            return
        node = self.root.eui64_of(out.dst)
        now = self.scheduler.time()
        route = None if node is None else self.routes.source_route(node, now)
        if route is None:  # not in the table yet: a neighbour, one hop
            mac = ipv6.eui64_from_address(out.dst)
            packet = rpl_packet(self.address, out.dst, out.message)
        else:
            routers = [self.root.address_of(hop) for hop in route[:-1]]
            mac = route[0]
            packet = rpl_packet(self.address, out.dst, out.message, routers or None)
        self.mac.send(mac, self.adaptation.encode(packet, self.eui64, mac))

    def _reschedule(self) -> None:
        at = self.root.deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.scheduler.call_at(at, self._on_timer, at)

    def _on_timer(self, at: float) -> None:
        self._timer, self._timer_at = None, math.inf
        now = max(self.scheduler.time(), at)
        for out in self.root.poll(now):
            self._send_rpl(out)
        self.routes.tick(now)
        self._reschedule()
