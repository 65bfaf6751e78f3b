"""HDLC-lite framing: the ARCHITECTURE.md vectors, escaping, resync, and fuzzing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.hdlc import (
    HdlcBadEscape,
    HdlcBadFcs,
    HdlcDecoder,
    HdlcError,
    HdlcGarbage,
    HdlcTooLong,
    HdlcTooShort,
    fcs16,
    hdlc_encode,
)


def test_reset_vector() -> None:
    assert hdlc_encode(bytes.fromhex("8001")) == bytes.fromhex("7E80010292 7E".replace(" ", ""))


def test_get_protocol_version_vector() -> None:
    assert hdlc_encode(bytes.fromhex("810201")) == bytes.fromhex("7E810201C5B27E")


def test_x25_check_value() -> None:
    # The CRC catalogue's check value for CRC-16/X-25 over "123456789".
    assert fcs16(b"123456789") == 0x906E


def test_vectors_decode() -> None:
    dec = HdlcDecoder()
    assert dec.feed(bytes.fromhex("7E800102927E7E810201C5B27E")) == [b"\x80\x01", b"\x81\x02\x01"]


def test_escapes_flag_escape_xon_xoff_f8() -> None:
    payload = bytes([0x7E, 0x7D, 0x11, 0x13, 0xF8, 0x42])
    wire = hdlc_encode(payload)
    body = wire[1:-1]
    for special in (0x7E, 0x11, 0x13, 0xF8):
        assert special not in body
    assert bytes([0x7D, 0x5E, 0x7D, 0x5D, 0x7D, 0x31, 0x7D, 0x33, 0x7D, 0xD8, 0x42]) == body[:11]
    assert HdlcDecoder().feed(wire) == [payload]


def test_decoder_unescapes_any_byte() -> None:
    # A sender that escapes an ordinary byte (0x41 as 7D 61) must still decode.
    payload = b"\x80\x06\x00\x41"
    fcs = fcs16(payload)
    wire = b"\x7e\x80\x06\x00\x7d\x61" + bytes([fcs & 0xFF, fcs >> 8]) + b"\x7e"
    assert HdlcDecoder().feed(wire) == [payload]


def test_garbage_then_frame_resyncs() -> None:
    out = HdlcDecoder().feed(b"\x01\x02\x03" + hdlc_encode(b"\x80\x01"))
    assert isinstance(out[0], HdlcGarbage)
    assert "3 byte(s)" in str(out[0])
    assert out[1:] == [b"\x80\x01"]


def test_bad_fcs_reported_and_next_frame_survives() -> None:
    bad = bytearray(hdlc_encode(b"\x81\x06\x01\x04\x03"))
    bad[-2] ^= 0x01
    dec = HdlcDecoder()
    out = dec.feed(bytes(bad) + hdlc_encode(b"\x80\x01"))
    assert isinstance(out[0], HdlcBadFcs)
    assert "bad FCS" in str(out[0])
    assert out[1] == b"\x80\x01"


def test_too_short_and_bad_escape() -> None:
    dec = HdlcDecoder()
    out = dec.feed(b"\x7e\x80\x7e\x7e\x80\x7d\x7e" + hdlc_encode(b"\x80\x01"))
    assert [type(e) for e in out] == [HdlcTooShort, HdlcBadEscape, bytes]


def test_too_long_dropped_until_next_flag() -> None:
    dec = HdlcDecoder(max_frame=16)
    out = dec.feed(hdlc_encode(bytes(range(40))) + hdlc_encode(b"\x80\x01"))
    assert isinstance(out[0], HdlcTooLong)
    assert out[1] == b"\x80\x01"


def test_split_anywhere() -> None:
    wire = hdlc_encode(b"\x80\x06\x00\x72") + hdlc_encode(b"\x7e\x7d" * 5)
    for cut in range(len(wire) + 1):
        dec = HdlcDecoder()
        assert dec.feed(wire[:cut]) + dec.feed(wire[cut:]) == [b"\x80\x06\x00\x72", b"\x7e\x7d" * 5]


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(1, 64))
def test_round_trip_any_chunking(payloads: list[bytes], chunk: int) -> None:
    wire = b"".join(hdlc_encode(p) for p in payloads)
    dec = HdlcDecoder()
    out: list[bytes | HdlcError] = []
    for i in range(0, len(wire), chunk):
        out += dec.feed(wire[i : i + chunk])
    assert out == payloads


@given(st.binary(max_size=600), st.binary(min_size=1, max_size=50))
def test_no_input_crashes_and_decoder_recovers(noise: bytes, payload: bytes) -> None:
    dec = HdlcDecoder(max_frame=256)
    for item in dec.feed(noise):
        assert isinstance(item, bytes | HdlcError)
    # Whatever came before, a flag then a good frame always decodes.
    out = dec.feed(b"\x7e" + hdlc_encode(payload))
    assert out[-1] == payload
