"""802.15.4 IEs: the Wi-SUN RSL IE, payload IEs and the termination IEs the standard asks for."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.mesh import frames

GW = bytes.fromhex("02124b0000000001")
METER = bytes.fromhex("0200000000000001")

VENDOR = frames.PayloadIE(0x2, bytes.fromhex("0050c2") + b"xy")


def _ie_area(psdu: bytes) -> bytes:
    """What follows the 21-byte addressing of a data frame (seq, dst PAN, two EUI-64s)."""
    return psdu[21:-2]


@pytest.mark.parametrize(
    ("dbm", "byte"),
    [(-80, 94), (-174, 0), (-200, 0), (81, 255), (100, 255), (-95.4, 79), (-95.6, 78)],
)
def test_rsl_ie_encodes_dbm_plus_174_clamped(dbm: float, byte: int) -> None:
    ie = frames.rsl_ie(dbm)
    assert ie == frames.HeaderIE(0x2A, bytes((0x04, byte)))
    assert frames.find_rsl(frames.Frame(frames.FrameType.ACK, 1, header_ies=(ie,))) == byte - 174


def test_rsl_refuses_a_non_number() -> None:
    with pytest.raises(frames.FrameError, match="finite"):
        frames.rsl_ie(float("nan"))


def test_enh_ack_carries_rsl_on_the_air() -> None:
    data = frames.decode(frames.encode(frames.data_frame(42, 0xABCD, GW, METER, b"x")))
    psdu = frames.encode(frames.ack_for(data, rsl_dbm=-97.0))
    # FC: ack, PAN ID compression, IEs present, dst extended, version 2; seq; dst LSB first;
    # then the header IE descriptor 0x1502 (id 0x2A, length 2), sub-id 4, 77 = -97 + 174.
    assert psdu[:3] == bytes.fromhex("422e2a")
    assert psdu[3:11] == METER[::-1]
    assert psdu[11:15] == bytes.fromhex("0215044d")
    assert len(psdu) == 17
    ack = frames.decode(psdu)
    assert ack.seq == 42 and ack.dst == METER
    assert frames.find_rsl(ack) == -97.0


def test_ack_without_rsl_has_no_ies() -> None:
    ack = frames.ack_for(frames.data_frame(1, 1, GW, METER, b""))
    assert ack.header_ies == () and frames.find_rsl(ack) is None
    assert frames.encode(ack)[1] & 0x02 == 0  # IE Present bit clear


def test_other_wisun_header_ies_are_not_rsl() -> None:
    frame = frames.Frame(
        frames.FrameType.DATA,
        1,
        dst=GW,
        header_ies=(frames.HeaderIE(0x2A, b"\x01\x00\x00\x00"), frames.HeaderIE(0x2A, b"")),
    )
    assert frames.find_rsl(frame) is None


def test_malformed_rsl_ie_is_named() -> None:
    frame = frames.Frame(frames.FrameType.ACK, 1, header_ies=(frames.HeaderIE(0x2A, b"\x04"),))
    with pytest.raises(frames.FrameError, match="RSL IE must carry 1 content byte"):
        frames.find_rsl(frame)


def test_header_ies_then_payload_use_header_termination_2() -> None:
    frame = frames.Frame(
        frames.FrameType.DATA,
        1,
        dst_pan=1,
        dst=GW,
        src=METER,
        header_ies=(frames.rsl_ie(-80),),
        payload=b"\x41",
    )
    area = _ie_area(frames.encode(frame))
    assert area == bytes.fromhex("0215045e") + struct.pack("<H", 0x7F << 7) + b"\x41"
    assert frames.decode(frames.encode(frame)) == frame


def test_payload_ies_use_ht1_and_payload_termination() -> None:
    frame = frames.Frame(
        frames.FrameType.DATA,
        1,
        dst_pan=1,
        dst=GW,
        src=METER,
        payload_ies=(VENDOR,),
        payload=b"\x41",
    )
    area = _ie_area(frames.encode(frame))
    ht1 = struct.pack("<H", 0x7E << 7)
    vendor = struct.pack("<H", 0x8000 | 0x2 << 11 | 5) + VENDOR.content
    pt = struct.pack("<H", 0x8000 | 0xF << 11)
    assert area == ht1 + vendor + pt + b"\x41"
    assert frames.decode(frames.encode(frame)) == frame


def test_payload_ies_without_payload_omit_payload_termination() -> None:
    frame = frames.Frame(frames.FrameType.DATA, 1, dst_pan=1, dst=GW, payload_ies=(VENDOR,))
    psdu = frames.encode(frame)
    assert psdu[-2 - 7 : -2] == struct.pack("<H", 0x8000 | 0x2 << 11 | 5) + VENDOR.content
    assert frames.decode(psdu) == frame
    # A sender that does add the (optional) termination decodes the same.
    body = psdu[:-2] + struct.pack("<H", 0x8000 | 0xF << 11)
    assert frames.decode(body + frames.fcs16(body).to_bytes(2, "little")) == frame


def _with_fcs(body: bytes) -> bytes:
    return body + frames.fcs16(body).to_bytes(2, "little")


def test_bad_ie_lists_get_named_errors() -> None:
    base = frames.encode(frames.Frame(frames.FrameType.DATA, 1, dst_pan=1, dst=GW))[:-2]
    fc_ie = bytes([base[0], base[1] | 0x02]) + base[2:]
    ht1 = struct.pack("<H", 0x7E << 7)
    cases = {
        "header IE found among the payload IEs": ht1 + struct.pack("<H", 0x2A << 7),
        "payload IE found where a header IE": struct.pack("<H", 0x8000),
        "header termination IE 0x7e with length 1": struct.pack("<H", 0x7E << 7 | 1) + b"x",
        "payload termination IE with length 2": ht1 + struct.pack("<H", 0xF800 | 2) + b"ab",
        "truncated": ht1 + struct.pack("<H", 0x8000 | 0x2 << 11 | 9) + b"abc",
    }
    for message, ies in cases.items():
        with pytest.raises(frames.FrameError, match=message):
            frames.decode(_with_fcs(fc_ie + ies))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            frames.Frame(
                frames.FrameType.DATA, 1, dst=GW, header_ies=(frames.HeaderIE(0x7E, b""),)
            ),
            "termination IE",
        ),
        (
            frames.Frame(
                frames.FrameType.DATA, 1, dst=GW, payload_ies=(frames.PayloadIE(0xF, b""),)
            ),
            "0xF is the termination",
        ),
        (
            frames.Frame(
                frames.FrameType.DATA, 1, dst=GW, header_ies=(frames.HeaderIE(3, bytes(128)),)
            ),
            "content too long",
        ),
        (
            frames.Frame(
                frames.FrameType.DATA, 1, dst=GW, payload_ies=(frames.PayloadIE(1, bytes(2048)),)
            ),
            "content too long",
        ),
        (
            frames.Frame(
                frames.FrameType.DATA,
                1,
                dst_pan=1,
                dst=GW,
                version=1,
                header_ies=(frames.rsl_ie(-1),),
            ),
            "frame version 2",
        ),
    ],
)
def test_unencodable_ies_are_refused(frame: frames.Frame, message: str) -> None:
    with pytest.raises(frames.FrameError, match=message):
        frames.encode(frame)


header_ie = st.builds(
    frames.HeaderIE,
    st.integers(0, 255).filter(lambda e: e not in (0x7E, 0x7F)),
    st.binary(max_size=20),
)
payload_ie = st.builds(frames.PayloadIE, st.integers(0, 14), st.binary(max_size=40))


@settings(max_examples=200)
@given(
    hies=st.lists(header_ie, max_size=4),
    pies=st.lists(payload_ie, max_size=3),
    payload=st.binary(max_size=60),
    seq=st.one_of(st.none(), st.integers(0, 255)),
    ftype=st.sampled_from([frames.FrameType.DATA, frames.FrameType.ACK]),
)
def test_frames_with_ies_round_trip(
    hies: list[frames.HeaderIE],
    pies: list[frames.PayloadIE],
    payload: bytes,
    seq: int | None,
    ftype: frames.FrameType,
) -> None:
    frame = frames.Frame(
        ftype,
        seq,
        dst_pan=0xABCD,
        dst=GW,
        src=METER,
        header_ies=tuple(hies),
        payload_ies=tuple(pies),
        payload=payload,
    )
    assert frames.decode(frames.encode(frame)) == frame
