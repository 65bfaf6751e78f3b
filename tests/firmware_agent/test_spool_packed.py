"""Spool.next_packed: a batch encoded by SQLite from the stored heads, handed out and acknowledged
as an exact seq range. It must produce what the per-record path produces, byte for byte, and step
aside (None) whenever that path would decide differently."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.spool import Priority, Spool
from firmware_agent.uplink import payloads

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs/schemas/readings.schema.json").read_text()
)
BIG = 1 << 20


def rec(i: int) -> tuple[dict[str, Any], str]:
    return {"device_id": f"m{i % 7}", "kw": i / 3, "note": 'é\n"q"' if i % 5 == 0 else i}, (
        f"m{i % 7}|1.0.1.8.0.255|{i}" + ("|ü\t" if i % 4 == 0 else "")
    )


def open_spool(path: Path, clock: ManualClock) -> Spool:
    return Spool(path, clock, rng=random.Random(7))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_700_000_000.123456)


def test_packed_batch_is_byte_for_byte_the_per_record_encoding(
    tmp_path: Path, clock: ManualClock
) -> None:
    a = tmp_path / "a.sqlite"
    with open_spool(a, clock) as spool:
        spool.add([rec(i) for i in range(30)], Priority.INTERVAL)
        clock.advance(1.5)
        spool.add([({}, "empty-body")], Priority.INTERVAL)  # "{}" splices as "}"
        spool.add([rec(i) for i in range(30, 60)], Priority.INTERVAL)
    shutil.copyfile(a, tmp_path / "b.sqlite")
    with open_spool(a, clock) as fast, open_spool(tmp_path / "b.sqlite", clock) as slow:
        for size in (25, 25, 11):
            packed = fast.next_packed(size, BIG)
            recs = slow.next_batch(size, BIG)
            slow.mark_in_flight(r.record_id for r in recs)
            assert packed is not None and packed.count == len(recs) == size
            want = ",".join(
                payloads.record_entry_json(r, payloads.iso_utc(r.created_at)) for r in recs
            )
            assert packed.entries == want.encode()
            assert packed.size == sum(r.size for r in recs)
            msg = payloads.encode_packed("gw-1", packed, message_id=str(_uuid()), sent_at=2e9)
            assert msg == payloads.encode_readings(
                "gw-1", recs, message_id=str(_uuid()), sent_at=2e9
            )
            jsonschema.validate(json.loads(msg), SCHEMA)
        assert fast.next_packed(25, BIG) is None  # nothing pending
        assert fast.in_flight() == 61


def _uuid() -> str:
    return "3f1c1a2e-8d5b-4c6a-9e2f-0a1b2c3d4e5f"


def test_span_ack_and_release_touch_only_interval_records_in_range(
    tmp_path: Path, clock: ManualClock
) -> None:
    with open_spool(tmp_path / "s.sqlite", clock) as spool:
        spool.add([rec(i) for i in range(5)], Priority.INTERVAL)
        (alarm,) = spool.add([rec(100)], Priority.ALARM)
        spool.add([rec(i) for i in range(5, 10)], Priority.INTERVAL)
        assert spool.next_packed(50, BIG) is None  # an alarm is pending: per-record path
        (first,) = spool.next_batch(1, BIG)
        assert first.record_id == alarm
        spool.mark_in_flight([alarm])
        assert spool.next_packed(50, BIG) is None  # still stored (in flight): still urgent first
        # The ranges as next_packed would hand them out (the alarm's seq lies inside).
        span = (1, 11)
        spool.release(spans=[span])
        assert spool.in_flight() == 1  # the alarm's mark is kept
        assert spool.ack(spans=[(1, 3), (4, 11)]) == 10  # merged into one range
        assert spool.depth_by_priority() == {
            Priority.ALARM: 1,
            Priority.ON_DEMAND: 0,
            Priority.INTERVAL: 0,
        }
        assert spool.in_flight() == 1
        assert spool.ack([alarm]) == 1


def test_release_moves_the_cursor_back_and_resends_the_same_range(
    tmp_path: Path, clock: ManualClock
) -> None:
    with open_spool(tmp_path / "s.sqlite", clock) as spool:
        spool.add([rec(i) for i in range(20)], Priority.INTERVAL)
        one = spool.next_packed(5, BIG)
        two = spool.next_packed(5, BIG)
        assert one is not None and two is not None
        assert one.span == (1, 5) and two.span == (6, 10)
        spool.release(spans=[one.span])
        again = spool.next_packed(5, BIG)
        assert again is not None and again.span == one.span and again.entries == one.entries
        # A batch that would reach past the in-flight range is not an exact range: declined,
        # and the per-record path hands out what is pending.
        spool.release(spans=[again.span])
        assert spool.next_packed(10, BIG) is None
        batch = spool.next_batch(10, BIG)
        assert [spool._seq(r.record_id) for r in batch] == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
        spool.mark_in_flight(r.record_id for r in batch)
        rest = spool.next_packed(10, BIG)
        assert rest is not None and rest.span == (16, 20)
        spool.release_all()
        assert spool.next_packed(100, BIG) is not None
        assert spool.in_flight() == 20


def test_declines_events_byte_budget_and_throttling(tmp_path: Path, clock: ManualClock) -> None:
    with open_spool(tmp_path / "s.sqlite", clock) as spool:
        spool.add(
            [(payloads.event_record("cim", "<x/>", "application/xml"), "ev-1")], Priority.INTERVAL
        )
        assert spool.next_packed(10, BIG) is None  # an event is published on its own
        (ev,) = spool.next_batch(10, BIG)
        spool.mark_in_flight([ev.record_id])
        spool.add([rec(i) for i in range(10)], Priority.INTERVAL)
        one_size = spool.next_batch(1, BIG)[0].size
        assert spool.next_packed(10, one_size * 3) is None  # the budget stops it first
        single = spool.next_packed(1, 1)  # one record always goes, as with next_batch
        assert single is not None and single.count == 1
    with open_spool(tmp_path / "storm.sqlite", clock) as spool:
        spool.add([rec(i) for i in range(10)], Priority.INTERVAL)
        spool.add([rec(100 + i) for i in range(spool.storm_min_records)], Priority.ALARM)
        spool.ack(r.record_id for r in spool.next_batch(100, BIG)[: spool.storm_min_records])
        assert spool.depth_by_priority()[Priority.ALARM] == 0
        assert spool.next_packed(10, BIG) is None  # the storm's hold still throttles


def test_schema_2_file_is_migrated_and_its_rows_go_the_per_record_way(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "v2.sqlite"
    with open_spool(path, clock) as spool:
        spool.add([rec(i) for i in range(4)], Priority.INTERVAL)
    # Make it what schema 2 wrote: no head column.
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE records DROP COLUMN head")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    with open_spool(path, clock) as spool:
        assert spool._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
        assert spool.next_packed(10, BIG) is None  # old rows have no head
        old = spool.next_batch(10, BIG)
        assert [r.natural_key for r in old] == [rec(i)[1] for i in range(4)]
        spool.mark_in_flight(r.record_id for r in old)
        spool.add([rec(i) for i in range(4, 8)], Priority.INTERVAL)
        new = spool.next_packed(10, BIG)
        assert new is not None and new.count == 4
        assert spool.ack([r.record_id for r in old], [new.span]) == 8
        assert spool.depth() == 0
