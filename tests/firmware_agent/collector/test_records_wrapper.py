"""Record normalisation (scalers, units, head-end fields) and WRAPPER framing, on plain values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.collector import obis
from firmware_agent.collector.records import (
    Column,
    RecordError,
    iso_utc,
    reading_from_register,
    reading_from_row,
    scale,
)
from firmware_agent.collector.wrapper import WrapperError, build_frame, parse_frame, parse_header

COLUMNS = (
    Column(obis.CLOCK, 8, 2),
    Column(obis.ACTIVE_ENERGY_IMPORT, 3, 2, 0, 30),
    Column(obis.VOLTAGE_L1, 3, 2, -1, 35),
    Column(obis.CURRENT_L1, 3, 2, -2, 33),
    Column(obis.POWER_FACTOR, 3, 2, -3, 255),
    Column(obis.ACTIVE_POWER_IMPORT, 3, 2, 0, 27),
    Column(obis.APPARENT_POWER, 3, 2, 0, 28),
    Column(obis.LOAD_PERCENT, 3, 2, 0, 56),
)
CAPTURED = datetime(2023, 11, 14, 21, 15, tzinfo=UTC)


def test_row_becomes_seed_002_reading() -> None:
    r = reading_from_row(
        "M1",
        obis.LOAD_PROFILE,
        COLUMNS,
        [CAPTURED, 1234567, 2170, 868, 950, 1790, 1884, 42],
        1_700_000_000.0,
    )
    assert (r.time, r.arrival_time) == ("2023-11-14T21:15:00Z", "2023-11-14T22:13:20Z")
    assert (r.vltg, r.crrnt, r.pf, r.kw, r.kva, r.load) == (0.217, 8.68, 0.95, 1.79, 1.884, 42)
    assert r.values[obis.VOLTAGE_L1] == 217.0 and r.values[obis.ACTIVE_ENERGY_IMPORT] == 1234567
    assert r.key_parts == ("M1", obis.LOAD_PROFILE, "2023-11-14T21:15:00Z")
    assert r.natural_key == "M1|1.0.99.1.0.255|2023-11-14T21:15:00Z"
    assert r.to_dict()["vltg"] == 0.217 and r.to_dict()["values"] == r.values


def test_field_left_empty_when_unit_is_not_the_expected_one() -> None:
    cols = (Column(obis.CLOCK, 8, 2), Column(obis.VOLTAGE_L1, 3, 2, -1, 33))  # unit A, not V
    r = reading_from_row("M1", obis.LOAD_PROFILE, cols, [CAPTURED, 2170], CAPTURED)
    assert r.vltg is None and r.values[obis.VOLTAGE_L1] == 217.0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([CAPTURED, 1], "row of 2 cells"),
        ([CAPTURED, 1, 2, 3, 4, 5, 6, "x"], "not numeric"),
        (["2023", 1, 2, 3, 4, 5, 6, 7], "clock cell"),
    ],
)
def test_bad_rows_raise_record_error(row: list[object], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        reading_from_row("M1", obis.LOAD_PROFILE, COLUMNS, row, CAPTURED)
    with pytest.raises(RecordError, match="no clock column"):
        reading_from_row("M1", obis.LOAD_PROFILE, COLUMNS[1:2], [1], CAPTURED)


def test_register_reading_and_scale() -> None:
    r = reading_from_register(
        "M1", Column(obis.ACTIVE_POWER_IMPORT, scaler=1, unit=27), 183, CAPTURED, CAPTURED
    )
    assert r.kw == 1.83 and r.source == obis.ACTIVE_POWER_IMPORT
    assert scale(2301, -1) == 230.1 and scale(5, 3) == 5000 and scale(1.5, 0) == 1.5
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    with pytest.raises(RecordError):
        scale(True, 0)


def test_wrapper_roundtrip_and_errors() -> None:
    frame = build_frame(16, 1, b"\xc0\x01")
    assert frame.hex() == "00010010000100" + "02c001"
    header, apdu = parse_frame(frame)
    assert (header.source, header.destination, header.length, apdu) == (16, 1, 2, b"\xc0\x01")
    for bad, reason in [
        (frame[:5], "short-header"),
        (b"\x00\x02" + frame[2:], "bad-version"),
        (frame[:-1], "truncated"),
        (frame + b"\x00", "trailing-bytes"),
    ]:
        with pytest.raises(WrapperError) as err:
            parse_frame(bad)
        assert err.value.reason == reason
    with pytest.raises(ValueError):
        build_frame(1, 16, bytes(70_000))


@given(st.binary(max_size=40))
def test_parse_header_never_raises_anything_but_wrapper_error(data: bytes) -> None:
    try:
        parse_header(data)
        parse_frame(data)
    except WrapperError:
        pass
