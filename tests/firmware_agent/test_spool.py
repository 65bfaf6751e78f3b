"""Spool unit tests on real SQLite files."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.clock import ManualClock
from firmware_agent.spool import Priority, RecordRejected, Spool, SpoolCorrupt, iso_utc


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
    first = spool.add([reading("m", 1), reading("m", 2)], Priority.ON_DEMAND)
    again = spool.add([reading("m", 2), reading("m", 3), reading("m", 3)], Priority.ON_DEMAND)
    assert len(first) == 2 and len(again) == 1
    assert spool.duplicates == 2
    assert spool.depth() == 3


def test_paged_interval_reads_are_deduplicated_within_one_add_only(spool: Spool) -> None:
    """Pages keep no per-record key index (module docstring): a copy from a later add is
    stored, and the head end drops it by natural key."""
    first = spool.add([reading("m", 1), reading("m", 2), reading("m", 1)], Priority.INTERVAL)
    again = spool.add([reading("m", 2)], Priority.INTERVAL)
    assert len(first) == 2 and len(again) == 1 and spool.duplicates == 1
    keys = [r.natural_key for r in spool.next_batch(10, 1 << 20)]
    assert keys == [reading("m", 1)[1], reading("m", 2)[1], reading("m", 2)[1]]


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
    spool.add([reading("m", 1)], Priority.ON_DEMAND)
    spool.add([reading("m", 1)], Priority.ON_DEMAND)  # duplicate only: no news
    spool.add([], Priority.INTERVAL)
    assert calls == [1]


def test_not_a_spool_file(tmp_path: Path, clock: ManualClock) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolCorrupt, match=r"junk\.sqlite"):
        Spool(bad, clock)


UUID_V4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_record_ids_are_schema_uuids_stable_and_unique_per_spool(
    tmp_path: Path, clock: ManualClock
) -> None:
    a = Spool(tmp_path / "a.sqlite", clock, rng=random.Random(1))
    b = Spool(tmp_path / "b.sqlite", clock, rng=random.Random(2))
    ids_a = a.add([reading("m", t) for t in range(300)], Priority.INTERVAL)
    ids_b = b.add([reading("m", t) for t in range(300)], Priority.INTERVAL)
    assert all(UUID_V4.match(i) for i in ids_a + ids_b)
    assert len(set(ids_a) | set(ids_b)) == 600  # the same data in two spools: distinct ids
    assert b.ack(ids_a) == 0 and b.depth() == 300  # another spool's ids match nothing here
    assert a.ack(["not-an-id", "", ids_a[0].replace("-4", "-1", 1)]) == 0
    a.mark_in_flight(["garbage"])
    assert a.in_flight() == 0
    a.close()
    a = Spool(tmp_path / "a.sqlite", clock)
    assert [r.record_id for r in a.next_batch(300, 1 << 30)] == ids_a  # same ids after reopen
    assert a.ack(ids_a[:10]) == 10
    more = a.add([reading("m", 1000)], Priority.INTERVAL)
    assert more[0] not in ids_a  # sequence numbers are never reused
    a.close()
    b.close()


def test_schema_1_spool_is_migrated_in_order(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT,
            record_id TEXT NOT NULL UNIQUE, natural_key TEXT NOT NULL UNIQUE,
            priority INTEGER NOT NULL, created_at REAL NOT NULL, body TEXT NOT NULL,
            size INTEGER NOT NULL);
        CREATE INDEX records_next ON records (priority, seq);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        """
    )
    rows = [
        (f"00000000-0000-4000-8000-00000000000{i}", f"m/{i}", i % 3, 100.0 + i, f'{{"i":{i}}}', 9)
        for i in range(6)
    ]
    db.executemany(
        "INSERT INTO records (record_id, natural_key, priority, created_at, body, size) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.close()
    spool = Spool(path, clock, rng=random.Random(5))
    batch = spool.next_batch(10, 1 << 20)
    assert [r.natural_key for r in batch] == ["m/0", "m/3", "m/1", "m/4", "m/2", "m/5"]
    assert [r.data for r in batch][:2] == [{"i": 0}, {"i": 3}]
    assert batch[0].created_at == 100.0
    assert all(UUID_V4.match(r.record_id) for r in batch)
    assert spool._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental now
    assert spool.ack([batch[0].record_id]) == 1
    assert spool.add([reading("m", 1)], Priority.ALARM)
    assert spool.integrity_check() == "ok"
    spool.close()
    spool = Spool(path, clock)
    assert spool.depth() == 6
    spool.close()


def test_stats_to_dict_carries_the_figures(spool: Spool) -> None:
    spool.add([reading("m", t) for t in range(3)], Priority.INTERVAL)
    d = spool.stats().to_dict()
    assert d["depth"] == 3 and d["depth_by_class"] == {"alarm": 0, "on_demand": 0, "interval": 3}
    assert d["max_bytes"] == spool.max_bytes and 0 < d["disk_bytes"] <= d["max_bytes"]
    assert d["queue_depth_exceeded"] is None and d["storm"] is False
    json.dumps(d)


def test_unknown_schema_version_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "future.sqlite"
    Spool(path, clock).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(SpoolCorrupt, match="schema '9'"):
        Spool(path, clock)


@given(seq=st.integers(0, (1 << 58) - 1), seed=st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_record_id_round_trips_and_fast_path_matches_layout(seq: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        spool = Spool(Path(d) / "s.sqlite", ManualClock(), rng=random.Random(seed))
        rid = spool.record_id(seq)
        assert rid == spool._record_id_slow(seq) and UUID_V4.match(rid)
        assert spool._seq(rid) == seq
        spool.close()


@settings(max_examples=2000)
@given(
    st.one_of(
        st.floats(min_value=0, max_value=4e9),
        st.builds(
            lambda s, f: s + f,
            st.integers(0, 4 * 10**9),
            st.sampled_from([0.9999995, 0.9999994999, 0.0000005, 0.9995, 0.0005, 0.1]),
        ),
    )
)
def test_iso_utc_has_datetimes_digits(t: float) -> None:
    """The cached-second formatter against datetime's own rounding, at the rounding edges too."""
    expected = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert iso_utc(t) == expected
