"""Emulated meters forming a mesh on the medium in virtual time, against a root running the
gateway's own RPL root and routing table (``hil.node.sim_root``): join, ranks, DAO transits,
forwarding both ways, fragments, a parent going dark, reproducibility."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from firmware_agent.mesh import ipv6, rpl
from hil import vtime
from hil.medium import Medium
from hil.meter_node import MeterNode
from hil.node.linkcost import LinkCostConfig, link_etx, link_rsl
from hil.node.sim_root import Received, SimRoot

ROOT = bytes.fromhex("00124b0000a00001")
PREFIX = bytes.fromhex("fd00007a00010000")
#: Four meters 160 m apart: each hears its neighbours at about -95 dBm, the next but one under
#: the -103 dBm cut-off, so the only tree is the line itself.
LINE = [(160.0 * i, 0.0) for i in range(1, 5)]
#: A and B both one hop from the root, C hears A and B but not the root.
DIAMOND = [(150.0, 60.0), (150.0, -60.0), (300.0, 0.0)]


def eui(i: int) -> bytes:
    return bytes.fromhex("020000000000") + i.to_bytes(2, "big")


def g(mac: bytes) -> bytes:
    return ipv6.address_in_prefix(PREFIX, mac)


class Mesh:
    """A root and meters on a loss-free-geometry medium (no shadowing), seeded."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        positions: Sequence[tuple[float, float]],
        seed: int = 1,
    ) -> None:
        self.loop = loop
        self.medium = Medium(
            random.Random(seed), scheduler=loop, path_loss_exponent=3.5, shadowing_sigma_db=0.0
        )
        self.root = SimRoot(ROOT, self.medium, loop, random.Random(seed + 1))
        self.medium.attach(self.root, (0.0, 0.0))
        self.requests: list[tuple[int, bytes]] = []
        self.nodes: list[MeterNode] = []
        for i, position in enumerate(positions, 1):
            node = MeterNode(
                eui(i), self.medium, self._meter(i), loop, rng=random.Random(seed * 1000 + i)
            )
            self.medium.attach(node, position)
            self.nodes.append(node)
        self.root.start()

    def _meter(self, i: int) -> Callable[[bytes], bytes | None]:
        def answer(payload: bytes) -> bytes:
            self.requests.append((i, payload))
            return f"meter {i}: ".encode() + payload

        return answer

    def now(self) -> float:
        return self.loop.time()

    def route(self, node: MeterNode) -> tuple[bytes, ...] | None:
        return self.root.routes.source_route(node.eui64, self.now())

    async def settle(self, limit_s: float = 900.0) -> None:
        """Until every node's DAO is acknowledged and the root has a route to each."""
        end = self.now() + limit_s
        while self.now() < end:
            live = [n for n in self.nodes if n.powered]
            if all(n.rpl.dao_acked and self.route(n) is not None for n in live):
                return
            await asyncio.sleep(5.0)
        states = [(n.eui64.hex(), n.rpl.parents, n.rpl.dao_acked) for n in self.nodes]
        raise AssertionError(f"mesh did not settle in {limit_s} s: {states}")

    async def received(self, count: int, limit_s: float = 60.0) -> list[Received]:
        end = self.now() + limit_s
        while len(self.root.received) < count and self.now() < end:
            await asyncio.sleep(0.1)
        return self.root.received


def sim(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    vtime.run(main())


def test_a_line_of_four_forms_a_four_hop_tree_with_mrhof_ranks() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), LINE)
        await mesh.settle()
        n = mesh.nodes
        assert [node.rpl.parents for node in n] == [
            [ROOT],
            [n[0].eui64],
            [n[1].eui64],
            [n[2].eui64],
        ]
        assert mesh.route(n[3]) == tuple(node.eui64 for node in n)
        ranks = [256] + [node.rpl.rank for node in n]
        assert all(ranks[h] // 256 > ranks[h - 1] // 256 for h in range(1, 5))  # DAGRank grows
        for node in n:
            # rank = the parent's rank (as its last DIO said) + MinHopRankIncrease × ETX / 128,
            # ETX from the link's RSL (about -95 dBm here: 1.3-1.4) or more if frames were lost.
            parent = node.rpl.parents[0]
            advertised = node.rpl.neighbours[parent].rank
            link = node.mac.neighbour(parent)
            assert link is not None and -97 < link_rsl(link) < -93
            record = node.rpl.neighbours[parent].link
            etx = link_etx(link_rsl(link), record, LinkCostConfig(), mesh.now())
            assert etx is not None
            # (computed at the parent's last DIO, from the RSL then: the EWMA starts at one
            # frame's level, ±0.5 dB of jitter, and has settled since; 1 dB is 26 of ETX)
            assert abs(node.rpl.rank - advertised - 2 * etx) <= 52, (ranks, etx)
            # A parent announces small moves at Trickle's pace, bigger ones at once.
            true_rank = 256 if parent == ROOT else next(x.rpl.rank for x in n if x.eui64 == parent)
            assert abs(advertised - true_rank) <= 192

    sim(main)


def test_dao_transits_list_the_parents_in_preference_order() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), DIAMOND)
        await mesh.settle()
        a, b, c = mesh.nodes
        assert a.rpl.parents == [ROOT] and b.rpl.parents == [ROOT]
        # a and b are as good (only the per-frame jitter of their RSL tells them apart): both
        # are c's parents, in c's order of preference.
        assert sorted(c.rpl.parents) == [a.eui64, b.eui64]
        preferred = next(n for n in (a, b) if n.eui64 == c.rpl.parents[0])
        cost = {p: c.rpl.neighbours[p].rank for p in c.rpl.parents}
        assert c.rpl.rank > max(cost.values())
        entry = mesh.root.routes.entry(c.eui64, mesh.now())
        assert entry is not None
        assert [t.parent for t in entry.transits] == c.rpl.parents
        assert [t.preference for t in entry.transits] == [0, 1]
        assert entry.paths == 2 and entry.path_sequence == 240
        assert entry.transits[0].lifetime_left_s is not None
        assert 7000 < entry.transits[0].lifetime_left_s <= 7200  # a 2 h path lifetime
        assert mesh.route(c) == (preferred.eui64, c.eui64)

    sim(main)


def test_udp_from_the_far_node_reaches_the_root_through_three_forwards() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), LINE)
        await mesh.settle()
        far = mesh.nodes[3]
        before = [node.stats.forwards_up for node in mesh.nodes]
        assert far.send_udp(mesh.root.address, 4059, 4059, b"alarm: cover opened")
        got = await mesh.received(1)
        assert [r.datagram.payload for r in got] == [b"alarm: cover opened"]
        assert got[0].src == g(far.eui64) and got[0].hop_limit == 64 - 3
        after = [node.stats.forwards_up for node in mesh.nodes]
        assert [y - x for x, y in zip(before, after, strict=True)] == [1, 1, 1, 0]

    sim(main)


def test_a_source_routed_request_reaches_the_far_node_and_its_reply_comes_back() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), LINE)
        await mesh.settle()
        far = mesh.nodes[3]
        down = [node.stats.forwards_down for node in mesh.nodes]
        route = mesh.root.send_udp(far.eui64, 40000, 4059, b"GET 1.0.1.8.0.255")
        assert route == tuple(node.eui64 for node in mesh.nodes)
        got = await mesh.received(1)
        assert mesh.requests == [(4, b"GET 1.0.1.8.0.255")]
        assert [r.datagram for r in got] == [
            ipv6.UdpDatagram(4059, 40000, b"meter 4: GET 1.0.1.8.0.255")
        ]
        assert got[0].src == g(far.eui64)
        assert [node.stats.forwards_down - d for node, d in zip(mesh.nodes, down, strict=True)] == [
            1,
            1,
            1,
            0,
        ]
        assert far.stats.requests == 1 and far.stats.replies == 1

    sim(main)


def test_a_600_byte_datagram_is_fragmented_at_every_hop_both_ways() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), LINE)
        await mesh.settle()
        far = mesh.nodes[3]
        big = bytes(range(256)) * 2 + bytes(88)  # 600 bytes
        frag_before = [node.adaptation.stats.fragmented_tx for node in mesh.nodes]
        mesh.root.send_udp(far.eui64, 4059, 4059, big)
        got = await mesh.received(1)
        assert mesh.requests == [(4, big)]
        assert got[0].datagram.payload == b"meter 4: " + big
        # Every hop reassembled and fragmented again (down, then the reply up).
        frag_after = [node.adaptation.stats.fragmented_tx for node in mesh.nodes]
        assert [y - x for x, y in zip(frag_before, frag_after, strict=True)] == [2, 2, 2, 1]
        assert all(node.adaptation.reassembly_stats.datagrams >= 1 for node in mesh.nodes)

    sim(main)


def test_a_parent_going_dark_moves_its_child_to_the_alternate_with_a_new_dao() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), DIAMOND)
        await mesh.settle()
        a, b, c = mesh.nodes
        if c.rpl.parents[0] != a.eui64:
            a, b = b, a  # a: c's preferred parent, b: its alternate
        assert c.rpl.parents == [a.eui64, b.eui64]
        a.set_power(False)
        for i in range(3):  # c's readings still get through: b takes them after a fails
            assert c.send_udp(mesh.root.address, 4059, 4059, b"reading %d" % i)
            await asyncio.sleep(2.0)
        got = await mesh.received(3)
        assert sorted(r.datagram.payload for r in got) == [b"reading 0", b"reading 1", b"reading 2"]
        assert c.stats.reroutes >= 3
        assert c.rpl.parents == [b.eui64] and c.rpl.stats.parent_drops == 1
        assert c.rpl.changes[-1].old == a.eui64 and c.rpl.changes[-1].new == b.eui64
        await mesh.settle()
        entry = mesh.root.routes.entry(c.eui64, mesh.now())
        assert entry is not None and [t.parent for t in entry.transits] == [b.eui64]
        assert entry.path_sequence == 241  # the parent set changed
        assert mesh.route(c) == (b.eui64, c.eui64)
        # And downward traffic follows.
        mesh.root.send_udp(c.eui64, 4059, 4059, b"GET")
        replies = await mesh.received(4)
        assert replies[-1].datagram.payload == b"meter 3: GET"
        assert mesh.requests[-1] == (3, b"GET")

    sim(main)


def test_a_meter_powered_off_and_on_rejoins_from_scratch() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), LINE[:2])
        await mesh.settle()
        first = mesh.nodes[0]
        first.set_power(False)
        assert not mesh.medium.is_powered(first) and not first.joined
        assert first.on_air_frame(b"\x41\x88\x00", -60, 255, 0) is None
        await asyncio.sleep(600.0)
        assert not first.joined and first.send_udp(mesh.root.address, 1, 2, b"x") is False
        first.set_power(True)
        assert first.rpl.stats.joins == 1 and first.stats.power_cycles == 1
        await mesh.settle()
        assert first.rpl.stats.joins == 2 and first.rpl.dao_acked
        assert first.rpl.stats.daos_acked >= 2  # the counters outlive the outage

    sim(main)


def test_a_switch_at_the_medium_is_noticed_at_the_next_timer() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), LINE[:1])
        await mesh.settle()
        node = mesh.nodes[0]
        mesh.medium.power(node, False)  # as a scenario runner may do it
        await asyncio.sleep(node.rpl.deadline() - mesh.now() + 1.0)
        assert not node.powered and not node.joined
        mesh.medium.power(node, True)
        await asyncio.sleep(10.0)
        assert node.powered and node.stats.power_cycles == 1
        await mesh.settle()
        assert node.joined

    sim(main)


def test_same_seed_same_run() -> None:
    def trace(seed: int) -> tuple[str, list[list[bytes]]]:
        async def main() -> tuple[str, list[list[bytes]]]:
            mesh = Mesh(asyncio.get_running_loop(), LINE, seed=seed)
            digest = hashlib.sha256()

            def sniff(t: float, sender: object, psdu: bytes, channel: int) -> None:
                digest.update(f"{t:.9f}".encode() + psdu)

            mesh.medium.on_air(sniff)
            await mesh.settle()
            mesh.root.send_udp(mesh.nodes[3].eui64, 4059, 4059, b"GET")
            await mesh.received(1)
            return digest.hexdigest(), [n.rpl.parents for n in mesh.nodes]

        return vtime.run(main())

    first, again, other = trace(5), trace(5), trace(6)
    assert first == again
    assert first[0] != other[0]


def test_the_root_hears_dios_from_link_local_to_all_rpl_nodes() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), LINE[:2])
        heard: list[tuple[bytes, bytes, int]] = []

        def sniff(t: float, sender: object, psdu: bytes, channel: int) -> None:
            from firmware_agent.mesh import frames
            from firmware_agent.mesh.adaptation import LowpanAdaptation, parse_packet

            frame = frames.decode(psdu)
            if frame.dst != b"\xff\xff" or frame.src != mesh.nodes[0].eui64:
                return
            packet = LowpanAdaptation(200).decode(frame.payload, frame.src, frame.dst, t)
            assert packet is not None
            parsed = parse_packet(packet)
            if isinstance(parsed.rpl, rpl.Dio):
                heard.append((packet.src, packet.dst, parsed.rpl.rank))

        mesh.medium.on_air(sniff)
        await mesh.settle()
        assert heard and {(s, d) for s, d, _ in heard} == {
            (ipv6.link_local(mesh.nodes[0].eui64), rpl.ALL_RPL_NODES)
        }
        # (a move smaller than the switch threshold goes out at Trickle's pace)
        assert abs(heard[-1][2] - mesh.nodes[0].rpl.rank) <= 192

    sim(main)
