"""Fault injection in front of the emulated meter, against our collector's real reader over
loopback UDP/TCP: garbage then a good read, a truncated reply, silence -> timeout (and a retry that
recovers), a slow reply that arrives late but in time, one that misses the timeout, a wrong APDU."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector.link import LinkTimeout, TcpMeterLink, UdpMeterLink
from firmware_agent.collector.reader import MeterRead, MeterReadError, read_meter
from firmware_agent.collector.session import MalformedReply
from firmware_agent.collector.wrapper import parse_frame
from firmware_agent.config import MeterConfig
from hil.meter.dlms_server import MeterServer
from hil.meter.faults import DESYNC_JUMP, Fault, FaultKind, FaultSpecError, FaultyMeter, parse_fault
from hil.meter.model import MeterModel
from hil.meter.udp import serve_tcp, serve_udp

T = TypeVar("T")
NOW = 1_700_000_000.0


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


def faulty(*faults: Fault, seed: int = 7) -> tuple[FaultyMeter, ManualClock]:
    clock = ManualClock(NOW)
    server = MeterServer(MeterModel("MTR-F", random.Random(seed)), clock)
    return FaultyMeter(server, random.Random(seed), faults), clock


def cfg(port: int, transport: str = "udp") -> MeterConfig:
    return MeterConfig("MTR-F", transport, "127.0.0.1", port)


async def read_twice(
    meter: FaultyMeter, clock: ManualClock, *, timeout: float = 2.0, retries: int = 0
) -> tuple[MeterRead | MeterReadError, MeterRead | MeterReadError]:
    svc = await serve_udp({1: meter})
    link = UdpMeterLink("127.0.0.1", svc.port)
    outcomes: list[MeterRead | MeterReadError] = []
    try:
        for _ in range(2):
            try:
                outcomes.append(
                    await read_meter(link, cfg(svc.port), clock, timeout=timeout, retries=retries)
                )
            except MeterReadError as exc:
                outcomes.append(exc)
    finally:
        await link.close()
        svc.close()
    return outcomes[0], outcomes[1]


# ---------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("garbage", Fault(FaultKind.GARBAGE, 1)),
        ("garbage:3", Fault(FaultKind.GARBAGE, 3)),
        ("slow:*,delay=1.5", Fault(FaultKind.SLOW, None, delay_s=1.5)),
        ("silence:2,after=4,p=0.5", Fault(FaultKind.SILENCE, 2, 0.5, 4)),
        ("wrong-apdu", Fault(FaultKind.WRONG_APDU, 1)),
    ],
)
def test_parse_fault(spec: str, expected: Fault) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("boom:1", "not one of garbage"),
        ("garbage:0", "at least 1"),
        ("garbage,p=2", r"in \(0, 1\]"),
        ("garbage,x=1", "not p, after or delay"),
        ("slow,delay=soon", "not a number"),
        ("garbage:", "KIND"),
    ],
)
def test_bad_fault_specs_name_the_problem(spec: str, match: str) -> None:
    with pytest.raises(FaultSpecError, match=match):
        parse_fault(spec)


def test_desync_jumps_the_accepted_client_counter_and_still_answers() -> None:
    meter, _ = faulty(Fault(FaultKind.DESYNC, 1))
    before = meter.server.client_counter
    junk = b"\x00\x01\x00\x10\x00\x01\x00\x00"
    assert meter.respond(junk) is not None
    assert meter.server.client_counter == before + DESYNC_JUMP
    assert meter.server.counters["counter-desyncs"] == 1


# ---------------------------------------------------------------------- sans-IO behaviour


def test_count_after_and_probability_are_honoured() -> None:
    meter, _ = faulty(Fault(FaultKind.SILENCE, 2, after=1))
    junk = b"\x00\x01\x00\x10\x00\x01\x00\x00"  # an empty APDU: the server answers an exception
    assert meter.respond(junk) is not None  # the 'after' frame
    assert meter.respond(junk) is None
    assert meter.respond(junk) is None
    assert meter.respond(junk) is not None and not meter.faults
    assert meter.counters["silence"] == 2

    meter, _ = faulty(Fault(FaultKind.SILENCE, None, probability=0.3), seed=3)
    answered = sum(meter.respond(junk) is not None for _ in range(1000))
    assert 630 < answered < 770  # ~70 % answered, seeded
    again, _ = faulty(Fault(FaultKind.SILENCE, None, probability=0.3), seed=3)
    assert answered == sum(again.respond(junk) is not None for _ in range(1000))


def test_corrupt_keeps_a_valid_wrapper_header_and_cuts_the_apdu() -> None:
    meter, _ = faulty(Fault(FaultKind.CORRUPT, 1))
    plain, _ = faulty()
    request = b"\x00\x01\x00\x10\x00\x01\x00\x00"
    got = meter.respond(request)
    real = plain.respond(request)
    assert got is not None and real is not None
    header, apdu = parse_frame(got.frame)  # well-formed frame
    _, real_apdu = parse_frame(real.frame)
    assert (header.source, header.destination) == (1, 16)
    assert 1 <= len(apdu) < len(real_apdu) and real_apdu.startswith(apdu)


# ---------------------------------------------------------------------- against the reader


def test_garbage_reply_fails_one_read_and_the_next_read_succeeds() -> None:
    meter, clock = faulty(Fault(FaultKind.GARBAGE, 1))
    first, second = run(read_twice(meter, clock))
    assert isinstance(first, MeterReadError) and first.stage == "associate"
    assert isinstance(first.cause, MalformedReply)
    assert isinstance(second, MeterRead) and len(second.readings) == 5
    assert meter.counters["garbage"] == 1


def test_corrupted_clock_reply_is_malformed_at_the_clock_stage() -> None:
    meter, clock = faulty(Fault(FaultKind.CORRUPT, 1, after=1))
    first, second = run(read_twice(meter, clock))
    assert isinstance(first, MeterReadError) and first.stage == "clock"
    assert isinstance(first.cause, MalformedReply)
    assert isinstance(second, MeterRead)


def test_wrong_apdu_is_a_stale_reply_discarded_and_the_read_gets_the_answer() -> None:
    """A well-formed reply of another service (what a late reply to an earlier request looks
    like) is never taken for the answer: it is discarded and counted; this meter sends nothing
    else, so the wait for the real answer times out and the retry gets it."""
    meter, clock = faulty(Fault(FaultKind.WRONG_APDU, 1, after=1))
    # an ACTION-Response to the clock GET
    first, second = run(read_twice(meter, clock, timeout=0.5, retries=1))
    assert isinstance(first, MeterRead) and first.stale_replies == 1
    assert isinstance(second, MeterRead) and second.stale_replies == 0

    meter, clock = faulty(Fault(FaultKind.WRONG_APDU, 1))
    # an RLRE (6303800100) to the AARQ
    first, _ = run(read_twice(meter, clock, timeout=0.5, retries=1))
    assert isinstance(first, MeterRead) and first.stale_replies == 1
    assert len(first.readings) == 5


def test_silence_times_out_and_a_retry_recovers() -> None:
    meter, clock = faulty(Fault(FaultKind.SILENCE, 1))
    first, second = run(read_twice(meter, clock, timeout=0.2, retries=0))
    assert isinstance(first, MeterReadError) and isinstance(first.cause, LinkTimeout)
    assert isinstance(second, MeterRead)

    meter, clock = faulty(Fault(FaultKind.SILENCE, 1, after=2))
    with_retry, _ = run(read_twice(meter, clock, timeout=0.2, retries=1))
    assert isinstance(with_retry, MeterRead)
    assert meter.counters["silence"] == 1


def test_slow_reply_within_the_timeout_is_read_late() -> None:
    meter, clock = faulty(Fault(FaultKind.SLOW, 1, delay_s=0.3))
    t0 = time.monotonic()
    first, _ = run(read_twice(meter, clock, timeout=2.0))
    assert isinstance(first, MeterRead)
    assert time.monotonic() - t0 >= 0.3


def test_slow_reply_past_the_timeout_is_a_timeout() -> None:
    meter, clock = faulty(Fault(FaultKind.SLOW, 1, delay_s=0.5))
    first, _ = run(read_twice(meter, clock, timeout=0.15))
    assert isinstance(first, MeterReadError) and isinstance(first.cause, LinkTimeout)
    assert first.stage == "associate"


def test_slow_reply_over_tcp_holds_the_stream() -> None:
    meter, clock = faulty(Fault(FaultKind.SLOW, 2, delay_s=0.2))

    async def go() -> float:
        svc = await serve_tcp({1: meter})
        link = TcpMeterLink("127.0.0.1", svc.port)
        try:
            t0 = time.monotonic()
            result = await read_meter(link, cfg(svc.port, "tcp"), clock, timeout=2.0)
            assert len(result.readings) == 5
            return time.monotonic() - t0
        finally:
            await link.close()
            await svc.close()

    assert run(go()) >= 0.4
