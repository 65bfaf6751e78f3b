"""TI Wi-SUN NCP property codec: device-list pages, DODAG routes, identity, STREAM_NET."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.spinel import Cap, SpinelError
from firmware_agent.mesh import ti_spinel as ti
from firmware_agent.mesh.ipv6 import address_in_prefix

PREFIX = bytes.fromhex("20200000abcd0000")
ROOT = bytes.fromhex("00124b0014f7d2e6")
A, B, C = (bytes.fromhex(f"00124b00000000a{i}") for i in range(3))


def addr(node: bytes) -> bytes:
    return address_in_prefix(PREFIX, node)


addresses = st.binary(min_size=16, max_size=16)


def test_property_ids_are_tis_and_dodag_route_is_openthreads_ll_addr_id() -> None:
    assert ti.PROP_NUM_CONNECTED_DEVICES == 0x65
    assert ti.PROP_CONNECTED_DEVICES == 0x66
    assert ti.PROP_DODAG_ROUTE == 0x60  # OpenThread's IPV6_LL_ADDR: decide by identity first
    assert ti.PROP_DODAG_ROUTE_DEST == 0x5F
    assert ti.PROP_STREAM_NET == 0x72


def test_device_pages_carry_a_block_index_and_the_last_flag() -> None:
    nodes = [addr(n) for n in (A, B, C)]
    blocks = ti.split_into_blocks(nodes, block_size=2)
    wire = [ti.encode_devices_block(b) for b in blocks]
    assert [w[0] for w in wire] == [0x00, 0x81]
    assert wire[0][1:] == nodes[0] + nodes[1] and wire[1][1:] == nodes[2]
    pager = ti.DevicePager()
    assert pager.feed(ti.decode_devices_block(wire[0])) is None
    assert pager.feed(ti.decode_devices_block(wire[1])) == tuple(nodes)


def test_an_empty_device_list_is_a_lone_last_block() -> None:
    assert [ti.encode_devices_block(b) for b in ti.split_into_blocks([])] == [b"\x80"]
    assert ti.DevicePager().feed(ti.decode_devices_block(b"\x80")) == ()


def test_a_page_out_of_sequence_is_an_error_and_the_pager_starts_over() -> None:
    pager = ti.DevicePager()
    pager.feed(ti.DevicesBlock(0, False, (addr(A),)))
    with pytest.raises(ti.TiValueError, match="block 2 arrived where block 1 was due"):
        pager.feed(ti.DevicesBlock(2, True, (addr(B),)))
    assert pager.feed(ti.DevicesBlock(0, True, (addr(C),))) == (addr(C),)


@given(st.lists(addresses, max_size=40, unique=True), st.integers(1, 5))
def test_paging_round_trip(items: list[bytes], block_size: int) -> None:
    pager = ti.DevicePager()
    result = None
    blocks = ti.split_into_blocks(items, block_size)
    for i, block in enumerate(blocks):
        decoded = ti.decode_devices_block(ti.encode_devices_block(block))
        assert decoded == block and decoded.last == (i == len(blocks) - 1)
        result = pager.feed(decoded)
    assert result == tuple(items)


@given(st.lists(addresses, min_size=1, max_size=12, unique=True), st.integers(0, 255))
def test_dodag_route_round_trip(path: list[bytes], cost: int) -> None:
    route = ti.DodagRoute(cost, tuple(path))
    assert ti.decode_dodag_route(ti.encode_dodag_route(route)) == route


def test_dodag_route_as_tis_firmware_sends_it() -> None:
    # cost 2, then border router, parent, destination (TI's ncp_base GET DODAG_ROUTE).
    value = bytes([2]) + addr(ROOT) + addr(A) + addr(B)
    route = ti.decode_dodag_route(value)
    assert route.path_cost == 2 and route.addresses == (addr(ROOT), addr(A), addr(B))
    assert route.target == addr(B) and route.has_route
    no_route = ti.decode_dodag_route(bytes([0]) + addr(C))
    assert not no_route.has_route and no_route.target == addr(C)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty value"),
        (b"\x01", "need one or more 16-byte addresses"),
        (b"\x01" + bytes(20), "20 bytes after the path cost"),
        (b"\x01" + addr(A) + addr(A), "repeats in the path"),
    ],
)
def test_malformed_dodag_routes_are_typed_errors(value: bytes, message: str) -> None:
    with pytest.raises(ti.TiValueError, match=message) as caught:
        ti.decode_dodag_route(value)
    assert isinstance(caught.value, SpinelError)


@pytest.mark.parametrize(
    ("value", "message"),
    [(b"", "no block header"), (b"\x80" + bytes(17), "not a whole number of 16-byte")],
)
def test_malformed_device_pages_are_typed_errors(value: bytes, message: str) -> None:
    with pytest.raises(ti.TiValueError, match=message):
        ti.decode_devices_block(value)


def test_num_connected_is_a_u16_and_a_short_value_is_an_error() -> None:
    assert ti.decode_num_connected(ti.encode_num_connected(300)) == 300
    assert ti.encode_num_connected(5) == b"\x05\x00"
    with pytest.raises(ti.TiValueError, match="NUM_CONNECTED_DEVICES: 1 byte"):
        ti.decode_num_connected(b"\x05")


def test_stream_net_round_trip_and_metadata_is_ignored() -> None:
    packet = bytes(range(60))
    assert ti.decode_stream_net(ti.encode_stream_net(packet)) == packet
    assert ti.decode_stream_net(ti.encode_stream_net(packet) + b"\x00\x00") == packet
    with pytest.raises(ti.TiValueError, match="STREAM_NET"):
        ti.decode_stream_net(b"\x10\x00abc")


def test_identity_tells_a_ti_ncp_from_an_rcp_and_from_anything_else() -> None:
    ti_ncp = ti.NcpIdentity("TIWISUNFAN/1.0.2; RELEASE; Jun 10 2021 21:58:51", 4)
    assert ti_ncp.kind is ti.NcpKind.TI_WISUN_NCP
    rcp = ti.NcpIdentity("wisun-gw-virtual-rcp/0.1; SIM", 3, (Cap.CONFIG_RADIO, Cap.MAC_RAW))
    assert rcp.kind is ti.NcpKind.RCP
    assert ti.NcpIdentity("OPENTHREAD/1.0", 3, ()).kind is ti.NcpKind.OTHER
    # The stack name alone is not enough: the interface type must be TI's Wi-SUN one too.
    assert ti.NcpIdentity("TIWISUNFAN/1.0.2", 3).kind is ti.NcpKind.OTHER
    assert ti.describe_protocol_version(b"Wi-SUNFAN/1.0\x00") == "Wi-SUNFAN/1.0"
    assert ti.describe_protocol_version(b"\x04\x03") == "4.3"


def test_parents_come_from_the_hop_before_each_node() -> None:
    routes = [
        ti.DodagRoute(1, (addr(ROOT), addr(A))),
        ti.DodagRoute(2, (addr(ROOT), addr(A), addr(B))),
        ti.DodagRoute(3, (addr(ROOT), addr(A), addr(B), addr(C))),
        ti.DodagRoute(0, (addr(bytes.fromhex("00124b00000000ff")),)),  # no route: left out
    ]
    assert ti.parents_from_routes(routes, ROOT) == {A: [ROOT], B: [A], C: [B]}
    # A node seen only inside another's path takes the hop before it there.
    assert ti.parents_from_routes(routes[2:3], ROOT) == {A: [ROOT], B: [A], C: [B]}


def test_a_path_that_does_not_start_at_the_border_router_is_an_error() -> None:
    with pytest.raises(ti.TiValueError, match="not at the border router"):
        ti.parents_from_routes([ti.DodagRoute(1, (addr(A), addr(B)))], ROOT)


def test_neighbour_metrics_carry_rsl_as_nanostack_scales_it() -> None:
    metrics = ti.NeighbourMetrics(A, -82.5, None)
    wire = ti.encode_nbr_metrics(metrics)
    assert wire == A + int((-82.5 + 174) * 8).to_bytes(2, "little") + b"\xff\x7f"
    assert ti.decode_nbr_metrics(wire) == metrics
    assert ti.decode_num_nbrs(b"\x03") == 3
    with pytest.raises(ti.TiValueError, match="PHY_NBR_METRICS: 11 bytes, need 12"):
        ti.decode_nbr_metrics(wire[:11])
    with pytest.raises(ti.TiValueError, match="PHY_NUM_NBRS: empty"):
        ti.decode_num_nbrs(b"")


@given(st.binary(min_size=8, max_size=8), st.integers(0, 0x7FFE), st.integers(0, 0x7FFE))
def test_neighbour_metrics_round_trip(eui: bytes, raw_in: int, raw_out: int) -> None:
    metrics = ti.NeighbourMetrics(eui, ti.rsl_dbm(raw_in), ti.rsl_dbm(raw_out))
    assert ti.decode_nbr_metrics(ti.encode_nbr_metrics(metrics)) == metrics
