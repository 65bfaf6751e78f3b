"""DlmsSession's generic exchanges (read_attribute, action, write) against the emulated meter's
full directory, and truncated replies: gurux takes a GET-Response cut short as complete (value
None); the exchange refuses it as MalformedReply, in process at every cut and over loopback UDP
with the ``corrupt`` fault, after which the meter's next read succeeds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from gurux_dlms import GXByteBuffer, GXReplyData
from gurux_dlms.enums import DataType

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.apdu_check import ApduShapeError, ResponseShape, data_end
from firmware_agent.collector.link import UdpMeterLink
from firmware_agent.collector.reader import MeterRead, MeterReadError, read_meter
from firmware_agent.collector.session import (
    DataAccessError,
    DlmsSession,
    Exchange,
    MalformedReply,
    SessionStateError,
)
from firmware_agent.collector.wrapper import build_frame, parse_frame
from firmware_agent.config import MeterConfig
from hil.meter.directory import build_meter
from hil.meter.faults import Fault, FaultKind, FaultyMeter
from hil.meter.rig import associated, drive
from hil.meter.udp import serve_udp

T = TypeVar("T")
NOW = 1_700_000_000.0
IMAGE = obis.IMAGE_TRANSFER


def meter(*faults: Fault, seed: int = 1, max_pdu: int = 1024) -> FaultyMeter:
    parts = build_meter(
        "MTR-X", ManualClock(NOW), random.Random(seed), max_pdu=max_pdu, faults=list(faults)
    )
    return parts.meter


# ---------------------------------------------------------------------- exchanges


def test_read_attribute_reads_any_class() -> None:
    server = meter().server
    s = associated(server)
    assert drive(server, s.read_attribute(IMAGE, 18, 2)) == 200  # image_block_size
    assert drive(server, s.read_attribute(IMAGE, 18, 6)) == 0  # not initiated
    assert drive(server, s.read_attribute(obis.DEVICE_ID, obis.IC_DATA, 2)) == b"MTR-X"
    push_list = drive(server, s.read_attribute("0.0.25.9.0.255", 40, 2))
    assert [entry[0] for entry in push_list] == [40, 1, 8, 1]
    with pytest.raises(DataAccessError, match="object-undefined"):
        drive(server, s.read_attribute("1.2.3.4.5.6", 18, 2))


def test_write_then_read_back_and_a_refused_write() -> None:
    parts = build_meter("MTR-X", ManualClock(NOW), random.Random(1))
    server = parts.server
    s = associated(server)
    drive(server, s.write(IMAGE, 5, False, DataType.BOOLEAN, 18))
    assert parts.image.enabled is False
    assert drive(server, s.read_attribute(IMAGE, 18, 5)) is False
    drive(server, s.write(IMAGE, 5, b"\x03\x01", class_id=18))  # pre-encoded boolean true
    assert parts.image.enabled is True
    with pytest.raises(DataAccessError, match="read-write-denied"):
        drive(server, s.write(IMAGE, 2, 64, DataType.UINT32, 18))  # block size is read-only
    assert server.counters["sets"] == 2


def test_action_initiates_an_image_transfer() -> None:
    parts = build_meter("MTR-X", ManualClock(NOW), random.Random(1))
    server = parts.server
    s = associated(server)
    params = b"\x02\x02\x09\x04FW-9\x06" + (400).to_bytes(4, "big")
    assert drive(server, s.action(IMAGE, 1, params, 18)) is None
    assert parts.image.identifier == b"FW-9" and parts.image.size == 400
    assert drive(server, s.read_attribute(IMAGE, 18, 6)) == 1  # initiated
    with pytest.raises(DataAccessError):
        drive(server, s.action(IMAGE, 9, 0, 18))  # no such method


def test_exchange_builders_refuse_nonsense_before_sending() -> None:
    s = DlmsSession()
    with pytest.raises(SessionStateError, match="encoded bytes"):
        s.write(IMAGE, 5, True, class_id=18)
    with pytest.raises(SessionStateError, match="encoded bytes or an int"):
        s.action(IMAGE, 1, "FW", 18)  # type: ignore[arg-type]
    with pytest.raises(SessionStateError, match="logical name"):
        s.read_attribute("1.2.3", 1, 2)


# ---------------------------------------------------------------------- truncated replies


READS: list[tuple[str, Callable[[DlmsSession], Exchange[Any]]]] = [
    ("clock", lambda s: s.read_clock()),
    ("register", lambda s: s.read_value(obis.ACTIVE_ENERGY_IMPORT)),
    ("scaler-unit", lambda s: s.read_scaler_unit(obis.ACTIVE_ENERGY_IMPORT)),
    ("capture-objects", lambda s: s.read_capture_objects(obis.LOAD_PROFILE)),
    ("capture-period", lambda s: s.read_value(obis.LOAD_PROFILE, 7, 4)),
    ("image-status", lambda s: s.read_attribute(IMAGE, 18, 3)),
    ("set", lambda s: s.write(IMAGE, 5, True, DataType.BOOLEAN, 18)),
    ("action", lambda s: s.action(IMAGE, 1, b"\x02\x02\x09\x01A\x06\x00\x00\x00\x10", 18)),
]


@pytest.mark.parametrize(("name", "make"), READS, ids=[n for n, _ in READS])
def test_every_cut_of_a_reply_is_malformed(
    name: str, make: Callable[[DlmsSession], Exchange[Any]]
) -> None:
    server = meter().server
    s = associated(server)
    real = server.handle(make(s).request)
    assert real is not None
    header, apdu = parse_frame(real)

    def answering(ex: Exchange[Any], body: bytes) -> bytes:
        """``body`` with the invoke-id of ``ex``'s request (each request has its own)."""
        if len(body) >= 3:
            body = body[:2] + parse_frame(ex.request)[1][2:3] + body[3:]
        return build_frame(header.source, header.destination, body)

    gurux_took = 0
    for cut in range(1, len(apdu)):
        reply = GXReplyData()
        short = build_frame(header.source, header.destination, apdu[:cut])
        try:
            if s.client.getData(GXByteBuffer(short), reply, None) and not reply.isMoreData():
                gurux_took += 1
        except Exception:  # gurux refuses some cuts itself
            pass
        ex = make(s)
        with pytest.raises(MalformedReply):
            ex.feed(answering(ex, apdu[:cut]))
    if name in ("register", "capture-objects", "capture-period"):
        assert gurux_took > 0  # what this check is for: gurux alone took a cut reply
    ex = make(s)
    assert ex.feed(answering(ex, apdu)) is None  # the whole reply is fine


def test_a_cut_block_transfer_is_malformed_at_the_block() -> None:
    server = meter(max_pdu=256).server
    s = associated(server)
    drive(server, s.read_capture_objects(obis.LOAD_PROFILE))
    end = datetime.fromtimestamp(NOW, UTC)
    ex = s.read_rows_by_range(obis.LOAD_PROFILE, end - timedelta(hours=6), end)
    first = server.handle(ex.request)
    assert first is not None and parse_frame(first)[1][:2] == b"\xc4\x02"
    nxt = ex.feed(first)
    assert nxt is not None
    second = server.handle(nxt)
    assert second is not None
    header, apdu = parse_frame(second)
    with pytest.raises(MalformedReply, match="raw-data"):
        ex.feed(build_frame(header.source, header.destination, apdu[:-3]))


def test_shape_of_block_data_is_checked_when_the_last_block_arrives() -> None:
    shape = ResponseShape()
    whole = b"\x01\x02\x12\x00\x01\x12\x00\x02"  # array of two long-unsigned
    block1 = b"\xc4\x02\xc1\x00\x00\x00\x00\x01\x00\x04" + whole[:4]
    block2_cut = b"\xc4\x02\xc1\x01\x00\x00\x00\x02\x00\x03" + whole[4:7]
    shape.check(block1)
    with pytest.raises(ApduShapeError, match="truncated"):
        shape.check(block2_cut)
    fine = ResponseShape()
    fine.check(block1)
    fine.check(b"\xc4\x02\xc1\x01\x00\x00\x00\x02\x00\x04" + whole[4:])


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"\x00", 1),
        (b"\x09\x03abc", 5),
        (b"\x04\x0a\xff\xc0", 4),  # 10 bits
        (b"\x02\x02\x11\x05\x19" + bytes(12), 17),
        (b"\x13\x02\x02\x11\x12\x03\x05\x00\x01", 9),  # compact array of {u8, u16}
        (b"\x09\x81\x80" + bytes(128), 131),
    ],
)
def test_data_end_walks_axdr(data: bytes, end: int) -> None:
    assert data_end(data + b"tail") == end


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x09\x05abc", "truncated"),
        (b"\x02\x03\x11\x01", "truncated"),
        (b"\x07", "unknown-type"),
        (b"\x09\x85\x00\x00\x00\x00\x01", "bad-length"),
        (b"\x01\x01" * 40 + b"\x00", "too-deep"),
    ],
)
def test_data_end_names_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(ApduShapeError) as info:
        data_end(data)
    assert info.value.reason == reason


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("after", "stage"),
    [(1, "clock"), (2, "energy"), (3, "energy"), (4, "profile")],  # clock, scaler, value, columns
)
def test_corrupt_fault_over_udp_is_malformed_then_the_next_read_succeeds(
    seed: int, after: int, stage: str
) -> None:
    m = meter(Fault(FaultKind.CORRUPT, 1, after=after), seed=seed)

    async def go() -> tuple[MeterRead | MeterReadError, MeterRead | MeterReadError]:
        svc = await serve_udp({1: m})
        link = UdpMeterLink("127.0.0.1", svc.port)
        cfg = MeterConfig("MTR-X", "udp", "127.0.0.1", svc.port)
        out: list[MeterRead | MeterReadError] = []
        try:
            for _ in range(2):
                try:
                    out.append(await read_meter(link, cfg, m.server.clock, timeout=2.0))
                except MeterReadError as exc:
                    out.append(exc)
        finally:
            await link.close()
            svc.close()
        return out[0], out[1]

    first, second = run(go())
    assert m.counters["corrupt"] == 1
    assert isinstance(first, MeterReadError) and first.malformed, first
    assert isinstance(first.cause, MalformedReply)
    assert first.stage == stage
    assert first.payload is not None and len(first.payload) > 8
    assert isinstance(second, MeterRead) and len(second.readings) == 5
