"""The idempotent bridge: duplicates by message id and by natural key, across workers."""

from __future__ import annotations

import threading
from pathlib import Path

from hil.headend.db import HeadEndDb, Ingested
from tests.hil.headend.helpers import message, reading


def test_redelivered_message_and_resent_records_are_dropped_and_counted(db: HeadEndDb) -> None:
    r1, r2, r3 = (reading("m1", f"2024-05-01T10:0{i}:00Z", i, kw=1.0) for i in range(3))
    assert db.ingest(message("A", r1, r2), "w1") == Ingested(2, 0, False)
    # The broker redelivers A (its PUBACK was lost): a duplicate message, nothing stored.
    assert db.ingest(message("A", r1, r2), "w2") == Ingested(0, 2, True)
    # The gateway resends r2 after a reconnect in a new message B, with r3.
    assert db.ingest(message("B", r2, r3), "w2") == Ingested(1, 1, False)
    stats = db.stats()
    assert (stats.readings, stats.messages) == (3, 2)
    assert (stats.duplicate_records, stats.duplicate_messages) == (3, 1)
    assert stats.by_worker == {"w1": 2, "w2": 1}
    assert [r["message_id"] for r in db.records()] == ["A", "A", "B"]
    db.count_invalid()
    assert db.stats().invalid_messages == 1


def test_two_connections_racing_on_the_same_records_store_each_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    recs = [reading(f"m{i % 7}", f"2024-05-01T10:00:{i % 60:02d}.{i:06d}Z", i) for i in range(600)]
    results: dict[str, int] = {}

    def worker(name: str, order: int) -> None:
        with HeadEndDb(path) as mine:
            batches = [recs[i : i + 20] for i in range(0, len(recs), 20)][::order]
            new = 0
            for j, batch in enumerate(batches):
                new += mine.ingest(message(f"{name}-{j}", *batch), name).new_records
            results[name] = new

    HeadEndDb(path).close()  # schema first, so neither thread races on CREATE
    threads = [threading.Thread(target=worker, args=(n, o)) for n, o in (("w1", 1), ("w2", -1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with HeadEndDb(path) as db:
        stats = db.stats()
        keys = db.natural_keys()
    assert stats.readings == len(recs) == len(set(keys))
    assert results["w1"] + results["w2"] == len(recs)
    assert stats.duplicate_records == len(recs)  # each record was offered twice
    assert stats.by_worker == {k: v for k, v in results.items() if v}
