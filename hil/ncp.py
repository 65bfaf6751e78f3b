"""The virtual RCP's NCP personality: a TI Wi-SUN FAN border router NCP, emulated.

:class:`VirtualNcp` answers Spinel as TI's NCP firmware does (identity, NET_IF_UP/NET_STACK_UP,
NUM_CONNECTED_DEVICES, CONNECTED_DEVICES in pages, DODAG_ROUTE_DEST/DODAG_ROUTE, IPv6 on
STREAM_NET) for a small seeded :class:`EmulatedNetwork` behind it: nodes with parents, each a
DLMS meter (our :class:`~hil.meter.dlms_server.MeterServer`) answering UDP port 4059.

It also emulates the known crash of TI's stack host: a topology read before the stack is up,
or CONNECTED_DEVICES read again sooner than ``guard_gap_s`` after the previous read, is counted
in :attr:`NcpCounters.violations` and answered with a crash (no reply, then a RESET_CRASH
notification, the stack down). Tests assert the backend never causes one.

Sans-IO like :class:`hil.rcp.VirtualRcp` (``feed`` HDLC bytes in, ``take_output`` bytes out);
:func:`hil.rcp.serve_pty` is the PTY edge and ``python -m hil.ncp --pty`` prints the PTY path as its
first stdout line, the spawn protocol of ``spinel+pty://``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drivers.hdlc import HdlcDecoder, HdlcError, hdlc_encode
from drivers.spinel import (
    Cmd,
    Prop,
    SpinelError,
    SpinelFrame,
    Status,
    decode_frame,
    encode,
    pack,
    pack_uint,
    unpack,
)
from firmware_agent.clock import Clock, SystemClock
from firmware_agent.mesh import ipv6
from firmware_agent.mesh import ti_spinel as ti
from firmware_agent.mesh.stack import prefix_bytes
from hil.meter.dlms_server import MeterServer
from hil.meter.model import MeterModel
from hil.meter.router import MeterRouter
from hil.rcp import serve_pty, serve_until_stopped

log = logging.getLogger(__name__)

NCP_VERSION = "TIWISUNFAN/1.0.2; VIRTUAL; hil.ncp"
PROTOCOL_VERSION = "Wi-SUNFAN/1.0"
DLMS_PORT = 4059
OUTPUT_LIMIT = 1 << 20

#: Properties TI's host daemon must not touch before the stack is up.
TOPOLOGY_PROPS = frozenset(
    {
        ti.PROP_NUM_CONNECTED_DEVICES,
        ti.PROP_CONNECTED_DEVICES,
        ti.PROP_DODAG_ROUTE,
        ti.PROP_DODAG_ROUTE_DEST,
    }
)


# --- the network behind the border router -------------------------------------------------------


@dataclass
class EmulatedNetwork:
    """Who is whose parent (EUI-64s), and the meter each node is."""

    root: bytes
    prefix: bytes  # the /64, 8 bytes
    parents: dict[bytes, bytes] = field(default_factory=dict)
    meters: dict[bytes, MeterRouter] = field(default_factory=dict)
    #: RSL in / out (dBm) of each node as the border router's radio neighbour would report it.
    rsl: dict[bytes, tuple[float, float]] = field(default_factory=dict)

    def address(self, node: bytes) -> bytes:
        return ipv6.address_in_prefix(self.prefix, node)

    def path(self, node: bytes) -> list[bytes] | None:
        """Root … node, or None when the node has no chain of parents to the root."""
        hops = [node]
        while hops[-1] != self.root:
            parent = self.parents.get(hops[-1])
            if parent is None or parent in hops:
                return None
            hops.append(parent)
        return hops[::-1]

    def connected(self) -> list[bytes]:
        """Nodes with a path to the root, in a stable order."""
        return [n for n in self.parents if self.path(n) is not None]

    def node_at(self, address: bytes) -> bytes | None:
        if address[:8] != self.prefix:
            return None
        node = ipv6.eui64_from_address(address)
        return node if node in self.parents else None


def build_network(
    rng: random.Random,
    clock: Clock,
    *,
    nodes: int = 5,
    max_hops: int = 3,
    root: bytes = bytes.fromhex("00124b0000000001"),
    prefix: str = "fd00:7a:1::/64",
) -> EmulatedNetwork:
    """A seeded tree: node i picks its parent among the root and earlier nodes less than
    ``max_hops`` deep; every node is a meter (MTR-1 …) on wPort 1."""
    network = EmulatedNetwork(root, prefix_bytes(prefix))
    depth = {root: 0}
    for i in range(nodes):
        node = bytes.fromhex("00124b00") + rng.randbytes(4)
        while node in depth:
            node = bytes.fromhex("00124b00") + rng.randbytes(4)
        parent = rng.choice([n for n, d in depth.items() if d < max_hops])
        network.parents[node] = parent
        depth[node] = depth[parent] + 1
        model = MeterModel(f"MTR-{i + 1}", random.Random(rng.getrandbits(32)))
        network.meters[node] = MeterRouter({1: MeterServer(model, clock)})
    for node in network.parents:  # drawn after the tree, so the tree depends on the seed only
        network.rsl[node] = (round(rng.uniform(-95, -60), 1), round(rng.uniform(-95, -60), 1))
    return network


# --- the NCP ----------------------------------------------------------------------------------


@dataclass
class NcpCounters:
    requests: int = 0
    reads_before_stack_up: int = 0
    back_to_back_reads: int = 0
    crashes: int = 0
    hdlc_errors: int = 0
    spinel_errors: int = 0
    unknown_props: int = 0
    listing_pages: int = 0
    packets_from_host: int = 0
    packets_to_meters: int = 0
    packets_dropped: int = 0
    output_dropped_bytes: int = 0  # the host stopped reading (the PTY edge dropped them)

    @property
    def violations(self) -> int:
        """Accesses that crash TI's daemon: the backend must never cause one."""
        return self.reads_before_stack_up + self.back_to_back_reads


class VirtualNcp:
    """A TI Wi-SUN border-router NCP speaking Spinel in HDLC-lite (sans-IO)."""

    def __init__(
        self,
        network: EmulatedNetwork,
        clock: Clock,
        *,
        stack_up_after_s: float = 0.5,
        guard_gap_s: float = 1.0,
        block_size: int = ti.TI_BLOCK_SIZE,
        ncp_version: str = NCP_VERSION,
        neighbour_metrics: bool = True,
    ) -> None:
        self.network = network
        self.clock = clock
        self.stack_up_after_s = stack_up_after_s
        self.guard_gap_s = guard_gap_s
        self.block_size = block_size
        self.ncp_version = ncp_version
        self.neighbour_metrics = neighbour_metrics  # False: an image without PHY_NBR_METRICS
        self.counters = NcpCounters()
        #: Fault injection: the next GET of a property answers these bytes instead.
        self.corrupt_next: dict[int, bytes] = {}
        #: Fault injection: the next GET of a property is refused with this status.
        self.refuse_next: dict[int, int] = {}
        self._decoder = HdlcDecoder()
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._listener: Callable[[], None] | None = None
        self._boot()

    def _boot(self) -> None:
        self.if_up = False
        self._stack_requested_at: float | None = None
        self._listing: deque[ti.DevicesBlock] = deque()
        self._last_listing_read: float | None = None
        self._route_dest = bytes(16)
        self._nbr_list: list[bytes] = []
        self._nbr_index = 0

    @property
    def stack_up(self) -> bool:
        started = self._stack_requested_at
        return started is not None and self.clock.monotonic() >= started + self.stack_up_after_s

    # --- byte edge ------------------------------------------------------------------------------

    def set_output_listener(self, listener: Callable[[], None] | None) -> None:
        self._listener = listener

    def output_dropped(self, count: int) -> None:
        self.counters.output_dropped_bytes += count

    def take_output(self) -> bytes:
        out = b"".join(hdlc_encode(frame) for frame in self._out)
        self._out.clear()
        self._out_bytes = 0
        return out

    def feed(self, data: bytes) -> None:
        """HDLC-lite bytes from the host; malformed input is counted and logged, never raised."""
        for item in self._decoder.feed(data):
            if isinstance(item, HdlcError):
                self.counters.hdlc_errors += 1
                log.warning("virtual NCP: %s", item)
                continue
            try:
                frame = decode_frame(item)
            except SpinelError as exc:
                self.counters.spinel_errors += 1
                log.warning("virtual NCP: bad Spinel frame %s: %s", item.hex(), exc)
                continue
            self._handle(frame)

    def _send(self, tid: int, prop: int, value: bytes) -> None:
        frame = encode(tid, Cmd.PROP_VALUE_IS, prop, value)
        self._out.append(frame)
        self._out_bytes += len(frame)
        while self._out_bytes > OUTPUT_LIMIT and len(self._out) > 1:
            self._out_bytes -= len(self._out.popleft())
        if self._listener is not None:
            self._listener()

    def _status(self, tid: int, status: int) -> None:
        self._send(tid, Prop.LAST_STATUS, pack_uint(status))

    def push_from(self, node: bytes, frame: bytes) -> None:
        """A meter's unsolicited datagram (a DLMS push: last gasp, power restored) up to the
        host, as the stack forwards it on STREAM_NET."""
        src, dst = self.network.address(node), self.network.address(self.network.root)
        udp = ipv6.encode_udp(src, dst, ipv6.UdpDatagram(DLMS_PORT, DLMS_PORT, frame))
        out = ipv6.encode_ipv6(ipv6.Ipv6Packet(src, dst, ipv6.UDP, udp))
        self._send(0, ti.PROP_STREAM_NET, pack("dD", out, b""))

    def crash(self) -> None:
        """What TI's stack host does on a forbidden read: no answer, a reset, the stack down."""
        self.counters.crashes += 1
        self._boot()
        self._status(0, Status.RESET_CRASH)

    # --- Spinel ---------------------------------------------------------------------------------

    def _handle(self, frame: SpinelFrame) -> None:
        self.counters.requests += 1
        tid, prop = frame.tid, frame.prop
        if frame.command == Cmd.RESET:
            self._boot()
            self._status(0, Status.RESET_SOFTWARE)
            return
        if frame.command not in (Cmd.PROP_VALUE_GET, Cmd.PROP_VALUE_SET) or prop is None:
            self._status(tid, Status.INVALID_COMMAND)
            return
        if prop in TOPOLOGY_PROPS and not self._guard(prop):
            return
        try:
            if frame.command == Cmd.PROP_VALUE_GET:
                self._get(tid, prop)
            else:
                self._set(tid, prop, frame.payload)
        except SpinelError as exc:
            self.counters.spinel_errors += 1
            log.warning("virtual NCP: bad value for %s: %s", prop, exc)
            self._status(tid, Status.PARSE_ERROR)

    def _guard(self, prop: int) -> bool:
        now = self.clock.monotonic()
        if not self.stack_up:
            self.counters.reads_before_stack_up += 1
            log.error("virtual NCP: property %#x touched before the stack is up: crash", prop)
            self.crash()
            return False
        if prop == ti.PROP_CONNECTED_DEVICES:
            last = self._last_listing_read
            self._last_listing_read = now
            if last is not None and now - last < self.guard_gap_s:
                self.counters.back_to_back_reads += 1
                log.error(
                    "virtual NCP: CONNECTED_DEVICES read %.3f s after the last: crash", now - last
                )
                self.crash()
                return False
        return True

    def _get(self, tid: int, prop: int) -> None:
        if prop in self.refuse_next:
            self._status(tid, self.refuse_next.pop(prop))
            return
        value = self._value(prop)
        if value is None:
            self.counters.unknown_props += 1
            self._status(tid, Status.PROP_NOT_FOUND)
            return
        self._send(tid, prop, self.corrupt_next.pop(prop, value))

    def _value(self, prop: int) -> bytes | None:
        net = self.network
        if prop == Prop.PROTOCOL_VERSION:
            return pack("U", PROTOCOL_VERSION)
        if prop == Prop.NCP_VERSION:
            return pack("U", self.ncp_version)
        if prop == Prop.INTERFACE_TYPE:
            return pack_uint(ti.INTERFACE_TYPE_WISUN)
        if prop == Prop.HWADDR:
            return pack("E", net.root)
        if prop == ti.PROP_NET_IF_UP:
            return pack("b", self.if_up)
        if prop == ti.PROP_NET_STACK_UP:
            return pack("b", self.stack_up)
        if prop == ti.PROP_NET_ROLE:
            return pack("b", False)  # 0: border router
        if prop == ti.PROP_NUM_CONNECTED_DEVICES:
            return ti.encode_num_connected(len(net.connected()))
        if prop == ti.PROP_CONNECTED_DEVICES:
            return self._next_page()
        if prop == ti.PROP_DODAG_ROUTE_DEST:
            return self._route_dest
        if prop == ti.PROP_DODAG_ROUTE:
            return self._route()
        if prop == ti.PROP_PHY_NUM_NBRS and self.neighbour_metrics:
            # The one-hop nodes are the border router's radio neighbours; this rewinds the list.
            self._nbr_list = [n for n in net.connected() if net.parents[n] == net.root]
            self._nbr_index = 0
            return bytes((len(self._nbr_list),))
        if prop == ti.PROP_PHY_NBR_METRICS and self.neighbour_metrics:
            return self._next_neighbour()
        return None

    def _next_neighbour(self) -> bytes:
        if self._nbr_index >= len(self._nbr_list):
            return b""  # past the end: the host asked more times than PHY_NUM_NBRS said
        node = self._nbr_list[self._nbr_index]
        self._nbr_index += 1
        rsl_in, rsl_out = self.network.rsl[node]
        return ti.encode_nbr_metrics(ti.NeighbourMetrics(node, rsl_in, rsl_out))

    def _next_page(self) -> bytes:
        """Like TI's firmware: the list is taken at the first page, then served block by block."""
        if not self._listing:
            addresses = [self.network.address(n) for n in self.network.connected()]
            self._listing.extend(ti.split_into_blocks(addresses, self.block_size))
        self.counters.listing_pages += 1
        return ti.encode_devices_block(self._listing.popleft())

    def _route(self) -> bytes:
        net = self.network
        dest = self._route_dest
        node = net.node_at(dest)
        path = net.path(node) if node is not None else None
        if path is None:
            return ti.encode_dodag_route(ti.DodagRoute(0, (dest,)))
        addresses = tuple(net.address(hop) for hop in path)
        return ti.encode_dodag_route(ti.DodagRoute(len(path) - 1, addresses))

    def _set(self, tid: int, prop: int, payload: bytes) -> None:
        if prop == ti.PROP_NET_IF_UP:
            (self.if_up,) = (bool(v) for v in unpack("b", payload))
            self._send(tid, prop, pack("b", self.if_up))
        elif prop == ti.PROP_NET_STACK_UP:
            (wanted,) = unpack("b", payload)
            if not self.if_up:
                self._status(tid, Status.INVALID_STATE)
                return
            if wanted and self._stack_requested_at is None:
                self._stack_requested_at = self.clock.monotonic()
            self._send(tid, prop, pack("b", self.stack_up))
        elif prop == ti.PROP_DODAG_ROUTE_DEST:
            self._route_dest = ti.decode_route_dest(payload)
            self._send(tid, prop, self._route_dest)
        elif prop == ti.PROP_STREAM_NET:
            self._stream_net(ti.decode_stream_net(payload))
            self._status(tid, Status.OK)
        elif self._value(prop) is None:
            self.counters.unknown_props += 1
            self._status(tid, Status.PROP_NOT_FOUND)
        else:
            self._status(tid, Status.INVALID_COMMAND_FOR_PROP)

    def _stream_net(self, raw: bytes) -> None:
        """An IPv6 packet from the host: a DLMS request to one of the meters, answered at once
        (the emulated mesh delivers instantly and loses nothing)."""
        self.counters.packets_from_host += 1
        try:
            packet = ipv6.decode_ipv6(raw)
            datagram = ipv6.decode_udp(packet)
        except ipv6.PacketError as exc:
            self.counters.packets_dropped += 1
            log.warning("virtual NCP: dropped a bad packet from the host: %s", exc)
            return
        node = self.network.node_at(packet.dst)
        meter = self.network.meters.get(node) if node is not None else None
        if (
            node is None
            or meter is None
            or datagram.dst_port != DLMS_PORT
            or self.network.path(node) is None
            or not self.stack_up
        ):
            self.counters.packets_dropped += 1
            return
        self.counters.packets_to_meters += 1
        reply = meter.route(datagram.payload)
        if reply is None:
            return
        back = ipv6.UdpDatagram(datagram.dst_port, datagram.src_port, reply)
        udp = ipv6.encode_udp(packet.dst, packet.src, back)
        out = ipv6.encode_ipv6(ipv6.Ipv6Packet(packet.dst, packet.src, ipv6.UDP, udp))
        self._send(0, ti.PROP_STREAM_NET, pack("dD", out, b""))


# --- I/O edge ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hil.ncp", description="serve a virtual TI Wi-SUN NCP on a PTY"
    )
    parser.add_argument("--pty", action="store_true", required=True, help="serve on a new PTY")
    parser.add_argument("--seed", type=int, default=1, help="seed of the emulated network")
    parser.add_argument("--nodes", type=int, default=5, help="nodes (meters) behind the NCP")
    parser.add_argument("--max-hops", type=int, default=3)
    parser.add_argument("--prefix", default="fd00:7a:1::/64", help="the network's /64")
    parser.add_argument("--stack-up-after", type=float, default=0.5, help="seconds")
    parser.add_argument("--guard-gap", type=float, default=1.0, help="CONNECTED_DEVICES gap, s")
    parser.add_argument("--block-size", type=int, default=ti.TI_BLOCK_SIZE)
    parser.add_argument(
        "--no-neighbour-metrics",
        dest="neighbour_metrics",
        action="store_false",
        help="an older image: refuse PHY_NUM_NBRS / PHY_NBR_METRICS",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


async def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (or stdin EOF when spawned by a host). Takes this module's
    options, or ``hil rcp``'s namespace with ``--personality ncp`` (missing options default)."""
    clock = SystemClock()
    defaults = build_parser().parse_args(["--pty"])
    opt = {k: getattr(args, k, v) for k, v in vars(defaults).items()}
    root = getattr(args, "eui64", None) or bytes.fromhex("00124b0000000001")
    network = build_network(
        random.Random(opt["seed"]),
        clock,
        nodes=opt["nodes"],
        max_hops=opt["max_hops"],
        root=root,
        prefix=opt["prefix"],
    )
    ncp = VirtualNcp(
        network,
        clock,
        stack_up_after_s=opt["stack_up_after"],
        guard_gap_s=opt["guard_gap"],
        block_size=opt["block_size"],
        neighbour_metrics=opt["neighbour_metrics"],
    )

    def ready(path: str) -> None:
        sys.stdout.write(path + "\n")
        sys.stdout.flush()
        log.info("virtual NCP %s serving on %s", network.root.hex(), path)

    server = asyncio.create_task(serve_pty(ncp, ready, name="virtual NCP"), name="ncp-pty")
    await serve_until_stopped(server)
    log.info("virtual NCP stopped: %s", ncp.counters)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
