"""An emulated meter on the RF medium: a Wi-SUN-style node stack around a DLMS server.

The stack, bottom up (each part in :mod:`hil.node`):

- MAC (:mod:`hil.node.mac`): CSMA-CA, retries, Enh-Acks with the RSL IE, duplicate detection,
  per-neighbour RSL and ETX;
- 6LoWPAN (the gateway's own :class:`~firmware_agent.mesh.adaptation.LowpanAdaptation`): IPHC
  and fragmentation, reassembled and re-fragmented at every hop (route-over);
- RPL (:mod:`hil.node.rpl_node`): join, parents, DAO, Trickle DIOs, non-storing mode;
- forwarding (:mod:`hil.node.forward`): upward to the preferred parent (the next one when it
  does not ack), downward along the root's source routing header;
- application: UDP port 4059 datagrams for the node go to its DLMS server; the answer goes back
  to the request's source address (link-local ones one hop, global ones upward).

Time: the node's timers (RPL, reply delay) run on ``scheduler`` — anything with the asyncio
loop's ``time()`` / ``call_at()``: the virtual-time loop of :mod:`hil.vtime` in simulations, the
running loop otherwise. The MAC's own timing (backoffs, acks) runs on the medium's clock.

Power: :meth:`MeterNode.set_power` switches the node off — silent, its RPL state, queue and
reassemblies gone — and on again, when it joins from scratch like a meter after an outage. A
``Medium.power`` call behind its back is noticed at the node's next timer (then it watches for
the power to come back every few seconds); ``set_power`` is exact.

Pushes (``pushes=NodePushes(...)``): on ``set_power(False)`` a joined node first sends a last gasp
(a DataNotification in WRAPPER, UDP to the gateway's port 4059, one frame to its preferred parent)
and goes dark once it is acknowledged, or after ``LAST_GASP_SENDS`` sends of it, each with the
MAC's retries, were not. No other parent is tried. The supercap's energy is counted in frames, not
seconds: the packet already on the air, then the gasp's sends with their CSMA backoffs and retries.
A budget in seconds of wall clock made an emulated meter starved of CPU (a loaded CI machine) lose
its gasp before its radio had spent anything. It serves nothing meanwhile. After power returns and
it has rejoined (a parent and an address), it sends a power-restored push the ordinary way.

The DLMS side may be a plain ``bytes -> bytes | None`` callable, a ``MeterServer``, or a
``FaultyMeter``, whose replies may carry a delay (added to ``reply_delay_s`` on the scheduler).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from firmware_agent.mesh import fragments, ipv6, lowpan, rpl
from firmware_agent.mesh.adaptation import LowpanAdaptation, parse_packet, rpl_packet, udp_packet
from firmware_agent.mesh.frames import Frame
from firmware_agent.mesh.ipv6 import Ipv6Packet, PacketError, UdpDatagram
from hil.medium import InstantScheduler, Medium, Scheduler, TimerHandle
from hil.meter.dlms_server import MeterServer
from hil.meter.faults import FaultyMeter, Reply
from hil.meter.push import PushSource
from hil.node.forward import Verdict, decide, is_link_local
from hil.node.mac import BROADCAST, MacConfig, NodeMac, TxResult
from hil.node.rpl_node import RplConfig, RplNode, RplSend, Via

log = logging.getLogger(__name__)

__all__ = [
    "DLMS_PORT",
    "LAST_GASP_SENDS",
    "MeterNode",
    "NodeConfig",
    "NodePushes",
    "NodeStats",
    "Scheduler",
    "UdpHandler",
]

DLMS_PORT = 4059
#: A last gasp is sent up to this many times (each with the MAC's retries) until one is acked:
#: what the supercap is sized for. One send was lost when it collided with the gateway's own
#: retries to the meter (it was being read as mains failed).
LAST_GASP_SENDS = 3
#: A random pause before sending it again, seconds.
LAST_GASP_PAUSE_S = (0.02, 0.1)
#: How often a node the medium switched off behind its back looks whether power is back.
POWER_POLL_S = 5.0
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")

UdpHandler = Callable[[bytes, bytes, UdpDatagram], None]
"""(source address, the address it was sent to, datagram) for a datagram on a bound port."""

Dlms = Callable[[bytes], bytes | None] | MeterServer | FaultyMeter
"""What answers the node's DLMS datagrams."""


@dataclass
class NodePushes:
    """Where and with what a node pushes its power events. ``meter_time`` is the meter's clock
    (UNIX s) for the notification's time stamp; ``gateway``: the push destination's IPv6
    address (default: the DODAG root's, i.e. the gateway's)."""

    source: PushSource
    meter_time: Callable[[], float]
    gateway: bytes | None = None
    port: int = DLMS_PORT


@dataclass(frozen=True)
class NodeConfig:
    mac: MacConfig = field(default_factory=MacConfig)
    rpl: RplConfig = field(default_factory=RplConfig)
    #: Largest MAC payload before 6LoWPAN fragments (as the gateway's mesh.max_frame_payload).
    max_frame_payload: int = 200
    reassembly_timeout_s: float = fragments.DEFAULT_TIMEOUT_S
    #: How long the meter takes to answer a DLMS request.
    reply_delay_s: float = 0.01


@dataclass
class NodeStats:
    packets_rx: int = 0  # whole packets (reassembled) delivered to this node
    requests: int = 0  # DLMS datagrams handed to the server
    replies: int = 0  # answers it sent back
    forwards_up: int = 0  # packets from children sent on towards the root
    forwards_down: int = 0  # source-routed packets sent on towards their destination
    reroutes: int = 0  # upward packets tried on another parent after one did not ack
    forward_failures: int = 0  # forwarded packets no next hop took
    forward_drops: int = 0  # packets not forwarded (hop limit, bad route header, ...)
    no_route: int = 0  # upward packets while we had no parent
    send_failures: int = 0  # own packets (replies, DAOs, ...) no next hop took
    rx_errors: int = 0  # 6LoWPAN/IPv6/UDP/RPL payloads that did not decode
    power_cycles: int = 0
    last_gasps: int = 0  # last-gasp frames sent as power failed
    last_gasps_acked: int = 0  # ... that the parent acked before the node went dark
    restored_pushes: int = 0  # power-restored pushes sent after rejoining
    push_failures: int = 0  # restored pushes no next hop took


def _default_scheduler(medium: Medium) -> Scheduler:
    if isinstance(medium.scheduler, InstantScheduler):
        raise ValueError(
            "a meter node needs an event loop for its timers: pass scheduler= (the running "
            "asyncio loop) or give the medium a loop as its scheduler"
        )
    return medium.scheduler


class MeterNode:
    """A meter on the medium: joins the mesh, routes for its children, answers DLMS over UDP.

    It is the ``RadioNode`` the medium knows; attach it (``medium.attach(node, position, ...)``)
    before its first timer fires. It starts (powered, looking for the mesh) when created."""

    def __init__(
        self,
        eui64: bytes,
        medium: Medium,
        dlms: Dlms,
        scheduler: Scheduler | None = None,
        *,
        channel: int = 0,
        config: NodeConfig | None = None,
        rng: random.Random | None = None,
        pushes: NodePushes | None = None,
    ) -> None:
        if len(eui64) != 8:
            raise ValueError(f"EUI-64 must be 8 bytes, got {eui64.hex()}")
        self.eui64 = eui64
        self.medium = medium
        self.dlms = dlms
        self._respond = _responder(dlms)
        self.pushes = pushes
        self.scheduler = scheduler if scheduler is not None else _default_scheduler(medium)
        self.channel = channel
        self.config = config or NodeConfig()
        # Backoffs and timers are random; without an injected generator they follow from the
        # address, so a run is still reproducible.
        self.rng = rng if rng is not None else random.Random(int.from_bytes(eui64, "big"))
        self.link_local = ipv6.link_local(eui64)
        self.stats = NodeStats()
        self.powered = True
        self.dying = False  # mains gone, the supercap still powers the radio (last gasp)
        self._restore_pending = False
        self.mac = NodeMac(
            self,
            medium,
            self.rng,
            self._on_frame,
            channel=channel,
            config=self.config.mac,
            on_frame_result=self._on_frame_result,
        )
        self._handlers: dict[int, UdpHandler] = {DLMS_PORT: self._on_dlms}
        self._epoch = 0
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf
        self._boot()

    def _boot(self, start: bool = True) -> None:
        """A fresh RPL node and adaptation layer (the state a power cut loses); when powered
        (``start``), looking for the mesh."""
        cfg = self.config
        old = getattr(self, "rpl", None)
        self.rpl = RplNode(self.eui64, cfg.rpl, self.rng, self.mac.neighbour)
        if old is not None:
            self.rpl.stats = old.stats  # counters span power cycles; the state does not
        self.adaptation = LowpanAdaptation(
            cfg.max_frame_payload, cfg.reassembly_timeout_s, first_tag=self.rng.getrandbits(16)
        )
        self._address: bytes | None = None
        self._own = {self.link_local, rpl.ALL_RPL_NODES, ALL_NODES}
        if start:
            self.rpl.start(self.scheduler.time())
            self._reschedule()

    # --- public surface ------------------------------------------------------------------------

    @property
    def address(self) -> bytes | None:
        """Our global address (mesh prefix + IID), once a DIO told us the prefix."""
        return self.rpl.address

    @property
    def joined(self) -> bool:
        return self.powered and self.rpl.joined

    def bind(self, port: int, handler: UdpHandler) -> None:
        """Deliver UDP datagrams for ``port`` to ``handler`` (4059 is the DLMS server's)."""
        self._handlers[port] = handler

    def send_udp(
        self,
        dst: bytes,
        src_port: int,
        dst_port: int,
        payload: bytes,
        *,
        src: bytes | None = None,
        on_done: Callable[[bool], None] | None = None,
    ) -> bool:
        """Send a datagram to an IPv6 address: link-local ones straight to that neighbour,
        others up the DODAG. ``on_done(True)`` once the first hop acked every frame. Returns
        False (and calls nothing) when it cannot go at all: dark, or no address/route yet."""
        if not self.powered:
            return False
        if src is None:
            src = self.link_local if is_link_local(dst) else self.rpl.address
        if src is None or (not is_link_local(dst) and not self.rpl.parents):
            self.stats.no_route += 1
            return False
        self._route_out(udp_packet(src, dst, src_port, dst_port, payload), on_done)
        return True

    def set_power(self, on: bool, at: float | None = None) -> None:
        """Switch the meter off (silent, RPL state lost) or on (rejoins from scratch), now or
        at time ``at`` on the node's scheduler."""
        if at is not None and at > self.scheduler.time():
            self.scheduler.call_at(at, self.set_power, on)
            return
        if self.dying:
            self._dark(self._epoch)  # mains back (or off again) before the last gasp was out
        if on == self.powered:
            return
        if not on and self._last_gasp():
            return  # dark once the frame is done
        self.medium.power(self, on)
        if on:
            self._power_up()
        else:
            self._power_down()

    def _last_gasp(self) -> bool:
        """Send the last gasp to the preferred parent and stay on the air just for it; False
        when there is nothing to send it with (no pushes configured, not joined)."""
        pushes, node = self.pushes, self.rpl
        parent, src = node.preferred_parent, node.address
        gateway = pushes.gateway if pushes is not None else None
        if gateway is None and node.dodag is not None:
            gateway = node.dodag.dodag_id
        if pushes is None or parent is None or src is None or gateway is None:
            return False
        frame = pushes.source.last_gasp(pushes.meter_time())
        packet = udp_packet(src, gateway, DLMS_PORT, pushes.port, frame)
        self.powered = False
        self.dying = True
        self._epoch += 1  # pending replies and the RPL timer are void
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        epoch = self._epoch
        self.stats.last_gasps += 1

        sends = 0

        def send() -> None:
            nonlocal sends
            if epoch != self._epoch:
                return  # mains came back first
            sends += 1
            # Ahead of whatever was queued (a reply's fragments).
            self._send_to(packet, parent, done, urgent=True)

        def done(result: TxResult) -> None:
            if epoch != self._epoch:
                return  # mains came back first
            # What the gateway can not tell: whether an alarm that never came was ever sent.
            log.info("node %s: last gasp %s (send %d)", self.eui64.hex(), result.value, sends)
            if result is TxResult.DONE:
                self.stats.last_gasps_acked += 1
            elif sends < LAST_GASP_SENDS:
                # Out of step with whoever it collided with (the gateway's retries to us).
                pause = self.rng.uniform(*LAST_GASP_PAUSE_S)
                self.scheduler.call_at(self.scheduler.time() + pause, send)
                return
            self._dark(epoch)

        log.info(
            "node %s: mains lost, last gasp to %s (%d packet(s) were queued)",
            self.eui64.hex(), parent.hex(), self.mac.queued,
        )  # fmt: skip
        send()
        return True

    def _dark(self, epoch: int) -> None:
        """The supercap is spent (or the last gasp is out): off the air, state lost."""
        if epoch != self._epoch or not self.dying:
            return
        self.dying = False
        self.medium.power(self, False)
        self._power_down()

    def _push_restored(self) -> None:
        pushes, node = self.pushes, self.rpl
        self._restore_pending = False
        if pushes is None:
            return
        gateway = pushes.gateway
        if gateway is None and node.dodag is not None:
            gateway = node.dodag.dodag_id
        if gateway is None:
            return
        frame = pushes.source.power_restored(pushes.meter_time())
        self.stats.restored_pushes += 1
        sent = self.send_udp(gateway, DLMS_PORT, pushes.port, frame, on_done=self._restored_sent)
        if not sent:
            self.stats.push_failures += 1

    def _restored_sent(self, ok: bool) -> None:
        if not ok:
            self.stats.push_failures += 1

    def _power_down(self) -> None:
        self.powered = False
        self._epoch += 1
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self.mac.reset()
        self._boot(start=False)

    def _power_up(self) -> None:
        self.powered = True
        self._epoch += 1
        self.stats.power_cycles += 1
        self._restore_pending = self.pushes is not None
        self._boot()

    def _medium_powered(self) -> bool:
        """False when the medium switched us off behind our back (``Medium.power``): the node
        then loses its state as :meth:`set_power` would, and watches for the power to return
        (every ``POWER_POLL_S``). Only noticed at the node's next timer, so an outage shorter
        than the gap between two of its timers goes unnoticed."""
        if self.medium.is_powered(self):
            return True
        self._power_down()
        self._watch_power(self._epoch)
        return False

    def _watch_power(self, epoch: int) -> None:
        if epoch != self._epoch or self.powered:
            return
        if self.medium.is_powered(self):
            self._power_up()
            return
        self.scheduler.call_at(self.scheduler.time() + POWER_POLL_S, self._watch_power, epoch)

    def counters(self) -> dict[str, int]:
        """Every counter of the node, the MAC and the RPL node, flat (for reports)."""
        out: dict[str, int] = {}
        for prefix, record in (
            ("", self.stats),
            ("mac_", self.mac.stats),
            ("rpl_", self.rpl.stats),
        ):
            for f in fields(record):
                out[prefix + f.name] = getattr(record, f.name)
        return out

    # --- the medium's side ---------------------------------------------------------------------

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        if not self.powered and not self.dying:
            return None
        return self.mac.on_air_frame(psdu, rssi_dbm, lqi, channel)  # dying: for the ack

    # --- receive -------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if self.dying:
            return  # the supercap is for the last gasp, not for serving or forwarding
        src = frame.src
        assert src is not None and frame.dst is not None  # the MAC passes only such frames
        now = self.scheduler.time()
        try:
            packet = self.adaptation.decode(frame.payload, src, frame.dst, now)
        except (lowpan.LowpanError, PacketError) as exc:
            self.stats.rx_errors += 1
            log.debug("node %s: dropped a frame from %s: %s", self.eui64.hex(), src.hex(), exc)
            return
        if packet is not None:
            self._on_packet(packet, src, now)

    def _on_packet(self, packet: Ipv6Packet, src_mac: bytes, now: float) -> None:
        decision = decide(packet, self._own)
        verdict = decision.verdict
        if verdict is Verdict.DELIVER:
            self._deliver(packet, src_mac, now)
        elif verdict is Verdict.UP:
            node = self.rpl
            if src_mac in node.parents:
                self._run(node.loop_detected(src_mac, now))
            if not node.parents:
                self.stats.no_route += 1
                self._run(node.upward_without_route(src_mac, now))
                return
            self.stats.forwards_up += 1
            self._send_up(decision.packet, self._forwarded)
        elif verdict is Verdict.DOWN:
            assert decision.next_hop is not None
            self.stats.forwards_down += 1
            self._send_to(decision.packet, decision.next_hop, self._forwarded_down)
        else:
            self.stats.forward_drops += 1
            log.debug("node %s: not forwarded: %s", self.eui64.hex(), decision.reason)

    def _forwarded(self, ok: bool) -> None:
        if not ok:
            self.stats.forward_failures += 1

    def _forwarded_down(self, result: TxResult) -> None:
        self._forwarded(result is TxResult.DONE)

    def _deliver(self, packet: Ipv6Packet, src_mac: bytes, now: float) -> None:
        try:
            parsed = parse_packet(packet)
        except PacketError as exc:
            self.stats.rx_errors += 1
            log.debug("node %s: dropped a packet: %s", self.eui64.hex(), exc)
            return
        self.stats.packets_rx += 1
        message = parsed.rpl
        if message is not None:
            node = self.rpl
            if isinstance(message, rpl.Dio):
                out = node.on_dio(src_mac, message, now)
            elif isinstance(message, rpl.Dis):
                out = node.on_dis(packet.src, src_mac, ipv6.is_multicast(packet.dst), now)
            elif isinstance(message, rpl.DaoAck):
                out = node.on_dao_ack(message, now)
            else:
                return  # a DAO: only the root takes those
            self._run(out)
            return
        if parsed.udp is not None:
            handler = self._handlers.get(parsed.udp.dst_port)
            if handler is not None:
                handler(packet.src, parsed.final_dst, parsed.udp)

    def _on_dlms(self, src: bytes, dst: bytes, datagram: UdpDatagram) -> None:
        self.stats.requests += 1
        reply = self._respond(datagram.payload)
        if reply is None:
            return
        answer = reply.frame
        epoch = self._epoch
        self.scheduler.call_at(
            self.scheduler.time() + self.config.reply_delay_s + reply.delay_s,
            self._reply,
            epoch,
            dst,
            src,
            datagram.src_port,
            answer,
        )

    def _reply(self, epoch: int, src: bytes, dst: bytes, port: int, payload: bytes) -> None:
        if epoch != self._epoch or not self._medium_powered():
            return  # the meter went dark meanwhile
        self.stats.replies += 1
        self.send_udp(dst, DLMS_PORT, port, payload, src=src)

    # --- send ----------------------------------------------------------------------------------

    def _route_out(self, packet: Ipv6Packet, on_done: Callable[[bool], None] | None) -> None:
        """A packet we originate: link-local and multicast ones go one hop, the rest upward."""
        if ipv6.is_multicast(packet.dst):
            self._send_to(packet, BROADCAST, _as_bool(on_done))
        elif is_link_local(packet.dst):
            self._send_to(packet, ipv6.eui64_from_address(packet.dst), _as_bool(on_done))
        else:
            self._send_up(packet, on_done)

    def _send_up(
        self,
        packet: Ipv6Packet,
        on_done: Callable[[bool], None] | None = None,
        tried: tuple[bytes, ...] = (),
    ) -> None:
        """Towards the root through the preferred parent; when a parent does not ack, through
        the next one (the node's side of moving traffic off a weak link)."""
        parent = next((p for p in self.rpl.parents if p not in tried), None)
        if parent is None:
            if tried:
                self.stats.send_failures += 1
            else:
                self.stats.no_route += 1
            if on_done is not None:
                on_done(False)
            return
        if tried:
            self.stats.reroutes += 1
        epoch = self._epoch

        def done(result: TxResult) -> None:
            if result is TxResult.DONE:
                if on_done is not None:
                    on_done(True)
            elif result is TxResult.NO_ACK and epoch == self._epoch:
                self._send_up(packet, on_done, (*tried, parent))
            elif on_done is not None:
                on_done(False)

        self._send_to(packet, parent, done)

    def _send_to(
        self,
        packet: Ipv6Packet,
        mac: bytes,
        on_done: Callable[[TxResult], None] | None,
        *,
        urgent: bool = False,
    ) -> None:
        try:
            payloads = self.adaptation.encode(packet, self.eui64, mac)
        except (lowpan.LowpanError, PacketError) as exc:
            self.stats.send_failures += 1
            log.debug("node %s: cannot send a packet: %s", self.eui64.hex(), exc)
            if on_done is not None:
                on_done(TxResult.REFUSED)
            return
        self.mac.send(mac, payloads, on_done, urgent=urgent)

    def _on_frame_result(self, dst: bytes, attempts: int, acked: bool) -> None:
        if not self.powered:
            return  # the last gasp's frame: the RPL state is about to go
        self._run(self.rpl.tx_result(dst, attempts, acked, self.scheduler.time()))

    # --- RPL plumbing --------------------------------------------------------------------------

    def _run(self, out: list[RplSend]) -> None:
        """Send what the RPL node asked for, then follow its address and timer."""
        for item in out:
            packet = rpl_packet(item.src, item.dst, item.message)
            hop = item.next_hop
            if hop is Via.UP:
                self._send_up(packet, self._own_sent)
            elif hop is Via.BROADCAST:
                self._send_to(packet, BROADCAST, None)
            else:
                self._send_to(packet, hop, _as_bool(self._own_sent))
        address = self.rpl.address
        if address != self._address:
            if self._address is not None:
                self._own.discard(self._address)
            if address is not None:
                self._own.add(address)
            self._address = address
        if self._restore_pending and self.rpl.joined and address is not None:
            self._push_restored()
        self._reschedule()

    def _own_sent(self, ok: bool) -> None:
        if not ok:
            self.stats.send_failures += 1

    def _reschedule(self) -> None:
        at = self.rpl.deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at != math.inf:
            self._timer = self.scheduler.call_at(at, self._on_timer, self._epoch, at)

    def _on_timer(self, epoch: int, at: float) -> None:
        if epoch != self._epoch:
            return
        self._timer, self._timer_at = None, math.inf
        if not self._medium_powered():
            return
        # A loop may run a timer a hair before its time; the deadline has come all the same.
        now = max(self.scheduler.time(), at)
        self.adaptation.expire(now)
        self._run(self.rpl.poll(now))


def _responder(dlms: Dlms) -> Callable[[bytes], Reply | None]:
    """The DLMS side as one shape: a request in, a reply with its delay (or None) out."""
    if isinstance(dlms, FaultyMeter):
        return dlms.respond
    handle = dlms.handle if isinstance(dlms, MeterServer) else dlms

    def respond(frame: bytes) -> Reply | None:
        answer = handle(frame)
        return None if answer is None else Reply(answer)

    return respond


def _as_bool(on_done: Callable[[bool], None] | None) -> Callable[[TxResult], None] | None:
    if on_done is None:
        return None
    callback = on_done

    def done(result: TxResult) -> None:
        callback(result is TxResult.DONE)

    return done
