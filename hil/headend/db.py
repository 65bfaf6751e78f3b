"""The head end's SQLite store: the idempotent bridge of seed 000.

At-least-once delivery means the same record can arrive twice: the broker redelivers a message
whose PUBACK was lost (same ``message_id``), and the gateway resends records after a reconnect or
a restart in a *new* message (same ``natural_key``, new ``message_id``). So the bridge drops a
message whose id it has seen, then each record whose natural key it has stored, and counts both.

Several head-end workers (threads or processes) share one database file, as a scaled-out head end
shares its persistence layer: uniqueness is decided by SQLite's UNIQUE constraints inside one
``BEGIN IMMEDIATE`` transaction per message, so two workers can never both store a record.
Counters live in the database too, so they add up across workers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_agent.uplink import payloads
from hil.headend.files import FileRequest, FileStatus, check_transition
from hil.headend.pagination import QueryError, StoredReading, parse_time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    natural_key  TEXT NOT NULL UNIQUE,
    record_id    TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    gateway_id   TEXT NOT NULL,
    measure_name TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    time_us      INTEGER NOT NULL,
    arrival_us   INTEGER NOT NULL,
    priority     TEXT NOT NULL,
    worker       TEXT NOT NULL,
    received_at  REAL NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (measure_name, time_us, seq);
CREATE TABLE IF NOT EXISTS messages (
    message_id  TEXT PRIMARY KEY,
    gateway_id  TEXT NOT NULL,
    worker      TEXT NOT NULL,
    received_at REAL NOT NULL,
    records     INTEGER NOT NULL,
    new_records INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS file_requests (
    request_id    TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    start_date    TEXT NOT NULL,
    end_date      TEXT NOT NULL,
    start_us      INTEGER NOT NULL,
    end_us        INTEGER NOT NULL,
    sftp_location TEXT,
    record_count  INTEGER,
    error         TEXT
);
CREATE TABLE IF NOT EXISTS file_request_events (
    request_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    at         REAL NOT NULL
);
"""

DUPLICATE_RECORDS = "duplicate_records"
DUPLICATE_MESSAGES = "duplicate_messages"
INVALID_MESSAGES = "invalid_messages"


class HeadEndDbError(Exception):
    """A request the store cannot honour (unknown file request, illegal status change)."""


@dataclass(frozen=True)
class Ingested:
    """What one message added: new records, records dropped as duplicates, and whether the
    whole message was a redelivery (seen message id)."""

    new_records: int
    duplicate_records: int
    duplicate_message: bool


@dataclass(frozen=True)
class HeadEndStats:
    readings: int  # distinct records stored, all kinds
    messages: int  # distinct messages
    duplicate_records: int
    duplicate_messages: int
    invalid_messages: int
    by_worker: dict[str, int]  # distinct records stored by each worker

    def to_json(self) -> dict[str, Any]:
        return {
            "readings": self.readings,
            "messages": self.messages,
            "duplicate_records": self.duplicate_records,
            "duplicate_messages": self.duplicate_messages,
            "invalid_messages": self.invalid_messages,
            "by_worker": dict(self.by_worker),
        }


def _time_us(record: dict[str, Any], key: str, default: int) -> int:
    value = record.get(key)
    if not isinstance(value, str):
        return default
    try:
        return parse_time(key, value)
    except QueryError:
        return default


def _measure_name(record: dict[str, Any]) -> str:
    return "alarms" if record.get("type") == "alarm" else "readings"


class HeadEndDb:
    """One connection to the shared database; safe to call from several threads (one lock)."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # A committed message survives a crash of the head end; WAL + NORMAL may lose the last
        # commits only on power loss, which the simulator does not model.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- plumbing -------------------------------------------------------------------------------
    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self) -> HeadEndDb._Tx:
        return HeadEndDb._Tx(self._db)

    def _bump(self, name: str, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    # -- ingest ---------------------------------------------------------------------------------
    def ingest(
        self, msg: payloads.ReadingsMessage, worker: str, received_at: float | None = None
    ) -> Ingested:
        """Store a decoded readings message once; see the module docstring."""
        now = time.time() if received_at is None else received_at
        now_us = int(now * 1_000_000)
        with self._lock, self._tx() as db:
            seen = (
                db.execute(
                    "INSERT OR IGNORE INTO messages "
                    "(message_id, gateway_id, worker, received_at, records, new_records) "
                    "VALUES (?, ?, ?, ?, ?, 0)",
                    (msg.message_id, msg.gateway_id, worker, now, len(msg.records)),
                ).rowcount
                == 0
            )
            if seen:
                self._bump(DUPLICATE_MESSAGES, 1)
                self._bump(DUPLICATE_RECORDS, len(msg.records))
                return Ingested(0, len(msg.records), True)
            new = 0
            for rec in msg.records:
                time_us = _time_us(rec, "time", now_us)
                new += db.execute(
                    "INSERT OR IGNORE INTO readings (natural_key, record_id, message_id, "
                    "gateway_id, measure_name, device_id, time_us, arrival_us, priority, worker, "
                    "received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec["natural_key"],
                        rec["record_id"],
                        msg.message_id,
                        msg.gateway_id,
                        _measure_name(rec),
                        str(rec.get("device_id", "")),
                        time_us,
                        _time_us(rec, "arrival_time", now_us),
                        str(rec["priority"]),
                        worker,
                        now,
                        json.dumps(rec, separators=(",", ":")),
                    ),
                ).rowcount
            db.execute(
                "UPDATE messages SET new_records = ? WHERE message_id = ?", (new, msg.message_id)
            )
            self._bump(DUPLICATE_RECORDS, len(msg.records) - new)
            return Ingested(new, len(msg.records) - new, False)

    def count_invalid(self) -> None:
        with self._lock, self._tx():
            self._bump(INVALID_MESSAGES, 1)

    # -- queries --------------------------------------------------------------------------------
    def stats(self) -> HeadEndStats:
        with self._lock:
            db = self._db
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            readings = db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            messages = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            by_worker = dict(
                db.execute("SELECT worker, COUNT(*) FROM readings GROUP BY worker").fetchall()
            )
        return HeadEndStats(
            int(readings),
            int(messages),
            int(counters.get(DUPLICATE_RECORDS, 0)),
            int(counters.get(DUPLICATE_MESSAGES, 0)),
            int(counters.get(INVALID_MESSAGES, 0)),
            {str(k): int(v) for k, v in by_worker.items()},
        )

    def natural_keys(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT natural_key FROM readings ORDER BY seq").fetchall()
        return [str(r[0]) for r in rows]

    def records(self) -> list[dict[str, Any]]:
        """Every stored record as it arrived (plus message_id, gateway_id), in arrival order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body, message_id, gateway_id FROM readings ORDER BY seq"
            ).fetchall()
        return [{**json.loads(b), "message_id": m, "gateway_id": g} for b, m, g in rows]

    @staticmethod
    def _reading(row: tuple[Any, ...]) -> StoredReading:
        time_us, arrival_us, device_id, measure_name, body = row
        return StoredReading(time_us, arrival_us, device_id, measure_name, json.loads(body))

    def page(self, start_us: int, limit: int, offset: int) -> list[StoredReading]:
        """Readings (not alarms) at or after ``start_us``, by time then arrival."""
        with self._lock:
            rows = self._db.execute(
                "SELECT time_us, arrival_us, device_id, measure_name, body FROM readings "
                "WHERE measure_name = 'readings' AND time_us >= ? "
                "ORDER BY time_us, seq LIMIT ? OFFSET ?",
                (start_us, limit, offset),
            ).fetchall()
        return [self._reading(r) for r in rows]

    def between(self, start_us: int, end_us: int, chunk: int = 1000) -> Iterator[StoredReading]:
        """Readings with start ≤ time ≤ end, in chunks so a big export never holds the lock."""
        last: tuple[int, int] = (start_us, -1)
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT time_us, arrival_us, device_id, measure_name, body, seq "
                    "FROM readings WHERE measure_name = 'readings' AND time_us <= ? "
                    "AND (time_us > ? OR (time_us = ? AND seq > ?)) "
                    "ORDER BY time_us, seq LIMIT ?",
                    (end_us, last[0], last[0], last[1], chunk),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._reading(row[:5])
            last = (rows[-1][0], rows[-1][5])

    # -- file requests --------------------------------------------------------------------------
    def create_file_request(
        self, request_id: str, start_date: str, end_date: str, start_us: int, end_us: int
    ) -> FileRequest:
        with self._lock, self._tx() as db:
            db.execute(
                "INSERT INTO file_requests (request_id, status, start_date, end_date, start_us, "
                "end_us) VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, FileStatus.QUEUED.value, start_date, end_date, start_us, end_us),
            )
            db.execute(
                "INSERT INTO file_request_events VALUES (?, ?, ?)",
                (request_id, FileStatus.QUEUED.value, time.time()),
            )
        return FileRequest(request_id, FileStatus.QUEUED, start_date, end_date)

    def file_request(self, request_id: str) -> FileRequest | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status, start_date, end_date, sftp_location, record_count, error "
                "FROM file_requests WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        if row is None:
            return None
        status, start, end, location, count, error = row
        return FileRequest(request_id, FileStatus(status), start, end, location, count, error)

    def file_request_range(self, request_id: str) -> tuple[int, int]:
        with self._lock:
            row = self._db.execute(
                "SELECT start_us, end_us FROM file_requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            raise HeadEndDbError(f"no file request {request_id!r}")
        return int(row[0]), int(row[1])

    def advance_file_request(
        self,
        request_id: str,
        status: FileStatus,
        *,
        sftp_location: str | None = None,
        record_count: int | None = None,
        error: str | None = None,
    ) -> FileRequest:
        """Move a request along its lifecycle (checked) and record when."""
        with self._lock, self._tx() as db:
            row = db.execute(
                "SELECT status FROM file_requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is None:
                raise HeadEndDbError(f"no file request {request_id!r}")
            check_transition(FileStatus(row[0]), status)
            db.execute(
                "UPDATE file_requests SET status = ?, "
                "sftp_location = COALESCE(?, sftp_location), "
                "record_count = COALESCE(?, record_count), error = COALESCE(?, error) "
                "WHERE request_id = ?",
                (status.value, sftp_location, record_count, error, request_id),
            )
            db.execute(
                "INSERT INTO file_request_events VALUES (?, ?, ?)",
                (request_id, status.value, time.time()),
            )
        request = self.file_request(request_id)
        assert request is not None
        return request

    def file_request_history(self, request_id: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT status FROM file_request_events WHERE request_id = ? ORDER BY rowid",
                (request_id,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> HeadEndDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
