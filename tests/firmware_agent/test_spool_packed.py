"""Spool.next_packed: whole pages of interval reads, stored encoded by add(), handed out and
acknowledged as a seq range. It must produce what the per-record path produces, byte for byte, and
step aside (None) whenever that path would decide differently."""

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


def open_spool(path: Path, clock: ManualClock, page_records: int = 50) -> Spool:
    return Spool(path, clock, rng=random.Random(7), page_records=page_records)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_700_000_000.123456)


def test_packed_batch_is_byte_for_byte_the_per_record_encoding(
    tmp_path: Path, clock: ManualClock
) -> None:
    a = tmp_path / "a.sqlite"
    with open_spool(a, clock, page_records=10) as spool:
        spool.add([rec(i) for i in range(30)], Priority.INTERVAL)  # three pages of ten
        clock.advance(1.5)
        spool.add([({}, "empty-body")], Priority.INTERVAL)  # "{}" splices as "}"
        spool.add([rec(i) for i in range(30, 60)], Priority.INTERVAL)
    shutil.copyfile(a, tmp_path / "b.sqlite")
    counts = []
    with open_spool(a, clock) as fast, open_spool(tmp_path / "b.sqlite", clock) as slow:
        while packed := fast.next_packed(25, BIG):
            recs = slow.next_batch(packed.records, BIG)
            slow.mark_in_flight(r.record_id for r in recs)
            counts.append(packed.records)
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
        assert counts == [20, 21, 20]  # whole pages, as many as fit 25 records
        assert fast.in_flight() == 61 and slow.next_batch(10, BIG) == []


def _uuid() -> str:
    return "3f1c1a2e-8d5b-4c6a-9e2f-0a1b2c3d4e5f"


def test_span_ack_deletes_only_the_pages_in_range(tmp_path: Path, clock: ManualClock) -> None:
    with open_spool(tmp_path / "s.sqlite", clock) as spool:
        spool.add([rec(i) for i in range(5)], Priority.INTERVAL)  # a page, seq 1..5
        (alarm,) = spool.add([rec(100)], Priority.ALARM)  # a row, seq 6
        spool.add([rec(i) for i in range(5, 10)], Priority.INTERVAL)  # a page, seq 7..11
        assert spool.next_packed(50, BIG) is None  # an alarm is pending: per-record path
        (first,) = spool.next_batch(1, BIG)
        assert first.record_id == alarm
        spool.mark_in_flight([alarm])
        assert spool.next_packed(50, BIG) is None  # still stored (in flight): still urgent first
        assert spool.ack(spans=[(1, 3), (4, 11)]) == 10  # merged into one range; the alarm stays
        assert spool.depth_by_priority() == {
            Priority.ALARM: 1,
            Priority.ON_DEMAND: 0,
            Priority.INTERVAL: 0,
        }
        assert spool.in_flight() == 1
        assert spool.ack([alarm]) == 1 and spool.depth() == 0


def test_release_moves_the_cursor_back_and_resends_the_same_pages(
    tmp_path: Path, clock: ManualClock
) -> None:
    with open_spool(tmp_path / "s.sqlite", clock, page_records=5) as spool:
        spool.add([rec(i) for i in range(20)], Priority.INTERVAL)  # four pages of five
        one = spool.next_packed(5, BIG)
        two = spool.next_packed(5, BIG)
        assert one is not None and two is not None
        assert one.span == (1, 5) and two.span == (6, 10)
        spool.release(spans=[one.span])
        again = spool.next_packed(5, BIG)
        assert again is not None and again.span == one.span and again.entries == one.entries
        # A batch is a run of adjacent pages: it stops before a page in flight.
        spool.release(spans=[again.span])
        alone = spool.next_packed(20, BIG)
        assert alone is not None and alone.span == (1, 5)
        rest = spool.next_packed(20, BIG)
        assert rest is not None and rest.span == (11, 20) and rest.records == 10
        assert spool.next_packed(20, BIG) is None
        assert spool.in_flight() == 20
        assert spool.release_all() == 20
        everything = spool.next_packed(100, BIG)
        assert everything is not None and everything.records == 20
        assert spool.ack(spans=[everything.span]) == 20 and spool.depth() == 0


def test_declines_events_marks_budget_and_throttling(tmp_path: Path, clock: ManualClock) -> None:
    with open_spool(tmp_path / "s.sqlite", clock, page_records=5) as spool:
        spool.add(
            [(payloads.event_record("cim", "<x/>", "application/xml"), "ev-1")], Priority.INTERVAL
        )
        spool.add([rec(i) for i in range(10)], Priority.INTERVAL)
        assert spool.next_packed(10, BIG) is None  # an event is a row, published on its own
        (ev,) = spool.next_batch(1, BIG)
        assert payloads.as_event(ev) is not None
        spool.mark_in_flight([ev.record_id])
        assert spool.next_packed(10, BIG) is None  # and goes first, until it is acknowledged
        assert spool.ack([ev.record_id]) == 1
        page_size = spool.next_batch(5, BIG)
        budget = sum(r.size for r in page_size)
        one = spool.next_packed(10, budget + budget // 2)  # the budget stops it after a page
        assert one is not None and one.records == 5
        assert spool.next_packed(10, budget // 3) is None  # a page larger than a batch ...
        assert spool.next_packed(4, BIG) is None  # ... goes record by record (next_batch)
        assert len(spool.next_batch(4, BIG)) == 4
        spool.release(spans=[one.span])
        (single,) = spool.next_batch(1, BIG)
        spool.mark_in_flight([single.record_id])
        assert spool.next_packed(10, BIG) is None  # records of a page are out one by one
        assert spool.ack([single.record_id]) == 1  # cut out of its page, which stays
        assert len(spool.stored()) == 9
        packed = spool.next_packed(10, BIG)
        assert packed is not None and packed.records == 9
    with open_spool(tmp_path / "storm.sqlite", clock) as spool:
        spool.add([rec(i) for i in range(10)], Priority.INTERVAL)
        spool.add([rec(100 + i) for i in range(spool.storm_min_records)], Priority.ALARM)
        spool.ack(r.record_id for r in spool.next_batch(100, BIG)[: spool.storm_min_records])
        assert spool.depth_by_priority()[Priority.ALARM] == 0
        assert spool.next_packed(10, BIG) is None  # the storm's hold still throttles


def test_acknowledging_page_records_by_id_survives_a_reopen(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "s.sqlite"
    with open_spool(path, clock) as spool:
        ids = spool.add([rec(i) for i in range(6)], Priority.INTERVAL)
        assert spool.ack(ids[1:3]) == 2
        assert spool.ack(ids[1:3]) == 0  # acking twice cuts nothing more
        spool.mark_in_flight(ids[3:4])
        assert spool.in_flight() == 1 and spool.depth() == 4
    with open_spool(path, clock) as spool:
        assert [r.record_id for r in spool.stored()] == [ids[0], *ids[3:]]
        assert spool.depth() == 4 and spool.in_flight() == 0
        packed = spool.next_packed(50, BIG)
        assert packed is not None and packed.records == 4
        assert spool.ack(spans=[packed.span]) == 4 and spool.depth() == 0
        assert spool.add([rec(99)], Priority.INTERVAL)[0] > ids[-1]  # seqs are never reused


V2_V3 = """
CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, natural_key TEXT NOT NULL UNIQUE,
  priority INTEGER NOT NULL, created_at REAL NOT NULL, body TEXT NOT NULL, size INTEGER NOT NULL
  {head});
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '{version}'), ('spool_id', '00000000000000ab');
"""


@pytest.mark.parametrize("version", ["2", "3"])
def test_an_old_file_is_migrated_and_its_rows_go_the_per_record_way(
    tmp_path: Path, clock: ManualClock, version: str
) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V2_V3.format(head=", head TEXT" if version == "3" else "", version=version))
    for i in range(4):
        body, key = json.dumps(rec(i)[0], separators=(",", ":"), ensure_ascii=False), rec(i)[1]
        db.execute(
            "INSERT INTO records (natural_key, priority, created_at, body, size) "
            "VALUES (?, 2, ?, ?, ?)",
            (key, clock.now(), body, len(body.encode()) + len(key.encode())),
        )
    db.commit()
    db.close()
    with open_spool(path, clock) as spool:
        assert spool._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("4",)
        spool.add([rec(i) for i in range(4, 8)], Priority.INTERVAL)
        assert spool.next_packed(10, BIG) is None  # the old rows go first, one by one
        old = spool.next_batch(4, BIG)
        assert [r.natural_key for r in old] == [rec(i)[1] for i in range(4)]
        spool.mark_in_flight(r.record_id for r in old)
        assert spool.next_packed(10, BIG) is None  # until they are acknowledged
        assert spool.ack([r.record_id for r in old]) == 4
        new = spool.next_packed(10, BIG)
        assert new is not None and new.records == 4 and new.first_seq == 5  # after the rows
        assert spool.ack(spans=[new.span]) == 4
        assert spool.depth() == 0
