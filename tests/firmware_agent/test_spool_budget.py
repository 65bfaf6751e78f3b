"""The spool's disk budget on real SQLite files: aging policy, refusals, Queue Depth Exceeded."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.spool import MIN_MAX_BYTES, Priority, Spool, SpoolFull
from firmware_agent.spool_budget import DiskReserve, wal_pages_for

MIB = 1024 * 1024


def rec(n: int, pad: int = 250) -> tuple[dict[str, object], str]:
    return ({"device_id": f"m{n % 97}", "seq": n, "pad": "x" * pad}, f"m{n % 97}|1.0.1.8.0.255|{n}")


def keys(spool: Spool, prio: Priority | None = None) -> list[str]:
    return [r.natural_key for r in spool.stored(prio)]


def test_interval_backlog_over_budget_ages_oldest_and_stays_on_disk_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "firmware_agent.spool")
    clock = ManualClock()
    spool = Spool(tmp_path / "s.sqlite", clock, rng=random.Random(1), max_bytes=MIB)
    peak = 0
    n = 0
    for _ in range(120):  # ~3.6 MB of readings into a 1 MiB budget
        spool.add([rec(n + i) for i in range(100)], Priority.INTERVAL)
        n += 100
        peak = max(peak, spool.used_bytes())
        assert spool.disk_bytes() <= spool.used_bytes() <= MIB
    st = spool.stats()
    aged = st.aged_out["interval"]
    assert aged > 6000 and st.depth + aged == n == st.added
    # the budget is used, not just emptied (~300-byte readings plus their stored envelope heads)
    assert st.depth > 800
    assert keys(spool) == [rec(i)[1] for i in range(n - st.depth, n)]  # the newest survive
    # The budget is used, not kept with a wide margin (interval reads are aged a page, 50
    # records here, at a time; the WAL's share is reserved whether it is on disk or not).
    assert peak > 0.9 * MIB
    assert spool.integrity_check() == "ok"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Queue Depth Exceeded" in warnings[0].getMessage()
    ep = st.queue_depth_exceeded
    assert ep is not None and ep.max_bytes == MIB and ep.used_bytes <= MIB
    assert ep.depth == {"alarm": 0, "on_demand": 0, "interval": st.depth}
    assert ep.aged_out == {"interval": aged} and ep.refused == {}
    assert st.to_dict()["queue_depth_exceeded"]["aged_out"] == {"interval": aged}  # type: ignore[index]

    # The uplink drains the backlog: the episode ends, freed pages go back to the file system.
    pages = "PRAGMA page_count"
    before = spool._db.execute(pages).fetchone()[0]
    while batch := spool.next_batch(200, 1 << 20):
        spool.ack([r.record_id for r in batch])
    clock.advance(6)  # shrinking runs at most every 5 s
    spool.ack(spool.add([rec(-1)], Priority.INTERVAL))
    spool.shrink()  # the uplink does this when it is idle
    st = spool.stats()
    assert st.depth == 0 and st.queue_depth_exceeded is None
    assert any("back under budget" in r.getMessage() for r in caplog.records)
    assert spool._db.execute(pages).fetchone()[0] < before / 2
    assert spool.integrity_check() == "ok"
    spool.close()


def test_alarms_never_aged_and_fill_budget_refuses_lower_classes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", ManualClock(), max_bytes=MIB)
    spool.add([rec(i) for i in range(500)], Priority.INTERVAL)
    spool.add([rec(1000 + i) for i in range(50)], Priority.ON_DEMAND)
    n = 2000
    while spool.used_bytes() <= MIB:  # a storm far beyond the budget: every alarm is kept
        assert len(spool.add([rec(n + i) for i in range(100)], Priority.ALARM)) == 100
        n += 100
    alarms = n - 2000
    counts = spool.depth_by_priority()
    assert counts == {Priority.ALARM: alarms, Priority.ON_DEMAND: 0, Priority.INTERVAL: 0}
    assert spool.aged_out == {Priority.ALARM: 0, Priority.ON_DEMAND: 50, Priority.INTERVAL: 500}

    with pytest.raises(SpoolFull, match="Queue Depth Exceeded") as e:
        spool.add([rec(90_000), rec(90_001)], Priority.INTERVAL)
    assert e.value.count == 2 and e.value.priority is Priority.INTERVAL
    assert e.value.report.refused == {"interval": 2}
    assert e.value.report.depth["alarm"] == alarms
    with pytest.raises(SpoolFull):
        spool.add([rec(90_002)], Priority.ON_DEMAND)
    assert spool.depth() == alarms  # nothing of the refused adds was stored
    assert rec(90_000)[1] not in keys(spool)
    assert len(spool.add([rec(90_003)], Priority.ALARM)) == 1  # alarms still go in
    st = spool.stats()
    assert st.refused == {"alarm": 0, "on_demand": 1, "interval": 2}
    assert st.queue_depth_exceeded is not None
    assert st.queue_depth_exceeded.refused == {"interval": 2, "on_demand": 1}
    assert spool.integrity_check() == "ok"
    spool.close()


def test_eviction_order_by_class_with_record_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", ManualClock(), max_records=10)
    iv = [rec(i)[1] for i in range(6)]
    od = [rec(100 + i)[1] for i in range(5)]
    al = [rec(200 + i)[1] for i in range(6)]
    for i in range(6):  # one page each: interval reads are aged a page at a time
        spool.add([rec(i)], Priority.INTERVAL)
    spool.add([rec(100 + i) for i in range(3)], Priority.ON_DEMAND)
    spool.add([rec(103), rec(104)], Priority.ON_DEMAND)  # 11 > 10: the oldest interval goes
    assert keys(spool, Priority.INTERVAL) == iv[1:]
    spool.add([rec(200 + i) for i in range(5)], Priority.ALARM)  # the other intervals go
    assert keys(spool, Priority.INTERVAL) == []
    assert keys(spool, Priority.ON_DEMAND) == od
    with pytest.raises(SpoolFull):  # an interval read never displaces an on-demand reply
        spool.add([rec(50)], Priority.INTERVAL)
    spool.add([rec(105)], Priority.ON_DEMAND)  # displaces the oldest on-demand reply
    assert keys(spool, Priority.ON_DEMAND) == [*od[1:], rec(105)[1]]
    spool.add([rec(205)], Priority.ALARM)
    assert keys(spool, Priority.ALARM) == al
    assert spool.depth() == 10
    assert spool.aged_out == {Priority.ALARM: 0, Priority.ON_DEMAND: 2, Priority.INTERVAL: 6}
    spool.close()


def test_in_flight_records_are_not_aged(tmp_path: Path) -> None:
    """Interval reads are aged a page (one add) at a time, and a page any record of which is
    in flight is not aged: here the first add's page, handed out record by record."""
    spool = Spool(tmp_path / "s.sqlite", ManualClock(), max_records=5)
    ids = spool.add([rec(i) for i in range(4)], Priority.INTERVAL)
    spool.mark_in_flight(ids[:1])
    spool.add([rec(4)], Priority.INTERVAL)
    more = spool.add([rec(5)], Priority.INTERVAL)  # only the page not in flight may go
    assert keys(spool) == [rec(i)[1] for i in (0, 1, 2, 3, 5)]
    packed = spool.next_packed(50, 1 << 20)
    assert packed is None  # records of a page are out one by one: the per-record path
    spool.mark_in_flight(more)
    with pytest.raises(SpoolFull):
        spool.add([rec(6)], Priority.INTERVAL)
    assert spool.ack(ids) == 4  # the PUBACK still finds its records
    assert keys(spool) == [rec(5)[1]]
    spool.close()


def test_interval_reads_older_than_max_age_are_aged(tmp_path: Path) -> None:
    clock = ManualClock()
    spool = Spool(tmp_path / "s.sqlite", clock, interval_max_age_s=3600)
    spool.add([rec(i) for i in range(10)], Priority.INTERVAL)
    spool.add([rec(100)], Priority.ALARM)
    clock.advance(1800)
    spool.add([rec(i) for i in range(10, 15)], Priority.INTERVAL)
    clock.advance(1801)
    spool.add([rec(101)], Priority.ALARM)  # the first ten are now older than an hour
    assert keys(spool) == [rec(100)[1]] + [rec(i)[1] for i in range(10, 15)] + [rec(101)[1]]
    clock.advance(1801)  # the next five are old too, but the check runs once a minute at most
    clock_mono = clock.monotonic()
    spool._next_age_check = clock_mono + 30
    spool.add([rec(102)], Priority.ALARM)
    assert spool.depth_by_priority()[Priority.INTERVAL] == 5
    clock.advance(31)
    spool.add([rec(103)], Priority.ALARM)
    assert spool.depth_by_priority()[Priority.INTERVAL] == 0
    assert spool.stats().aged_out == {"alarm": 0, "on_demand": 0, "interval": 15}
    spool.close()


def test_aged_totals_and_depths_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    spool = Spool(path, ManualClock(), max_records=3)
    for i in range(5):
        spool.add([rec(i)], Priority.INTERVAL)
    with pytest.raises(SpoolFull):  # one add larger than the cap cannot age itself
        spool.add([rec(i) for i in range(10, 14)], Priority.INTERVAL)
    spool.add([rec(9)], Priority.ALARM)
    spool.close()
    spool = Spool(path, ManualClock(), max_records=3)
    assert spool.stats().aged_out == {"alarm": 0, "on_demand": 0, "interval": 3}
    assert spool.depth_by_priority() == {
        Priority.ALARM: 1,
        Priority.ON_DEMAND: 0,
        Priority.INTERVAL: 2,
    }
    spool.close()


def test_budget_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path / "a.sqlite", ManualClock(), max_bytes=MIN_MAX_BYTES - 1)
    with pytest.raises(ValueError, match="max_records"):
        Spool(tmp_path / "b.sqlite", ManualClock(), max_records=0)
    with pytest.raises(ValueError, match="interval_max_age_s"):
        Spool(tmp_path / "c.sqlite", ManualClock(), interval_max_age_s=0)
    with pytest.raises(ValueError, match="storm_min_records"):
        Spool(tmp_path / "d.sqlite", ManualClock(), storm_min_records=0)


def test_disk_reserve_learns_from_wal_and_growth() -> None:
    r = DiskReserve(MIB, 4096, wal_pages_for(MIB, 4096))
    assert r.usable + r.reserve == MIB and r.file_cap > r.usable
    before = r.usable
    assert not r.note_wal_file(1000) and not r.note_growth(100)  # smaller than the first guess
    assert r.note_wal_file(600_000)  # a big transaction was seen: keep room for it
    assert r.wal_bytes == 750_000 and r.usable < before
    assert r.note_growth(80_000) and r.growth_bytes == 100_000
    assert r.usable == max(4 * 4096, MIB - r.reserve)
    assert wal_pages_for(512 * MIB, 4096) == 1000 and wal_pages_for(MIB, 4096) == 16
