"""The virtual RCP's framing-neutral entry point (what the SPI slave emulation sits on)."""

from __future__ import annotations

import random

from drivers.hdlc import HdlcDecoder, hdlc_encode
from firmware_agent.clock import ManualClock
from hil.medium import Medium
from hil.rcp import RawLineBytes, VirtualRcp

GW = bytes.fromhex("0257530000000001")


def make_rcp() -> VirtualRcp:
    rng = random.Random(1)
    return VirtualRcp(Medium(rng), rng, ManualClock(), eui64=GW)


def test_frames_in_frames_out_with_the_published_vectors() -> None:
    rcp = make_rcp()
    woken: list[int] = []
    rcp.set_output_listener(lambda: woken.append(1))
    rcp.handle_frame(bytes.fromhex("8001"))  # RESET
    rcp.handle_frame(bytes.fromhex("810201"))  # GET PROTOCOL_VERSION, TID 1
    assert rcp.has_output() and len(woken) == 2
    assert rcp.take_frame() == bytes.fromhex("80060072")
    assert rcp.take_frame() == bytes.fromhex("8106010403")
    assert rcp.take_frame() is None and not rcp.has_output()


def test_bad_frames_are_counted_and_raw_injections_stay_raw() -> None:
    rcp = make_rcp()
    rcp.handle_frame(b"\x41\x02\x01")  # not a Spinel header
    rcp.handle_frame(b"")
    assert rcp.counters.spinel_errors == 2 and not rcp.has_output()
    rcp.inject_to_host(b"\x00noise")
    rcp.handle_frame(bytes.fromhex("810201"))
    raw = rcp.take_frame()
    assert isinstance(raw, RawLineBytes) and raw == b"\x00noise"
    assert rcp.take_frame() == bytes.fromhex("8106010403")
    rcp.inject_to_host(b"\x00noise")
    rcp.handle_frame(bytes.fromhex("820201"))
    wire = rcp.take_output()  # the HDLC edge: raw bytes as they are, frames encoded
    assert wire == b"\x00noise" + hdlc_encode(bytes.fromhex("8206010403"))
    assert HdlcDecoder().feed(wire)[1] == bytes.fromhex("8206010403")
