"""The node's RPL state machine (sans-IO): join, parents and ranks, DAOs, DIOs, repair."""

from __future__ import annotations

import math
import random

import pytest

from firmware_agent.mesh import ipv6, rpl
from firmware_agent.mesh.neighbours import NeighbourTable
from hil.node.rpl_node import INFINITE_RANK, RplConfig, RplNode, RplSend, Via, path_control

PREFIX = bytes.fromhex("fd00007a00010000")
ROOT = bytes.fromhex("00124b0000a00001")
ME = bytes.fromhex("0200000000000009")
A = bytes.fromhex("020000000000000a")
B = bytes.fromhex("020000000000000b")
C = bytes.fromhex("020000000000000c")
DODAG_ID = ipv6.address_in_prefix(PREFIX, ROOT)


def g(mac: bytes) -> bytes:
    return ipv6.address_in_prefix(PREFIX, mac)


def dio(rank: int, *, version: int = 240, dtsn: int = 240, pcs: int = 7, **kw: object) -> rpl.Dio:
    config = rpl.DodagConfig(
        path_control_size=pcs,
        dio_interval_min=10,
        dio_interval_doublings=8,
        dio_redundancy=10,
        default_lifetime=120,
        lifetime_unit=60,
    )
    return rpl.Dio(
        instance_id=1,
        version=version,
        rank=rank,
        dodag_id=DODAG_ID,
        dtsn=dtsn,
        config=config,
        prefixes=(rpl.PrefixInfo(PREFIX + bytes(8)),),
        **kw,  # type: ignore[arg-type]
    )


class World:
    """A node and what its MAC knows of its neighbours (a real NeighbourTable)."""

    def __init__(self, **config: object) -> None:
        self.links = NeighbourTable()
        self.node = RplNode(ME, RplConfig(**config), random.Random(1), self.links.get)  # type: ignore[arg-type]

    def dio(
        self, mac: bytes, rank: int, now: float, rsl: float = -80.0, **kw: object
    ) -> list[RplSend]:
        self.links.heard(mac, round(rsl), 200, 0, now)
        return self.node.on_dio(mac, dio(rank, **kw), now)

    def run_until(self, t: float) -> list[RplSend]:
        """Poll at every deadline up to ``t``; everything the node sent."""
        out: list[RplSend] = []
        while self.node.deadline() <= t:
            out += self.node.poll(self.node.deadline())
        return out

    def daos(self, t: float) -> list[rpl.Dao]:
        return [s.message for s in self.run_until(t) if isinstance(s.message, rpl.Dao)]

    def next_dao(self) -> RplSend:
        """Poll until the node sends a DAO; that send."""
        for _ in range(1000):
            for sent in self.node.poll(self.node.deadline()):
                if isinstance(sent.message, rpl.Dao):
                    return sent
        raise AssertionError("no DAO")


def test_power_up_solicits_dios_after_a_random_delay_then_more_slowly() -> None:
    w = World()
    w.node.start(0.0)
    first = w.node.deadline()
    assert 1.0 <= first <= 30.0
    sent = w.node.poll(first)
    assert sent == [RplSend(w.node.link_local, rpl.ALL_RPL_NODES, rpl.Dis(), Via.BROADCAST)]
    assert w.node.deadline() == pytest.approx(first + 30)
    w.node.poll(first + 30)
    assert w.node.deadline() == pytest.approx(first + 90)  # the interval doubles
    assert w.node.stats.dis_sent == 2 and not w.node.joined


def test_first_dio_joins_the_dodag_with_an_address_from_its_prefix() -> None:
    w = World()
    w.node.start(0.0)
    assert w.dio(ROOT, 256, now=0.5) == []
    node = w.node
    assert node.joined and node.parents == [ROOT] and node.preferred_parent == ROOT
    assert node.rank == 512  # root rank 256 + a solid link (ETX 1.0 → 256)
    assert node.address == g(ME)
    assert node.stats.joins == 1
    # Trickle replaces the DIS: a DIO within Imin (2^10 ms), no DIS any more.
    sent = w.run_until(2.0)
    assert [type(s.message) for s in sent] == [rpl.Dio]
    announced = sent[0].message
    assert isinstance(announced, rpl.Dio)
    assert announced.rank == 512 and announced.dodag_id == DODAG_ID
    assert announced.prefixes == dio(256).prefixes and announced.config == dio(256).config
    assert sent[0].src == node.link_local and sent[0].next_hop is Via.BROADCAST


def test_a_barely_heard_node_is_no_parent() -> None:
    w = World()
    w.dio(ROOT, 256, now=1.0, rsl=-104)  # below the -103 dBm cut-off
    assert not w.node.joined
    w.dio(ROOT, 256, now=2.0, rsl=-104)
    assert not w.node.joined
    w.links.heard(ROOT, -95, 200, 0, 3.0)  # the EWMA climbs over the cut-off
    w.links.heard(ROOT, -80, 200, 0, 3.0)
    w.dio(ROOT, 256, now=3.0, rsl=-80)
    assert w.node.joined


def test_parents_in_cost_order_and_the_dao_lists_them_with_path_control() -> None:
    w = World()
    w.dio(A, 512, now=1.0, rsl=-80)  # 512 + 256 = 768
    w.dio(ROOT, 256, now=1.1, rsl=-99)  # ETX 2.2: 256 + 564 = 820
    w.dio(B, 512, now=1.2, rsl=-95)  # ETX 1.4: 512 + 358 = 870
    node = w.node
    assert node.parents == [A, ROOT, B] and node.rank == 768
    dao = w.next_dao().message
    assert isinstance(dao, rpl.Dao)
    assert dao.expect_ack and dao.instance_id == 1 and dao.sequence == 240
    assert dao.targets == (rpl.Target(g(ME)),)
    transits = dao.transits
    assert [t.parent for t in transits] == [g(A), DODAG_ID, g(B)]
    assert [t.path_control for t in transits] == [0xC0, 0x30, 0x0C]
    assert {t.path_sequence for t in transits} == {240}
    assert {t.path_lifetime for t in transits} == {120}  # 7200 s in 60 s units


def test_dao_goes_upward_from_the_global_address_to_the_dodag_id() -> None:
    w = World()
    w.dio(ROOT, 256, now=1.0)
    sent = w.next_dao()
    assert (sent.src, sent.dst, sent.next_hop) == (g(ME), DODAG_ID, Via.UP)


def test_path_control_bits_follow_the_dodag_path_control_size() -> None:
    assert [path_control(i, 7) for i in range(4)] == [0xC0, 0x30, 0x0C, 0x03]
    assert [path_control(i, 0) for i in range(3)] == [0x80, 0, 0]  # one bit: the preferred
    assert [path_control(i, 3) for i in range(3)] == [0xC0, 0x30, 0]
    w = World()
    w.dio(A, 512, now=1.0, pcs=0)  # the root's configuration, as every node passes it on
    w.dio(ROOT, 256, now=1.1, rsl=-99, pcs=0)
    dao = w.next_dao().message
    assert isinstance(dao, rpl.Dao) and [t.path_control for t in dao.transits] == [0x80, 0]


def test_alternates_rank_below_us_and_children_are_never_parents() -> None:
    w = World()
    w.dio(A, 512, now=1.0)  # our rank 768, DAGRank 3
    w.dio(B, 800, now=2.0)  # DAGRank 3: a sibling, not a parent
    w.dio(C, 1024, now=3.0)  # DAGRank 4: below us, maybe our child
    assert w.node.parents == [A]
    w.dio(B, 700, now=4.0)  # DAGRank 2 now
    assert w.node.parents == [A, B]


def test_hysteresis_keeps_the_preferred_parent_unless_another_is_much_cheaper() -> None:
    w = World()
    w.dio(A, 512, now=1.0, rsl=-99)  # ETX 2.2: 512 + 564 = 1076
    w.dio(B, 600, now=2.0)  # 856: cheaper by 220 < 384 (ETX 1.5, RFC 6719's threshold)
    assert w.node.parents == [A, B] and w.node.rank == 1076
    w.dio(B, 400, now=3.0)  # 656: cheaper by 420
    assert w.node.parents[0] == B and w.node.rank == 656
    assert w.node.stats.parent_changes == 1
    change = w.node.changes[-1]
    assert (change.old, change.new, change.rank) == (A, B, 656)
    for t in range(4, 40):  # the same DIOs again and again: nothing moves
        w.dio(A, 512, now=float(t), rsl=-99)
        w.dio(B, 400, now=t + 0.5)
    assert w.node.stats.parent_changes == 1 and w.node.parents[0] == B


def test_parent_changes_right_after_joining_ride_on_the_spread_first_dao() -> None:
    """A node changes parents in its first seconds as better DIOs arrive; that must not pull
    its first DAO forward from the join spread (a mesh powering up would send every DAO at
    once), and the DAO that goes carries the parents of that moment."""
    for seed in range(20):
        w = World(dao_join_spread_s=120.0, dao_delay_s=4.0)
        w.node.rng.seed(seed)
        w.dio(A, 768, now=1.0)  # joins through A ...
        scheduled = w.node.dao_due
        assert scheduled is not None and 1.0 + 2.0 <= scheduled <= 1.0 + 120.0
        w.dio(B, 256, now=1.5)  # ... and moves to B, much cheaper, half a second later
        assert w.node.parents[0] == B and w.node.stats.parent_changes == 1
        assert w.node.dao_due == scheduled  # not pulled to within DelayDAO
        sent = w.next_dao()
        assert isinstance(sent.message, rpl.Dao)
        assert sent.message.transits[0].parent == g(B)
        assert w.node.stats.daos_sent == 1


def test_no_dao_ack_sends_it_again_with_backoff_an_ack_schedules_the_refresh() -> None:
    w = World()
    w.dio(ROOT, 256, now=1.0)
    first = w.next_dao().message
    assert isinstance(first, rpl.Dao) and first.sequence == 240
    sent_at = w.node._dao_sent_at
    assert w.node.deadline() <= sent_at + 15.0 + 1e-9
    retries = w.daos(sent_at + 15.0 + 30.0)  # after 15 s, then 30 s more
    assert [d.sequence for d in retries] == [241, 242]
    assert w.node.stats.dao_retries == 2 and not w.node.dao_acked
    now = w.node._dao_sent_at + 1
    w.node.on_dao_ack(rpl.DaoAck(1, 241), now)  # an answer to an older DAO
    assert not w.node.dao_acked
    w.node.on_dao_ack(rpl.DaoAck(1, 242, status=130), now)  # rejected
    assert w.node.stats.dao_acks_rejected == 1 and not w.node.dao_acked
    w.node.on_dao_ack(rpl.DaoAck(1, 242), now)
    assert w.node.dao_acked and w.node.stats.daos_acked == 1
    assert now + 0.5 * 7200 <= w.node.deadline() or w.node.trickle is not None
    refresh = w.node._dao_at
    assert refresh is not None and now + 0.5 * 7200 <= refresh <= now + 0.6 * 7200
    again = w.daos(refresh)
    assert [d.sequence for d in again] == [243]
    assert again[0].transits[0].path_sequence == 240  # same parents: same path sequence


def test_a_parent_that_stops_acking_is_dropped_for_the_next_one() -> None:
    w = World()
    w.dio(A, 512, now=1.0)
    w.dio(ROOT, 256, now=1.1, rsl=-99)
    first = w.next_dao().message
    assert isinstance(first, rpl.Dao)
    w.node.on_dao_ack(rpl.DaoAck(1, first.sequence), w.node._dao_sent_at + 1)
    node = w.node
    assert node.parents == [A, ROOT]
    for i in range(2):
        node.tx_result(A, 4, False, 300.0 + i)
    assert node.parents == [A, ROOT]  # two lost frames: not yet
    node.tx_result(A, 4, False, 302.0)
    assert node.parents == [ROOT] and node.stats.parent_drops == 1
    assert node.stats.parent_changes == 1 and node.rank == 820
    new = w.next_dao()
    assert isinstance(new.message, rpl.Dao) and new.next_hop is Via.UP
    assert [t.parent for t in new.message.transits] == [DODAG_ID]
    assert new.message.transits[0].path_sequence == first.transits[0].path_sequence + 1
    # Only a fresh DIO (or being heard again after the hold-down) brings it back.
    w.node.on_dio(A, dio(512), 401.0)
    assert A in node.parents


def test_a_good_run_of_acks_resets_the_count_of_lost_frames() -> None:
    w = World()
    w.dio(A, 512, now=1.0)
    w.dio(ROOT, 256, now=1.1, rsl=-99)
    for i in range(10):
        w.node.tx_result(A, 4, False, 10.0 + 3 * i)
        w.node.tx_result(A, 4, False, 11.0 + 3 * i)
        w.node.tx_result(A, 1, True, 12.0 + 3 * i)
    assert w.node.parents[0] == A and w.node.stats.parent_drops == 0


def test_the_last_parent_goes_only_after_its_losses_last_then_the_node_detaches() -> None:
    w = World()
    w.dio(B, 256, now=0.5, rsl=-80)  # our rank 512
    w.dio(A, 300, now=1.0, rsl=-104)  # ranked below us, but heard too weakly to be a parent
    assert w.node.parents == [B]
    for t in (10.0, 20.0, 30.0, 40.0):
        assert w.node.tx_result(B, 4, False, t) == []
    assert w.node.parents == [B]  # congestion loses bursts: wait
    out = w.node.tx_result(B, 4, False, 71.0)  # lost for over a minute: dead
    assert not w.node.joined and w.node.rank == INFINITE_RANK and w.node.stats.detaches == 1
    poison = [s for s in out if isinstance(s.message, rpl.Dio)]
    assert len(poison) == 1 and poison[0].next_hop is Via.BROADCAST
    assert isinstance(poison[0].message, rpl.Dio) and poison[0].message.rank == INFINITE_RANK
    # It asks its best known upstream neighbour directly (A ranked below it), not everyone.
    asks = [s for s in out if isinstance(s.message, rpl.Dis)]
    assert [(s.dst, s.next_hop) for s in asks] == [(ipv6.link_local(A), A)]
    # Only a fresh DIO counts: A's answer, over a link that got better, brings it back.
    assert w.dio(A, 300, now=72.0, rsl=-80) == []
    assert w.node.parents == [A]


def test_a_poisoned_parent_is_left_for_the_alternate() -> None:
    w = World()
    w.dio(A, 512, now=1.0)
    w.dio(ROOT, 256, now=1.1, rsl=-99)
    w.dio(A, INFINITE_RANK, now=5.0)
    assert w.node.parents == [ROOT] and w.node.rank == 820


def test_following_a_parent_down_stops_at_max_rank_increase() -> None:
    w = World()
    w.dio(A, 512, now=1.0)  # 768: the lowest rank we had
    w.dio(A, 1500, now=2.0)  # we move down with it
    assert w.node.parents == [A] and w.node.rank == 1756
    w.dio(A, 2400, now=3.0)  # 2656 > 768 + 7 × 256: that is a loop counting up
    assert not w.node.joined and w.node.stats.detaches == 1


def test_a_new_dtsn_from_the_preferred_parent_asks_for_a_dao_and_is_passed_on() -> None:
    w = World()
    w.dio(ROOT, 256, now=1.0)
    w.next_dao()
    w.node.on_dao_ack(rpl.DaoAck(1, 240), 201.0)
    own = w.node.dtsn
    w.dio(ROOT, 256, now=300.0, dtsn=241)
    assert w.node.dtsn == own + 1
    assert w.node.deadline() <= 304.0
    assert [d.sequence for d in w.daos(305.0)] == [241]


def test_dis_unicast_gets_a_dio_multicast_resets_trickle() -> None:
    w = World()
    assert w.node.on_dis(g(A), A, False, 0.0) == []  # not joined: nothing to say
    w.dio(ROOT, 256, now=1.0)
    w.run_until(3000.0)  # Trickle's interval has grown
    assert w.node.trickle is not None and w.node.trickle.interval > 100
    out = w.node.on_dis(ipv6.link_local(A), A, False, 3000.0)
    assert len(out) == 1 and out[0].next_hop == A and out[0].dst == ipv6.link_local(A)
    assert isinstance(out[0].message, rpl.Dio) and out[0].message.rank == w.node.rank
    assert w.node.on_dis(ipv6.link_local(A), A, True, 3000.0) == []
    assert w.node.trickle.interval == pytest.approx(1.024)
    assert w.node.deadline() <= 3001.024


def test_a_newer_version_is_joined_an_older_or_foreign_dio_ignored() -> None:
    w = World()
    w.dio(ROOT, 256, now=1.0)
    w.dio(A, 512, now=2.0, version=239)  # still in the old version
    assert w.node.parents == [ROOT]
    w.dio(ROOT, 256, now=3.0, version=241)  # global repair
    assert w.node.dodag is not None and w.node.dodag.version == 241
    assert w.node.parents == [ROOT] and w.node.stats.joins == 2
    w.node.on_dio(B, dio(256, mop=rpl.MOP_STORING), 4.0)
    w.node.on_dio(C, rpl.Dio(1, 241, 256, g(C)), 4.0)  # another DODAG
    assert w.node.stats.foreign == 2 and B not in w.node.neighbours


def test_a_loop_drops_the_parent_and_a_detached_node_tells_each_sender_once() -> None:
    w = World()
    w.dio(A, 512, now=1.0)
    w.dio(ROOT, 256, now=1.1, rsl=-99)
    w.node.loop_detected(A, 10.0)
    assert w.node.parents == [ROOT] and w.node.stats.loops == 1
    assert w.node.upward_without_route(B, 11.0) == []  # we have a route
    w.dio(ROOT, INFINITE_RANK, now=20.0)
    assert not w.node.joined
    first = w.node.upward_without_route(B, 21.0)
    assert len(first) == 1 and first[0].next_hop == B
    assert isinstance(first[0].message, rpl.Dio) and first[0].message.rank == INFINITE_RANK
    assert w.node.upward_without_route(B, 25.0) == []  # at most every 10 s per sender
    assert len(w.node.upward_without_route(C, 25.0)) == 1
    assert len(w.node.upward_without_route(B, 31.5)) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_parents"):
        RplConfig(max_parents=5)
    with pytest.raises(ValueError, match="bad RPL node settings"):
        RplConfig(parent_fail_limit=0)
    assert World().node.deadline() == math.inf  # not started: nothing to do
