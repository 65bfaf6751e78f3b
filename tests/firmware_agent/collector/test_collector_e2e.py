"""The collector against emulated meters over real loopback UDP, with real SQLite files: garbage
is quarantined and the next read succeeds, catch-up after gateway and meter outages leaves no gap
and no duplicate, on-demand reads jump the queue, the gateway-wide read limit holds, daily
registers with the drift alarm, MAC Fail once per episode, DLMS errors by name."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.catchup import ProfileMarks
from firmware_agent.collector.link import MeterLink, UdpMeterLink
from firmware_agent.collector.quarantine import MALFORMED_PAYLOAD, Quarantine
from firmware_agent.collector.reader import MeterReadError
from firmware_agent.collector.scheduler import (
    MAC_FAIL,
    WHAT_INSTANTANEOUS,
    Collector,
    UnknownMeter,
    meter_offset,
)
from firmware_agent.collector.session import DlmsError, DlmsSession, Exchange
from firmware_agent.collector.wrapper import build_frame, parse_frame
from firmware_agent.config import CollectorConfig, MeterConfig
from firmware_agent.spool import Priority, Spool
from hil.meter.dlms_server import MeterServer
from hil.meter.model import MeterModel

T = TypeVar("T")
START = 1_714_521_600.0 + 7 * 3600  # 2024-05-01T07:00:00Z
PERIOD = 900


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, limit)

    return asyncio.run(main())


class WarpClock:
    """Gateway and meters share it: ``scale`` virtual seconds pass per real second, and
    ``jump`` moves it ahead at once (an outage). Its ``sleep`` waits the scaled real time."""

    def __init__(self, start: float, scale: float) -> None:
        self._real0 = time.monotonic()
        self.start = start
        self.scale = scale
        self.jumped = 0.0

    def monotonic(self) -> float:
        return (time.monotonic() - self._real0) * self.scale + self.jumped

    def now(self) -> float:
        return self.start + self.monotonic()

    def jump(self, seconds: float) -> None:
        self.jumped += seconds

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.scale)


@dataclass
class Meter(asyncio.DatagramProtocol):
    """An emulated meter on a loopback UDP port that can be told to answer garbage for the next
    ``garbage`` requests (``garbage_at``: only requests whose APDU starts with that tag), or to
    stay silent."""

    server: MeterServer
    garbage: int = 0
    garbage_at: int | None = None
    silent: bool = False
    requests: list[int] = field(default_factory=list)
    last_garbage: bytes = b""
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        assert self.transport is not None
        _, apdu = parse_frame(data)
        self.requests.append(apdu[0])
        if self.silent:
            return
        if self.garbage and (self.garbage_at is None or apdu[0] == self.garbage_at):
            self.garbage -= 1
            # the answer's type and invoke-id are right (else it is only a stale reply,
            # discarded), its data is cut short: a cut AARE, or a GET-Response whose
            # octet-string says 255 bytes and carries 2
            if apdu[0] == 0x60:
                self.last_garbage = build_frame(1, 16, b"\x61\x03\xff\xff\xff")
            else:
                self.last_garbage = build_frame(
                    1, 16, b"\xc4\x01" + apdu[2:3] + b"\x00\x09\xff\xde\xad"
                )
            self.transport.sendto(self.last_garbage, addr)
            return
        reply = self.server.handle(data)
        if reply is not None:
            self.transport.sendto(reply, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


async def start_meter(meter_id: str, clock: Any, **kw: Any) -> Meter:
    model = MeterModel(meter_id, random.Random(meter_id), profile_period_s=PERIOD, **kw)
    meter = Meter(MeterServer(model, clock))
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: meter, local_addr=("127.0.0.1", 0))
    return meter


@dataclass
class Rig:
    collector: Collector
    spool: Spool
    quarantine: Quarantine
    marks: ProfileMarks
    links: dict[str, MeterLink]

    async def close(self) -> None:
        await self.close_links()
        self.close_files()

    async def close_links(self) -> None:
        for link in self.links.values():
            await link.close()

    def close_files(self) -> None:
        self.spool.close()
        self.quarantine.close()
        self.marks.close()


def make_rig(
    tmp_path: Path,
    clock: Any,
    meters: dict[str, Meter],
    cfg: CollectorConfig,
    *,
    wrap: Callable[[str, MeterLink], MeterLink] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    **kw: Any,
) -> Rig:
    configs = tuple(MeterConfig(mid, "udp", "127.0.0.1", port=m.port) for mid, m in meters.items())
    links: dict[str, MeterLink] = {}
    for c in configs:
        link: MeterLink = UdpMeterLink(c.address, c.port)
        links[c.id] = wrap(c.id, link) if wrap is not None else link
    spool = Spool(tmp_path / "spool.sqlite", clock)
    quarantine = Quarantine(tmp_path / "collector.sqlite", clock)
    marks = ProfileMarks(tmp_path / "collector.sqlite")
    extra: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
    collector = Collector(
        configs,
        lambda m: links[m.id],
        spool,
        clock,
        cfg,
        random.Random(7),
        **extra,
        quarantine=quarantine,
        marks=marks,
        **kw,
    )
    return Rig(collector, spool, quarantine, marks, links)


def profile_times(spool: Spool, meter_id: str) -> list[float]:
    rows = [
        r.data
        for r in spool.next_batch(100_000, 10**9)
        if r.data.get("source") == obis.LOAD_PROFILE and r.data["device_id"] == meter_id
    ]
    return sorted(datetime.fromisoformat(r["time"]).timestamp() for r in rows)


def assert_contiguous(times: list[float]) -> None:
    assert times, "no profile rows"
    assert len(set(times)) == len(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert set(gaps) <= {float(PERIOD)}, gaps


FAST = CollectorConfig(timeout_s=0.5, retries=0, profile_rows=4)


# ----------------------------------------------------------------------------- garbage


def test_garbage_reply_is_quarantined_and_the_next_scheduled_read_succeeds(tmp_path: Path) -> None:
    """Done-when: the meter answers garbage to the profile request; the read fails at that
    stage, the bytes are quarantined with meter, stage and reason, the status says "Malformed
    Payload", and the meter's next scheduled read (run loop, warped clock) succeeds."""
    offset = meter_offset("MTR-G", PERIOD)
    clock = WarpClock(START + offset - 5, scale=900)  # a slot 5 s away; 1 s real = 15 min

    meters: list[Meter] = []

    async def go() -> Rig:
        meter = await start_meter("MTR-G", clock)
        meters.append(meter)
        meter.garbage, meter.garbage_at = 1, 0xC0  # the first GET (the clock) gets garbage
        cfg = CollectorConfig(
            timeout_s=0.5,
            retries=0,
            jitter_s=1,
            retry_backoff_base_s=2000,  # no retry within the slot: the *next slot* must read
            retry_backoff_cap_s=2000,
        )
        rig = make_rig(tmp_path, clock, {"MTR-G": meter}, cfg, sleep=clock.sleep)
        task = asyncio.create_task(rig.collector.run())
        st = rig.collector.status["MTR-G"]
        while st.reads_ok < 1:
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        meter.transport.close()  # type: ignore[union-attr]
        await rig.close_links()
        return rig

    rig = run(go())
    st = rig.collector.status["MTR-G"]
    assert st.reads_failed == 1 and st.reads_ok == 1 and st.quarantined == 1
    assert st.last_error is None and st.state == "ok"  # recovered
    (q,) = rig.quarantine.recent()
    assert (q.meter_id, q.stage) == ("MTR-G", "clock")
    assert q.hex == meters[0].last_garbage.hex() and meters[0].last_garbage[8:10] == b"\xc4\x01"
    assert q.reason and rig.quarantine.counts("MTR-G") == {q.reason: 1}
    # the good read came a whole interval later, and its readings are spooled
    batch = rig.spool.next_batch(100, 10**7)
    assert {r.data["device_id"] for r in batch} == {"MTR-G"}
    assert len(profile_times(rig.spool, "MTR-G")) == 4
    rig.close_files()


def test_failure_status_names_the_error(tmp_path: Path) -> None:
    clock = ManualClock(START)

    async def go() -> Rig:
        meter = await start_meter("MTR-E", clock)
        meter.garbage = 1
        rig = make_rig(tmp_path, clock, {"MTR-E": meter}, FAST)
        m = rig.collector.meters[0]
        assert await rig.collector.read_once(m) == 0
        st = rig.collector.status["MTR-E"]
        assert st.last_error_name == MALFORMED_PAYLOAD and st.consecutive_failures == 1
        assert "MalformedReply" in (st.last_error or "") and st.state == "failing"
        assert await rig.collector.read_once(m) == 5  # energy + 4 rows
        assert st.consecutive_failures == 0 and st.last_error_name is None
        meter.silent = True
        assert await rig.collector.read_once(m) == 0
        assert st.last_error_name == "timeout" and "associate" in (st.last_error or "")
        meter.transport.close()  # type: ignore[union-attr]
        await rig.close_links()
        return rig

    run(go()).close_files()


# ----------------------------------------------------------------------------- catch-up


def test_catch_up_after_a_gateway_outage_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    clock = ManualClock(START + 60)

    async def go() -> None:
        meter = await start_meter("MTR-C", clock)
        rig = make_rig(tmp_path, clock, {"MTR-C": meter}, FAST)
        await rig.collector.read_once(rig.collector.meters[0])
        first = profile_times(rig.spool, "MTR-C")
        assert len(first) == 4 and first[-1] == START
        await rig.close()
        clock.advance(3 * 3600)  # the gateway is down for three hours
        again = make_rig(tmp_path, clock, {"MTR-C": meter}, FAST)  # same state file
        n = await again.collector.read_once(again.collector.meters[0])
        assert n == 1 + 12  # energy + exactly the twelve intervals missed
        times = profile_times(again.spool, "MTR-C")
        assert_contiguous(times)
        assert times[0] == first[0] and times[-1] == START + 3 * 3600
        assert again.spool.duplicates == 0
        assert again.collector.status["MTR-C"].catch_up_rows == 12
        await again.close()
        meter.transport.close()  # type: ignore[union-attr]

    run(go())


def test_catch_up_is_capped_per_read_and_continues(tmp_path: Path) -> None:
    clock = ManualClock(START + 60)
    cfg = CollectorConfig(timeout_s=0.5, retries=0, profile_rows=2, catch_up_max_intervals=16)

    async def go() -> None:
        meter = await start_meter("MTR-K", clock)
        rig = make_rig(tmp_path, clock, {"MTR-K": meter}, cfg)
        m = rig.collector.meters[0]
        await rig.collector.read_once(m)
        clock.advance(10 * 3600)  # 40 intervals missed
        counts = [await rig.collector.read_once(m) - 1 for _ in range(4)]
        assert counts == [16, 16, 8, 0]
        times = profile_times(rig.spool, "MTR-K")
        assert_contiguous(times)
        assert len(times) == 2 + 40
        await rig.close()
        meter.transport.close()  # type: ignore[union-attr]

    run(go())


def test_meter_outage_is_retried_with_backoff_and_caught_up_in_one_slot(tmp_path: Path) -> None:
    """The meter is silent for three hours: every slot tries it a few times (backoff), never
    more; once it answers again, the first slot reads all missed rows (follow-up reads past
    the per-read cap) and the series has no gap."""
    offset = meter_offset("MTR-O", PERIOD)
    clock = WarpClock(START + offset - 5, scale=2700)  # 1 s real = 45 min
    cfg = CollectorConfig(
        timeout_s=0.05,
        retries=0,
        jitter_s=1,
        catch_up_max_intervals=4,
        retry_backoff_base_s=120,
        retry_backoff_cap_s=480,
        profile_rows=2,
    )

    async def go() -> Rig:
        meter = await start_meter("MTR-O", clock)
        rig = make_rig(tmp_path, clock, {"MTR-O": meter}, cfg, sleep=clock.sleep)
        task = asyncio.create_task(rig.collector.run())
        st = rig.collector.status["MTR-O"]
        while st.reads_ok < 1:
            await asyncio.sleep(0.01)
        meter.silent = True
        silent_from = clock.now()
        while clock.now() < silent_from + 3 * 3600:
            await asyncio.sleep(0.01)
        failed = st.reads_failed
        meter.silent = False
        back = clock.now()
        while clock.now() < back + 2 * PERIOD:  # the first slot after it is back, at most two
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        meter.transport.close()  # type: ignore[union-attr]
        await rig.close_links()
        slots = 3 * 3600 / PERIOD
        assert slots <= failed <= slots * 5, failed  # a few tries per slot, bounded
        # every interval the meter captured while silent is read (4 per read, follow-ups)
        assert profile_times(rig.spool, "MTR-O")[-1] >= (back // PERIOD) * PERIOD
        return rig

    rig = run(go())
    times = profile_times(rig.spool, "MTR-O")
    assert_contiguous(times)
    assert len(times) >= 2 + 12
    rig.close_files()


# ----------------------------------------------------------------------------- on demand, limit


class Recorder:
    """A transport wrapper (test side) that records when each meter's reads start and end and
    how many are in progress; one meter's requests can be slowed down."""

    def __init__(self) -> None:
        self.starts: list[str] = []
        self.in_progress: set[str] = set()
        self.peak = 0
        self.slow: dict[str, float] = {}

    def wrap(self, meter_id: str, link: MeterLink) -> MeterLink:
        recorder = self

        class Recorded:
            async def request(self, frame: bytes, timeout: float) -> bytes:
                tag = parse_frame(frame)[1][0]
                if tag == 0x60:  # AARQ: a read begins
                    recorder.starts.append(meter_id)
                    recorder.in_progress.add(meter_id)
                    recorder.peak = max(recorder.peak, len(recorder.in_progress))
                await asyncio.sleep(recorder.slow.get(meter_id, 0.0))
                reply = await link.request(frame, timeout)
                if tag == 0x62:  # RLRQ: it ends
                    recorder.in_progress.discard(meter_id)
                return reply

            async def close(self) -> None:
                await link.close()

        return Recorded()


def test_on_demand_read_jumps_the_queue(tmp_path: Path) -> None:
    clock = ManualClock(START + 60)
    cfg = CollectorConfig(timeout_s=1.0, retries=0, max_concurrent_reads=1)
    rec = Recorder()
    rec.slow["A"] = 0.02

    async def go() -> None:
        meters = {mid: await start_meter(mid, clock) for mid in "ABCDE"}
        rig = make_rig(tmp_path, clock, meters, cfg, wrap=rec.wrap)
        by_id = rig.collector.by_id
        queued = [asyncio.create_task(rig.collector.read_once(by_id[m])) for m in "ABCD"]
        while not rec.starts:
            await asyncio.sleep(0.001)
        result = await rig.collector.read_now("E", WHAT_INSTANTANEOUS)
        await asyncio.gather(*queued)
        assert rec.starts == ["A", "E", "B", "C", "D"]  # E overtook B, C, D
        assert rec.peak == 1
        inst = next(r for r in result.readings if r.source == "instantaneous")
        assert inst.vltg is not None and inst.kva is not None and inst.pf is not None
        assert inst.kva == pytest.approx(inst.vltg * inst.crrnt, rel=0.01)
        by_prio = {r.data["device_id"]: r.priority for r in rig.spool.next_batch(1000, 10**8)}
        assert by_prio["E"] == Priority.ON_DEMAND and by_prio["B"] == Priority.INTERVAL
        assert rig.collector.status["E"].on_demand == 1
        # an on-demand read also overtakes the same meter's own queued interval read
        rec.starts.clear()
        queued = [asyncio.create_task(rig.collector.read_once(by_id[m])) for m in "ABCD"]
        while not rec.starts:
            await asyncio.sleep(0.001)
        await rig.collector.read_now("D")
        await asyncio.gather(*queued)
        assert rec.starts == ["A", "D", "B", "C", "D"]
        try:
            await rig.collector.read_now("NOPE")
        except UnknownMeter as exc:
            assert "NOPE" in str(exc)
        else:
            raise AssertionError("unknown meter accepted")
        meters["E"].silent = True
        try:
            await rig.collector.read_now("E")
        except MeterReadError as exc:
            assert exc.stage == "associate"
        else:
            raise AssertionError("a failed on-demand read must raise")
        await rig.close()
        for m in meters.values():
            m.transport.close()  # type: ignore[union-attr]

    run(go())


def test_gateway_wide_read_limit(tmp_path: Path) -> None:
    clock = ManualClock(START + 60)
    cfg = CollectorConfig(timeout_s=1.0, retries=0, max_concurrent_reads=2)
    rec = Recorder()
    rec.slow = dict.fromkeys("ABCDEF", 0.005)

    async def go() -> None:
        meters = {mid: await start_meter(mid, clock) for mid in "ABCDEF"}
        rig = make_rig(tmp_path, clock, meters, cfg, wrap=rec.wrap)
        counts = await asyncio.gather(*(rig.collector.read_once(m) for m in rig.collector.meters))
        assert counts == [5] * 6 and rec.peak == 2 and len(rec.starts) == 6
        await rig.close()
        for m in meters.values():
            m.transport.close()  # type: ignore[union-attr]

    run(go())


# ----------------------------------------------------------------------------- daily, MAC Fail


def test_daily_registers_and_clock_drift_alarm_once_a_day(tmp_path: Path) -> None:
    day = START - 7 * 3600  # 2024-05-01T00:00:00Z
    clock = ManualClock(day + 4 * 60)  # 00:04
    cfg = CollectorConfig(
        timeout_s=0.5,
        retries=0,
        daily_registers=(obis.ACTIVE_ENERGY_IMPORT, obis.ACTIVE_POWER_IMPORT),
        clock_drift_alarm_s=30,
    )

    async def go() -> Rig:
        meter = await start_meter("MTR-D", clock, clock_offset_s=-95.0)
        rig = make_rig(tmp_path, clock, {"MTR-D": meter}, cfg)
        m = rig.collector.meters[0]
        await rig.collector.read_once(m)  # 00:04: an interval read, no daily registers
        st = rig.collector.status["MTR-D"]
        assert st.last_daily is None
        clock.advance(120)  # 00:06
        await rig.collector.read_once(m)
        assert st.last_daily == "2024-05-01"
        clock.advance(900)
        await rig.collector.read_once(m)  # same day: no second alarm
        meter.transport.close()  # type: ignore[union-attr]
        await rig.close_links()
        return rig

    rig = run(go())
    batch = rig.spool.next_batch(1000, 10**8)
    alarms = [r for r in batch if r.priority == Priority.ALARM]
    assert len(alarms) == 1 and alarms[0].data["event"] == "clock-drift"
    assert alarms[0].data["values"]["clock_drift_s"] < -90
    assert "behind by 95" in alarms[0].data["description"]
    power = [r for r in batch if r.data.get("source") == obis.ACTIVE_POWER_IMPORT]
    assert len(power) == 1  # the daily register, read once
    assert rig.collector.alarms_total == 1
    rig.close_files()


class MacFailure(DlmsError):
    """Stands in for the security layer's error of that name (matched by class name)."""


class DesyncedSession(DlmsSession):
    """A session whose association fails as a desynchronised suite 0 counter makes it fail."""

    desynced = True

    def associate(self) -> Exchange[None]:
        real = super().associate()
        if not DesyncedSession.desynced:
            return real

        def fail(_: object) -> None:
            raise MacFailure("authentication tag does not verify (counter desync)")

        return Exchange(self, real.request, "AARQ", fail)


def test_mac_fail_is_one_alarm_per_episode(tmp_path: Path) -> None:
    clock = ManualClock(START + 60)

    async def go() -> Rig:
        meter = await start_meter("MTR-S", clock)
        rig = make_rig(
            tmp_path,
            clock,
            {"MTR-S": meter},
            FAST,
            session_factory=lambda m: DesyncedSession(m.client_address, m.server_address),
        )
        m = rig.collector.meters[0]
        st = rig.collector.status["MTR-S"]
        DesyncedSession.desynced = True
        for _ in range(3):  # three failed reads, one alarm
            await rig.collector.read_once(m)
            clock.advance(60)
        assert st.mac_fail and st.last_error_name == MAC_FAIL and st.reads_failed == 3
        DesyncedSession.desynced = False  # "security reset" resynchronised the counter
        assert await rig.collector.read_once(m) == 5 and not st.mac_fail
        DesyncedSession.desynced = True  # a new episode: a new alarm
        await rig.collector.read_once(m)
        meter.transport.close()  # type: ignore[union-attr]
        await rig.close_links()
        return rig

    rig = run(go())
    alarms = [r for r in rig.spool.next_batch(1000, 10**8) if r.priority == Priority.ALARM]
    assert [a.data["event"] for a in alarms] == ["mac-fail", "mac-fail"]
    assert "MAC Fail" in alarms[0].data["description"]
    assert rig.quarantine.total() == 0  # not garbage: the frame parsed, its tag did not verify
    rig.close_files()
