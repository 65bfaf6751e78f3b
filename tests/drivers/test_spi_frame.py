"""Spinel SPI framing: header vectors, typed errors, host/slave transfers, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.hdlc import fcs16
from drivers.spi_frame import (
    FLAG_CCF,
    FLAG_CRC,
    FLAG_RST,
    HEADER_LEN,
    MAX_ALIGN,
    SpiBadCrc,
    SpiBadPattern,
    SpiFrameError,
    SpiHeader,
    SpiHost,
    SpiSlave,
    SpiTooLong,
    SpiTruncated,
    SpiUnresponsive,
    decode_data,
    decode_header,
    find_header,
)

RESET_NOTIFICATION = bytes.fromhex("80060072")


def test_header_vectors() -> None:
    assert SpiHeader(FLAG_RST, 32, 3).encode() == bytes.fromhex("8220000300")
    assert SpiHeader(FLAG_CRC | FLAG_CCF, 0x0102, 0x0800).encode() == bytes.fromhex("6202010008")
    header = decode_header(bytes.fromhex("c2 00 08 04 00"))
    assert header == SpiHeader(0xC2, 2048, 4)
    assert header.reset and header.crc and not header.crc_failed
    assert decode_header(bytes.fromhex("3e 00 00 00 00")).flags == 0x3E  # reserved bits ignored


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        ("0000000000", SpiUnresponsive, "all 00"),
        ("ffffffffff", SpiUnresponsive, "all FF"),
        ("8120000300", SpiBadPattern, "pattern bits 01"),
        ("ff20000300", SpiBadPattern, "pattern bits 11"),
        ("0201080000", SpiTooLong, "accept 2049"),
        ("0200000108", SpiTooLong, "data 2049"),
        ("02200003", SpiTruncated, "needs 5 bytes, got 4"),
    ],
)
def test_header_errors_are_typed(raw: str, error: type[SpiFrameError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        decode_header(bytes.fromhex(raw))
    assert info.value.kind == "spi"


def test_alignment_skips_leading_ff_only() -> None:
    assert find_header(b"\xff\xff\x02\x00") == 2
    assert find_header(b"\x00\x02") == 0  # 0x00 is not an alignment byte in OpenThread's host
    assert find_header(b"\xff" * 40) == MAX_ALIGN
    assert find_header(b"\xff\xff\x02", align_allowance=1) == 1


def test_crc_is_hdlc_fcs_low_byte_first() -> None:
    data = RESET_NOTIFICATION
    fcs = fcs16(data)
    body = data + bytes((fcs & 0xFF, fcs >> 8))
    header = SpiHeader(FLAG_CRC, 0, len(data))
    assert decode_data(body, header, with_crc=True) == data
    with pytest.raises(SpiBadCrc, match="CRC"):
        decode_data(body[:-1] + bytes([body[-1] ^ 1]), header, with_crc=True)
    with pytest.raises(SpiTruncated, match="4 data bytes \\+ CRC but only 5"):
        decode_data(body[:-1], header, with_crc=True)


def test_host_first_transfer_sets_rst_and_sizes_for_small_packets() -> None:
    host = SpiHost(small_packet=32, align_allowance=4)
    tx = host.prepare(b"\x81\x02\x01")
    assert tx[:HEADER_LEN] == bytes.fromhex("8220000300")
    assert tx[HEADER_LEN : HEADER_LEN + 3] == b"\x81\x02\x01"
    assert len(tx) == HEADER_LEN + 32 + 4
    slave = SpiSlave(accept_len=100)
    rx = slave.prepare(RESET_NOTIFICATION, len(tx), align=2)
    got = slave.complete(tx)
    assert got.frame == b"\x81\x02\x01" and got.host_reset and got.tx_accepted
    result = host.complete(rx)
    assert result.frame == RESET_NOTIFICATION and result.tx_accepted and result.slave_reset
    assert host.prepare(None)[0] == 0x02  # no RST once a valid header was seen


def test_big_slave_frame_takes_a_second_transfer_sized_for_it() -> None:
    host, slave = SpiHost(small_packet=8, align_allowance=0), SpiSlave()
    big = bytes([0x80, 0x06, 0x71]) + bytes(200)
    tx = host.prepare(None)
    rx = slave.prepare(big, len(tx))
    first = host.complete(rx)
    assert not slave.complete(tx).tx_accepted  # our accept length (8) was too small
    assert first.frame is None and first.slave_pending == len(big) and first.error is None
    tx = host.prepare(None)
    assert int.from_bytes(tx[1:3], "little") == len(big)
    rx = slave.prepare(big, len(tx))
    assert slave.complete(tx).tx_accepted
    assert host.complete(rx).frame == big


def test_invalid_slave_header_means_nothing_of_the_transfer_counts() -> None:
    host = SpiHost(align_allowance=0)
    host.prepare(b"\x81\x02\x01")
    result = host.complete(bytes.fromhex("0200000108") + bytes(40))  # announces 2049 bytes
    assert not result.header_valid and isinstance(result.error, SpiTooLong)
    assert not result.tx_accepted and result.frame is None
    assert host.prepare(None)[0] & FLAG_RST  # still no valid header seen


def test_slave_refusing_our_frame_keeps_it_pending() -> None:
    host, slave = SpiHost(align_allowance=0), SpiSlave(accept_len=2)
    tx = host.prepare(b"\x81\x02\x01")
    rx = slave.prepare(None, len(tx))
    assert slave.complete(tx).frame is None
    assert not host.complete(rx).tx_accepted


def test_bad_crc_sets_ccf_and_sender_learns_its_frame_was_rejected() -> None:
    host, slave = SpiHost(crc=True, align_allowance=0), SpiSlave(crc=True)
    tx = bytearray(host.prepare(b"\x81\x02\x01"))
    tx[HEADER_LEN] ^= 0x40  # corrupted on the wire
    rx = slave.prepare(None, len(tx))
    got = slave.complete(bytes(tx))
    assert isinstance(got.error, SpiBadCrc) and got.frame is None
    host.complete(rx)
    tx2 = host.prepare(None)
    rx2 = slave.prepare(None, len(tx2))
    assert rx2[0] & FLAG_CCF
    assert host.complete(rx2).previous_rejected
    assert not slave.complete(tx2).previous_rejected


def test_crc_only_when_both_sides_set_it() -> None:
    host, slave = SpiHost(crc=True, align_allowance=0), SpiSlave(crc=False)
    tx = host.prepare(b"\x81\x02\x01")
    rx = slave.prepare(RESET_NOTIFICATION, len(tx))
    assert slave.complete(tx).frame == b"\x81\x02\x01"  # our CRC bytes are ignored
    assert host.complete(rx).frame == RESET_NOTIFICATION


frames_st = st.lists(st.binary(min_size=1, max_size=300), max_size=4)


@settings(max_examples=100, deadline=None)
@given(
    up=frames_st,
    down=frames_st,
    align=st.integers(0, MAX_ALIGN),
    crc=st.booleans(),
    small=st.integers(0, 64),
    accept=st.integers(1, 400),
)
def test_round_trip_both_ways(
    up: list[bytes], down: list[bytes], align: int, crc: bool, small: int, accept: int
) -> None:
    host = SpiHost(small_packet=small, align_allowance=MAX_ALIGN, crc=crc)
    slave = SpiSlave(crc=crc, accept_len=max(accept, 300))
    to_slave, to_host = list(up), list(down)
    got_slave: list[bytes] = []
    got_host: list[bytes] = []
    for _ in range(4 * (len(up) + len(down)) + 2):
        tx = host.prepare(to_slave[0] if to_slave else None)
        rx = slave.prepare(to_host[0] if to_host else None, len(tx), align=align)
        s = slave.complete(tx)
        h = host.complete(rx)
        assert s.error is None and h.error is None
        if s.frame is not None:
            got_slave.append(s.frame)
        if h.frame is not None:
            got_host.append(h.frame)
        if h.tx_accepted:
            to_slave.pop(0)
        if s.tx_accepted:
            to_host.pop(0)
    assert got_slave == up and got_host == down


@settings(max_examples=300, deadline=None)
@given(rx=st.binary(max_size=80), crc=st.booleans(), pending=st.binary(max_size=20))
def test_no_input_crashes_the_host_decoder(rx: bytes, crc: bool, pending: bytes) -> None:
    host = SpiHost(crc=crc, align_allowance=4, small_packet=8)
    host.prepare(pending or None)
    result = host.complete(rx)
    assert result.error is None or isinstance(result.error, SpiFrameError)
    slave = SpiSlave(crc=crc)
    slave.prepare(None, len(rx))
    slave.complete(rx)  # must not raise either


@given(st.binary(max_size=12))
def test_decode_header_raises_only_typed_errors(data: bytes) -> None:
    try:
        header = decode_header(data)
    except SpiFrameError:
        return
    assert header.encode()[1:] == data[1:HEADER_LEN]
