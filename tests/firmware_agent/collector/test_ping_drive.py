"""The meter ping (public-client AARQ/AARE + courtesy RLRQ) and the one exchange driver, over
real loopback UDP against the emulated meter; and the one alarm schema for pushes and the
gateway's own alarms."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from firmware_agent.clock import ManualClock, SystemClock
from firmware_agent.collector import obis
from firmware_agent.collector.ciphering import Suite0
from firmware_agent.collector.drive import ExchangeDriver, run_exchange
from firmware_agent.collector.link import LinkTimeout
from firmware_agent.collector.ping import PUBLIC_CLIENT, PingResult, ping_meter
from firmware_agent.collector.push import parse_push
from firmware_agent.collector.records import ALARM_MAC_FAIL, Alarm
from firmware_agent.collector.session import DlmsSession
from firmware_agent.config import MeterConfig
from hil.meter.dlms_server import MeterServer, ServerSecurity
from hil.meter.faults import Fault, FaultKind, FaultyMeter
from hil.meter.model import MeterModel
from hil.meter.push import PushSource
from hil.meter.rig import DEMO_AK, DEMO_EK, DEMO_METER_TITLE, udp_meter

T = TypeVar("T")
NOW = 1_700_000_000.0


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


def server(*, secured: bool = False) -> MeterServer:
    sec = ServerSecurity(Suite0(DEMO_EK, DEMO_AK), DEMO_METER_TITLE, random.Random(2))
    model = MeterModel("MTR-P", random.Random(1))
    return MeterServer(model, ManualClock(NOW), security=sec if secured else None)


def faulty(kind: FaultKind) -> FaultyMeter:
    return FaultyMeter(server(), random.Random(4), [Fault(kind, None)])


def cfg(port: int) -> MeterConfig:
    return MeterConfig("MTR-P", "udp", "127.0.0.1", port)


async def ping(meter: MeterServer | FaultyMeter, timeout_s: float) -> tuple[PingResult, float]:
    async with udp_meter(meter) as (link, svc):
        t0 = time.monotonic()
        result = await ping_meter(link, cfg(svc.port), timeout_s, clock=SystemClock())
        return result, time.monotonic() - t0


@pytest.mark.parametrize("secured", [False, True])
def test_ping_a_live_meter_is_reachable_and_releases(secured: bool) -> None:
    meter = server(secured=secured)  # suite 0 meters answer the public client too
    result, _ = run(ping(meter, 2.0))
    assert result.reachable and result.error is None and result.meter_id == "MTR-P"
    assert result.round_trip_s is not None and 0 < result.round_trip_s < 2.0
    assert not meter.associated(PUBLIC_CLIENT)  # the courtesy RLRQ was served


def test_ping_a_silent_meter_is_unreachable_within_the_timeout() -> None:
    result, elapsed = run(ping(faulty(FaultKind.SILENCE), 0.2))
    assert not result.reachable and result.round_trip_s is None
    assert result.error is not None and result.error.startswith("LinkTimeout")
    assert elapsed < 1.0  # one AARQ, no resends, no waiting for a release


def test_ping_a_garbling_meter_is_unreachable_with_the_reason() -> None:
    result, _ = run(ping(faulty(FaultKind.GARBAGE), 2.0))
    assert not result.reachable and result.round_trip_s is None
    assert result.error is not None and result.error.startswith("MalformedReply")


def test_ping_rejects_a_non_positive_timeout() -> None:
    async def go() -> None:
        async with udp_meter(server()) as (link, svc):
            with pytest.raises(ValueError, match="timeout"):
                await ping_meter(link, cfg(svc.port), 0.0)

    run(go())


def test_driver_resends_retry_frame_after_a_lost_reply_and_counts_it() -> None:
    meter = FaultyMeter(server(), random.Random(4), [Fault(FaultKind.LOST_REPLY, 1, after=1)])
    paced: list[int] = []

    async def pace(n: int) -> None:
        paced.append(n)

    async def go() -> object:
        async with udp_meter(meter) as (link, _svc):
            s = DlmsSession()
            driver = ExchangeDriver(link, 0.2, retries=1, pace=pace)
            await driver.run(s.associate())
            value = await driver.run(s.read_value(obis.ACTIVE_ENERGY_IMPORT))
            assert (driver.round_trips, driver.resends) == (3, 1)
            assert driver.frame_bytes == sum(paced) and len(paced) == 3
            assert driver.last_reply is not None
            return value

    assert isinstance(run(go()), int)
    assert meter.counters["lost-reply"] == 1


def test_run_exchange_without_retries_raises_the_timeout() -> None:
    async def go() -> None:
        async with udp_meter(faulty(FaultKind.SILENCE)) as (link, _svc):
            with pytest.raises(LinkTimeout):
                await run_exchange(link, DlmsSession().associate(), 0.1)

    run(go())


def test_driver_refuses_negative_retries() -> None:
    async def go() -> None:
        async with udp_meter(server()) as (link, _svc):
            with pytest.raises(ValueError, match="retries"):
                ExchangeDriver(link, 1.0, -1)

    run(go())


def test_pushed_and_gateway_alarms_share_one_schema() -> None:
    src = PushSource("MTR-P", server_wport=1, client_wport=16)
    pushed = parse_push("MTR-P", src.last_gasp(NOW), NOW + 1)
    own = Alarm("MTR-P", ALARM_MAC_FAIL, "2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z")
    assert type(pushed) is Alarm
    assert pushed.to_dict().keys() == own.to_dict().keys()
    assert pushed.to_dict()["code"] == 1 and own.to_dict()["code"] is None
    assert pushed.natural_key.split("|")[1] == "alarm:last-gasp"
