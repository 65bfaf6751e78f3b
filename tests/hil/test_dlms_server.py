"""Our DLMS server against gurux's real client (through the collector's sans-IO session), in
process: association, GET normal/next, selective access, error results, and bad frames."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from gurux_dlms import GXDLMSClient, GXReplyData
from gurux_dlms.enums import Authentication, InterfaceType
from gurux_dlms.objects import GXDLMSProfileGeneric
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.session import (
    AssociationRejected,
    DataAccessError,
    DlmsSession,
    ExceptionResponse,
)
from firmware_agent.collector.wrapper import build_frame, parse_frame
from hil.meter.dlms_server import MeterServer
from hil.meter.model import MeterModel
from hil.meter.objects import REGISTERS
from hil.meter.rig import associated, drive

T = TypeVar("T")
NOW = 1_700_000_000.0


def make(max_pdu: int = 1024, depth: int = 960) -> tuple[MeterServer, ManualClock]:
    clock = ManualClock(NOW)
    model = MeterModel("MTR1", random.Random(11), profile_depth=depth)
    return MeterServer(model, clock, max_pdu=max_pdu), clock




def test_association_negotiates_get_selective_block_and_pdu() -> None:
    server, _ = make(max_pdu=512)
    s = associated(server)
    assert s.associated and server.associated(16)
    conf = s.negotiated_conformance
    from gurux_dlms.enums import Conformance

    assert conf & Conformance.GET and conf & Conformance.SELECTIVE_ACCESS
    assert conf & Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    assert conf & Conformance.SET and conf & Conformance.ACTION
    assert s.max_pdu == 512
    drive(server, s.release())
    assert not server.associated(16) and server.counters["released"] == 1


def test_register_value_and_scaler_unit_match_the_model() -> None:
    server, clock = make()
    s = associated(server)
    for spec in REGISTERS:
        assert drive(server, s.read_scaler_unit(spec.obis)) == (spec.scaler, spec.unit)
        raw = drive(server, s.read_value(spec.obis))
        assert raw == spec.raw(server.model.instant(clock.now()))
    assert drive(server, s.read_scaler_unit(obis.VOLTAGE_L1)) == (-1, 35)


def test_clock_and_data_objects() -> None:
    server, clock = make()
    clock.advance(0.25)
    s = associated(server)
    assert drive(server, s.read_clock()) == datetime.fromtimestamp(NOW + 0.25, UTC)
    assert drive(server, s.read_value(obis.DEVICE_ID, obis.IC_DATA)) == b"MTR1"


def test_profile_attributes_and_range_returns_exactly_rows_in_range() -> None:
    server, _ = make()
    s = associated(server)
    cols = drive(server, s.read_capture_objects(obis.LOAD_PROFILE))
    assert [(c.class_id, c.obis, c.attribute) for c in cols] == [
        (8, obis.CLOCK, 2),
        (3, obis.ACTIVE_ENERGY_IMPORT, 2),
        (3, obis.VOLTAGE_L1, 2),
        (3, obis.CURRENT_L1, 2),
        (3, obis.POWER_FACTOR, 2),
        (3, obis.ACTIVE_POWER_IMPORT, 2),
        (3, obis.APPARENT_POWER, 2),
        (3, obis.LOAD_PERCENT, 2),
    ]
    assert drive(server, s.read_value(obis.LOAD_PROFILE, 7, 4)) == 900
    assert drive(server, s.read_value(obis.LOAD_PROFILE, 7, 7)) == 960
    # unaligned bounds: 20:50:00 .. 21:45:00 inclusive -> 21:00, 21:15, 21:30, 21:45
    start = datetime(2023, 11, 14, 20, 50, tzinfo=UTC)
    end = datetime(2023, 11, 14, 21, 45, tzinfo=UTC)
    rows = drive(server, s.read_rows_by_range(obis.LOAD_PROFILE, start, end))
    assert [r[0] for r in rows] == [
        datetime(2023, 11, 14, 21, m, tzinfo=UTC) for m in (0, 15, 30, 45)
    ]
    for row in rows:
        sample = server.model.interval(server.model.interval_index(row[0].timestamp()))
        assert row[1] == sample.energy_wh
        assert row[2] == round(sample.vltg_kv * 10_000)
        assert row[3] == round(sample.crrnt_a * 100)
        assert row[4] == round(sample.pf * 1000)
        assert row[5] == round(sample.kw * 1000)
        assert row[6] == round(sample.kva * 1000)
        assert row[7] == sample.load
    # a range entirely in the future of the meter's clock has no rows
    future = datetime(2024, 1, 1, tzinfo=UTC)
    assert drive(server, s.read_rows_by_range(obis.LOAD_PROFILE, future, future)) == []


def test_block_transfer_when_reply_exceeds_negotiated_pdu() -> None:
    server, _ = make(max_pdu=64, depth=30)
    s = associated(server)
    drive(server, s.read_capture_objects(obis.LOAD_PROFILE))
    ex = s.read_rows_by_range(
        obis.LOAD_PROFILE, datetime(2023, 11, 14, tzinfo=UTC), datetime(2023, 11, 15, tzinfo=UTC)
    )
    rows = drive(server, ex)
    assert len(rows) == 30  # the whole buffer lies in that day
    assert ex.frames >= 20
    assert server.counters["blocks-completed"] == server.counters["block-transfers"] == 2
    # every reply frame respected the 64-byte PDU
    frame = s.read_value(obis.LOAD_PROFILE, 7, 3).request
    assert len(parse_frame(server.handle(frame) or b"")[1]) <= 64


def test_block_transfer_driven_by_client_max_receive_pdu() -> None:
    server, _ = make(max_pdu=1024, depth=20)
    s = associated(server, max_receive_pdu=100)
    ex = s.read_value(obis.LOAD_PROFILE, 7, 2)  # the whole buffer, no selective access
    rows = drive(server, ex)
    assert len(rows) == 20 and ex.frames >= 8
    # whole buffer by gurux matches selective access by entry
    client = s.client
    pg = GXDLMSProfileGeneric(obis.LOAD_PROFILE)
    drive(server, s.read_capture_objects(obis.LOAD_PROFILE))
    pg.captureObjects = s._profiles[obis.LOAD_PROFILE].captureObjects
    reply = GXReplyData()
    frame: bytes | None = bytes(client.readRowsByEntry(pg, 19, 2)[0])
    while frame is not None:
        client.getData(server.handle(frame), reply, None)
        frame = bytes(client.receiverReady(reply)) if reply.isMoreData() else None
    client.updateValue(pg, 2, reply.value)
    assert [r[1] for r in pg.buffer] == [rows[18][1], rows[19][1]]


@pytest.mark.parametrize(
    ("ln", "class_id", "attr", "result"),
    [
        ("1.0.2.8.0.255", 3, 2, "object-undefined"),
        (obis.ACTIVE_ENERGY_IMPORT, 3, 9, "read-write-denied"),
        (obis.ACTIVE_ENERGY_IMPORT, 1, 2, "object-class-inconsistent"),
    ],
)
def test_unknown_object_or_attribute_is_a_named_data_access_error(
    ln: str, class_id: int, attr: int, result: str
) -> None:
    server, _ = make()
    s = associated(server)
    with pytest.raises(DataAccessError) as err:
        drive(server, s.read_value(ln, class_id, attr))
    assert err.value.result == result
    assert ln in str(err.value)
    # and the association still serves
    assert drive(server, s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0


def test_rejections_name_their_reason() -> None:
    server, _ = make()
    with pytest.raises(AssociationRejected) as err:
        drive(server, DlmsSession(client_address=1).associate())
    assert err.value.result == "rejected-permanent"
    assert err.value.diagnostic == "authentication-mechanism-name-required"

    sn = GXDLMSClient(False, 16, 1, Authentication.NONE, None, InterfaceType.WRAPPER)
    reply = server.handle(bytes(sn.aarqRequest()[0]))
    assert reply is not None
    aare = parse_frame(reply)[1]
    assert aare[0] == 0x61 and bytes.fromhex("a203020101") in aare  # rejected-permanent
    assert bytes.fromhex("a305a103020102") in aare  # application-context-name-not-supported

    low = GXDLMSClient(True, 16, 1, Authentication.LOW, "secret", InterfaceType.WRAPPER)
    aare = parse_frame(server.handle(bytes(low.aarqRequest()[0])) or b"")[1]
    assert bytes.fromhex("a305a10302010b") in aare  # mechanism-name-not-recognised
    assert server.counters["association-rejected"] == 3 and not server.associated(16)


def test_get_without_association_and_after_release_is_refused() -> None:
    server, _ = make()
    s = associated(server)
    drive(server, s.release())
    fresh = DlmsSession()
    with pytest.raises(ExceptionResponse) as err:
        drive(server, fresh.read_value(obis.ACTIVE_ENERGY_IMPORT))
    assert (err.value.state, err.value.service_error) == (
        "service-not-allowed",
        "operation-not-possible",
    )


def get_next(block: int) -> bytes:
    return build_frame(16, 1, bytes([0xC0, 2, 0xC1]) + struct.pack(">I", block))


def test_get_next_without_transfer_and_bad_block_number() -> None:
    server, _ = make(max_pdu=64, depth=10)
    s = associated(server)
    apdu = parse_frame(server.handle(get_next(1)) or b"")[1]
    assert apdu == bytes([0xC4, 2, 0xC1, 1, 0, 0, 0, 1, 1, 16])  # no-long-get-in-progress
    first = server.handle(s.read_value(obis.LOAD_PROFILE, 7, 2).request)
    assert first is not None and parse_frame(first)[1][:2] == b"\xc4\x02"
    apdu = parse_frame(server.handle(get_next(99)) or b"")[1]
    assert apdu[-2:] == bytes([1, 19])  # data-block-number-invalid
    # a repeated GET-Request-Next (lost reply) gets the same block again
    again1, again2 = server.handle(get_next(1)), server.handle(get_next(1))
    assert again1 == again2 and again1 is not None
    assert struct.unpack_from(">I", again1, 8 + 4)[0] == 2


@pytest.mark.parametrize(
    ("frame", "reason", "replied"),
    [
        (b"\x00\x01\x00", "short-header", False),
        (b"\x00\x02\x00\x10\x00\x01\x00\x01\xc0", "bad-version", False),
        (build_frame(16, 7, b"\xc0\x01\xc1"), "wrong-wport", False),
        (build_frame(16, 1, b"\x60\x1d\xa1\x09")[:-2], "truncated", True),
        (build_frame(16, 1, b"\x62\x00") + b"\x00", "trailing-bytes", True),
        (build_frame(16, 1, b""), "empty-apdu", True),
        (build_frame(16, 1, b"\x99\x01"), "unknown-apdu", True),
        (build_frame(16, 1, b"\xd9\x01\xc1"), "unsupported-service", True),
        (build_frame(16, 1, b"\x60\x05\xa1\x09\x06"), "malformed-apdu", True),
    ],
)
def test_bad_frames_are_counted_by_reason_and_the_server_keeps_serving(
    frame: bytes, reason: str, replied: bool
) -> None:
    server, _ = make()
    reply = server.handle(frame)
    assert server.counters[reason] == 1, server.counters
    assert server.last_fault is not None and server.last_fault.reason == reason
    assert (reply is not None) == replied
    if reply is not None:
        assert parse_frame(reply)[1][0] == 0xD8  # exception-response
    s = associated(server)
    assert drive(server, s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0
    assert server.counters["internal-error"] == 0


def test_malformed_selective_access_is_type_unmatched() -> None:
    server, _ = make()
    s = associated(server)
    # selector 1 with an integer instead of the range structure
    apdu = bytes([0xC0, 1, 0xC1, 0, 7]) + bytes([1, 0, 99, 1, 0, 255]) + bytes([2, 1, 1, 17, 5])
    reply = parse_frame(server.handle(build_frame(16, 1, apdu)) or b"")[1]
    assert reply == bytes([0xC4, 1, 0xC1, 1, 12])
    assert s.associated


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    server, _ = make()
    server.handle(data)
    server.handle(build_frame(16, 1, data))
    server.handle(build_frame(16, 1, b"\x60" + data))
    server.handle(build_frame(16, 1, b"\xc0\x01\xc1" + data))
    assert server.counters["internal-error"] == 0, server.last_fault


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120))
def test_random_get_bodies_after_association_never_raise(data: bytes) -> None:
    server, _ = make(max_pdu=64)
    associated(server)
    buffer_by_selector = bytes.fromhex("c001c1 0007 0100630100ff 02 01 01".replace(" ", ""))
    for prefix in (b"\xc0\x01\xc1", b"\xc0\x02\xc1", buffer_by_selector):
        server.handle(build_frame(16, 1, prefix + data))
    assert server.counters["internal-error"] == 0, server.last_fault
