"""Priority and the storm throttle on real SQLite files: a last-gasp storm goes out first and
interval reads are throttled while it lasts."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.spool import Priority, Spool
from firmware_agent.spool_budget import IntervalThrottle

BATCH = 100


def interval(meter: int, t: int) -> tuple[dict[str, object], str]:
    return (
        {"device_id": f"m{meter:05d}", "time": t, "kw": 1.25, "vltg": 230.1},
        f"m{meter:05d}|1.0.1.8.0.255|{t}",
    )


def last_gasp(meter: int) -> tuple[dict[str, object], str]:
    return ({"device_id": f"m{meter:05d}", "event": "last_gasp"}, f"m{meter:05d}|alarm:lg|0")


def test_last_gasp_storm_overtakes_50000_interval_reads(tmp_path: Path) -> None:
    clock = ManualClock()
    spool = Spool(
        tmp_path / "s.sqlite", clock, rng=random.Random(3), storm_interval_rate=50, storm_hold_s=10
    )
    for chunk in range(100):
        spool.add([interval(m, chunk) for m in range(500)], Priority.INTERVAL)
    assert spool.depth() == 50_000
    in_flight: list[list[str]] = []
    for _ in range(5):  # the uplink's window is busy with interval reads when the storm starts
        batch = spool.next_batch(BATCH, 1 << 20)
        assert len(batch) == BATCH and {r.priority for r in batch} == {Priority.INTERVAL}
        spool.mark_in_flight(r.record_id for r in batch)
        in_flight.append([r.record_id for r in batch])

    alarm_ids: set[str] = set()
    for k in range(20):  # 1,000 last gasps arrive in 20 commits
        alarm_ids.update(spool.add([last_gasp(50 * k + i) for i in range(50)], Priority.ALARM))
    assert len(alarm_ids) == 1000

    sent_alarms: set[str] = set()
    batches = 0
    while sent_alarms != alarm_ids:
        clock.advance(0.01)
        batch = spool.next_batch(BATCH, 1 << 20)
        batches += 1
        assert {r.priority for r in batch} == {Priority.ALARM}, f"batch {batches} mixes classes"
        spool.mark_in_flight(r.record_id for r in batch)
        sent_alarms.update(r.record_id for r in batch)
        in_flight.append([r.record_id for r in batch])
        spool.ack(in_flight.pop(0))  # PUBACKs arrive in order
    assert batches == math.ceil(1000 / BATCH)  # N batches: every alarm went, nothing else did

    # The storm holds: interval reads trickle at 50/s (bucket of 50) while alarms are acked and
    # for storm_hold_s after the last one is gone.
    start = clock.monotonic()
    given = 0
    for _ in range(200):  # 2 s of uplink turns, every 10 ms
        clock.advance(0.01)
        batch = spool.next_batch(BATCH, 1 << 20)
        assert all(r.priority == Priority.INTERVAL for r in batch)
        given += len(batch)
        spool.mark_in_flight(r.record_id for r in batch)
        in_flight.append([r.record_id for r in batch])
        spool.ack(in_flight.pop(0))
    elapsed = clock.monotonic() - start
    assert 50 + 50 * elapsed - 2 <= given <= 50 + 50 * elapsed + 1
    st = spool.stats()
    assert st.storm and st.throttled > 0 and st.depth_by_class["alarm"] == 0
    for ids in in_flight:
        spool.ack(ids)
    clock.advance(10.1)  # storm over: full batches again
    assert len(spool.next_batch(BATCH, 1 << 20)) == BATCH
    assert not spool.stats().storm
    spool.close()


def test_zero_rate_holds_interval_reads_for_the_whole_storm(tmp_path: Path) -> None:
    clock = ManualClock()
    spool = Spool(
        tmp_path / "s.sqlite", clock, storm_interval_rate=0, storm_hold_s=5, storm_min_records=3
    )
    spool.add([interval(1, t) for t in range(10)], Priority.INTERVAL)
    spool.add([last_gasp(m) for m in range(3)], Priority.ALARM)
    alarms = spool.next_batch(BATCH, 1 << 20)
    assert [r.priority for r in alarms] == [Priority.ALARM] * 3  # no interval fill-up
    spool.mark_in_flight(r.record_id for r in alarms)
    assert spool.next_batch(BATCH, 1 << 20) == []  # alarms in flight: the storm holds
    spool.ack(r.record_id for r in alarms)
    clock.advance(4.9)
    assert spool.next_batch(BATCH, 1 << 20) == []
    clock.advance(0.2)
    assert len(spool.next_batch(BATCH, 1 << 20)) == 10


def test_lone_alarm_is_no_storm(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", ManualClock(), storm_interval_rate=0)
    spool.add([interval(1, t) for t in range(10)], Priority.INTERVAL)
    spool.add([last_gasp(1)], Priority.ALARM)
    batch = spool.next_batch(BATCH, 1 << 20)
    assert [r.priority for r in batch] == [Priority.ALARM] + [Priority.INTERVAL] * 10
    assert not spool.stats().storm


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_interval_never_handed_out_while_more_urgent_pending(tmp_path: Path, seed: int) -> None:
    """Random adds, batches, PUBACKs and NACKs: a batch holding an interval read leaves no alarm
    or on-demand record pending; classes come out in order; the in-memory depth counts match."""
    rng = random.Random(seed)
    clock = ManualClock()
    spool = Spool(tmp_path / "s.sqlite", clock, rng=rng, storm_min_records=1_000_000)
    in_flight: list[list[str]] = []
    n = 0
    for _ in range(300):
        op = rng.random()
        if op < 0.4:
            prio = rng.choice(list(Priority))
            k = rng.randint(1, 30)
            spool.add([({"v": n + i}, f"k{n + i}") for i in range(k)], prio)
            n += k
        elif op < 0.75:
            batch = spool.next_batch(rng.randint(1, 40), rng.choice([200, 1 << 20]))
            prios = [r.priority for r in batch]
            assert prios == sorted(prios)
            if Priority.INTERVAL in prios:
                spool.mark_in_flight(r.record_id for r in batch)
                rest = spool.next_batch(1_000_000, 1 << 30)
                assert all(r.priority == Priority.INTERVAL for r in rest)
                spool.release(r.record_id for r in batch)
            spool.mark_in_flight(r.record_id for r in batch)
            in_flight.append([r.record_id for r in batch])
        elif in_flight:
            ids = in_flight.pop(rng.randrange(len(in_flight)))
            if rng.random() < 0.8:
                assert spool.ack(ids) == len(ids)
            else:
                spool.release(ids)
        clock.advance(0.1)
    stored = dict.fromkeys(Priority, 0)
    for r in spool.stored():  # read back from the file (rows and pages)
        stored[r.priority] += 1
    assert spool.depth_by_priority() == stored
    assert spool.in_flight() == sum(len(ids) for ids in in_flight)
    spool.close()


def test_throttle_bucket_refills_at_rate_and_caps_at_burst() -> None:
    clock = ManualClock()
    t = IntervalThrottle(clock, rate=10, hold_s=3, burst=20)
    assert t.allowance(False) is None  # no storm: no limit
    assert t.allowance(True) == 20  # a storm starts with a full bucket
    t.take(20)
    assert t.allowance(True) == 0
    clock.advance(0.55)
    assert t.allowance(True) == 5
    clock.advance(100)
    assert t.allowance(True) == 20  # capped at the burst
    t.take(20)
    clock.advance(2.9)
    assert t.allowance(False) == 20  # the storm holds 3 s after it was last seen
    clock.advance(0.2)
    assert t.allowance(False) is None
    with pytest.raises(ValueError):
        IntervalThrottle(clock, rate=-1, hold_s=1)
