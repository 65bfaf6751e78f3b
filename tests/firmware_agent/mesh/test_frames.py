"""802.15.4 frame codec: known encodings, PAN-ID rules, IEs, bad input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.mesh import frames

GW = bytes.fromhex("02124b0000000001")
METER = bytes.fromhex("0200000000000001")


def test_fcs16_is_crc16_kermit() -> None:
    # CRC-16/KERMIT check value for "123456789" (catalogue of CRC parameters).
    assert frames.fcs16(b"123456789") == 0x2189


def test_data_frame_layout() -> None:
    psdu = frames.encode(frames.data_frame(7, 0xABCD, METER, GW, b"\x7e\x33"))
    # FC 0xec21: data, AR, version 2, dst/src extended; seq; dst PAN; addresses LSB first.
    assert psdu[:5] == bytes.fromhex("21ec07cdab")
    assert psdu[5:13] == METER[::-1]
    assert psdu[13:21] == GW[::-1]
    assert psdu[21:23] == b"\x7e\x33"
    assert len(psdu) == 25


def test_round_trip_and_ack() -> None:
    frame = frames.data_frame(200, 0x1234, METER, GW, b"hello")
    decoded = frames.decode(frames.encode(frame))
    assert decoded == frame
    ack = frames.decode(frames.encode(frames.ack_for(decoded)))
    assert ack.frame_type == frames.FrameType.ACK
    assert ack.seq == 200 and ack.dst == GW and ack.src is None


@pytest.mark.parametrize(
    ("dst", "src", "dst_pan", "src_pan"),
    [
        (b"\x12\x34", b"\x56\x78", 1, 1),
        (b"\x12\x34", b"\x56\x78", 1, None),
        (METER, GW, None, None),
        (METER, None, 5, None),
        (None, GW, None, 5),
    ],
)
def test_pan_id_rules_round_trip(
    dst: bytes | None, src: bytes | None, dst_pan: int | None, src_pan: int | None
) -> None:
    frame = frames.Frame(
        frames.FrameType.DATA, 1, dst_pan=dst_pan, dst=dst, src_pan=src_pan, src=src, payload=b"x"
    )
    assert frames.decode(frames.encode(frame)) == frame


def test_impossible_pan_combination_is_refused() -> None:
    # Two extended addresses can carry the destination PAN or none, never the source PAN alone.
    frame = frames.Frame(frames.FrameType.DATA, 1, dst=METER, src=GW, src_pan=5)
    with pytest.raises(frames.FrameError, match="PAN ID Compression"):
        frames.encode(frame)


def test_header_ies_round_trip() -> None:
    frame = frames.Frame(
        frames.FrameType.DATA,
        3,
        dst_pan=1,
        dst=METER,
        src=GW,
        header_ies=(frames.HeaderIE(0x2A, b"\x04\x9c"),),
        payload=b"data",
    )
    assert frames.decode(frames.encode(frame)) == frame


def test_bad_fcs_is_named() -> None:
    psdu = bytearray(frames.encode(frames.data_frame(1, 1, METER, GW, b"abc")))
    psdu[-1] ^= 0xFF
    with pytest.raises(frames.FrameError, match="bad FCS"):
        frames.decode(bytes(psdu))


def test_truncated_frame_is_named() -> None:
    psdu = frames.encode(frames.data_frame(1, 1, METER, GW, b""))
    body = psdu[:10]
    with pytest.raises(frames.FrameError, match="truncated"):
        frames.decode(body + frames.fcs16(body).to_bytes(2, "little"))


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(frames.FrameError, match="2047"):
        frames.encode(frames.data_frame(1, 1, METER, GW, bytes(2030)))


@given(st.binary(max_size=200))
def test_decoder_never_crashes(data: bytes) -> None:
    body = data
    for psdu in (data, body + frames.fcs16(body).to_bytes(2, "little")):
        with contextlib.suppress(frames.FrameError):
            frames.decode(psdu)


@given(
    seq=st.integers(0, 255),
    pan=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=300),
    ar=st.booleans(),
)
def test_data_frames_round_trip(seq: int, pan: int, payload: bytes, ar: bool) -> None:
    frame = frames.data_frame(seq, pan, METER, GW, payload, ack_request=ar)
    assert frames.decode(frames.encode(frame)) == frame
