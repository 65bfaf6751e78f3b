"""wsbrd's property values → records, without a bus (the shapes of wisun-br-linux's DBUS.md)."""

from __future__ import annotations

from dbus_fast import Variant

from firmware_agent.mesh import ipv6
from firmware_agent.mesh.wsbrd_model import (
    GRAPH_SIGNATURE,
    NODES_SIGNATURE,
    build_graph,
    parse_graph,
    parse_nodes,
)

ROOT = bytes.fromhex("0200000000000001")
A = bytes.fromhex("02000000000000a1")
PREFIX = bytes.fromhex("fd00007a00010000")


def test_the_border_router_is_found_by_its_parentless_entry_whatever_its_iid() -> None:
    br_address = PREFIX + bytes.fromhex("00000000000000fe")  # a configured, non-EUI-64 IID
    a_address = ipv6.address_in_prefix(PREFIX, A)
    entries, problems = parse_graph(
        Variant(GRAPH_SIGNATURE, [[br_address, False, []], [a_address, True, [br_address]]])
    )
    assert problems == [] and entries is not None
    assert entries[1].is_lfn
    graph = build_graph(entries, ROOT)
    assert graph.parents == {A: [ROOT]}
    assert graph.addresses == {ROOT: br_address, A: a_address}


def test_a_property_of_the_wrong_signature_is_ignored_whole() -> None:
    nodes, problems = parse_nodes(Variant("as", ["x"]))
    assert nodes is None and problems == [
        f"Nodes has signature 'as', expected {NODES_SIGNATURE!r}; ignored"
    ]
    entries, problems = parse_graph(Variant("ay", b"x"))
    assert entries is None and "RoutingGraph has signature 'ay'" in problems[0]


def test_rssi_is_unsigned_dbm_plus_174_and_absent_figures_are_none() -> None:
    nodes, problems = parse_nodes(
        Variant(
            NODES_SIGNATURE,
            [
                [A, {"is_neighbor": Variant("b", True), "rssi": Variant("y", 90)}],
                [b"\x01\x02", {}],
            ],
        )
    )
    assert nodes is not None and len(nodes) == 1
    assert nodes[0].rssi_dbm == -84 and nodes[0].rsl_dbm is None and nodes[0].lqi is None
    assert problems == ["Nodes[1]: not an 8-byte EUI-64 with properties; skipped"]
