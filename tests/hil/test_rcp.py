"""The virtual RCP spoken to with hand-built Spinel bytes, as any draft-following host would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.hdlc import HdlcDecoder, hdlc_encode
from drivers.spinel import (
    decode_frame,
    decode_rx_frame,
    decode_tx_done,
    unpack,
)
from firmware_agent.clock import ManualClock
from firmware_agent.mesh import frames
from hil.medium import Medium
from hil.rcp import VirtualRcp, default_acker, parse_mac_header, serve_pty

GW = bytes.fromhex("0257530000000001")
METER = bytes.fromhex("00124b0000000042")


class Node:
    def __init__(self, eui64: bytes) -> None:
        self.eui64 = eui64
        self.heard: list[bytes] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append(psdu)
        return default_acker(psdu, self.eui64)


def make_rcp(seed: int = 1) -> tuple[Medium, VirtualRcp, ManualClock]:
    rng = random.Random(seed)
    clock = ManualClock()
    medium = Medium(rng)
    return medium, VirtualRcp(medium, rng, clock, eui64=GW), clock


def exchange(rcp: VirtualRcp, wire_hex: str) -> list[bytes]:
    """Send hand-written HDLC bytes; return the Spinel frames the RCP answered with."""
    rcp.feed(bytes.fromhex(wire_hex.replace(" ", "")))
    out = HdlcDecoder().feed(rcp.take_output())
    assert all(isinstance(f, bytes) for f in out), out
    return [f for f in out if isinstance(f, bytes)]


def request(rcp: VirtualRcp, spinel_hex: str) -> list[bytes]:
    return exchange(rcp, hdlc_encode(bytes.fromhex(spinel_hex.replace(" ", ""))).hex())


def test_reset_vector_gives_reset_notification() -> None:
    _, rcp, _ = make_rcp()
    assert exchange(rcp, "7E 80 01 02 92 7E") == [bytes.fromhex("80060072")]
    assert rcp.take_output() == b""


def test_get_protocol_version_vector() -> None:
    _, rcp, _ = make_rcp()
    # 81 06 01 04 03: TID 1, IS, PROTOCOL_VERSION, 4, 3
    assert exchange(rcp, "7E 81 02 01 C5 B2 7E") == [bytes.fromhex("8106010403")]


def test_identity_properties() -> None:
    _, rcp, _ = make_rcp()
    assert request(rcp, "82 02 08") == [bytes.fromhex("820608") + GW]  # HWADDR
    (ncp,) = request(rcp, "83 02 02")
    assert ncp[:3] == bytes.fromhex("830602") and ncp.endswith(b"\x00")
    assert request(rcp, "84 02 03") == [bytes.fromhex("84060303")]  # INTERFACE_TYPE thread
    (caps,) = request(rcp, "85 02 05")
    assert unpack("A(i)", caps[3:]) == ([34, 513],)
    (chans,) = request(rcp, "86 02 22")
    assert unpack("A(C)", chans[3:]) == (list(range(129)),)


def test_set_properties_echo_and_validate() -> None:
    _medium, rcp, _ = make_rcp()
    assert request(rcp, "81 03 21 0B") == [bytes.fromhex("8106210B")]  # PHY_CHAN 11
    assert rcp.channel == 11
    assert request(rcp, "82 03 21 C8") == [bytes.fromhex("82060003")]  # 200: INVALID_ARGUMENT
    assert request(rcp, "83 03 25 F6") == [bytes.fromhex("830625F6")]  # TX_POWER -10
    assert rcp.tx_power_dbm == -10
    assert request(rcp, "84 03 37 01") == [bytes.fromhex("84063701")]  # RAW_STREAM on
    assert request(rcp, "85 03 38 02") == [bytes.fromhex("85063802")]  # PROMISCUOUS full
    assert request(rcp, "86 03 34 " + METER.hex()) == [bytes.fromhex("860634") + METER]
    assert rcp.laddr == METER
    assert request(rcp, "87 03 08 " + METER.hex()) == [bytes.fromhex("87060015")]  # read-only
    assert request(rcp, "88 03 20") == [bytes.fromhex("88060009")]  # no value: PARSE_ERROR


def test_unknown_property_and_command() -> None:
    _, rcp, _ = make_rcp()
    assert request(rcp, "81 02 C0 78") == [bytes.fromhex("8106000D")]  # PROP 15424: NOT_FOUND
    assert request(rcp, "82 03 71") == [bytes.fromhex("82060004")]  # STREAM_RAW, PHY off
    assert request(rcp, "83 0A") == [bytes.fromhex("83060005")]  # command 10: INVALID_COMMAND
    assert rcp.counters.unknown_props == 1


def test_phy_rssi_and_energy_scan() -> None:
    _, rcp, _ = make_rcp()
    ((rssi,),) = [unpack("c", f[3:]) for f in request(rcp, "81 02 26")]
    assert isinstance(rssi, int) and -120 <= rssi <= -110
    assert request(rcp, "82 03 31 01 02 03") == [bytes.fromhex("8206310102 03".replace(" ", ""))]
    assert request(rcp, "83 03 32 20 00") == [bytes.fromhex("8306322000")]  # period 32 ms
    out = request(rcp, "84 03 30 02")
    assert out[0] == bytes.fromhex("84063002")  # the SET reply: scanning
    results = [unpack("Cc", f[3:]) for f in out[1:-1]]
    assert [ch for ch, _ in results] == [1, 2, 3]
    assert all(isinstance(v, int) and -120 <= v <= -105 for _, v in results)
    assert all(f[:3] == bytes.fromhex("800639") for f in out[1:-1])  # unsolicited results
    assert out[-1] == bytes.fromhex("80063000")  # unsolicited SCAN_STATE idle


def test_stream_raw_transmit_ack_and_no_ack() -> None:
    medium, rcp, _clock = make_rcp()
    meter = Node(METER)
    medium.attach(meter, (25, 0), channel=0)
    request(rcp, "81 03 20 01")  # PHY_ENABLED
    psdu = frames.encode(frames.data_frame(42, 0xBEEF, METER, GW, b"read"))
    spinel = bytes([0x82, 0x03, 0x71]) + struct.pack("<H", len(psdu)) + psdu[:-2] + b"\0\0" + b"\0"
    (reply,) = request(rcp, spinel.hex())
    assert reply[:3] == bytes.fromhex("820600")  # IS LAST_STATUS with the request's TID
    done = decode_tx_done(reply[3:])
    assert done.status == 0 and not done.frame_pending and not done.header_updated
    assert done.ack is not None and frames.decode(done.ack.psdu).seq == 42
    assert done.ack.channel == 0 and done.ack.rssi_dbm < -40
    assert meter.heard == [psdu]  # the RCP put the right FCS on it

    other = frames.encode(frames.data_frame(43, 0xBEEF, bytes(8), GW, b"read"))
    spinel = bytes([0x83, 0x03, 0x71]) + struct.pack("<H", len(other)) + other + b"\0"
    assert request(rcp, spinel.hex()) == [bytes.fromhex("83060011 0000".replace(" ", ""))]
    assert rcp.counters.frames_tx == 2


def test_received_frame_layout_and_gating() -> None:
    medium, rcp, clock = make_rcp()
    meter = Node(METER)
    medium.attach(meter, (10, 0), channel=0)
    up = frames.encode(frames.data_frame(5, 0xBEEF, GW, METER, b"data"))
    assert medium.transmit(meter, up, 0) is None  # PHY off: deaf
    request(rcp, "81 03 20 01")
    ack = medium.transmit(meter, up, 0)
    assert ack is not None and frames.decode(ack).seq == 5  # acked, raw stream still off
    assert rcp.take_output() == b""
    request(rcp, "82 03 37 01")
    clock.advance(1.5)
    medium.transmit(meter, up, 0)
    (frame,) = [f for f in HdlcDecoder().feed(rcp.take_output()) if isinstance(f, bytes)]
    assert frame[:3] == bytes.fromhex("800671")  # unsolicited IS STREAM_RAW
    rx = decode_rx_frame(frame[3:])
    assert rx.psdu == up and rx.channel == 0 and rx.noise_floor_dbm == -115
    assert rx.timestamp_us == int(clock.monotonic() * 1e6) and rx.lqi > 0
    # Not addressed to us and not promiscuous: filtered, not acked.
    medium.transmit(meter, frames.encode(frames.data_frame(6, 0xBEEF, bytes(8), METER, b"")), 0)
    assert rcp.take_output() == b"" and rcp.counters.frames_filtered == 1


def test_reboot_restores_boot_state_and_notifies() -> None:
    _, rcp, _ = make_rcp()
    request(rcp, "81 03 21 05")
    request(rcp, "82 03 37 01")
    rcp.reboot()
    assert HdlcDecoder().feed(rcp.take_output()) == [bytes.fromhex("80060070")]  # POWER_ON
    assert (rcp.channel, rcp.raw_stream, rcp.phy_enabled) == (0, False, False)


def test_malformed_input_is_counted_not_fatal() -> None:
    _, rcp, _ = make_rcp()
    rcp.feed(b"junk\x7e\x01\x02\x03\x04\x7e")  # garbage, then a bad-FCS frame
    rcp.feed(hdlc_encode(b"\x41\x02\x01"))  # not a Spinel header
    rcp.feed(hdlc_encode(b"\x81\x02\xff\xff\xff\xff"))  # packed uint too long
    assert rcp.counters.hdlc_errors == 2 and rcp.counters.spinel_errors == 2
    assert exchange(rcp, "7E 81 02 01 C5 B2 7E") == [bytes.fromhex("8106010403")]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_no_input_crashes_the_rcp(data: bytes) -> None:
    _, rcp, _ = make_rcp()
    rcp.feed(data)
    rcp.feed(b"\x7e" + hdlc_encode(b"\x81\x02\x01"))
    frames_out = [f for f in HdlcDecoder().feed(rcp.take_output()) if isinstance(f, bytes)]
    assert frames_out[-1] == bytes.fromhex("8106010403")


@given(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=4))
def test_fuzzed_spinel_frames_get_answers_or_are_counted(payloads: list[bytes]) -> None:
    _, rcp, _ = make_rcp()
    for payload in payloads:
        rcp.feed(hdlc_encode(bytes([0x81]) + payload))
    for frame in HdlcDecoder().feed(rcp.take_output()):
        assert isinstance(frame, bytes)
        decode_frame(frame)


def test_default_acker_matches_the_mesh_codec() -> None:
    up = frames.data_frame(77, 0xBEEF, GW, METER, b"x")
    ack = default_acker(frames.encode(up), GW)
    assert ack == frames.encode(frames.ack_for(up))
    legacy = bytes.fromhex("61cc") + bytes([9]) + b"\xef\xbe" + GW[::-1] + METER[::-1]
    legacy += struct.pack("<H", frames.fcs16(legacy))
    assert default_acker(legacy, GW) == bytes.fromhex("020009") + struct.pack(
        "<H", frames.fcs16(bytes.fromhex("020009"))
    )  # version 1: Imm-Ack
    assert default_acker(frames.encode(up), METER) is None  # not for that address
    no_ar = frames.data_frame(1, 0xBEEF, GW, METER, b"", ack_request=False)
    assert default_acker(frames.encode(no_ar), GW) is None


def test_parse_mac_header_agrees_with_mesh_codec() -> None:
    cases = [
        frames.data_frame(1, 0x1234, GW, METER, b""),
        frames.Frame(frames.FrameType.DATA, 2, dst_pan=0x1234, dst=b"\xff\xff", src=METER),
        frames.Frame(frames.FrameType.DATA, 3, dst_pan=0x1234, dst=b"\x00\x01", src=b"\x00\x02"),
        frames.Frame(frames.FrameType.DATA, None, dst_pan=0x1234, dst=GW, src=None),
        frames.Frame(frames.FrameType.ACK, 4, dst=METER),
    ]
    for frame in cases:
        header = parse_mac_header(frames.encode(frame)[:-2])
        decoded = frames.decode(frames.encode(frame))
        assert header is not None
        assert header.seq == decoded.seq
        assert header.dst_pan == decoded.dst_pan
        assert header.dst == (decoded.dst[::-1] if decoded.dst else None)
        assert header.src == (decoded.src[::-1] if decoded.src else None)
    assert parse_mac_header(b"\x41") is None


def test_serve_pty_speaks_raw_bytes() -> None:
    """Over a real PTY with plain os.read/os.write: no project code on the host side at all."""

    async def go() -> None:
        _, rcp, _ = make_rcp()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[str] = loop.create_future()
        server = asyncio.create_task(serve_pty(rcp, ready.set_result))
        path = await ready
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            os.write(fd, bytes.fromhex("7E800102927E7E810201C5B27E"))
            got = b""
            while got.count(b"\x7e") < 4:
                await asyncio.sleep(0.01)
                with contextlib.suppress(BlockingIOError):
                    got += os.read(fd, 256)
            assert got == hdlc_encode(bytes.fromhex("80060072")) + hdlc_encode(
                bytes.fromhex("8106010403")
            )
        finally:
            os.close(fd)
            server.cancel()
            await asyncio.wait([server])

    asyncio.run(asyncio.wait_for(go(), 10))
