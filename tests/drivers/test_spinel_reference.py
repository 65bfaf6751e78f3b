"""Spinel's direct per-frame paths against the general code they short-cut.

``encode``, ``decode_frame`` and the STREAM_RAW received-frame decoder take direct paths for the
common shapes (one-byte packed ints, precompiled struct layouts). Here they are pinned to plain
references written with the general datatype functions (``pack_uint``/``unpack_uint``/
``unpack_prefix``): the same records for any input, and the same :class:`SpinelError` text when
the input is bad.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.spinel import (
    PROP_COMMANDS,
    RawRxFrame,
    SpinelError,
    SpinelFrame,
    Value,
    decode_frame,
    decode_rx_frame,
    decode_rx_frame_prefix,
    decode_tx_done,
    encode,
    encode_frame,
    encode_rx_frame,
    pack,
    pack_uint,
    unpack,
    unpack_prefix,
    unpack_uint,
)


def ref_pack_uint(value: int) -> bytes:
    if not 0 <= value <= 2_097_151:
        raise SpinelError(f"packed uint {value} out of range 0..2097151")
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def ref_encode(tid: int, iid: int, command: int, prop: int | None, payload: bytes) -> bytes:
    if not 0 <= tid <= 15:
        raise SpinelError(f"TID {tid} out of range 0..15")
    if not 0 <= iid <= 3:
        raise SpinelError(f"interface id {iid} out of range 0..3")
    out = bytearray([0x80 | iid << 4 | tid]) + ref_pack_uint(command)
    if command in PROP_COMMANDS:
        if prop is None:
            raise SpinelError(f"command {command} needs a property id")
        out += ref_pack_uint(prop)
    return bytes(out + payload)


def ref_decode_frame(data: bytes) -> SpinelFrame:
    if not data:
        raise SpinelError("empty Spinel frame")
    if data[0] & 0xC0 != 0x80:
        raise SpinelError(f"header byte {data[0]:02X} lacks the 10xxxxxx flag bits")
    command, pos = unpack_uint(data, 1)
    prop = None
    if command in PROP_COMMANDS:
        prop, pos = unpack_uint(data, pos)
    return SpinelFrame(data[0] & 0x0F, command, prop, bytes(data[pos:]), (data[0] >> 4) & 3)


def _int(value: Value) -> int:
    assert isinstance(value, int)
    return value


def _tuple(value: Value) -> tuple[Value, ...]:
    assert isinstance(value, tuple)
    return value


def ref_decode_rx_frame_prefix(data: bytes) -> tuple[RawRxFrame, int]:
    (psdu, rssi, noise, flags), pos = unpack_prefix("dccS", data)
    assert isinstance(psdu, bytes)
    fields = [0] * 6
    for fmt, first in (("t(CCX)", 0), ("t(i)", 3), ("t(CL)", 4)):
        if pos < len(data):
            (struct_value,), used = unpack_prefix(fmt, data[pos:])
            for i, value in enumerate(_tuple(struct_value)):
                fields[first + i] = _int(value)
            pos += used
    frame = RawRxFrame(psdu, _int(rssi), _int(noise), _int(flags), *fields)
    return frame, pos


def outcome(fn: Callable[[], object]) -> object:
    """The result, or the error's class and text (errors do not compare equal by value)."""
    try:
        return fn()
    except SpinelError as exc:
        return (SpinelError, str(exc))


@given(st.integers(-5, 2_200_000))
def test_pack_uint_matches_reference(value: int) -> None:
    assert outcome(lambda: pack_uint(value)) == outcome(lambda: ref_pack_uint(value))


@settings(max_examples=300)
@given(
    st.integers(-1, 16),
    st.integers(-1, 4),
    st.one_of(st.integers(0, 12), st.integers(0, 2_200_000)),
    st.one_of(st.none(), st.integers(0, 200), st.integers(0, 2_200_000)),
    st.binary(max_size=40),
)
def test_encode_matches_reference(
    tid: int, iid: int, command: int, prop: int | None, payload: bytes
) -> None:
    want = outcome(lambda: ref_encode(tid, iid, command, prop, payload))
    frame = SpinelFrame(tid, command, prop, payload, iid)
    assert outcome(lambda: encode_frame(frame)) == want
    if iid == 0:
        assert outcome(lambda: encode(tid, command, prop, payload)) == want


#: Spinel-ish bytes: headers, one- and multi-byte packed ints, property ids.
spinel_bytes = st.lists(
    st.one_of(st.sampled_from([0x80, 0x81, 0x9F, 0x06, 0x71, 0x7F, 0xFF]), st.integers(0, 255)),
    max_size=12,
).map(bytes)


@settings(max_examples=300)
@given(spinel_bytes)
def test_decode_frame_matches_reference(data: bytes) -> None:
    assert outcome(lambda: decode_frame(data)) == outcome(lambda: ref_decode_frame(data))


def rx_frames() -> st.SearchStrategy[bytes]:
    """Valid received-frame values, then cut short, extended, or with one byte changed."""
    frames = st.builds(
        RawRxFrame,
        psdu=st.binary(max_size=130),
        rssi_dbm=st.integers(-128, 127),
        noise_floor_dbm=st.integers(-128, 127),
        flags=st.integers(0, 0xFFFF),
        channel=st.integers(0, 255),
        lqi=st.integers(0, 255),
        timestamp_us=st.integers(0, (1 << 64) - 1),
        rx_error=st.one_of(st.integers(0, 127), st.integers(0, 2_097_151)),
        ack_key_id=st.integers(0, 255),
        ack_frame_counter=st.integers(0, (1 << 32) - 1),
    ).map(encode_rx_frame)
    return st.tuples(frames, st.integers(0, 400), st.integers(0, 255), st.binary(max_size=8)).map(
        _mangle
    )


def _mangle(args: tuple[bytes, int, int, bytes]) -> bytes:
    wire, where, xor, extra = args
    how = where % 5
    if how == 0:
        return wire
    if how == 1:
        return wire[: where % (len(wire) + 1)]
    if how == 2:
        return wire + extra
    out = bytearray(wire)
    # Flip some bits, or set a byte to 0/1/2 (lengths of zero or one are the corner cases).
    out[where % len(out)] = out[where % len(out)] ^ xor if how == 3 else xor % 3
    return bytes(out)


@settings(max_examples=400)
@given(st.one_of(rx_frames(), st.binary(max_size=60)))
def test_decode_rx_frame_matches_reference(data: bytes) -> None:
    want = outcome(lambda: ref_decode_rx_frame_prefix(data))
    assert outcome(lambda: decode_rx_frame_prefix(data)) == want


def test_rx_frame_shapes_the_direct_path_hands_over() -> None:
    full = RawRxFrame(b"\x41\x88", -60, -128, 0, 11, 200, 7, 1000, 2, 9)
    wire = encode_rx_frame(full)  # a two-byte packed rx error
    assert decode_rx_frame(wire) == full
    assert decode_rx_frame_prefix(wire + b"\x01") == (full, len(wire))
    # A struct carrying more fields than we read, and one carrying fewer.
    small = RawRxFrame(b"\x01", -60, channel=3, lqi=4, timestamp_us=5)
    longer = encode_rx_frame(small)
    phy = 3 + 1 + 1 + 2  # where t(CCX) starts: after d (length + 1-byte PSDU), c, c and S
    assert longer[phy : phy + 2] == b"\x0a\x00"
    grown = longer[:phy] + b"\x0b\x00" + longer[phy + 2 : phy + 12] + b"\xee"
    assert decode_rx_frame(grown + longer[phy + 12 :]) == small
    short = longer[:phy] + b"\x09\x00" + longer[phy + 2 : phy + 11]
    with pytest.raises(SpinelError, match="X at offset 4 needs 8 byte"):
        decode_rx_frame(short)
    # An empty t(i) (the rx error) holds no packed int, even when bytes follow it.
    vendor = phy + 12
    assert longer[vendor : vendor + 3] == b"\x01\x00\x00"
    empty = longer[:vendor] + b"\x00\x00" + longer[vendor + 3 :]
    with pytest.raises(SpinelError, match="packed uint truncated"):
        decode_rx_frame(empty)
    # The transmit-done reply's ack frame goes through the same decoder.
    assert decode_tx_done(b"\x00\x01\x00" + wire).ack == full


def test_format_cache_keeps_errors_and_results() -> None:
    for _ in range(3):
        with pytest.raises(SpinelError, match="unknown datatype"):
            pack("Q", 1)
        with pytest.raises(SpinelError, match="missing"):
            unpack("t(C", b"")
        assert unpack("t(CCX)", pack("t(CCX)", (1, 2, 3))) == ((1, 2, 3),)
