"""Pushes: our documented DataNotification layout parses in our parser *and* in gurux's client;
alarms are spooled at top priority with natural keys that collapse repeats; garbage is
quarantined; the UDP listener maps senders to meters over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gurux_dlms import GXByteBuffer, GXDateTime, GXDLMSClient, GXDLMSNotify, GXReplyData
from gurux_dlms.enums import Authentication, DataType, InterfaceType
from gurux_dlms.internal._GXCommon import _GXCommon

from firmware_agent.clock import ManualClock
from firmware_agent.collector.obis import obis_to_bytes
from firmware_agent.collector.push import (
    LAST_GASP,
    POWER_RESTORED,
    TAMPER,
    PushError,
    PushReceiver,
    cosem_datetime,
    parse_push,
)
from firmware_agent.collector.push_listener import PushListener
from firmware_agent.collector.quarantine import Quarantine
from firmware_agent.collector.wrapper import build_frame
from firmware_agent.config import MeterConfig
from firmware_agent.spool import Priority, Spool
from hil.meter.push import PushSource

ARRIVAL = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC).timestamp()


def cosem_time(dt: datetime) -> bytes:
    """12-byte COSEM date-time, UTC (deviation 0)."""
    return struct.pack(
        ">HBBBBBBBhB", dt.year, dt.month, dt.day, 0xFF, dt.hour, dt.minute, dt.second, 0, 0, 0
    )


def notification(
    code: int, when: datetime, *, device: bytes = b"MTR-1", stamp: bool = True
) -> bytes:
    """Our push layout, written out byte by byte from the documentation in push.py."""
    body = (
        b"\x02\x04"
        + b"\x09\x06"
        + obis_to_bytes("0.0.25.9.0.255")
        + b"\x09"
        + bytes([len(device)])
        + device
        + b"\x09\x0c"
        + cosem_time(when)
        + b"\x12"
        + struct.pack(">H", code)
    )
    date = b"\x0c" + cosem_time(when) if stamp else b"\x00"
    apdu = b"\x0f" + struct.pack(">I", 0xC0000007) + date + body
    return build_frame(1, 16, apdu)


WHEN = datetime(2024, 5, 1, 11, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "event", "description"),
    [
        (1, LAST_GASP, "power down"),
        (2, POWER_RESTORED, "power up"),
        (40, TAMPER, "terminal cover removed"),
        (44, TAMPER, "meter cover removed"),
        (77, "event-77", ""),
    ],
)
def test_data_notification_becomes_an_alarm(code: int, event: str, description: str) -> None:
    alarm = parse_push("MTR-1", notification(code, WHEN), ARRIVAL)
    assert (alarm.event, alarm.code, alarm.description) == (event, code, description)
    assert alarm.time == "2024-05-01T11:59:58Z" and alarm.arrival_time == "2024-05-01T12:00:05Z"
    assert alarm.push_setup == "0.0.25.9.0.255" and alarm.invoke_id == 7
    assert alarm.natural_key == f"MTR-1|alarm:{event}|2024-05-01T11:59:58Z"
    assert alarm.to_dict()["type"] == "alarm" and alarm.values == {}


def test_gurux_client_parses_our_push_layout() -> None:
    """The conformance peer: gurux's client takes the same frame as a notification."""
    client = GXDLMSClient(True, 16, 1, Authentication.NONE, None, InterfaceType.WRAPPER)
    reply, notify = GXReplyData(), GXReplyData()
    client.getData(notification(1, WHEN), reply, notify)
    setup, device, clock, code = notify.value
    assert bytes(setup) == obis_to_bytes("0.0.25.9.0.255") and bytes(device) == b"MTR-1"
    assert bytes(clock) == cosem_time(WHEN) and code == 1
    assert notify.time is not None


def test_a_push_built_by_gurux_parses_in_ours() -> None:
    notify = GXDLMSNotify(True, 16, 1, InterfaceType.WRAPPER)
    body = GXByteBuffer()
    body.setUInt8(DataType.STRUCTURE)
    body.setUInt8(4)
    for dt, value in [
        (DataType.OCTET_STRING, obis_to_bytes("0.0.25.9.0.255")),
        (DataType.OCTET_STRING, b"OTHER-ID"),
        (DataType.OCTET_STRING, GXDateTime(WHEN)),
        (DataType.UINT16, 2),
    ]:
        _GXCommon.setData(None, body, dt, value)
    (frame,) = notify.generateDataNotificationMessages(WHEN, body)
    alarm = parse_push("MTR-1", bytes(frame), ARRIVAL)
    assert alarm.event == POWER_RESTORED and alarm.time == "2024-05-01T11:59:58Z"
    assert alarm.values == {"device": "OTHER-ID"}  # the body's id differs from the sender's


def test_push_without_clock_takes_the_arrival_time() -> None:
    frame = notification(1, WHEN, stamp=False)
    apdu = bytearray(frame[8:])
    clock_at = apdu.index(b"\x09\x0c") + 2
    apdu[clock_at : clock_at + 12] = b"\xff" * 12  # every field "not specified"
    alarm = parse_push("MTR-1", build_frame(1, 16, bytes(apdu)), ARRIVAL)
    assert alarm.time == "2024-05-01T12:00:05Z"


def test_event_notification_request() -> None:
    apdu = (
        b"\xc2\x01\x0c"
        + cosem_time(WHEN)
        + b"\x00\x01"
        + obis_to_bytes("0.0.96.11.0.255")
        + b"\x02"
        + b"\x12\x00\x2a"
    )
    alarm = parse_push("MTR-1", build_frame(1, 16, apdu), ARRIVAL)
    assert alarm.event == TAMPER and alarm.code == 42 and alarm.time == "2024-05-01T11:59:58Z"


def test_cosem_datetime_deviation() -> None:
    raw = bytearray(cosem_time(WHEN))
    raw[9:11] = struct.pack(">h", -60)  # local 11:59:58 with deviation -60: UTC 10:59:58
    dt = cosem_datetime(bytes(raw))
    assert dt == datetime(2024, 5, 1, 10, 59, 58, tzinfo=UTC)
    assert cosem_datetime(b"\x00" * 5) is None


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00\x01\x00\x01", "wrapper-short-header"),
        (build_frame(1, 16, b""), "empty"),
        (build_frame(1, 16, b"\xc4\x01\xc1\x00"), "not-a-push"),
        (notification(1, WHEN)[:-1], "wrapper-truncated"),
        (build_frame(1, 16, notification(1, WHEN)[8:-1]), "truncated"),
        (build_frame(1, 16, notification(1, WHEN)[8:] + b"\x00"), "trailing-bytes"),
        (build_frame(1, 16, b"\x0f\x00\x00\x00\x01\x00\x12\x00\x01"), "bad-body"),
        (build_frame(1, 16, b"\x0f\x00\x00\x00\x01\x03\x01\x02\x03\x12\x00\x01"), "bad-date-time"),
        (build_frame(1, 16, b"\x0f\x00\x00\x00\x01\x00\x02\x01\x07"), "unknown-type"),
    ],
)
def test_malformed_pushes_name_the_problem(frame: bytes, reason: str) -> None:
    with pytest.raises(PushError) as err:
        parse_push("MTR-1", frame, ARRIVAL)
    assert err.value.reason == reason, err.value
    assert err.value.frame == frame


def test_unwrap_is_applied_and_its_failure_is_named() -> None:
    plain = notification(2, WHEN)[8:]
    secured = build_frame(1, 16, b"\xdb" + plain[::-1])  # stand-in ciphertext

    def unwrap(apdu: bytes) -> bytes:
        if apdu[0] != 0xDB:
            raise ValueError("MAC Fail: tag does not verify")
        return apdu[1:][::-1]

    assert parse_push("MTR-1", secured, ARRIVAL, unwrap=unwrap).event == POWER_RESTORED
    with pytest.raises(PushError) as err:
        parse_push("MTR-1", notification(2, WHEN), ARRIVAL, unwrap=unwrap)
    assert err.value.reason == "unwrap-failed" and "MAC Fail" in err.value.detail


def test_receiver_spools_alarms_first_collapses_repeats_quarantines_garbage(
    tmp_path: Path,
) -> None:
    clock = ManualClock(ARRIVAL)
    spool = Spool(tmp_path / "spool.sqlite", clock)
    quarantine = Quarantine(tmp_path / "collector.sqlite", clock)
    seen: list[str] = []
    receiver = PushReceiver(
        spool, clock, quarantine=quarantine, listener=lambda a: seen.append(a.event)
    )
    spool.add([({"device_id": "MTR-9"}, "MTR-9|1.0.99.1.0.255|x")], Priority.INTERVAL)
    receiver.on_push("MTR-1", notification(1, WHEN))
    receiver.on_push("MTR-1", notification(1, WHEN))  # the meter repeats its last gasp
    receiver.on_push("MTR-1", notification(2, WHEN.replace(minute=59, second=59)))
    receiver.on_push("MTR-1", b"\xde\xad\xbe\xef")
    assert receiver.stats.alarms == 2 and receiver.stats.duplicates == 1
    assert receiver.stats.malformed == 1 and seen == [LAST_GASP, POWER_RESTORED]
    batch = spool.next_batch(10, 1_000_000)
    assert [r.priority for r in batch[:2]] == [Priority.ALARM, Priority.ALARM]  # before readings
    assert [r.data["event"] for r in batch[:2]] == [LAST_GASP, POWER_RESTORED]
    (bad,) = quarantine.recent()
    assert (bad.meter_id, bad.stage, bad.reason, bad.hex) == (
        "MTR-1",
        "push",
        "wrapper-short-header",
        "deadbeef",
    )
    spool.close()
    quarantine.close()


def test_udp_listener_maps_senders_to_meters(tmp_path: Path) -> None:
    clock = ManualClock(ARRIVAL)
    got: list[tuple[str, bytes]] = []

    async def go() -> PushListener:
        meters = [
            MeterConfig("IP-1", "udp", "127.0.0.1"),
            MeterConfig("MESH-1", "mesh", "02:00:00:00:00:00:00:01"),
        ]
        quarantine = Quarantine(tmp_path / "q.sqlite", clock)
        listener = PushListener(lambda m, f: got.append((m, f)), meters, quarantine=quarantine)
        _, port = await listener.start("127.0.0.1", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(notification(1, WHEN), ("127.0.0.1", port))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        listener.datagram("::ffff:127.0.0.1", b"mapped")  # v4-mapped v6 sender: same meter
        listener.datagram("10.9.9.9", b"stranger")
        listener.close()
        assert quarantine.recent()[0].meter_id == "unknown:10.9.9.9"
        return listener

    listener = asyncio.run(go())
    assert got == [("IP-1", notification(1, WHEN)), ("IP-1", b"mapped")]
    assert listener.unknown == 1


def test_emulated_meter_pushes_become_alarms_through_the_udp_listener(tmp_path: Path) -> None:
    """hil's PushSource (the emulated meter) -> real UDP -> PushListener -> PushReceiver ->
    spool: last gasp, power restored and tamper as ALARM records; a repeat collapses."""
    clock = ManualClock(ARRIVAL)
    spool = Spool(tmp_path / "spool.sqlite", clock)
    receiver = PushReceiver(spool, clock, quarantine=Quarantine(tmp_path / "q.sqlite", clock))
    source = PushSource("MTR-7")
    at = WHEN.timestamp()
    frames = [
        source.last_gasp(at),
        source.last_gasp(at),  # sent twice (e.g. over two paths)
        source.power_restored(at + 30),
        source.tamper(at + 60),
        source.event_frame(42, at + 90),
    ]

    async def go() -> None:
        listener = PushListener(receiver.on_push, [MeterConfig("MTR-7", "udp", "127.0.0.1")])
        _, port = await listener.start("127.0.0.1", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for frame in frames:
                s.sendto(frame, ("127.0.0.1", port))
        for _ in range(200):
            if receiver.stats.received == len(frames):
                break
            await asyncio.sleep(0.01)
        listener.close()

    asyncio.run(go())
    assert receiver.stats.malformed == 0 and receiver.stats.duplicates == 1
    alarms = spool.next_batch(100, 10**6)
    assert all(a.priority == Priority.ALARM for a in alarms)
    assert [(a.data["event"], a.data["time"]) for a in alarms] == [
        (LAST_GASP, "2024-05-01T11:59:58Z"),
        (POWER_RESTORED, "2024-05-01T12:00:28Z"),
        (TAMPER, "2024-05-01T12:00:58Z"),
        (TAMPER, "2024-05-01T12:01:28Z"),
    ]
    spool.close()
