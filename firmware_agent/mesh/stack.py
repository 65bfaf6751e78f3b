"""The gateway's mesh stack edge: drives a Transceiver, decodes what it hears, delivers UDP.

This is the I/O edge around the sans-IO parts: 802.15.4 frames, the 6LoWPAN adaptation
(IPHC + fragments), the RPL root, the routing table and the neighbour table. Meters are
addressed by EUI-64; a meter that has sent a DAO is reached over its preferred path (a source
route when it is more than one hop away), a meter without one is tried directly (one hop,
link-local addresses), as before it joins.

Link metrics flow one way: every frame heard and every transmission's outcome updates the
neighbour table (RSL, ETX, SNR), and the gateway's own links are fed from there into the
routing table, which moves downward traffic off a link whose SNR falls below the floor.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from drivers.reconnect import ReconnectingTransceiver, find_layer
from drivers.transceiver import RadioError, Transceiver, TxResult, TxStatus
from firmware_agent.clock import Clock
from firmware_agent.collector.link import LinkTimeout
from firmware_agent.config import MeshConfig
from firmware_agent.mesh import frames, ipv6, lowpan, rpl
from firmware_agent.mesh.adaptation import LowpanAdaptation, parse_packet, rpl_packet, udp_packet
from firmware_agent.mesh.neighbours import LinkThresholds, NeighbourTable
from firmware_agent.mesh.root import Outgoing, RootConfig, RplRoot
from firmware_agent.mesh.routes import LinkQuality, RouteChange, RoutingTable
from firmware_agent.mesh.trickle import TrickleConfig

log = logging.getLogger(__name__)

#: The handler gets the sending meter's EUI-64 (from its IPv6 source address) and the datagram.
UdpHandler = Callable[[bytes, ipv6.UdpDatagram], None]
BROADCAST = b"\xff\xff"
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
#: How often the stack's housekeeping runs (reassembly expiry, route expiry, link metrics).
HOUSEKEEPING_S = 1.0


@dataclass
class MeshStats:
    frames_rx: int = 0
    frames_tx: int = 0
    tx_no_ack: int = 0
    rx_dropped: int = 0
    rx_duplicates: int = 0
    datagrams_rx: int = 0
    datagrams_tx: int = 0
    source_routed_tx: int = 0  # datagrams sent down a multi-hop path
    not_for_us: int = 0  # packets addressed to another node (non-storing: no forwarding here)
    rx_radio_errors: int = 0  # receive() failed: the radio was down (counted per failed call)
    tx_radio_errors: int = 0  # send_udp failed because the radio was down or refused the frame
    radio_outages: int = 0  # times the receive loop found the radio down and waited for it


def prefix_bytes(prefix: str) -> bytes:
    """The 8 bytes of a /64 written as ``fd00:7a:1::/64``."""
    return ipaddress.IPv6Network(prefix).network_address.packed[:8]


class MeshStack:
    """One gateway radio, one PAN, the root of its RPL DODAG."""

    def __init__(
        self,
        radio: Transceiver,
        hwaddr: bytes,
        clock: Clock,
        *,
        mesh: MeshConfig | None = None,
        pan_id: int | None = None,
        channel: int = 0,
        max_frame_retries: int = 3,
        radio_retry_s: float = 1.0,
        rng: random.Random | None = None,
        routes: RoutingTable | None = None,
    ) -> None:
        cfg = mesh or MeshConfig()
        rng = rng or random.Random()
        self.radio = radio
        self.hwaddr = hwaddr
        self.clock = clock
        self.config = cfg
        self.pan_id = cfg.pan_id if pan_id is None else pan_id
        self.channel = channel
        self.max_frame_retries = max_frame_retries
        # How long the receive loop waits before asking a radio that cannot tell when it is
        # back (one with no ReconnectingTransceiver layer) again.
        self.radio_retry_s = radio_retry_s
        self.neighbours = NeighbourTable(
            LinkThresholds(
                snr_ok_db=cfg.snr_ok_db,
                snr_floor_db=cfg.snr_floor_db,
                silent_after_s=cfg.silent_after_s,
            )
        )
        self.routes = routes or RoutingTable(
            hwaddr,
            snr_floor_db=cfg.snr_floor_db,
            hysteresis_db=cfg.snr_hysteresis_db,
            default_lifetime_s=cfg.dao_lifetime_s,
        )
        self.routes.add_change_listener(self._on_route_change)
        self.root = RplRoot(
            hwaddr,
            RootConfig(
                prefix=prefix_bytes(cfg.prefix),
                trickle=TrickleConfig(cfg.dio_imin_s, cfg.dio_doublings, cfg.dio_redundancy),
                dao_lifetime_s=cfg.dao_lifetime_s,
            ),
            self.routes,
            rng,
        )
        self.address = self.root.address
        self.link_local = ipv6.link_local(hwaddr)
        self.adaptation = LowpanAdaptation(
            cfg.max_frame_payload, cfg.reassembly_timeout_s, first_tag=rng.getrandbits(16)
        )
        self.stats = MeshStats()
        self._seq = rng.getrandbits(8)
        self._last_seq: dict[bytes, int] = {}
        self._handlers: dict[int, UdpHandler] = {}
        self._tx_lock = asyncio.Lock()
        self._route_listeners: list[Callable[[RouteChange], None]] = []
        self._tasks: set[asyncio.Future[None]] = set()

    # --- the upper layers' surface -----------------------------------------------------------

    def bind(self, port: int, handler: UdpHandler) -> None:
        """Deliver UDP datagrams for ``port`` to ``handler(src_eui64, datagram)``."""
        self._handlers[port] = handler

    def add_route_listener(self, listener: Callable[[RouteChange], None]) -> None:
        self._route_listeners.append(listener)

    def next_hop(self, dst_mac: bytes) -> bytes:
        """The neighbour a datagram to ``dst_mac`` leaves through right now."""
        route = self.routes.source_route(dst_mac, self.clock.monotonic())
        return route[0] if route else dst_mac

    async def send_udp(
        self, dst_mac: bytes, src_port: int, dst_port: int, payload: bytes
    ) -> TxResult:
        """Send one datagram to a meter over its preferred path; the result is the first hop's
        (acked by the neighbour, not yet by the meter)."""
        route = self.routes.source_route(dst_mac, self.clock.monotonic())
        if route is None:  # not joined (no DAO): try it as a neighbour, link-local
            src, dst = self.link_local, ipv6.link_local(dst_mac)
            packet = udp_packet(src, dst, src_port, dst_port, payload)
            return await self._send_packet(packet, dst_mac)
        dst = self.root.address_of(dst_mac)
        routers = [self.root.address_of(hop) for hop in route[:-1]]
        packet = udp_packet(self.address, dst, src_port, dst_port, payload, routers or None)
        if routers:
            self.stats.source_routed_tx += 1
        return await self._send_packet(packet, route[0])

    # --- transmit ----------------------------------------------------------------------------

    async def _send_packet(self, packet: ipv6.Ipv6Packet, next_hop: bytes) -> TxResult:
        """All frames of one packet to one neighbour (broadcast when ``next_hop`` is
        ``BROADCAST``); stops at the first frame that is not delivered."""
        payloads = self.adaptation.encode(packet, self.hwaddr, next_hop)
        self.stats.datagrams_tx += 1
        result = TxResult(TxStatus.FAILED)
        async with self._tx_lock:
            for mac_payload in payloads:
                result = await self._send_frame(mac_payload, next_hop)
                if result.status not in (TxStatus.ACKED, TxStatus.SENT):
                    break
        return result

    async def _send_frame(self, mac_payload: bytes, next_hop: bytes) -> TxResult:
        broadcast = next_hop == BROADCAST
        self._seq = (self._seq + 1) & 0xFF
        psdu = frames.encode(
            frames.data_frame(
                self._seq, self.pan_id, next_hop, self.hwaddr, mac_payload,
                ack_request=not broadcast,
            )
        )  # fmt: skip
        result = TxResult(TxStatus.FAILED)
        attempts = 0
        while attempts <= (0 if broadcast else self.max_frame_retries):
            attempts += 1
            try:
                result = await self.radio.transmit(psdu)
            except RadioError:
                # Not retried here: while the radio reconnects every attempt would fail the
                # same way, and the caller (a meter read) counts it as a failed read.
                self.stats.tx_radio_errors += 1
                raise
            self.stats.frames_tx += 1
            if result.status in (TxStatus.ACKED, TxStatus.SENT):
                break
        else:
            self.stats.tx_no_ack += 1
        if not broadcast:
            acked = result.status == TxStatus.ACKED
            self.neighbours.transmitted(next_hop, attempts, acked)
            if acked and result.ack_rssi_dbm is not None:
                self.neighbours.heard(
                    next_hop, result.ack_rssi_dbm, result.ack_lqi or 0, self.channel,
                    self.clock.now(),
                )  # fmt: skip
            if acked and result.ack_psdu is not None:
                self._on_ack(next_hop, result.ack_psdu)
            self._feed_link(next_hop)
        return result

    def _on_ack(self, peer: bytes, ack_psdu: bytes) -> float | None:
        try:
            rsl = frames.find_rsl(frames.decode(ack_psdu))
        except frames.FrameError:
            return None
        if rsl is not None:
            self.neighbours.reported_rsl(peer, rsl, self.clock.now())
        return rsl

    async def probe(self, mac: bytes, count: int = 4, spacing_s: float = 0.05) -> ProbeResult:
        """Measure the link to neighbour ``mac`` in both directions now (the diag API's active
        SNR check): ``count`` ICMPv6 echo requests to its link-local address, one frame each,
        sent once (no MAC retries, so every attempt counts)."""
        if count < 1:
            raise ValueError(f"probe count must be at least 1, got {count}")
        src, dst = self.link_local, ipv6.link_local(mac)
        rssi: list[int] = []
        rsl: list[float] = []
        acked = 0
        for n in range(count):
            body = struct.pack("!HH", 0x7A7A, n) + b"probe"
            icmp = ipv6.encode_icmpv6(src, dst, ICMPV6_ECHO_REQUEST, 0, body)
            packet = ipv6.Ipv6Packet(src, dst, ipv6.ICMPV6, icmp, hop_limit=1)
            [mac_payload] = self.adaptation.encode(packet, self.hwaddr, mac)
            self._seq = (self._seq + 1) & 0xFF
            psdu = frames.encode(
                frames.data_frame(self._seq, self.pan_id, mac, self.hwaddr, mac_payload)
            )
            async with self._tx_lock:
                result = await self.radio.transmit(psdu)
            self.stats.frames_tx += 1
            ok = result.status == TxStatus.ACKED
            self.neighbours.transmitted(mac, 1, ok)
            if ok:
                acked += 1
                if result.ack_rssi_dbm is not None:
                    rssi.append(result.ack_rssi_dbm)
                    self.neighbours.heard(
                        mac, result.ack_rssi_dbm, result.ack_lqi or 0, self.channel,
                        self.clock.now(),
                    )  # fmt: skip
                if result.ack_psdu is not None:
                    reported = self._on_ack(mac, result.ack_psdu)
                    if reported is not None:
                        rsl.append(reported)
            if n + 1 < count:
                await asyncio.sleep(spacing_s)
        self._feed_link(mac)
        floor = self.neighbours.noise_floor(self.channel)
        return ProbeResult(mac, count, acked, tuple(rssi), tuple(rsl), floor)

    async def _send_rpl(self, out: Outgoing) -> None:
        if ipv6.is_multicast(out.dst):
            packet = rpl_packet(self.link_local, out.dst, out.message)
            await self._send_packet(packet, BROADCAST)
            return
        node = self.root.eui64_of(out.dst)
        route = None if node is None else self.routes.source_route(node, self.clock.monotonic())
        if node is None or route is None:
            # A node not (yet) in the table, e.g. answering its unicast DIS: it is a neighbour.
            mac = node or ipv6.eui64_from_address(out.dst)
            packet = rpl_packet(self.address, out.dst, out.message)
            await self._send_packet(packet, mac)
            return
        routers = [self.root.address_of(hop) for hop in route[:-1]]
        packet = rpl_packet(self.address, out.dst, out.message, routers or None)
        await self._send_packet(packet, route[0])

    # --- receive -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Receive frames until cancelled; nothing a neighbour sends can stop this loop, and a
        radio outage only pauses it. Ends (raising RadioError) only if the radio is closed."""
        down = False
        while True:
            try:
                rx = await self.radio.receive()
            except RadioError as exc:
                self.stats.rx_radio_errors += 1
                if not down:
                    down = True
                    self.stats.radio_outages += 1
                    log.warning("radio down, mesh receive paused: %s", exc)
                await self._wait_for_radio()
                continue
            if down:
                down = False
                log.info("radio back, mesh receiving again")
            if rx is None:
                continue
            self.stats.frames_rx += 1
            try:
                self._on_frame(rx.psdu, rx.rssi_dbm, rx.lqi, rx.channel)
            except (frames.FrameError, lowpan.LowpanError, ipv6.PacketError) as exc:
                self.stats.rx_dropped += 1
                log.warning("dropped frame: %s; hex=%s", exc, rx.psdu.hex())

    async def _wait_for_radio(self) -> None:
        """Wait until the radio may work again: a reconnecting radio says when it is back (and
        raises if it was closed instead); any other radio is asked again after a pause."""
        reconnecting = find_layer(self.radio, ReconnectingTransceiver)
        if reconnecting is not None:
            await reconnecting.wait_open()
        else:
            await asyncio.sleep(self.radio_retry_s)

    def _on_frame(self, psdu: bytes, rssi: int, lqi: int, channel: int) -> None:
        frame = frames.decode(psdu)
        if (
            frame.frame_type != frames.FrameType.DATA
            or frame.dst not in (self.hwaddr, BROADCAST)
            or frame.src is None
            or len(frame.src) != 8
        ):
            return
        self.neighbours.heard(frame.src, rssi, lqi, channel, self.clock.now())
        rsl = frames.find_rsl(frame)
        if rsl is not None:
            self.neighbours.reported_rsl(frame.src, rsl, self.clock.now())
        if frame.seq is not None and frame.dst != BROADCAST:
            if self._last_seq.get(frame.src) == frame.seq:
                self.stats.rx_duplicates += 1
                return
            self._last_seq[frame.src] = frame.seq
        packet = self.adaptation.decode(frame.payload, frame.src, frame.dst, self.clock.monotonic())
        if packet is not None:
            self._on_packet(packet)

    def _on_packet(self, packet: ipv6.Ipv6Packet) -> None:
        ours = (self.address, self.link_local, rpl.ALL_RPL_NODES, ALL_NODES)
        parsed = parse_packet(packet)
        if parsed.final_dst not in ours:
            self.stats.not_for_us += 1
            return
        if parsed.rpl is not None:
            now = self.clock.monotonic()
            for out in self.root.on_message(packet.src, packet.dst, parsed.rpl, now):
                self._spawn(self._send_rpl(out))
            return
        if parsed.udp is None:
            return
        datagram = parsed.udp
        handler = self._handlers.get(datagram.dst_port)
        sender = ipv6.eui64_from_address(packet.src)
        if handler is None:
            log.info("no listener on UDP port %d (from %s)", datagram.dst_port, sender.hex(":"))
            return
        self.stats.datagrams_rx += 1
        handler(sender, datagram)

    async def close(self) -> None:
        """Cancel the sends still under way (DAO-ACKs, answers to DIS) before the radio
        closes, so none of them outlives the stack and fails against a closed radio."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, RadioError):
                log.warning("RPL message not sent: %s", exc)
            else:
                log.error("RPL send failed: %r", exc)

    # --- timers and link metrics -------------------------------------------------------------

    async def run_root(self) -> None:
        """The root's clockwork: DIOs on Trickle, reassembly and route expiry, link metrics."""
        self.root.start(self.clock.monotonic())
        next_housekeeping = self.clock.monotonic()
        while True:
            now = self.clock.monotonic()
            for out in self.root.poll(now):
                try:
                    await self._send_rpl(out)
                except RadioError as exc:
                    log.warning("DIO not sent: %s", exc)
            if now >= next_housekeeping:
                self.housekeeping(now)
                next_housekeeping = now + HOUSEKEEPING_S
            wake = min(self.root.deadline(), next_housekeeping)
            await asyncio.sleep(max(0.0, wake - self.clock.monotonic()))

    def housekeeping(self, now: float) -> None:
        self.adaptation.expire(now)
        for nb in self.neighbours.all():
            self._feed_link(nb.mac)
        self.routes.tick(now)

    def _feed_link(self, mac: bytes) -> None:
        nb = self.neighbours.get(mac)
        if nb is None or mac == self.hwaddr:
            return
        etx = nb.etx
        quality = LinkQuality(
            etx=None if etx is None else float(etx), snr_db=nb.snr_db, measured=True
        )
        self.routes.set_link(self.hwaddr, mac, quality, self.clock.monotonic())

    def _on_route_change(self, change: RouteChange) -> None:
        log.info("route to %s: %s", change.node.hex(":"), change.reason)
        for listener in self._route_listeners:
            listener(change)

    # --- noise floor -------------------------------------------------------------------------

    async def sample_noise(self) -> float:
        """Take one idle-RSSI sample on our channel into the noise-floor estimate."""
        dbm = await self.radio.sample_rssi()
        self.neighbours.noise_sample(self.channel, dbm)
        return dbm

    async def scan_noise(self, channels: list[int], duration_ms: int = 32) -> dict[int, int]:
        """An energy scan of ``channels`` into their noise-floor estimates (dBm per channel)."""
        results = await self.radio.energy_scan(channels, duration_ms)
        for channel, dbm in results.items():
            self.neighbours.noise_sample(channel, dbm)
        return results

    async def noise_sampler(self, interval_s: float, *, scan_every: int = 6) -> None:
        """Idle-RSSI samples of our channel every ``interval_s``, and every ``scan_every``-th
        time an energy scan of it instead (a scan integrates over its duration; a sample is
        one instant): both feed the same per-channel floor."""
        count = 0
        while True:
            count += 1
            try:
                if scan_every and count % scan_every == 0:
                    await self.scan_noise([self.channel])
                else:
                    await self.sample_noise()
            except RadioError as exc:
                log.warning("noise-floor measurement failed: %s", exc)
            await asyncio.sleep(interval_s)


ICMPV6_ECHO_REQUEST = 128


@dataclass(frozen=True)
class ProbeResult:
    """The active check of one link: probes sent to a neighbour and what came back.

    Both directions from one exchange: the RSSI of each ack is how well we hear the neighbour,
    the RSL IE in the ack is how well it hears our probe. ``snr_out_db`` uses *our* noise floor
    for the neighbour's side (it does not report its own), so it is an estimate."""

    mac: bytes
    sent: int
    acked: int
    ack_rssi_dbm: tuple[int, ...]
    rsl_out_dbm: tuple[float, ...]
    noise_floor_dbm: float | None

    @property
    def snr_in_db(self) -> float | None:
        if not self.ack_rssi_dbm or self.noise_floor_dbm is None:
            return None
        return sum(self.ack_rssi_dbm) / len(self.ack_rssi_dbm) - self.noise_floor_dbm

    @property
    def snr_out_db(self) -> float | None:
        if not self.rsl_out_dbm or self.noise_floor_dbm is None:
            return None
        return sum(self.rsl_out_dbm) / len(self.rsl_out_dbm) - self.noise_floor_dbm


class MeshDatagramLink:
    """A request/response datagram link to one meter over the mesh (the collector's MeterLink)."""

    def __init__(
        self, stack: MeshStack, dst_mac: bytes, port: int = 4059, local_port: int | None = None
    ) -> None:
        self._stack = stack
        self._dst = dst_mac
        self._port = port
        self._local_port = local_port if local_port is not None else port
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()

    def deliver(self, datagram: ipv6.UdpDatagram) -> None:
        if datagram.src_port == self._port:
            self._replies.put_nowait(datagram.payload)

    async def request(self, frame: bytes, timeout: float) -> bytes:
        while not self._replies.empty():  # a late answer to an earlier, timed-out request
            self._replies.get_nowait()
        stack = self._stack
        first_hop = stack.next_hop(self._dst)
        sent_at = stack.clock.monotonic()
        result = await stack.send_udp(self._dst, self._local_port, self._port, frame)
        if result.status not in (TxStatus.ACKED, TxStatus.SENT):
            raise LinkTimeout(
                f"meter {self._dst.hex(':')}: next hop {first_hop.hex(':')} did not ack "
                f"({result.status.value})"
            )
        try:
            async with asyncio.timeout(timeout):
                reply = await self._replies.get()
        except TimeoutError:
            raise LinkTimeout(
                f"meter {self._dst.hex(':')}: no reply in {timeout:g} s (first hop "
                f"{first_hop.hex(':')} acked)"
            ) from None
        # The round trip counts against the link the request left through (seed 000's orange:
        # latency over 2000 ms).
        stack.neighbours.round_trip(first_hop, stack.clock.monotonic() - sent_at)
        return reply

    async def receive(self, timeout: float) -> bytes:
        """The next reply from the meter without sending (after a stale one)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._replies.get()
        except TimeoutError:
            raise LinkTimeout(f"meter {self._dst.hex(':')}: no reply in {timeout:g} s") from None

    async def close(self) -> None:
        return None


class MeshLinks:
    """Demultiplexes DLMS datagrams from many meters arriving on one UDP port.

    Replies go to the meter's request/response link. Frames a meter sends on its own (pushes:
    last gasp, power restored) go to ``on_unsolicited(src_mac, frame)`` when ``is_unsolicited``
    says so; the mesh does not parse DLMS, the agent hands in both."""

    def __init__(
        self,
        stack: MeshStack,
        port: int = 4059,
        *,
        on_unsolicited: Callable[[bytes, bytes], None] | None = None,
        is_unsolicited: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._stack = stack
        self._port = port
        self._links: dict[bytes, MeshDatagramLink] = {}
        self._on_unsolicited = on_unsolicited
        self._is_unsolicited = is_unsolicited
        stack.bind(port, self._deliver)

    def set_unsolicited(
        self, handler: Callable[[bytes, bytes], None], is_unsolicited: Callable[[bytes], bool]
    ) -> None:
        """Where frames a meter sends on its own go (see the class docstring)."""
        self._on_unsolicited, self._is_unsolicited = handler, is_unsolicited

    def link(self, dst_mac: bytes) -> MeshDatagramLink:
        if dst_mac not in self._links:
            self._links[dst_mac] = MeshDatagramLink(self._stack, dst_mac, self._port)
        return self._links[dst_mac]

    def _deliver(self, src_mac: bytes, datagram: ipv6.UdpDatagram) -> None:
        if (
            self._on_unsolicited is not None
            and self._is_unsolicited is not None
            and self._is_unsolicited(datagram.payload)
        ):
            self._on_unsolicited(src_mac, datagram.payload)
            return
        link = self._links.get(src_mac)
        if link is None:
            log.info("datagram from unknown meter %s dropped", src_mac.hex(":"))
            return
        link.deliver(datagram)
