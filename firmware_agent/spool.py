"""The durable spool between the collector and the uplink: SQLite in WAL mode, synchronous=FULL.

Why: a reading is committed to disk before anyone tries to publish it, and it leaves the disk only
after the broker's PUBACK for the very message that carried it. A power cut, a kill -9 or a lost
connection therefore loses nothing; at worst a record is sent twice, and its natural key lets the
head end drop the copy. Records are batched into one transaction per ``add`` call because fsync,
not SQLite, is the cost (measured: 6.9k single-row transactions/s, ~197k rows/s in batches
of 100).

All methods must be called from one thread (the agent's asyncio thread): the connection keeps
SQLite's same-thread check on.
"""

from __future__ import annotations

import enum
import functools
import json
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_agent.clock import Clock

DEFAULT_MAX_RECORD_BYTES = 64 * 1024
# Fields the spool adds around a record in the uplink payload: a record must not carry them itself.
RESERVED_FIELDS = frozenset({"record_id", "natural_key", "priority", "spooled_at"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id   TEXT    NOT NULL UNIQUE,
    natural_key TEXT    NOT NULL UNIQUE,
    priority    INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    body        TEXT    NOT NULL,
    size        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_next ON records (priority, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA_VERSION = "1"


class Priority(enum.IntEnum):
    """Lower is more urgent: alarms overtake on-demand replies, which overtake interval reads."""

    ALARM = 0
    ON_DEMAND = 1
    INTERVAL = 2


class SpoolError(Exception):
    """Base class of the spool's errors."""


class RecordRejected(SpoolError):
    """A record the spool refuses to store (not JSON-able, too large, uses a reserved field)."""

    def __init__(self, index: int, natural_key: str, reason: str) -> None:
        self.index = index
        self.natural_key = natural_key
        self.reason = reason
        super().__init__(f"record #{index} (natural key {natural_key!r}): {reason}")


class SpoolCorrupt(SpoolError):
    """The database file is not a spool of a version we understand."""


def encode_body(record: dict[str, Any]) -> str:
    """The stored form of a record: compact JSON, one object. Raises TypeError/ValueError."""
    return json.dumps(
        record, separators=(",", ":"), sort_keys=True, allow_nan=False, ensure_ascii=False
    )


@dataclass(frozen=True)
class SpoolRecord:
    """One stored record as the uplink sends it. ``body`` is the JSON object as stored, so the
    uplink can splice it into a message without decoding and re-encoding it."""

    record_id: str
    natural_key: str
    priority: Priority
    created_at: float
    body: str
    size: int  # bytes of JSON body + natural key: what batch budgets count

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    @classmethod
    def from_data(
        cls,
        record_id: str,
        natural_key: str,
        priority: Priority,
        created_at: float,
        data: dict[str, Any],
        size: int = 0,
    ) -> SpoolRecord:
        return cls(record_id, natural_key, priority, created_at, encode_body(data), size)


@dataclass(frozen=True)
class SpoolStats:
    depth: int
    in_flight: int
    added: int
    duplicates: int
    acked: int


class Spool:
    """Durable, prioritised FIFO of JSON records with in-flight tracking."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.path = path
        self._clock = clock
        self._rng = rng
        self.max_record_bytes = max_record_bytes
        self._listeners: list[Callable[[], None]] = []
        self.added = 0
        self.duplicates = 0
        self.acked = 0
        self._db = sqlite3.connect(str(path), isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._check_version()
            # In-flight marks live in an in-memory temp table: a restart means no message is in
            # flight any more, so they never need to reach the disk (nor cost an fsync).
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._db.execute("CREATE TEMP TABLE inflight (record_id TEXT PRIMARY KEY)")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise SpoolCorrupt(f"{path}: {e}") from e

    # -- plumbing -------------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
        elif row[0] != SCHEMA_VERSION:
            raise SpoolCorrupt(f"{self.path}: spool schema {row[0]!r}, expected {SCHEMA_VERSION!r}")

    def _new_id(self) -> str:
        if self._rng is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every ``add`` that stored something (the uplink wakes up)."""
        self._listeners.append(listener)

    # -- API ------------------------------------------------------------------------------------
    def add(self, items: Sequence[tuple[dict[str, Any], str]], priority: Priority) -> list[str]:
        """Store ``(record, natural_key)`` pairs in one transaction.

        Returns the record ids of the records stored, in order; a record whose natural key is
        already spooled is dropped and counted in ``duplicates`` (it gets no id). Raises
        ``RecordRejected`` (and stores none of ``items``) if any record is unusable.
        """
        prio = Priority(priority)
        now = self._clock.now()
        rows: list[tuple[str, str, int, float, str, int]] = []
        for i, (record, natural_key) in enumerate(items):
            rows.append(
                (self._new_id(), natural_key, int(prio), now, *self._encode(i, record, natural_key))
            )
        if not rows:
            return []
        with self._tx():
            inserted = self._db.executemany(
                "INSERT OR IGNORE INTO records "
                "(record_id, natural_key, priority, created_at, body, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            ).rowcount
            stored = [row[0] for row in rows]
            if inserted != len(rows):  # some natural keys were spooled already: find which
                stored = [rid for rid in stored if self._exists(rid)]
        self.added += len(stored)
        self.duplicates += len(rows) - len(stored)
        if stored:
            for listener in list(self._listeners):
                listener()
        return stored

    def _exists(self, record_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM records WHERE record_id = ?", (record_id,))
        return row.fetchone() is not None

    def _encode(self, index: int, record: object, natural_key: object) -> tuple[str, int]:
        key = natural_key if isinstance(natural_key, str) else repr(natural_key)
        if not isinstance(natural_key, str) or not natural_key:
            raise RecordRejected(index, key, "natural key must be a non-empty string")
        if not isinstance(record, dict):
            raise RecordRejected(index, key, f"record must be a dict, not {type(record).__name__}")
        clash = RESERVED_FIELDS & record.keys()
        if clash:
            raise RecordRejected(index, key, f"uses reserved field(s) {sorted(clash)}")
        try:
            body = encode_body(record)
        except (TypeError, ValueError) as e:
            raise RecordRejected(index, key, f"not JSON-serialisable: {e}") from e
        size = len(body.encode()) + len(key.encode())
        if size > self.max_record_bytes:
            raise RecordRejected(index, key, f"{size} bytes > limit {self.max_record_bytes}")
        return body, size

    def next_batch(self, max_records: int, max_bytes: int) -> list[SpoolRecord]:
        """Pending (not in-flight) records, most urgent class first, oldest first within a class,
        at most ``max_records`` and ``max_bytes`` of bodies, but always at least one if any is
        pending (so a record near the size limit cannot block the queue)."""
        if max_records <= 0:
            return []
        cur = self._db.execute(
            "SELECT record_id, natural_key, priority, created_at, body, size FROM records "
            "WHERE record_id NOT IN (SELECT record_id FROM temp.inflight) "
            "ORDER BY priority, seq LIMIT ?",
            (max_records,),
        )
        batch: list[SpoolRecord] = []
        total = 0
        for record_id, natural_key, prio, created_at, body, size in cur:
            if batch and total + size > max_bytes:
                break
            total += size
            batch.append(
                SpoolRecord(record_id, natural_key, Priority(prio), created_at, body, size)
            )
        cur.close()
        return batch

    def mark_in_flight(self, ids: Iterable[str]) -> None:
        with self._tx():
            self._db.executemany(
                "INSERT OR IGNORE INTO temp.inflight (record_id) VALUES (?)", ((i,) for i in ids)
            )

    def release(self, ids: Iterable[str]) -> None:
        """In-flight back to pending: the message carrying them was not acknowledged."""
        with self._tx():
            self._db.executemany(
                "DELETE FROM temp.inflight WHERE record_id = ?", ((i,) for i in ids)
            )

    def release_all(self) -> int:
        with self._tx():
            return self._db.execute("DELETE FROM temp.inflight").rowcount

    def ack(self, ids: Iterable[str]) -> int:
        """Delete records the broker acknowledged; returns how many were deleted."""
        keys = [(i,) for i in ids]
        with self._tx():
            n = self._db.executemany("DELETE FROM records WHERE record_id = ?", keys).rowcount
            self._db.executemany("DELETE FROM temp.inflight WHERE record_id = ?", keys)
        self.acked += n
        return n

    def depth(self) -> int:
        """Records stored, pending and in flight."""
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def in_flight(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM temp.inflight").fetchone()
        return int(row[0])

    def depth_by_priority(self) -> dict[Priority, int]:
        counts = dict.fromkeys(Priority, 0)
        for prio, n in self._db.execute("SELECT priority, COUNT(*) FROM records GROUP BY priority"):
            counts[Priority(prio)] = int(n)
        return counts

    def stats(self) -> SpoolStats:
        return SpoolStats(self.depth(), self.in_flight(), self.added, self.duplicates, self.acked)

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, ROLLBACK on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
