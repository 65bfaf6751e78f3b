"""pcap encoding (both link types) and CapturingTransceiver around the production Spinel driver.

tshark is the judge: what we write must decode with good FCS, no malformed frames and no expert
warnings, and the TAP TLVs must show the values we put in. The radio side is the real
``spinel+uart://`` driver on a real PTY served by an in-process virtual RCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from drivers import open_radio
from drivers.capture import CapturingTransceiver, on_air
from drivers.pcap import (
    LINKTYPE_IEEE802_15_4_TAP,
    LINKTYPE_IEEE802_15_4_WITHFCS,
    FrameInfo,
    PcapError,
    PcapWriter,
    linktype_for,
    record,
    tap_header,
)
from drivers.transceiver import TxStatus
from firmware_agent.clock import ManualClock
from firmware_agent.mesh import frames, ipv6, lowpan
from hil import tshark
from hil.medium import Medium
from hil.rcp import PtyBoard, VirtualRcp, default_acker

GW = bytes.fromhex("0257530000000001")
METER = bytes.fromhex("00124b0000000042")
PAN = 0xBEEF

needs_tshark = pytest.mark.skipif(not tshark.available(), reason="tshark not installed")


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 30)

    asyncio.run(bounded())


def data_psdu(dst: bytes, *, seq: int = 1, ack_request: bool = True, src: bytes = GW) -> bytes:
    """A data frame carrying a compressed IPv6/UDP datagram, as the mesh sends them."""
    s, d = ipv6.link_local(src), ipv6.link_local(dst)
    udp = ipv6.encode_udp(s, d, ipv6.UdpDatagram(4059, 4059, b"hello"))
    payload = lowpan.compress(ipv6.Ipv6Packet(s, d, ipv6.UDP, udp), src, dst)
    return frames.encode(frames.data_frame(seq, PAN, dst, src, payload, ack_request=ack_request))


# --- encoders -------------------------------------------------------------------------------------


def test_tap_header_layout_follows_the_spec() -> None:
    info = FrameInfo(rssi_dbm=-70.5, lqi=200, channel=5, channel_page=9, sof_ns=0x0102030405)
    expected = (
        bytes.fromhex("00003000")  # version 0, reserved, length 48 (header + TLVs)
        + bytes.fromhex("0000 0100 01 000000")  # FCS type: 16-bit, padded to 4
        + bytes.fromhex("0100 0400")
        + struct.pack("<f", -70.5)  # RSS, float dBm
        + bytes.fromhex("0300 0300 0500 09 00")  # channel 5, page 9, padded
        + bytes.fromhex("0500 0800 0504030201000000")  # start of frame, u64 ns
        + bytes.fromhex("0a00 0100 c8 000000")  # LQI 200, padded
    )
    assert tap_header(info) == expected
    assert tap_header(FrameInfo()) == bytes.fromhex("00000c00 0000 0100 01000000")


def test_record_timestamps_round_to_microseconds() -> None:
    assert record(12.9999999, b"ab")[:8] == struct.pack("<II", 13, 0)
    assert record(1.25, b"ab") == struct.pack("<IIII", 1, 250_000, 2, 2) + b"ab"


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (FrameInfo(lqi=256), "LQI must be between 0 and 255, got 256"),
        (FrameInfo(channel=-1), "channel must be between 0 and 65535, got -1"),
        (FrameInfo(channel=3, channel_page=300), "channel page must be between 0 and 255"),
        (FrameInfo(rssi_dbm=math.nan), "RSSI must be a finite number"),
        (FrameInfo(sof_ns=-5), "start-of-frame time"),
    ],
)
def test_bad_metadata_is_a_typed_error(info: FrameInfo, message: str) -> None:
    with pytest.raises(PcapError, match=message):
        tap_header(info)


def test_bad_timestamps_formats_and_caps_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(PcapError, match="non-negative"):
        record(-1.0, b"")
    with pytest.raises(PcapError, match="unknown capture format 'pcapng'; known: 'wpan', 'tap'"):
        PcapWriter.open(tmp_path / "x.pcap", "pcapng")
    assert not (tmp_path / "x.pcap").exists()
    with pytest.raises(PcapError, match="unsupported link type 1"):
        PcapWriter(io.BytesIO(), 1)
    with pytest.raises(PcapError, match="at least 24 bytes"):
        PcapWriter(io.BytesIO(), max_bytes=10)
    assert (linktype_for("wpan"), linktype_for("tap")) == (195, 283)


@needs_tshark
def test_tap_capture_shows_every_tlv_in_tshark(tmp_path: Path) -> None:
    pcap = tmp_path / "tap.pcap"
    writer = PcapWriter.open(pcap, "tap")
    up = data_psdu(GW, seq=7, src=METER)
    assert writer.write(
        1_700_000_000.5, up, FrameInfo(rssi_dbm=-87.0, lqi=143, channel=33, sof_ns=123_456_000)
    )
    assert writer.write(1_700_000_000.75, data_psdu(METER, seq=8), FrameInfo(channel=33))
    assert writer.write(1_700_000_001.0, data_psdu(METER, seq=9))  # no metadata at all
    writer.close()
    rows = tshark.fields(
        pcap,
        "frame.time_epoch",
        "wpan-tap.rss",
        "wpan-tap.lqi",
        "wpan-tap.ch_num",
        "wpan-tap.ch_page",
        "wpan-tap.sof_ts",
        "wpan.seq_no",
        "wpan.fcs_ok",
    )
    assert rows == [
        ["1700000000.500000000", "-87", "143", "33", "9", "123456000", "7", "1"],
        ["1700000000.750000000", "", "", "33", "9", "", "8", "1"],
        ["1700000001.000000000", "", "", "", "", "", "9", "1"],
    ]
    assert tshark.problems(pcap) == ""


@needs_tshark
def test_plain_capture_and_a_bad_fcs_is_visible(tmp_path: Path) -> None:
    """The judge can fail: a corrupted FCS shows up as fcs_ok=0 and an expert warning."""
    pcap = tmp_path / "wpan.pcap"
    with pcap.open("wb") as stream:
        writer = PcapWriter(stream)
        assert writer.linktype == LINKTYPE_IEEE802_15_4_WITHFCS
        good = data_psdu(METER)
        writer.write(1.0, good)
        writer.write(2.0, good[:-1] + bytes((good[-1] ^ 0xFF,)))
    assert tshark.fields(pcap, "wpan.fcs_ok") == [["1"], ["0"]]
    assert tshark.problems(pcap) != ""


def test_size_cap_stops_writing_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.BytesIO()
    frame = data_psdu(METER)
    per_record = 16 + 12 + len(frame)  # record header + minimal TAP header + PSDU
    cap = 24 + 2 * per_record + 5  # room for two records, not three
    writer = PcapWriter(stream, LINKTYPE_IEEE802_15_4_TAP, max_bytes=cap)
    with caplog.at_level(logging.WARNING, logger="drivers.pcap"):
        results = [writer.write(float(i), frame) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert (writer.records, writer.dropped, writer.full) == (2, 3, True)
    assert len(stream.getvalue()) == writer.bytes_written == 24 + 2 * per_record
    assert len(caplog.records) == 1
    assert f"size cap of {cap} bytes after 2 frames" in caplog.records[0].getMessage()


def test_a_failing_file_stops_the_capture_not_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb", buffering=0) as stream:
        writer = PcapWriter(stream, name="pipe")
        os.close(read_end)  # the reader went away: every later write fails with EPIPE
        with caplog.at_level(logging.ERROR, logger="drivers.pcap"):
            assert writer.write(1.0, data_psdu(METER)) is False
            assert writer.write(2.0, data_psdu(METER)) is False
        assert writer.full and writer.records == 0 and writer.dropped == 2
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["pipe"]
        writer.close()


def test_on_air_puts_the_real_fcs_on_a_zero_fcs_frame() -> None:
    good = data_psdu(METER)
    assert on_air(good[:-2] + b"\x00\x00") == good
    assert on_air(good) == good


# --- the wrapper around the production driver ----------------------------------------------


class Meter:
    """A node on the medium that acks frames addressed to it."""

    def __init__(self, eui64: bytes) -> None:
        self.eui64 = eui64
        self.heard: list[bytes] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append(psdu)
        return default_acker(psdu, self.eui64)


@contextlib.asynccontextmanager
async def served_rcp(clock: ManualClock) -> AsyncIterator[tuple[VirtualRcp, Medium, str]]:
    rng = random.Random(3)
    medium = Medium(rng)
    rcp = VirtualRcp(medium, rng, clock, eui64=GW, channel=0)
    async with PtyBoard(rcp) as board:
        yield rcp, medium, board.path


@needs_tshark
@pytest.mark.parametrize("fmt", ["wpan", "tap"])
def test_wrapper_captures_what_went_on_the_air(fmt: str, tmp_path: Path) -> None:
    pcap = tmp_path / f"radio-{fmt}.pcap"
    clock = ManualClock(1_800_000_000.0)

    async def go() -> None:
        sink = PcapWriter.open(pcap, fmt)
        async with served_rcp(clock) as (rcp, medium, path):
            meter = Meter(METER)
            medium.attach(meter, (25.0, 0.0), channel=4)
            radio = CapturingTransceiver(
                open_radio(f"spinel+uart://{path}?timeout=0.5"), sink, clock
            )
            await radio.open()
            try:
                await radio.set_channel(4)
                await radio.enable_raw_stream(True)
                zero_fcs = data_psdu(METER, seq=1)[:-2] + b"\x00\x00"  # the radio adds the FCS
                assert (await radio.transmit(zero_fcs)).status is TxStatus.ACKED
                clock.advance(1)
                stranger = bytes.fromhex("00124b00000000ff")
                assert (await radio.transmit(data_psdu(stranger, seq=2))).status is TxStatus.NO_ACK
                clock.advance(1)
                rcp.cca_failures_to_inject = 1
                busy = data_psdu(b"\xff\xff", seq=3, ack_request=False)
                assert (await radio.transmit(busy)).status is TxStatus.CCA_FAILURE
                assert (await radio.transmit(busy)).status is TxStatus.SENT
                clock.advance(1)
                up = data_psdu(GW, seq=4, src=METER)
                assert medium.transmit(meter, up, 4) is not None  # the RCP acks it
                rx = await radio.receive(timeout=2)
                assert rx is not None and rx.psdu == up
            finally:
                await radio.close()
                sink.close()
            assert radio.stats.tx_written == 3  # acked, not acked, sent; not the CCA failure
            assert radio.stats.tx_not_on_air == 1
            assert (radio.stats.acks_written, radio.stats.rx_written) == (1, 1)

            rows = tshark.fields(
                pcap, "frame.time_epoch", "wpan.frame_type", "wpan.seq_no", "wpan.fcs_ok"
            )
            assert [r[1:] for r in rows] == [
                ["0x0001", "1", "1"],  # data, with the FCS the radio put on it
                ["0x0002", "1", "1"],  # its ack
                ["0x0001", "2", "1"],  # no ack followed
                ["0x0001", "3", "1"],  # the broadcast that got through
                ["0x0001", "4", "1"],  # the meter's frame
            ]
            assert [float(r[0]) - 1_800_000_000 for r in rows] == [0, 0, 1, 2, 3]
            assert tshark.problems(pcap) == ""
            if fmt == "tap":
                tlvs = tshark.fields(pcap, "wpan-tap.rss", "wpan-tap.lqi", "wpan-tap.ch_num")
                assert [t[2] for t in tlvs] == ["4"] * 5
                assert [t[:2] for t in tlvs[:4]] == [["", ""]] * 4
                assert tlvs[4][:2] == [str(rx.rssi_dbm), str(rx.lqi)]

    run(go)
