"""The emulated meter's A-XDR codec: round trips, date-time deviation sign, bad input."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.meter import axdr


@given(st.integers(0, 2**32 - 1), st.integers(-(2**15), 2**15 - 1), st.binary(max_size=300))
def test_round_trip(u: int, s: int, raw: bytes) -> None:
    blob = axdr.structure(axdr.u32(u), axdr.i16(s), axdr.array([axdr.octets(raw)]), axdr.null())
    v = axdr.decode_all(blob)
    assert v.tag == axdr.STRUCTURE and isinstance(v.value, list)
    assert [x.value for x in v.value[:2]] == [u, s]
    inner = v.value[2].value
    assert isinstance(inner, list) and inner[0].value == raw


def test_datetime_bytes_and_deviation_sign() -> None:
    ts = datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC).timestamp()
    raw = axdr.datetime_bytes(ts)
    assert raw.hex() == "07e70b0e02160d1419000000"
    assert axdr.parse_datetime_bytes(raw) == ts
    # local 23:13:20 with deviation -60 (Blue Book/gurux sign: UTC = local + deviation)
    local = bytes.fromhex("07e70b0eff170d14ffffc400")
    assert (
        axdr.parse_datetime_bytes(local)
        == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC).timestamp()
    )
    unspecified = bytes.fromhex("07e70b0eff160d14ff800000")
    assert (
        axdr.parse_datetime_bytes(unspecified)
        == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC).timestamp()
    )


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x06\x00", b"\x01\x05\x11", b"\x09\x82\xff", b"\x63", b"\x0a\x01\xff", b"\x11\x01\x00"],
)
def test_bad_data_raises_axdr_error(blob: bytes) -> None:
    with pytest.raises(axdr.AxdrError):
        axdr.decode_all(blob)
    with pytest.raises(axdr.AxdrError):
        axdr.parse_datetime_bytes(bytes.fromhex("ffff0b0eff160d14ff800000"))


@given(st.binary(max_size=64))
def test_decoder_raises_only_axdr_error(blob: bytes) -> None:
    with contextlib.suppress(axdr.AxdrError):
        axdr.decode_all(blob)
