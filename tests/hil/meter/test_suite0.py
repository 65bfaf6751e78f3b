"""Security suite 0 end to end: gurux's own GXDLMSSecureClient and our DlmsSession against the
emulated meter's HLS-GMAC association and glo-ciphered services, over real loopback UDP; enforced
invocation counters on both sides; desync -> MAC Fail -> security reset -> reads again."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from gurux_dlms import GXByteBuffer, GXReplyData
from gurux_dlms.enums import Authentication, InterfaceType, Security
from gurux_dlms.objects import GXDLMSClock, GXDLMSProfileGeneric, GXDLMSRegister
from gurux_dlms.secure import GXDLMSSecureClient

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.ciphering import Suite0
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.drive import run_exchange
from firmware_agent.collector.keys import MeterKeys
from firmware_agent.collector.link import UdpMeterLink
from firmware_agent.collector.security_reset import security_reset
from firmware_agent.collector.session import (
    CounterDesync,
    DlmsSession,
    Exchange,
    MacFailure,
    ReplayedFrame,
    StaleReply,
    Suite0Security,
)
from firmware_agent.collector.wrapper import build_frame, parse_frame
from hil.meter.dlms_server import MeterServer, ServerSecurity
from hil.meter.model import MeterModel
from hil.meter.rig import DEMO_AK, DEMO_EK, DEMO_GATEWAY_TITLE, DEMO_METER_TITLE, drive
from hil.meter.udp import serve_udp

T = TypeVar("T")
NOW = 1_700_000_000.0
EK, AK = DEMO_EK, DEMO_AK
METER_TITLE, GATEWAY_TITLE = DEMO_METER_TITLE, DEMO_GATEWAY_TITLE
MANAGEMENT = 1


def secured_server(max_pdu: int = 1024, seed: int = 3) -> MeterServer:
    clock = ManualClock(NOW)
    model = MeterModel("MTR-S", random.Random(seed), profile_depth=960)
    sec = ServerSecurity(Suite0(EK, AK), METER_TITLE, random.Random(seed))
    return MeterServer(model, clock, max_pdu=max_pdu, security=sec)


def keys(ek: bytes = EK) -> MeterKeys:
    return MeterKeys("MTR-S", ek, AK, METER_TITLE)


def secured_session(store: CounterStore, *, ek: bytes = EK) -> DlmsSession:
    sec = Suite0Security("MTR-S", keys(ek), GATEWAY_TITLE, store, random.Random(9))
    return DlmsSession(MANAGEMENT, 1, security=sec)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


@asynccontextmanager
async def udp(server: MeterServer) -> AsyncIterator[UdpMeterLink]:
    svc = await serve_udp({1: server})
    link = UdpMeterLink("127.0.0.1", svc.port)
    try:
        yield link
    finally:
        await link.close()
        svc.close()


async def over(link: UdpMeterLink, exchange: Exchange[T]) -> T:
    return await run_exchange(link, exchange, 5.0)


# ---------------------------------------------------------------------------------- gurux


def gurux_secure_client() -> GXDLMSSecureClient:
    c = GXDLMSSecureClient(
        True, MANAGEMENT, 1, Authentication.HIGH_GMAC, None, InterfaceType.WRAPPER
    )
    c.ciphering.security = Security.AUTHENTICATION_ENCRYPTION
    c.ciphering.systemTitle = GATEWAY_TITLE
    c.ciphering.blockCipherKey = EK
    c.ciphering.authenticationKey = AK
    return c


async def gurux_ask(link: UdpMeterLink, client: Any, frames: Any) -> GXReplyData:
    reply = GXReplyData()
    for frame in frames:
        data = await link.request(bytes(frame), 5.0)
        reply = GXReplyData()
        assert client.getData(GXByteBuffer(data), reply, None)
        while reply.isMoreData():
            data = await link.request(bytes(client.receiverReady(reply)), 5.0)
            assert client.getData(GXByteBuffer(data), reply, None)
    return reply


def test_gurux_secure_client_reads_clock_register_and_profile_over_udp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = secured_server(max_pdu=512)
    client = gurux_secure_client()

    async def main() -> tuple[Any, Any, list[Any]]:
        async with udp(server) as link:
            client.parseAareResponse((await gurux_ask(link, client, client.aarqRequest())).data)
            assert client.isAuthenticationRequired
            reply = await gurux_ask(link, client, client.getApplicationAssociationRequest())
            client.parseApplicationAssociationResponse(reply.data)
            clock = GXDLMSClock(obis.CLOCK)
            client.updateValue(
                clock, 2, (await gurux_ask(link, client, client.read(clock, 2))).value
            )
            reg = GXDLMSRegister(obis.ACTIVE_ENERGY_IMPORT)
            reply = await gurux_ask(link, client, client.read(reg, 2))
            energy = reply.value
            pg = GXDLMSProfileGeneric(obis.LOAD_PROFILE)
            client.updateValue(pg, 3, (await gurux_ask(link, client, client.read(pg, 3))).value)
            end = datetime.fromtimestamp(NOW, UTC)
            frames = client.readRowsByRange(pg, end - timedelta(hours=24), end)
            pg.buffer = []
            client.updateValue(pg, 2, (await gurux_ask(link, client, frames)).value)
            await gurux_ask(link, client, client.releaseRequest())
            return clock.time, energy, list(pg.buffer)

    when, energy, rows = run(main())
    capsys.readouterr()  # gurux prints "Encryption is applied." per frame
    assert abs(when.value.timestamp() - NOW) < 2
    assert isinstance(energy, int) and energy > 0
    assert len(rows) >= 95  # 24 h of 15-min rows, through ciphered block transfer
    assert server.counters["block-transfers"] >= 1
    assert server.counters["associations"] == 1 and server.counters["hls-failed"] == 0
    assert server.counters["ciphered-requests"] >= 5
    assert server.client_counter > 0


# ---------------------------------------------------------------------------------- ours


def test_our_session_reads_over_suite0_in_process(tmp_path: Path) -> None:
    server = secured_server(max_pdu=256)
    store = CounterStore(tmp_path / "ic.sqlite")
    s = secured_session(store)
    drive(server, s.associate())
    assert s.associated and server.counters["associations"] == 1
    energy = drive(server, s.read_value(obis.ACTIVE_ENERGY_IMPORT))
    assert energy > 0
    when = drive(server, s.read_clock())
    assert abs(when.timestamp() - NOW) < 2
    cols = drive(server, s.read_capture_objects(obis.LOAD_PROFILE))
    assert cols[0].obis == obis.CLOCK
    end = datetime.fromtimestamp(NOW, UTC)
    rows = drive(server, s.read_rows_by_range(obis.LOAD_PROFILE, end - timedelta(hours=6), end))
    assert len(rows) >= 24 and server.counters["block-transfers"] >= 1
    drive(server, s.release())
    assert store.state("MTR-S").last_received == server.send_counter - 1
    assert server.client_counter == store.state("MTR-S").next_send - 1


def test_our_session_still_reads_plain_from_the_public_client() -> None:
    server = secured_server()
    s = DlmsSession(16, 1)
    drive(server, s.associate())
    assert drive(server, s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0
    assert drive(server, s.read_value("0.0.43.1.0.255", obis.IC_DATA)) == 0
    assert server.counters["ciphered-requests"] == 0


def test_meter_refuses_lowest_security_and_plain_requests_from_the_management_client(
    tmp_path: Path,
) -> None:
    from firmware_agent.collector.session import AssociationRejected

    server = secured_server()
    with pytest.raises(AssociationRejected, match="authentication-mechanism-name-required"):
        drive(server, DlmsSession(MANAGEMENT, 1).associate())
    s = secured_session(CounterStore(tmp_path / "ic.sqlite"))
    drive(server, s.associate())
    plain_get = bytes.fromhex("C001C100030100010800FF0200")
    reply = parse_frame(server.handle(build_frame(MANAGEMENT, 1, plain_get)) or b"")[1]
    assert reply[0] == 0xD8 and server.counters["unciphered-request"] == 1


def test_wrong_keys_are_a_mac_failure_on_both_sides(tmp_path: Path) -> None:
    server = secured_server()
    s = secured_session(CounterStore(tmp_path / "ic.sqlite"), ek=bytes(16))
    with pytest.raises(MacFailure) as err:
        drive(server, s.associate())
    assert "MAC Fail (meter MTR-S)" in str(err.value)
    assert server.counters["deciphering-failed"] == 1


def test_replayed_request_is_refused_and_counted_by_the_meter(tmp_path: Path) -> None:
    server = secured_server()
    s = secured_session(CounterStore(tmp_path / "ic.sqlite"))
    drive(server, s.associate())
    old = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
    drive(server, old)
    drive(server, s.read_value(obis.VOLTAGE_L1))
    reply = server.handle(old.request)  # the old ciphered GET, byte for byte
    apdu = parse_frame(reply or b"")[1]
    assert apdu[:3] == b"\xd8\x01\x06"  # invocation-counter-error, with the counter it wants
    assert int.from_bytes(apdu[3:7], "big") == server.client_counter + 1
    assert server.counters["replayed-counter"] == 1
    assert drive(server, s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0  # still serving


def test_replayed_reply_is_refused_by_the_client(tmp_path: Path) -> None:
    server = secured_server()
    store = CounterStore(tmp_path / "ic.sqlite")
    s = secured_session(store)
    drive(server, s.associate())
    first = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
    old_reply = server.handle(first.request)
    assert old_reply is not None
    first.feed(old_reply)
    second = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
    server.handle(second.request)
    with pytest.raises(StaleReply):
        second.feed(old_reply)  # the earlier reply answers another invoke-id: never taken
    # a new session's invoke-ids start over: the replay matches the request and is refused
    s2 = secured_session(store)
    drive(server, s2.associate())
    third = s2.read_value(obis.ACTIVE_ENERGY_IMPORT)
    assert server.handle(third.request) is not None
    with pytest.raises(ReplayedFrame) as err:
        third.feed(old_reply)  # an attacker answers with the earlier, authentic reply
    assert err.value.counter < err.value.last
    assert f"invocation counter {err.value.counter} is not above" in str(err.value)


def test_meter_that_restarts_its_own_counter_looks_replayed(tmp_path: Path) -> None:
    server = secured_server()
    s = secured_session(CounterStore(tmp_path / "ic.sqlite"))
    drive(server, s.associate())
    server.desync_counters(send=1)
    with pytest.raises(ReplayedFrame):
        drive(server, s.read_value(obis.ACTIVE_ENERGY_IMPORT))


def test_desync_mac_fail_then_security_reset_recovers_over_udp(tmp_path: Path) -> None:
    server = secured_server()
    store = CounterStore(tmp_path / "ic.sqlite")

    async def main() -> None:
        async with udp(server) as link:
            s = secured_session(store)
            await over(link, s.associate())
            assert await over(link, s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0
            await over(link, s.release())
            server.desync_counters(client=1_000_000)  # meter-side reset jumped its counter
            s = secured_session(store)
            with pytest.raises(CounterDesync) as err:
                await over(link, s.associate())
            assert isinstance(err.value, MacFailure)
            assert server.counters["replayed-counter"] == 1
            result = await security_reset(link, "MTR-S", store)
            assert result.meter_counter == 1_000_000
            assert result.new_next == 1_000_001 and result.old_next < 1_000_000
            s = secured_session(store)
            await over(link, s.associate())
            assert await over(link, s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0
            await over(link, s.release())

    run(main())
    assert server.client_counter > 1_000_000


def test_secured_read_costs_no_extra_round_trips(tmp_path: Path) -> None:
    """Functional check behind the bench's ratio: the same reads take the same frames, plus the
    two of the HLS pass, and the ciphered blocks still fit the negotiated PDU."""
    plain_server, secured = secured_server(max_pdu=200), secured_server(max_pdu=200)
    end = datetime.fromtimestamp(NOW, UTC)

    def frames(server: MeterServer, s: DlmsSession) -> tuple[int, int]:
        a = s.associate()
        drive(server, a)
        drive(server, s.read_capture_objects(obis.LOAD_PROFILE))
        ex = s.read_rows_by_range(obis.LOAD_PROFILE, end - timedelta(hours=4), end)
        rows = drive(server, ex)
        return a.frames, ex.frames + len(rows) * 0

    plain_assoc, plain_rows = frames(plain_server, DlmsSession(16, 1))
    sec_assoc, sec_rows = frames(secured, secured_session(CounterStore(tmp_path / "ic.sqlite")))
    assert plain_assoc == 1 and sec_assoc == 2
    assert sec_rows <= plain_rows + 2  # cipher overhead shrinks blocks a little, no more


def test_session_factory_picks_security_per_meter(tmp_path: Path) -> None:
    from firmware_agent.collector.session import SessionStateError, session_factory
    from firmware_agent.config import MeterConfig, MeterSecurity

    make = session_factory(
        {"MTR-S": keys()}, CounterStore(tmp_path / "ic.sqlite"), GATEWAY_TITLE, random.Random(1)
    )
    plain = make(MeterConfig("MTR-P", "udp", "127.0.0.1"))
    assert plain.security is None and plain.client_address == 16
    sec = MeterSecurity(level="suite0")
    secured = make(MeterConfig("MTR-S", "udp", "127.0.0.1", client_address=1, security=sec))
    assert secured.security is not None and secured.security.keys.system_title == METER_TITLE
    server = secured_server()
    drive(server, secured.associate())
    assert drive(server, secured.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0
    with pytest.raises(SessionStateError, match="MTR-X: suite0 configured but not in the key"):
        make(MeterConfig("MTR-X", "udp", "127.0.0.1", security=sec))
