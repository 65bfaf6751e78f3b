"""Retries under suite 0: a reply lost *after* the meter served the request (the ``lost-reply``
fault) must not turn into a false MAC Fail. The retry is the same plain APDU with a fresh
invocation counter (``Exchange.retry_frame``); resending the ciphered bytes is a replay to the
meter. Over real loopback UDP against the emulated meter, at every request of a whole read."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.ciphering import Suite0
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.firmware import FirmwareImage, ThroughputLimit, push_image
from firmware_agent.collector.keys import MeterKeys
from firmware_agent.collector.link import UdpMeterLink
from firmware_agent.collector.reader import MeterRead, read_meter
from firmware_agent.collector.session import (
    CounterDesync,
    DlmsSession,
    Suite0Security,
    session_factory,
)
from firmware_agent.config import MeterConfig, MeterSecurity
from hil.meter.directory import full_directory
from hil.meter.dlms_server import MeterServer, ServerSecurity
from hil.meter.faults import Fault, FaultKind, FaultyMeter
from hil.meter.image import seal
from hil.meter.model import MeterModel
from hil.meter.rig import DEMO_AK, DEMO_EK, DEMO_GATEWAY_TITLE, DEMO_METER_TITLE, drive
from hil.meter.udp import serve_udp

T = TypeVar("T")
NOW = 1_700_000_000.0
EK, AK = DEMO_EK, DEMO_AK
METER_TITLE, GATEWAY_TITLE = DEMO_METER_TITLE, DEMO_GATEWAY_TITLE
KEYS = MeterKeys("MTR-R", EK, AK, METER_TITLE)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


def secured_meter(*faults: Fault, max_pdu: int = 256) -> FaultyMeter:
    clock = ManualClock(NOW)
    model = MeterModel("MTR-R", random.Random(3))
    server = MeterServer(
        model,
        clock,
        max_pdu=max_pdu,
        objects=full_directory(model),
        security=ServerSecurity(Suite0(EK, AK), METER_TITLE, random.Random(3)),
    )
    return FaultyMeter(server, random.Random(3), faults)


def meter_config(port: int) -> MeterConfig:
    return MeterConfig(
        "MTR-R", "udp", "127.0.0.1", port, client_address=1, security=MeterSecurity("suite0")
    )


async def secured_read(meter: FaultyMeter, store: CounterStore, retries: int) -> MeterRead:
    svc = await serve_udp({1: meter})
    link = UdpMeterLink("127.0.0.1", svc.port)
    factory = session_factory({"MTR-R": KEYS}, store, GATEWAY_TITLE, random.Random(5))
    try:
        return await read_meter(
            link,
            meter_config(svc.port),
            meter.server.clock,
            profile_rows=8,
            timeout=0.15,
            retries=retries,
            session_factory=factory,
        )
    finally:
        await link.close()
        svc.close()


def frames_in_a_clean_read(tmp_path: Path) -> int:
    meter = secured_meter()
    read = run(secured_read(meter, CounterStore(tmp_path / "clean.sqlite"), 0))
    assert read.round_trips == meter.server.counters["frames"]
    return read.round_trips


def test_a_clean_secured_read_uses_block_transfer(tmp_path: Path) -> None:
    """The read below covers AARQ, the HLS proof, GETs, GET-Request-Next blocks and RLRQ."""
    meter = secured_meter()
    read = run(secured_read(meter, CounterStore(tmp_path / "ic.sqlite"), 0))
    assert len(read.readings) == 9  # the energy register and 8 profile rows
    assert meter.server.counters["block-transfers"] >= 1
    assert meter.server.counters["blocks-completed"] >= 1


@pytest.mark.parametrize("position", range(16))
def test_a_reply_lost_after_the_meter_served_it_is_retried_without_a_mac_fail(
    tmp_path: Path, position: int
) -> None:
    total = frames_in_a_clean_read(tmp_path) if position == 0 else 16
    if position >= total:
        pytest.skip(f"a clean read has {total} requests")
    meter = secured_meter(Fault(FaultKind.LOST_REPLY, 1, after=position))
    store = CounterStore(tmp_path / "ic.sqlite")
    read = run(secured_read(meter, store, retries=1))
    assert meter.counters["lost-reply"] == 1
    assert meter.server.counters["replayed-counter"] == 0
    assert len(read.readings) == 9
    # The meter saw the lost request and its retry: one frame more than the round trips
    # that came back, each with a counter above the last.
    assert meter.server.counters["frames"] == read.round_trips
    assert meter.server.client_counter == store.state("MTR-R").next_send - 1


def test_the_clean_read_has_as_many_requests_as_the_positions_tested(tmp_path: Path) -> None:
    assert 12 <= frames_in_a_clean_read(tmp_path) <= 16


def test_resending_the_same_ciphered_bytes_would_be_a_false_mac_fail(tmp_path: Path) -> None:
    """What the retry must not do, shown on the session: the meter served the request, its
    reply was lost; the same bytes again are a replay (invocation-counter-error) whereas
    ``retry_frame()`` is served."""
    meter = secured_meter()
    server = meter.server
    store = CounterStore(tmp_path / "ic.sqlite")
    sec = Suite0Security("MTR-R", KEYS, GATEWAY_TITLE, store, random.Random(9))
    s = DlmsSession(1, 1, security=sec)
    drive(server, s.associate())

    replayed = s.read_clock()
    assert server.handle(replayed.request) is not None  # served; the reply is "lost"
    answer = server.handle(replayed.request)
    assert answer is not None
    with pytest.raises(CounterDesync):
        replayed.feed(answer)
    assert server.counters["replayed-counter"] == 1

    retried = s.read_clock()
    assert server.handle(retried.request) is not None  # served; the reply is "lost"
    again = retried.retry_frame()
    assert again != retried.request and retried.retries == 1
    reply = server.handle(again)
    assert reply is not None and retried.feed(reply) is None
    assert abs(retried.result.timestamp() - NOW) < 2
    assert server.counters["replayed-counter"] == 1


def test_retry_frame_of_a_plain_session_is_the_same_request() -> None:
    s = DlmsSession()
    ex = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
    assert ex.retry_frame() == ex.request


def test_lost_hls_proof_reply_is_answered_again(tmp_path: Path) -> None:
    """The meter authenticated the association; the client, not knowing, proves again with a
    fresh counter and gets f(CtoS) again rather than a refusal."""
    server = secured_meter().server
    store = CounterStore(tmp_path / "ic.sqlite")
    s = DlmsSession(
        1, 1, security=Suite0Security("MTR-R", KEYS, GATEWAY_TITLE, store, random.Random(9))
    )
    ex = s.associate()
    aare = server.handle(ex.request)
    assert aare is not None
    proof = ex.feed(aare)
    assert proof is not None and server.handle(proof) is not None  # reply lost
    answer = server.handle(ex.retry_frame())
    assert answer is not None and ex.feed(answer) is None and s.associated
    assert server.counters["hls-repeated"] == 1 and server.counters["associations"] == 1
    assert drive(server, s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0


def test_firmware_push_over_suite0_survives_lost_replies(tmp_path: Path) -> None:
    """Image blocks are ACTIONs; a lost reply to one is retried re-protected, not replayed."""
    meter = secured_meter(max_pdu=1024)
    for after in (6, 9, 4):  # a read, a block, a later block (each after the previous fault)
        meter.inject(Fault(FaultKind.LOST_REPLY, 1, after=after))
    store = CounterStore(tmp_path / "ic.sqlite")
    factory = session_factory({"MTR-R": KEYS}, store, GATEWAY_TITLE, random.Random(5))
    clock = meter.server.clock
    assert isinstance(clock, ManualClock)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    async def go() -> bool:
        svc = await serve_udp({1: meter})
        link = UdpMeterLink("127.0.0.1", svc.port)
        try:
            result = await push_image(
                link,
                meter_config(svc.port),
                FirmwareImage(b"FW-RETRY", seal(b"r" * 4000)),
                ThroughputLimit(1e9, clock, sleep),
                timeout=0.15,
                retries=1,
                session_factory=factory,
            )
            assert result.ok, result
            return result.ok
        finally:
            await link.close()
            svc.close()

    assert run(go())
    assert meter.counters["lost-reply"] == 3
    assert meter.server.counters["replayed-counter"] == 0
