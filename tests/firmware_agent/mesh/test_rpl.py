"""RPL control messages (RFC 6550): wire layouts, round trips, options, ranks, bad input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.mesh import ipv6, rpl

PREFIX = bytes.fromhex("fd00007a00010000")
ROOT = PREFIX + bytes.fromhex("00124b0000000001")
NODE = PREFIX + bytes.fromhex("00124b0000000a02")
PARENT = PREFIX + bytes.fromhex("00124b0000000a01")
LL_ROOT = bytes.fromhex("fe80000000000000") + ROOT[8:]


def test_dio_layout() -> None:
    dio = rpl.Dio(1, 3, 256, ROOT, dtsn=5, preference=2)
    code, body = rpl.encode_body(dio)
    assert code == 1
    # instance 1, version 3, rank 0x0100, G=1 MOP=1 Prf=2 -> 0x8a, DTSN 5, flags, reserved.
    assert body == bytes.fromhex("01 03 0100 8a 05 00 00") + ROOT
    assert rpl.decode_body(code, body) == dio


def test_dodag_configuration_and_prefix_layout() -> None:
    config = rpl.DodagConfig(authentication=True, path_control_size=3, default_lifetime=0xFF)
    prefix = rpl.PrefixInfo(PREFIX + bytes(8), 64, on_link=True, valid_lifetime=3600)
    _, body = rpl.encode_body(rpl.Dio(1, 0, 256, ROOT, config=config, prefixes=(prefix,)))
    options = body[24:]
    assert options[:16] == bytes.fromhex("04 0e 0b 14 03 0a 0700 0100 0001 00 ff 003c")
    assert options[16:32] == bytes.fromhex("08 1e 40 c0 00000e10 ffffffff 00000000")
    assert options[32:] == PREFIX + bytes(8)
    assert config.lifetime_s(0xFF) is None and config.lifetime_s(2) == 120.0


def test_dao_layout_with_two_transits() -> None:
    dao = rpl.Dao(
        1,
        7,
        (
            rpl.Target(NODE),
            rpl.Transit(3, 30, PARENT, path_control=0x80),
            rpl.Transit(3, 30, ROOT, path_control=0x40),
        ),
        dodag_id=ROOT,
    )
    code, body = rpl.encode_body(dao)
    assert code == 2
    assert body[:4] == bytes.fromhex("01 c0 00 07") and body[4:20] == ROOT
    assert body[20:40] == bytes.fromhex("05 12 00 80") + NODE
    assert body[40:46] == bytes.fromhex("06 14 00 80 03 1e") and body[46:62] == PARENT
    assert body[62:68] == bytes.fromhex("06 14 00 40 03 1e") and body[68:84] == ROOT
    back = rpl.decode_body(code, body)
    assert back == dao
    assert isinstance(back, rpl.Dao)
    assert [t.parent for t in back.transits] == [PARENT, ROOT]
    assert back.groups() == [((rpl.Target(NODE),), back.transits)]


def test_dao_groups_follow_wire_order() -> None:
    t1, t2 = rpl.Target(NODE), rpl.Target(PARENT)
    x1, x2 = rpl.Transit(1, 10, ROOT), rpl.Transit(2, 20, ROOT)
    dao = rpl.Dao(1, 1, (t1, x1, t2, x2), expect_ack=False)
    assert dao.groups() == [((t1,), (x1,)), ((t2,), (x2,))]
    assert rpl.decode_body(*rpl.encode_body(dao)) == dao


def test_dao_ack_and_dis_layout() -> None:
    code, body = rpl.encode_body(rpl.DaoAck(1, 7, 0, ROOT))
    assert (code, body[:4], body[4:]) == (3, bytes.fromhex("01 80 07 00"), ROOT)
    code, body = rpl.encode_body(rpl.DaoAck(1, 9, 130))
    assert (code, body) == (3, bytes.fromhex("01 00 09 82"))
    assert rpl.encode_body(rpl.Dis()) == (0, b"\x00\x00")


def test_short_target_prefix_carries_only_its_octets() -> None:
    target = rpl.Target(PREFIX + bytes(8), 64)
    _, body = rpl.encode_body(rpl.Dao(1, 1, (target,)))
    assert body[4:] == bytes.fromhex("05 0a 00 40") + PREFIX
    assert rpl.decode_body(2, body) == rpl.Dao(1, 1, (target,))
    with pytest.raises(rpl.RplError, match="bits set past its prefix length 64"):
        rpl.encode_body(rpl.Dao(1, 1, (rpl.Target(NODE, 64),)))


def test_icmpv6_checksum_covers_the_final_destination() -> None:
    msg = rpl.encode_rpl(LL_ROOT, rpl.ALL_RPL_NODES, rpl.Dio(1, 0, 256, ROOT))
    assert msg[:2] == bytes((155, 1))
    assert rpl.decode_rpl(LL_ROOT, rpl.ALL_RPL_NODES, msg) == rpl.Dio(1, 0, 256, ROOT)
    with pytest.raises(ipv6.PacketError, match="bad ICMPv6 checksum"):
        rpl.decode_rpl(LL_ROOT, NODE, msg)
    echo = ipv6.encode_icmpv6(LL_ROOT, NODE, 128, 0, b"ping")
    with pytest.raises(rpl.RplError, match="ICMPv6 type 128 is not RPL"):
        rpl.decode_rpl(LL_ROOT, NODE, echo)


def test_unknown_options_are_skipped_and_reported_and_pads_ignored() -> None:
    dio = rpl.Dio(1, 0, 256, ROOT, config=rpl.DodagConfig())
    _, body = rpl.encode_body(dio)
    metric = bytes.fromhex("02 06 07 00 00 02 01 00")  # DAG Metric Container (not modelled)
    route_info = bytes.fromhex("03 03 40 00 00")  # truncated-looking but well framed
    pads = b"\x00" + bytes.fromhex("01 02 00 00")  # Pad1, PadN(4)
    odd = bytes.fromhex("99 01 ab")  # a type nobody defined
    back = rpl.decode_body(1, body[:24] + pads + metric + body[24:] + route_info + odd + b"\x00")
    assert isinstance(back, rpl.Dio)
    assert back.config == rpl.DodagConfig()
    assert back.unknown_options == (
        rpl.UnknownOption(2, metric[2:]),
        rpl.UnknownOption(3, route_info[2:]),
        rpl.UnknownOption(0x99, b"\xab"),
    )
    # Options that belong to another message are skipped in this one too.
    dis = rpl.decode_body(
        0, b"\x00\x00" + rpl.encode_body(rpl.Dao(1, 1, (rpl.Target(NODE),)))[1][4:]
    )
    assert dis == rpl.Dis((rpl.UnknownOption(5, bytes((0, 128)) + NODE),))
    # And unknown options go back on the wire as they came.
    assert rpl.decode_body(*rpl.encode_body(back)) == back


@pytest.mark.parametrize(
    ("code", "body", "message"),
    [
        (1, bytes(10), "DIO truncated: 10 bytes, needs 24"),
        (2, bytes.fromhex("0140"), "DAO truncated"),
        (2, bytes.fromhex("01400001") + bytes(4), "DAO with the D flag truncated"),
        (3, bytes.fromhex("01800001"), "DAO-ACK with the D flag truncated"),
        (0, b"\x00", "DIS truncated"),
        (0x81, bytes(24), "secured RPL messages"),
        (0x8A, bytes(4), "secured RPL messages"),
        (0x04, bytes(4), "unsupported RPL message code 0x04"),
        (0, bytes.fromhex("0000 05"), "option 0x05 at offset 0 has no length byte"),
        (0, bytes.fromhex("0000 05 10 00"), "says 16 bytes, 1 present"),
        (1, bytes(24) + bytes.fromhex("04 02 0000"), "DODAG Configuration option length 2"),
        (1, bytes(24) + bytes.fromhex("08 01 00"), "Prefix Information option length 1"),
        (
            1,
            bytes(24) + bytes.fromhex("08 1e 81") + bytes(29),
            "Prefix Information prefix length 129",
        ),
        (2, bytes(4) + bytes.fromhex("06 05") + bytes(5), "Transit Information option length 5"),
        (2, bytes(4) + bytes.fromhex("05 01 00"), "RPL Target option length 1"),
        (2, bytes(4) + bytes.fromhex("05 02 00 81"), "RPL Target prefix length 129"),
        (2, bytes(4) + bytes.fromhex("05 03 00 40 fd"), "prefix length 64 carries 1 prefix"),
    ],
)
def test_bad_messages_get_named_errors(code: int, body: bytes, message: str) -> None:
    with pytest.raises(rpl.RplError, match=message):
        rpl.decode_body(code, body)


def test_two_configuration_options_are_refused() -> None:
    _, body = rpl.encode_body(rpl.Dio(1, 0, 256, ROOT, config=rpl.DodagConfig()))
    with pytest.raises(rpl.RplError, match="2 DODAG Configuration options"):
        rpl.decode_body(1, body + body[24:])


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (rpl.Dio(256, 0, 0, ROOT), "RPLInstanceID must be 0..255"),
        (rpl.Dio(1, 0, 70000, ROOT), "Rank must be 0..65535"),
        (rpl.Dio(1, 0, 0, ROOT, mop=8), "MOP must be 0..7"),
        (rpl.Dio(1, 0, 0, ROOT[:8]), "DODAGID must be a 16-byte"),
        (rpl.Dio(1, 0, 0, ROOT, config=rpl.DodagConfig(path_control_size=9)), "Path Control"),
        (rpl.Dao(1, 1, (rpl.Transit(1, 300),)), "Path Lifetime must be 0..255"),
        (rpl.Dao(1, 1, (rpl.Transit(1, 1, b"\x01"),)), "transit parent must be a 16-byte"),
        (rpl.DaoAck(1, 1, 256), "Status must be 0..255"),
        (rpl.Dis((rpl.UnknownOption(9, bytes(300)),)), "data too long"),
    ],
)
def test_unencodable_messages_are_refused(msg: rpl.RplMessage, message: str) -> None:
    with pytest.raises(rpl.RplError, match=message):
        rpl.encode_body(msg)


def test_rank_helpers() -> None:
    assert rpl.root_rank() == 256 and rpl.dag_rank(256) == 1
    assert rpl.dag_rank(767) == 2 and rpl.dag_rank(768) == 3
    assert rpl.dag_rank(1000, 100) == 10
    assert rpl.is_lesser_rank(256, 512) and not rpl.is_lesser_rank(512, 600)
    assert rpl.add_rank(65000, 1000) == rpl.INFINITE_RANK
    with pytest.raises(rpl.RplError, match="MinHopRankIncrease must be positive"):
        rpl.dag_rank(1, 0)


addresses = st.binary(min_size=16, max_size=16)
u8 = st.integers(0, 255)
options = st.lists(
    st.builds(rpl.UnknownOption, st.sampled_from([2, 3, 7, 9, 0x42]), st.binary(max_size=12)),
    max_size=2,
)
configs = st.builds(
    rpl.DodagConfig,
    st.booleans(),
    st.integers(0, 7),
    u8,
    u8,
    u8,
    st.integers(0, 0xFFFF),
    st.integers(1, 0xFFFF),
    st.integers(0, 0xFFFF),
    u8,
    st.integers(0, 0xFFFF),
)
prefixes = st.builds(
    rpl.PrefixInfo,
    addresses,
    st.integers(0, 128),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
)
dios = st.builds(
    rpl.Dio,
    u8,
    u8,
    st.integers(0, 0xFFFF),
    addresses,
    st.booleans(),
    st.integers(0, 7),
    st.integers(0, 7),
    u8,
    st.one_of(st.none(), configs),
    st.lists(prefixes, max_size=2).map(tuple),
    options.map(tuple),
)
targets = st.builds(rpl.Target, addresses, st.just(128))
transits = st.builds(rpl.Transit, u8, u8, st.one_of(st.none(), addresses), u8, st.booleans())
daos = st.builds(
    rpl.Dao,
    u8,
    u8,
    st.lists(st.one_of(targets, transits), max_size=5).map(tuple),
    st.one_of(st.none(), addresses),
    st.booleans(),
    options.map(tuple),
)
acks = st.builds(rpl.DaoAck, u8, u8, u8, st.one_of(st.none(), addresses), options.map(tuple))
diss = st.builds(rpl.Dis, options.map(tuple))


@settings(max_examples=200)
@given(msg=st.one_of(dios, daos, acks, diss), src=addresses, dst=addresses)
def test_messages_round_trip(msg: rpl.RplMessage, src: bytes, dst: bytes) -> None:
    assert rpl.decode_rpl(src, dst, rpl.encode_rpl(src, dst, msg)) == msg


@given(code=st.sampled_from([0, 1, 2, 3]), body=st.binary(max_size=90))
def test_decoder_never_crashes(code: int, body: bytes) -> None:
    with contextlib.suppress(rpl.RplError):
        rpl.decode_body(code, body)
