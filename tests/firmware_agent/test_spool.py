"""Spool unit tests on real SQLite files."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.spool import Priority, RecordRejected, Spool, SpoolCorrupt


def reading(meter: str, t: int, **extra: object) -> tuple[dict[str, object], str]:
    return ({"device_id": meter, "time": t, "kw": 1.5, **extra}, f"{meter}/1.0.1.8.0.255/{t}")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def spool(tmp_path: Path, clock: ManualClock) -> Spool:
    s = Spool(tmp_path / "spool.sqlite", clock, rng=random.Random(7))
    yield s  # type: ignore[misc]
    s.close()


def test_wal_and_full_sync(spool: Spool) -> None:
    db = sqlite3.connect(spool.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_add_returns_ids_and_batch_carries_record(spool: Spool, clock: ManualClock) -> None:
    ids = spool.add([reading("m1", 1), reading("m1", 2)], Priority.INTERVAL)
    assert len(ids) == 2 and len(set(ids)) == 2
    assert spool.depth() == 2
    batch = spool.next_batch(10, 1 << 20)
    assert [r.record_id for r in batch] == ids
    assert batch[0].data == {"device_id": "m1", "time": 1, "kw": 1.5}
    assert batch[0].natural_key == "m1/1.0.1.8.0.255/1"
    assert batch[0].priority is Priority.INTERVAL
    assert batch[0].created_at == clock.now()


def test_record_ids_come_from_injected_rng(tmp_path: Path, clock: ManualClock) -> None:
    a = Spool(tmp_path / "a.sqlite", clock, rng=random.Random(1))
    b = Spool(tmp_path / "b.sqlite", clock, rng=random.Random(1))
    ids_a = a.add([reading("m", 1)], Priority.ALARM)
    ids_b = b.add([reading("m", 1)], Priority.ALARM)
    assert ids_a == ids_b
    assert ids_a[0][14] == "4"  # a version-4 UUID
    a.close()
    b.close()


def test_priority_then_age_order(spool: Spool, clock: ManualClock) -> None:
    interval = spool.add([reading("m1", t) for t in range(3)], Priority.INTERVAL)
    clock.advance(1)
    on_demand = spool.add([reading("m2", 0)], Priority.ON_DEMAND)
    clock.advance(1)
    alarms = spool.add([reading("m3", 0, event="last gasp"), reading("m3", 1)], Priority.ALARM)
    order = [r.record_id for r in spool.next_batch(100, 1 << 20)]
    assert order == alarms + on_demand + interval
    assert spool.depth_by_priority() == {
        Priority.ALARM: 2,
        Priority.ON_DEMAND: 1,
        Priority.INTERVAL: 3,
    }


def test_batch_limits_records_and_bytes_but_returns_at_least_one(spool: Spool) -> None:
    spool.add([reading("m", t, blob="x" * 100) for t in range(10)], Priority.INTERVAL)
    assert len(spool.next_batch(3, 1 << 20)) == 3
    size = spool.next_batch(1, 1 << 20)[0].size
    assert len(spool.next_batch(10, size * 4 + size // 2)) == 4
    assert len(spool.next_batch(10, 1)) == 1  # never starves on one big record
    assert spool.next_batch(0, 1 << 20) == []


def test_in_flight_excluded_released_and_acked(spool: Spool) -> None:
    ids = spool.add([reading("m", t) for t in range(5)], Priority.INTERVAL)
    spool.mark_in_flight(ids[:2])
    assert [r.record_id for r in spool.next_batch(10, 1 << 20)] == ids[2:]
    assert spool.in_flight() == 2
    spool.release(ids[:1])
    assert [r.record_id for r in spool.next_batch(10, 1 << 20)] == [ids[0], *ids[2:]]
    assert spool.ack(ids[1:3]) == 2
    assert spool.depth() == 3
    assert spool.ack(ids[1:3]) == 0  # acking twice deletes nothing more
    assert spool.stats().acked == 2


def test_duplicates_kept_once_and_counted(spool: Spool) -> None:
    first = spool.add([reading("m", 1), reading("m", 2)], Priority.INTERVAL)
    again = spool.add([reading("m", 2), reading("m", 3), reading("m", 3)], Priority.INTERVAL)
    assert len(first) == 2 and len(again) == 1
    assert spool.duplicates == 2
    assert spool.depth() == 3


def test_rejected_records_store_nothing(spool: Spool) -> None:
    good = reading("m", 1)
    with pytest.raises(RecordRejected, match="reserved field") as e:
        spool.add([good, ({"record_id": "x"}, "k")], Priority.INTERVAL)
    assert e.value.index == 1
    with pytest.raises(RecordRejected, match="JSON"):
        spool.add([({"v": object()}, "k")], Priority.INTERVAL)
    with pytest.raises(RecordRejected, match="JSON"):
        spool.add([({"v": float("nan")}, "k")], Priority.INTERVAL)
    with pytest.raises(RecordRejected, match="natural key"):
        spool.add([({"v": 1}, "")], Priority.INTERVAL)
    with pytest.raises(RecordRejected, match="limit"):
        spool.add([({"v": "x" * (spool.max_record_bytes + 1)}, "k")], Priority.INTERVAL)
    with pytest.raises(ValueError):
        spool.add([good], 7)  # type: ignore[arg-type]
    assert spool.depth() == 0


def test_reopen_keeps_records_and_returns_in_flight_to_pending(
    tmp_path: Path, clock: ManualClock
) -> None:
    s = Spool(tmp_path / "s.sqlite", clock)
    ids = s.add([reading("m", t) for t in range(3)], Priority.ON_DEMAND)
    s.mark_in_flight(ids)
    assert s.next_batch(10, 1 << 20) == []
    s.close()
    s = Spool(tmp_path / "s.sqlite", clock)
    assert [r.record_id for r in s.next_batch(10, 1 << 20)] == ids
    assert s.integrity_check() == "ok"
    s.close()


def test_subscribers_hear_about_new_records_only(spool: Spool) -> None:
    calls: list[int] = []
    spool.subscribe(lambda: calls.append(spool.depth()))
    spool.add([reading("m", 1)], Priority.INTERVAL)
    spool.add([reading("m", 1)], Priority.INTERVAL)  # duplicate only: no news
    spool.add([], Priority.INTERVAL)
    assert calls == [1]


def test_not_a_spool_file(tmp_path: Path, clock: ManualClock) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolCorrupt, match=r"junk\.sqlite"):
        Spool(bad, clock)
