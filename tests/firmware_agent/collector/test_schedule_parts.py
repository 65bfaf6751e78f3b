"""The scheduler's pure parts (offsets, slots, backoff, daily due, catch-up ranges) and its two
SQLite stores (catch-up marks, quarantine) on real files."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector.catchup import ProfileMarks, profile_range
from firmware_agent.collector.link import LinkTimeout
from firmware_agent.collector.quarantine import Quarantine
from firmware_agent.collector.records import RecordError
from firmware_agent.collector.scheduler import (
    MAC_FAIL,
    _Slots,
    backoff_s,
    daily_due,
    error_name,
    is_mac_fail,
    meter_offset,
    next_slot,
)
from firmware_agent.collector.session import (
    ConfirmedServiceError,
    DataAccessError,
    DlmsError,
    MalformedReply,
)

T0 = datetime(2024, 5, 1, 12, 7, 30, tzinfo=UTC)


def test_offsets_are_stable_and_spread_over_the_interval() -> None:
    ids = [f"MTR-{i:04d}" for i in range(1000)]
    offsets = [meter_offset(m, 900.0) for m in ids]
    assert offsets == [meter_offset(m, 900.0) for m in ids]  # same minute every interval/restart
    assert all(0 <= o < 900 for o in offsets)
    buckets = Counter(int(o // 90) for o in offsets)  # ten 90-second buckets
    assert len(buckets) == 10 and max(buckets.values()) < 140  # no top-of-interval surge
    assert sum(1 for o in offsets if o < 60) < 100  # the first minute holds ~1/15, not all


def test_next_slot() -> None:
    assert next_slot(1000.0, 100.0, 900.0) == 1000.0  # 100 + 900: exactly now
    assert next_slot(1000.5, 100.0, 900.0) == 1900.0
    assert next_slot(50.0, 100.0, 900.0) == 100.0


def test_backoff_doubles_with_jitter_and_caps() -> None:
    rng = random.Random(1)
    for n, nominal in [(1, 30), (2, 60), (3, 120), (4, 240), (5, 300), (9, 300)]:
        for _ in range(50):
            assert 0.75 * nominal <= backoff_s(n, 30, 300, rng) <= 1.25 * nominal


def test_daily_due() -> None:
    before = datetime(2024, 5, 1, 0, 4, 59, tzinfo=UTC).timestamp()
    after = datetime(2024, 5, 1, 0, 5, 0, tzinfo=UTC).timestamp()
    assert daily_due(before, None, "00:05") is None
    assert daily_due(after, None, "00:05") == "2024-05-01"
    assert daily_due(after, "2024-05-01", "00:05") is None
    assert daily_due(after + 86400, "2024-05-01", "00:05") == "2024-05-02"


def test_profile_range_without_mark_reads_the_last_rows() -> None:
    r = profile_range(None, T0, 900, default_rows=4, max_intervals=96)
    assert r is not None and r.rows == 4 and r.left_behind == 0
    assert (r.start.isoformat(), r.end.isoformat()) == (
        "2024-05-01T11:15:00+00:00",
        "2024-05-01T12:00:00+00:00",
    )


def test_profile_range_after_mark_reads_exactly_the_missed_rows() -> None:
    mark = datetime(2024, 5, 1, 9, 0, tzinfo=UTC).timestamp()
    r = profile_range(mark, T0, 900, default_rows=4, max_intervals=96)
    assert r is not None and r.rows == 12 and r.left_behind == 0  # 09:15 .. 12:00
    assert r.start == datetime(2024, 5, 1, 9, 15, tzinfo=UTC)
    assert r.end == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_profile_range_cap_takes_the_oldest_missed_first() -> None:
    mark = datetime(2024, 4, 30, 12, 0, tzinfo=UTC).timestamp()  # a day behind: 96 missed
    r = profile_range(mark, T0, 900, default_rows=4, max_intervals=10)
    assert r is not None and r.rows == 10 and r.left_behind == 86
    assert r.start == datetime(2024, 4, 30, 12, 15, tzinfo=UTC)
    assert r.end == datetime(2024, 4, 30, 14, 30, tzinfo=UTC)


def test_profile_range_nothing_new_and_clock_gone_back() -> None:
    mark = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
    assert profile_range(mark, T0, 900, default_rows=4, max_intervals=96) is None
    future = datetime(2024, 6, 1, tzinfo=UTC).timestamp()  # meter replaced / clock reset
    r = profile_range(future, T0, 900, default_rows=2, max_intervals=96)
    assert r is not None and r.rows == 2 and r.end == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="capture period must be positive"):
        profile_range(None, T0, 0, default_rows=1, max_intervals=1)


def test_profile_marks_persist_and_never_move_back(tmp_path: Path) -> None:
    path = tmp_path / "collector.sqlite"
    marks = ProfileMarks(path)
    assert marks.newest("M1", "1.0.99.1.0.255") is None
    marks.advance("M1", "1.0.99.1.0.255", 2000.0)
    marks.advance("M1", "1.0.99.1.0.255", 1000.0)  # a late, older row
    marks.advance("M2", "1.0.99.1.0.255", 500.0)
    marks.close()
    again = ProfileMarks(path)
    assert again.newest("M1", "1.0.99.1.0.255") == 2000.0
    assert again.newest("M2", "1.0.99.1.0.255") == 500.0
    again.close()


def test_quarantine_keeps_capped_hex_counts_and_recent(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000.0)
    path = tmp_path / "collector.sqlite"
    q = Quarantine(path, clock, max_hex_bytes=8, max_rows=3)
    for i in range(5):
        q.add("M1", "profile", "incomplete APDU in frame", bytes(range(20)), f"try {i}")
        clock.advance(1)
    q.add("M2", "push", "truncated", b"\x0f\x00")
    recent = q.recent()
    assert [r.meter_id for r in recent] == ["M2", "M1", "M1"]  # newest first, capped at 3 rows
    assert recent[1].hex == bytes(range(8)).hex() and recent[1].size == 20
    assert recent[1].detail == "try 4" and recent[1].to_dict()["at"] == "2023-11-14T22:13:24Z"
    assert q.counts() == {"incomplete APDU in frame": 5, "truncated": 1}  # counts outlive rows
    assert q.total("M1") == 5 and [r.seq for r in q.recent(meter_id="M2")] == [6]
    q.close()
    again = Quarantine(path, clock)
    assert again.total() == 6
    again.close()


def test_error_names() -> None:
    class MacFailure(DlmsError):
        pass

    class ReplayedFrame(MacFailure):
        pass

    assert error_name(MacFailure("tag")) == MAC_FAIL and is_mac_fail(ReplayedFrame("ic 3 <= 5"))
    assert not is_mac_fail(DlmsError("x"))
    assert error_name(MalformedReply("short-header", b"\x00")) == "Malformed Payload"
    assert error_name(RecordError("row of 3 cells")) == "Malformed Payload"
    assert error_name(DataAccessError("object-undefined", 4, "x")) == "object-undefined"
    assert error_name(ConfirmedServiceError("read", "access", 3)) == "read: access"
    assert error_name(LinkTimeout("no reply")) == "timeout"


def test_read_slots_serve_by_priority_and_survive_cancelled_waiters() -> None:
    async def go() -> None:
        slots = _Slots(1)
        order: list[str] = []
        await slots.acquire(1)

        async def waiter(name: str, priority: int) -> None:
            await slots.acquire(priority)
            order.append(name)
            await asyncio.sleep(0)
            slots.release()

        tasks = {n: asyncio.create_task(waiter(n, p)) for n, p in [("a", 1), ("b", 1), ("c", 0)]}
        await asyncio.sleep(0)
        tasks["b"].cancel()  # an interval read given up while queued
        await asyncio.sleep(0)
        assert slots.waiting == 2
        slots.release()
        await asyncio.gather(tasks["a"], tasks["c"])
        assert order == ["c", "a"]  # the on-demand priority first, then FIFO
        assert slots.free == 1 and slots.waiting == 0

    asyncio.run(go())
