"""Spinel codec: header, packed uints, datatypes, frames and the OpenThread STREAM_RAW layouts."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.spinel import (
    Cmd,
    Prop,
    RawRxFrame,
    RawTxRequest,
    SpinelError,
    SpinelFrame,
    Status,
    TxDone,
    decode_frame,
    decode_rx_frame,
    decode_tx_done,
    decode_tx_request,
    encode,
    encode_frame,
    encode_rx_frame,
    encode_tx_done,
    encode_tx_request,
    is_reset_status,
    pack,
    pack_uint,
    unpack,
    unpack_uint,
)


@pytest.mark.parametrize(
    ("value", "wire"),
    [(0, "00"), (127, "7F"), (128, "8001"), (1337, "B90A"), (16384, "808001"), (2097151, "FFFF7F")],
)
def test_packed_uint_vectors(value: int, wire: str) -> None:
    assert pack_uint(value) == bytes.fromhex(wire)
    assert unpack_uint(bytes.fromhex(wire)) == (value, len(wire) // 2)


def test_packed_uint_errors_name_the_problem() -> None:
    with pytest.raises(SpinelError, match="out of range"):
        pack_uint(2097152)
    with pytest.raises(SpinelError, match="truncated"):
        unpack_uint(b"\x80")
    with pytest.raises(SpinelError, match="longer than 3 bytes"):
        unpack_uint(b"\x80\x80\x80\x01")


@given(st.integers(0, 2097151))
def test_packed_uint_round_trip(value: int) -> None:
    assert unpack_uint(pack_uint(value)) == (value, len(pack_uint(value)))


def test_header_and_frames_from_architecture_vectors() -> None:
    assert encode(0, Cmd.RESET) == bytes.fromhex("8001")
    assert encode(1, Cmd.PROP_VALUE_GET, Prop.PROTOCOL_VERSION) == bytes.fromhex("810201")
    reset_note = decode_frame(bytes.fromhex("80060072"))
    assert reset_note == SpinelFrame(tid=0, command=Cmd.PROP_VALUE_IS, prop=0, payload=b"\x72")
    assert unpack("i", reset_note.payload) == (Status.RESET_SOFTWARE,)
    assert is_reset_status(114) and not is_reset_status(0)


def test_header_iid_and_tid() -> None:
    frame = SpinelFrame(tid=15, command=Cmd.PROP_VALUE_SET, prop=Prop.STREAM_RAW, iid=2)
    wire = encode_frame(frame)
    assert wire[0] == 0x80 | 0x20 | 0x0F
    assert wire[2] == 113
    assert decode_frame(wire) == frame


def test_decode_frame_rejects_bad_header() -> None:
    with pytest.raises(SpinelError, match="flag bits"):
        decode_frame(b"\x41\x02\x01")
    with pytest.raises(SpinelError, match="empty"):
        decode_frame(b"")
    with pytest.raises(SpinelError, match="truncated"):
        decode_frame(b"\x81\x02")


def test_pack_all_datatypes() -> None:
    eui = bytes.fromhex("0011223344556677")
    values = (255, -1, 0xBEEF, -2, 0xDEADBEEF, -3, 1337, True, b"xy", "v1", b"rest")
    wire = pack("CcSsLlibdUD", *values)
    hexed = "FF FF EFBE FEFF EFBEADDE FDFFFFFF B90A 01 0200 7879 763100 72657374"
    assert wire == bytes.fromhex(hexed.replace(" ", ""))
    assert unpack("CcSsLlibdUD", wire) == values
    assert pack("E", eui) == eui
    assert unpack("EX", eui + b"\x01" + bytes(7)) == (eui, 1)


def test_struct_and_array() -> None:
    wire = pack("t(Cc)A(C)", (11, -90), [11, 12, 13])
    assert wire == bytes.fromhex("02000BA60B0C0D")
    assert unpack("t(Cc)A(C)", wire) == ((11, -90), [11, 12, 13])
    # A struct may grow: extra fields inside it are skipped by an older reader.
    assert unpack("t(C)C", bytes.fromhex("03000B99997F")) == ((11,), 0x7F)
    assert unpack("A(t(CC))", pack("A(t(CC))", [(1, 2), (3, 4)])) == ([(1, 2), (3, 4)],)
    assert unpack("A(CS)", pack("A(CS)", [(1, 2), (3, 4)])) == ([(1, 2), (3, 4)],)


@pytest.mark.parametrize(
    ("fmt", "data", "message"),
    [
        ("S", b"\x01", "S at offset 0 needs 2"),
        ("b", b"\x02", "not 0 or 1"),
        ("d", b"\x05\x00ab", "d data"),
        ("U", b"abc", "NUL"),
        ("U", b"\xff\x00", "not UTF-8"),
        ("t(C)", b"\x09\x00", "t body"),
        ("E", b"\x00" * 7, "E at offset 0 needs 8"),
    ],
)
def test_unpack_errors_name_the_field(fmt: str, data: bytes, message: str) -> None:
    with pytest.raises(SpinelError, match=message):
        unpack(fmt, data)


def test_bad_formats_and_values() -> None:
    with pytest.raises(SpinelError, match="unknown datatype"):
        pack("Q", 1)
    with pytest.raises(SpinelError, match="missing"):
        unpack("t(C", b"")
    with pytest.raises(SpinelError, match="takes 2"):
        pack("CC", 1)
    with pytest.raises(SpinelError, match="cannot hold"):
        pack("C", 256)
    with pytest.raises(SpinelError, match="needs 8 bytes"):
        pack("E", b"short")


def test_rx_frame_layout_matches_openthread() -> None:
    frame = RawRxFrame(
        psdu=b"\x41\xd8\x01",
        rssi_dbm=-70,
        noise_floor_dbm=-128,
        flags=0x0010,
        channel=7,
        lqi=200,
        timestamp_us=0x0102030405060708,
    )
    wire = encode_rx_frame(frame)
    expected = (
        "0300 41D801"  # d: length, PSDU
        "BA"  # c: RSSI -70
        "80"  # c: noise floor -128
        "1000"  # S: flags ACKED_FP
        "0A00 07 C8 0807060504030201"  # t(C channel, C LQI, X timestamp)
        "0100 00"  # t(i rx error)
        "0500 00 00000000"  # t(C ack key id, L ack frame counter)
    )
    assert wire == bytes.fromhex(expected.replace(" ", ""))
    assert decode_rx_frame(wire) == frame


def test_rx_frame_without_optional_structs() -> None:
    assert decode_rx_frame(bytes.fromhex("0100AAC480 0000".replace(" ", ""))) == RawRxFrame(
        psdu=b"\xaa", rssi_dbm=-60, noise_floor_dbm=-128
    )


def test_tx_request_round_trip() -> None:
    req = RawTxRequest(psdu=b"\x41\x88\x00\x00\x00", channel=3)
    assert encode_tx_request(req) == bytes.fromhex("05004188000000 03".replace(" ", ""))
    assert decode_tx_request(encode_tx_request(req)) == req
    # OpenThread hosts append optional CSMA/retry/power fields; they are ignored.
    assert decode_tx_request(encode_tx_request(req) + b"\x04\x03\x01") == req


def test_tx_done_layouts() -> None:
    assert encode_tx_done(TxDone(Status.NO_ACK)) == bytes.fromhex("110000")
    assert encode_tx_done(TxDone(Status.CCA_FAILURE)) == bytes.fromhex("120000")
    ack = RawRxFrame(psdu=b"\x02\x00\x2a\x00\x00", rssi_dbm=-80, channel=3, lqi=100)
    done = TxDone(Status.OK, frame_pending=True, ack=ack)
    wire = encode_tx_done(done)
    assert wire[:3] == b"\x00\x01\x00"
    assert decode_tx_done(wire) == done
    # No ack requested: OK plus an empty ack frame.
    assert decode_tx_done(encode_tx_done(TxDone(Status.OK))).ack == RawRxFrame(b"", 0)
    # A refused request carries just the status.
    assert decode_tx_done(b"\x04") == TxDone(Status.INVALID_STATE)


@given(st.binary(max_size=200))
def test_decoders_only_raise_spinel_error(data: bytes) -> None:
    for fn in (decode_frame, decode_rx_frame, decode_tx_done, decode_tx_request):
        with contextlib.suppress(SpinelError):
            fn(data)
