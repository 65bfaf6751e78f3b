"""The RPL root (sans-IO): DIOs on Trickle, DIS answered, DAOs into the routing table, DAO-ACKs."""

from __future__ import annotations

import random

from firmware_agent.mesh import ipv6, rpl
from firmware_agent.mesh.root import DAO_ACK_REJECTED, RootConfig, RplRoot
from firmware_agent.mesh.routes import RoutingTable
from firmware_agent.mesh.trickle import TrickleConfig

PREFIX = bytes.fromhex("fd00007a00010000")
GW = bytes.fromhex("00124b0000000001")
A = bytes.fromhex("0200000000000001")
B = bytes.fromhex("0200000000000002")


def make_root() -> RplRoot:
    config = RootConfig(prefix=PREFIX, trickle=TrickleConfig(imin_s=1.0, doublings=4, k=3))
    return RplRoot(GW, config, RoutingTable(GW), random.Random(1))


def addr(eui: bytes) -> bytes:
    return ipv6.address_in_prefix(PREFIX, eui)


def dao(node: bytes, seq: int, parents: list[bytes], *, ack: bool = True) -> rpl.Dao:
    options: list[rpl.Target | rpl.Transit] = [rpl.Target(addr(node))]
    options += [rpl.Transit(path_sequence=1, path_lifetime=120, parent=addr(p)) for p in parents]
    return rpl.Dao(instance_id=1, sequence=seq, options=tuple(options), expect_ack=ack)


def test_dio_announces_a_non_storing_dodag_with_the_prefix() -> None:
    root = make_root()
    root.start(0.0)
    out = root.poll(root.deadline())
    assert len(out) == 1 and out[0].dst == rpl.ALL_RPL_NODES
    dio = out[0].message
    assert isinstance(dio, rpl.Dio)
    assert dio.mop == rpl.MOP_NON_STORING and dio.grounded
    assert dio.rank == rpl.root_rank() == 256
    assert dio.dodag_id == addr(GW) == root.address
    assert dio.prefixes[0].prefix[:8] == PREFIX and dio.prefixes[0].autonomous
    assert dio.config is not None
    assert dio.config.default_lifetime * dio.config.lifetime_unit == 7200


def test_dio_round_trips_through_the_codec() -> None:
    root = make_root()
    src = ipv6.link_local(GW)
    data = rpl.encode_rpl(src, rpl.ALL_RPL_NODES, root.dio())
    assert rpl.decode_rpl(src, rpl.ALL_RPL_NODES, data) == root.dio()


def test_unicast_dis_gets_a_unicast_dio_and_multicast_dis_resets_trickle() -> None:
    root = make_root()
    root.start(0.0)
    now = 0.0
    for _ in range(6):  # let the interval grow
        now = root.deadline()
        root.poll(now)
    assert root.trickle.interval > 1.0
    out = root.on_message(addr(A), root.address, rpl.Dis(), now)
    assert [(o.dst, type(o.message)) for o in out] == [(addr(A), rpl.Dio)]
    assert root.on_message(ipv6.link_local(A), rpl.ALL_RPL_NODES, rpl.Dis(), now) == []
    assert root.trickle.interval == 1.0


def test_dao_fills_the_routing_table_and_is_acked() -> None:
    root = make_root()
    out = root.on_message(addr(A), root.address, dao(A, 240, [GW]), 10.0)
    (ack,) = out
    assert ack.dst == addr(A)
    assert isinstance(ack.message, rpl.DaoAck)
    assert ack.message.sequence == 240 and ack.message.status == 0
    root.on_message(addr(B), root.address, dao(B, 240, [A, GW]), 11.0)
    assert root.routes.source_route(B, 12.0) in ((B,), (A, B))
    paths = root.routes.paths(B, 12.0)
    assert {p.hops for p in paths} == {(GW, B), (GW, A, B)}
    entry = root.routes.entry(B, 12.0)
    assert entry is not None and [t.parent for t in entry.transits] == [A, GW]


def test_dao_without_k_flag_gets_no_ack() -> None:
    root = make_root()
    assert root.on_message(addr(A), root.address, dao(A, 240, [GW], ack=False), 1.0) == []
    assert root.routes.source_route(A, 2.0) == (A,)


def test_foreign_targets_are_rejected_in_the_ack() -> None:
    root = make_root()
    stranger = bytes.fromhex("20010db8000000000000000000000001")
    bad = rpl.Dao(
        instance_id=1,
        sequence=241,
        options=(rpl.Target(stranger), rpl.Transit(1, 120, parent=addr(GW))),
    )
    (ack,) = root.on_message(addr(A), root.address, bad, 1.0)
    assert isinstance(ack.message, rpl.DaoAck) and ack.message.status == DAO_ACK_REJECTED
    assert root.routes.nodes() == []
    assert root.stats.daos_rejected == 1


def test_dao_for_another_instance_is_ignored() -> None:
    root = make_root()
    other = rpl.Dao(instance_id=7, sequence=1, options=dao(A, 1, [GW]).options)
    assert root.on_message(addr(A), root.address, other, 1.0) == []
    assert root.stats.foreign_messages == 1 and root.routes.nodes() == []


def test_request_daos_raises_the_dtsn() -> None:
    root = make_root()
    before = root.dio().dtsn
    root.start(0.0)
    root.request_daos(5.0)
    assert root.dio().dtsn == (before + 1) & 0xFF
