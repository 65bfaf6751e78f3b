"""Stale replies are never taken for the current request.

Over the mesh a reply can come seconds late, after its request timed out and the next request
went out. These tests put such late datagrams on a real loopback UDP link to the emulated meter
(``LateReplies`` plays a recorded earlier reply just before the real one, as the radio would
deliver it) and check that the read returns the meter's real values, the stale frames are
counted, invoke-ids rotate (and go on from one session to the next), AARE/RLRE/GET-Responses
in the wrong place are discarded, ciphered sessions too, and that a firmware push does not
interleave with a read of the same meter.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.drive import ExchangeDriver, StaleTimeout
from firmware_agent.collector.firmware import FirmwareImage, ThroughputLimit, push_group
from firmware_agent.collector.link import LinkTimeout, MeterLink, UdpMeterLink
from firmware_agent.collector.reader import MeterRead, read_meter
from firmware_agent.collector.scheduler import Collector
from firmware_agent.collector.session import (
    DlmsSession,
    SessionFactory,
    StaleReply,
    plain_session,
    plain_sessions,
    session_factory,
)
from firmware_agent.collector.wrapper import build_frame, parse_frame
from firmware_agent.config import CollectorConfig, MeterConfig, MeterSecurity
from firmware_agent.spool import Spool
from hil.meter.directory import EmulatedMeterParts, build_meter, scenario_keys
from hil.meter.image import seal
from hil.meter.rig import DEMO_GATEWAY_TITLE, associated, drive
from hil.meter.udp import serve_udp

T = TypeVar("T")
NOW = 1_700_000_000.0


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


class Recorder:
    """A real link that keeps every reply it got, in order (the earlier session's traffic)."""

    def __init__(self, inner: MeterLink) -> None:
        self.inner = inner
        self.replies: list[bytes] = []
        self.requests: list[bytes] = []

    async def request(self, frame: bytes, timeout: float) -> bytes:
        self.requests.append(frame)
        reply = await self.inner.request(frame, timeout)
        self.replies.append(reply)
        return reply

    async def close(self) -> None:
        await self.inner.close()


class LateRepliesNoWait:
    """A real link on which, before the real reply to the n-th request (n in ``late``), a
    recorded earlier reply arrives first: a late datagram. This link cannot wait for a frame
    without sending (the driver then asks again); the real reply it held is lost, as a
    link that drains its queue before sending would lose it."""

    def __init__(self, inner: MeterLink, late: dict[int, bytes]) -> None:
        self.inner = inner
        self.late = dict(late)
        self.sent = 0
        self.held: list[bytes] = []
        self.requests: list[bytes] = []

    async def request(self, frame: bytes, timeout: float) -> bytes:
        if not self.requests or frame != self.requests[-1]:  # a plain resend is the same bytes
            self.sent += 1
        self.requests.append(frame)
        self.held.clear()
        real = await self.inner.request(frame, timeout)
        stale = self.late.pop(self.sent, None)
        if stale is None:
            return real
        self.held.append(real)
        return stale

    async def close(self) -> None:
        await self.inner.close()


class LateReplies(LateRepliesNoWait):
    """The same, on a link that can wait for the next frame without sending (``receive``)."""

    async def receive(self, timeout: float) -> bytes:
        if self.held:
            return self.held.pop(0)
        await asyncio.sleep(timeout)
        raise LinkTimeout("nothing more")


def parts(seed: int = 1, **kw: object) -> EmulatedMeterParts:
    return build_meter("MTR-L", ManualClock(NOW), random.Random(seed), **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def served(p: EmulatedMeterParts) -> AsyncIterator[tuple[MeterConfig, UdpMeterLink]]:
    svc = await serve_udp({1: p.meter})
    link = UdpMeterLink("127.0.0.1", svc.port)
    try:
        yield MeterConfig("MTR-L", "udp", "127.0.0.1", svc.port), link
    finally:
        await link.close()
        svc.close()


def values(read: MeterRead) -> list[tuple[object, ...]]:
    return [
        (r.time, r.source, r.kw, r.kva, r.vltg, sorted(r.values.items())) for r in read.readings
    ]


def apdu_tag(frame: bytes) -> int:
    return parse_frame(frame)[1][0]


def invoke(frame: bytes) -> int:
    return parse_frame(frame)[1][2] & 0x0F


# ---------------------------------------------------------------------- over loopback UDP


@pytest.mark.parametrize("link_kind", [LateReplies, LateRepliesNoWait])
def test_late_replies_of_an_earlier_read_are_discarded_and_the_read_is_right(
    link_kind: type[LateRepliesNoWait],
) -> None:
    """Each request of the second read first gets a reply of the first read's *previous*
    request: the RLRE for the AARQ, the AARE for the clock GET, the clock value for the energy
    register, ... (each session starts at invoke-id 1, the worst case). The read's values are
    the meter's real ones, every stale frame is counted, nothing is quarantined as garbage."""
    p = parts()

    async def go() -> tuple[MeterRead, MeterRead, LateRepliesNoWait, list[bytes]]:
        async with served(p) as (cfg, link):
            rec = Recorder(link)
            first = await read_meter(rec, cfg, ManualClock(NOW), timeout=1.0)
            replies = rec.replies
            n = len(replies)
            # request k of the second read first gets reply k-1 of the first (k=1: the RLRE)
            late = {1: replies[-1], **{k: replies[k - 2] for k in range(2, n + 1)}}
            late_link = link_kind(link, late)
            second = await read_meter(late_link, cfg, ManualClock(NOW), timeout=1.0)
            return first, second, late_link, replies

    first, second, late_link, replies = run(go())
    assert apdu_tag(replies[0]) == 0x61 and apdu_tag(replies[-1]) == 0x63  # AARE ... RLRE
    n = len(replies)
    assert second.stale_replies == n
    assert second.energy_wh == first.energy_wh and second.energy_wh is not None
    assert second.meter_time == first.meter_time
    assert values(second) == values(first)
    if link_kind is LateReplies:  # waited for the real reply: no request sent twice
        assert second.round_trips == first.round_trips == n
    else:  # asked again after each stale frame
        assert second.round_trips == 2 * n
    assert not late_link.late  # every late reply was delivered


class SendOnlyLink:
    """A link that cannot wait for a frame without sending one (no ``receive``)."""

    def __init__(self, inner: UdpMeterLink) -> None:
        self.inner = inner

    async def request(self, frame: bytes, timeout: float) -> bytes:
        return await self.inner.request(frame, timeout)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize("can_wait", [False, True])
def test_only_stale_replies_time_out_naming_the_last_reason(can_wait: bool) -> None:
    """A peer that answers only from other wPorts (another association) is a timeout after
    ``max_stale`` discarded frames (a link that must ask again) or after the timeout (a link
    that can wait), not a malformed payload and not an endless loop."""

    async def go() -> tuple[ExchangeDriver, StaleTimeout]:
        class Wrong(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
                self.transport.sendto(build_frame(1, 17, b"\x61\x00"), addr)  # type: ignore[attr-defined]

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Wrong, local_addr=("127.0.0.1", 0))
        udp = UdpMeterLink("127.0.0.1", transport.get_extra_info("sockname")[1])
        link = udp if can_wait else SendOnlyLink(udp)
        driver = ExchangeDriver(link, 0.5 if can_wait else 2.0, retries=1, max_stale=3)
        try:
            with pytest.raises(StaleTimeout) as err:
                await driver.run(DlmsSession().associate())
        finally:
            await link.close()
            transport.close()
        return driver, err.value

    driver, err = run(go())
    assert isinstance(err, LinkTimeout)
    if can_wait:  # one stale reply per attempt, then nothing more within the timeout
        assert driver.stale == 2 and driver.round_trips == 2 and driver.resends == 1
    else:
        assert driver.stale == 8  # (max_stale + 1) per attempt, two attempts
        assert driver.round_trips == 8 and driver.resends == 7
    assert "wrong-wport: frame 1->17, expected 1->16" in str(err)


def test_secured_read_discards_a_late_ciphered_reply(tmp_path: Path) -> None:
    """Suite 0: the invoke-id is inside the glo-ciphered APDU. A late, authentic reply of an
    earlier read (its counter is above the last accepted, so it deciphers) is still told apart
    by its invoke-id and discarded; the HLS association discards an RLRE before its AARE."""
    keys = scenario_keys(1, "MTR-L")
    p = parts(keys=keys)
    store = CounterStore(tmp_path / "ic.sqlite")
    factory = session_factory({"MTR-L": keys}, store, DEMO_GATEWAY_TITLE, random.Random(3))

    async def go() -> tuple[MeterRead, MeterRead]:
        async with served(p) as (cfg, link):
            secured = MeterConfig(
                cfg.id, "udp", "127.0.0.1", cfg.port, client_address=1,
                security=MeterSecurity("suite0"),
            )  # fmt: skip
            rec = Recorder(link)
            first = await read_meter(
                rec, secured, ManualClock(NOW), timeout=1.0, session_factory=factory
            )
            n = len(rec.replies)
            # the first read's energy reply (ciphered, invoke-id 2 of 1..) is held back and
            # delivered late, before the real reply of the second read's 5th request; the
            # RLRE before the second read's AARE
            energy = next(i for i, f in enumerate(rec.requests) if apdu_tag(f) == 0xC8 and i > 2)
            held = rec.replies[energy]
            late = LateReplies(link, {1: rec.replies[-1], n - 1: held})
            second = await read_meter(
                late, secured, ManualClock(NOW), timeout=1.0, session_factory=factory
            )
            return first, second

    first, second = run(go())
    assert second.stale_replies == 2
    assert second.energy_wh == first.energy_wh
    assert values(second) == values(first)


# ---------------------------------------------------------------------- in process


def test_an_aare_for_a_get_and_an_rlre_for_an_aarq_are_stale() -> None:
    server = parts().meter
    s = associated(server)
    ex = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
    aare = build_frame(1, 16, bytes.fromhex("6129a109060760857405080101a203020100"))
    with pytest.raises(StaleReply) as err:
        ex.feed(aare)
    assert "AARE where the request expects GET-Response" in str(err.value)
    assert ex.frames == 0 and not ex.done  # nothing changed: the real reply is still taken
    real = server.handle(ex.request)
    assert real is not None and ex.feed(real) is None and ex.result > 0

    fresh = DlmsSession()
    assoc = fresh.associate()
    with pytest.raises(StaleReply) as err:
        assoc.feed(build_frame(1, 16, bytes.fromhex("6303800100")))
    assert "RLRE" in str(err.value)
    drive(server, assoc)  # and the real AARE still associates
    assert fresh.associated


def test_a_get_response_of_another_invoke_id_is_stale_and_block_transfer_too() -> None:
    server = parts(max_pdu=256).meter
    s = associated(server)
    clock_ex = s.read_clock()
    clock_reply = server.handle(clock_ex.request)
    assert clock_reply is not None
    ex = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
    assert invoke(ex.request) == invoke(clock_ex.request) + 1
    with pytest.raises(StaleReply, match="invoke-id"):
        ex.feed(clock_reply)  # a clock value is never read as the energy register
    drive(server, ex)
    assert isinstance(ex.result, int)
    # block transfer: each next-block request has its own id; a repeated block is stale
    drive(server, s.read_capture_objects(obis.LOAD_PROFILE))
    end = datetime.fromtimestamp(NOW, UTC)
    rows = s.read_rows_by_range(obis.LOAD_PROFILE, end - timedelta(hours=6), end)
    first = server.handle(rows.request)
    assert first is not None and parse_frame(first)[1][:2] == b"\xc4\x02"
    nxt = rows.feed(first)
    assert nxt is not None and invoke(nxt) == invoke(rows.request) % 15 + 1
    with pytest.raises(StaleReply):
        rows.feed(first)  # the same block again (a late duplicate)
    frame: bytes | None = nxt
    while frame is not None:
        reply = server.handle(frame)
        assert reply is not None
        frame = rows.feed(reply)
    assert len(rows.result) > 6


def test_invoke_ids_rotate_and_go_on_across_sessions() -> None:
    server = parts().meter
    make: SessionFactory = plain_sessions()
    cfg = MeterConfig("MTR-L", "udp", "127.0.0.1", 4059)
    seen: list[int] = []
    for _ in range(3):
        s = make(cfg)
        drive(server, s.associate())
        for _ in range(7):
            ex = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
            seen.append(invoke(ex.request))
            drive(server, ex)
        drive(server, s.release())
    assert seen == [i % 15 + 1 for i in range(21)]  # 1..15, 1..6: never two alike in a row
    other = make(MeterConfig("MTR-O", "udp", "127.0.0.1", 4059))
    assert other.invoke_ids is not make(cfg).invoke_ids  # per meter
    lone = plain_session(cfg)  # without the factory: each session from 1 (gurux's habit)
    drive(server, lone.associate())
    assert invoke(lone.read_clock().request) == 1


# ---------------------------------------------------------------------- firmware vs reads


class Tagged:
    """A real link that logs each request's APDU tag and takes a little time per request, so
    two operations on one meter would overlap if nothing kept them apart."""

    def __init__(self, inner: MeterLink, log: list[int]) -> None:
        self.inner = inner
        self.log = log

    async def request(self, frame: bytes, timeout: float) -> bytes:
        self.log.append(apdu_tag(frame))
        await asyncio.sleep(0.003)
        return await self.inner.request(frame, timeout)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize("locked", [True, False])
def test_firmware_push_waits_for_the_read_of_the_same_meter(tmp_path: Path, locked: bool) -> None:
    """With ``Collector.exclusive`` handed to ``push_group`` the push starts its association
    only after the interval read released its own; without it (the old way) they interleave."""
    p = parts()
    clock = ManualClock(NOW)
    image = FirmwareImage(b"FW-2.0", seal(random.Random(4).randbytes(1200)))

    async def go() -> list[int]:
        async with served(p) as (cfg, udp):
            log: list[int] = []
            link = Tagged(udp, log)
            spool = Spool(tmp_path / "spool.sqlite", clock)
            collector = Collector(
                (cfg,), lambda m: link, spool, clock, CollectorConfig(), random.Random(1)
            )

            async def instant(seconds: float) -> None:
                await asyncio.sleep(0)

            limit = ThroughputLimit(1e9, clock, instant)
            read = asyncio.create_task(collector.read_once(cfg))
            while not log:
                await asyncio.sleep(0)
            exclusive = collector.exclusive if locked else None
            results = await push_group([(cfg, link)], image, limit, exclusive, timeout=1.0)
            n = await read
            spool.close()
            if locked:
                assert results[0].ok, results
                assert n > 0
            return log

    log = run(go())
    marks = [t for t in log if t in (0x60, 0x62)]  # AARQ, RLRQ
    if locked:
        assert marks == [0x60, 0x62, 0x60, 0x62]  # the read's association, then the push's
    else:
        assert marks[:2] == [0x60, 0x60]  # the push associated in the middle of the read
