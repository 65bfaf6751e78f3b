"""The durable spool between the collector and the uplink: SQLite in WAL mode, synchronous=FULL.

Why: a reading is committed to disk before anyone tries to publish it, and it leaves the disk only
after the broker's PUBACK for the very message that carried it. A power cut, a kill -9 or a lost
connection therefore loses nothing; at worst a record is sent twice, and its natural key (and its
record id, the same on every re-send) lets the head end drop the copy. Records are batched into one
transaction per ``add`` call because fsync, not SQLite, is the cost (measured: 6.9k single-row
transactions/s, ~197k rows/s in batches of 100).

Record ids are UUID-formatted (version-4 layout, so the payload schema's pattern holds) but not
random: 64 random bits drawn (from the injected rng) when the spool file is created, then the
record's sequence number (rows and pages share one sequence, never reused: its high-water mark
is kept in ``meta``). They are unique across gateways and spool files, stable across re-sends,
and the spool finds a record by its primary key: an index on random ids cost ~30 % of the enqueue
rate (measured).

Priority and throttling. ``next_batch`` hands out alarms, then on-demand replies, then interval
reads, oldest first within a class; an interval read is never handed out while an alarm or
on-demand record is pending. During a *storm* (at least ``storm_min_records`` alarm or
on-demand records are stored, pending or in flight, or were in the last ``storm_hold_s``
seconds; a lone tamper alarm or one on-demand reply is no storm) interval reads are further
limited to ``storm_interval_rate`` records/s (0 = none until the storm is over), so a last-gasp
storm gets the backhaul and the uplink's in-flight window (spool_budget.IntervalThrottle).
``next_batch`` may then return ``[]`` while interval reads are pending; the uplink polls again.

Disk budget and aging. ``max_bytes`` bounds database + WAL + shm on disk: the live pages
(page_count - freelist_count, times page_size) may use the budget minus a reserve for the WAL
(whose auto-checkpoint threshold is sized from the budget, and whose file is truncated back to it)
and the shm file. An ``add`` that would exceed ``max_bytes`` or ``max_records`` first ages out
(deletes) records that are not in flight, oldest first, and only of a class no more urgent than the
new records: interval reads, then (for new alarms or on-demand replies) on-demand replies. Alarms
are never aged out. If room cannot be made (alarms fill the budget), new interval reads and
on-demand replies are refused with ``SpoolFull`` (nothing of that add is stored, so the collector's
catch-up reads them again later) and new alarms are stored over budget. Optionally interval reads
older than ``interval_max_age_s`` are aged out too. Every aged-out record is counted per class
(lifetime totals persist in the file); the budget being hit starts a "Queue Depth Exceeded"
episode: one WARNING with the figures, and ``SpoolStats.queue_depth_exceeded`` until the spool is
back under 90 % of the budget. Freed pages are reused by SQLite; once the backlog has drained,
``incremental_vacuum`` gives them back to the file system in bounded steps.

Interval reads are stored in pages (schema 4). An ``add`` of interval reads writes them as rows
of the ``pages`` table, up to ``page_records`` records (and ``page_bytes``) each, already encoded as
the members of a readings message's ``records`` array (ids, natural keys, class and spool time
included). Why: the uplink then reads, marks in flight and deletes one row per message instead of
one per record; per-record rows cost more SQLite time per message than a bare paho client spends
on the whole message (measured: ~300 us against ~70 us for 50 readings, bench/uplink.py).
``next_packed`` hands out whole pages, several small ones per message up to the batch limits,
marked in flight in memory; ``ack`` and ``release`` take them back as seq ranges. The per-record
API (``next_batch``, ``mark_in_flight``, ``release``/``ack`` by id) still sees every record: it
decodes pages (the slow path, used during a storm and by tools), and a page is deleted once all
its records are acknowledged. Alarms, on-demand replies and records carrying an uplink event stay
one row each. Interval reads are deduplicated by natural key within one ``add`` only (a page has
no per-record index, which keeps its delete cheap); a copy spooled by a later ``add`` (a catch-up
re-read after a crash) is sent too and dropped by the head end by natural key, as after any
re-send. Acknowledged pages are deleted in groups by the uplink; until then they stay in flight
(``in_flight()`` counts them).

All methods must be called from one thread (the agent's asyncio thread): the connection keeps
SQLite's same-thread check on.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from firmware_agent.clock import Clock
from firmware_agent.spool_budget import (
    DiskReserve,
    IntervalThrottle,
    QueueDepthExceeded,
    format_counts,
    wal_pages_for,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORD_BYTES = 64 * 1024
DEFAULT_PAGE_RECORDS = 50  # the uplink's default batch: one page, one message
DEFAULT_PAGE_BYTES = 128 * 1024  # half the uplink's default message cap: room for the envelope
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
MIN_MAX_BYTES = 1024 * 1024
DEFAULT_STORM_INTERVAL_RATE = 50.0
DEFAULT_STORM_HOLD_S = 10.0
DEFAULT_STORM_MIN_RECORDS = 10
AGE_CHECK_EVERY_S = 60.0
CACHE_KIB = 16 * 1024
MMAP_MAX_BYTES = 256 * 1024 * 1024
SHRINK_EVERY_S = 5.0
EPISODE_END_FRACTION = 0.9
# Fields the spool adds around a record in the uplink payload: a record must not carry them itself.
RESERVED_FIELDS = frozenset({"record_id", "natural_key", "priority", "spooled_at"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    natural_key TEXT    NOT NULL UNIQUE,
    priority    INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    body        TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    head        TEXT
);
DROP INDEX IF EXISTS records_next;
CREATE INDEX IF NOT EXISTS records_urgent ON records (priority, seq) WHERE priority < 2;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pages (
    seq        INTEGER PRIMARY KEY,  -- the first record's sequence number
    last       INTEGER NOT NULL,     -- the last record's; the records of a page are seq..last
    count      INTEGER NOT NULL,
    created_at REAL    NOT NULL,
    size       INTEGER NOT NULL,     -- sum of the records' sizes (what batch budgets count)
    entries    BLOB    NOT NULL      -- the records as readings-message array members, UTF-8
);
"""
SCHEMA_VERSION = "4"
# A record carrying an uplink event (payloads.EVENT_FIELD) is published on its own: never paged.
_EVENT_FIELD = "uplink_event"
_ENVELOPE_FIELDS = ("record_id", "natural_key", "priority", "spooled_at")
_SEQ_BITS = 58
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_LOW62 = (1 << 62) - 1
_CHUNK = 500  # ids per IN (...) statement
# Only alarms and on-demand replies are indexed by (priority, seq) (a partial index: interval
# inserts, the bulk, skip it, ~10 % of the enqueue rate); interval reads are found in rowid order.
_CLASS_WHERE = {
    0: "priority = 0 AND priority < 2",
    1: "priority = 1 AND priority < 2",
    2: "priority = 2",
}


class Priority(enum.IntEnum):
    """Lower is more urgent: alarms overtake on-demand replies, which overtake interval reads."""

    ALARM = 0
    ON_DEMAND = 1
    INTERVAL = 2

    @property
    def label(self) -> str:
        """The name used in payloads and stats: alarm, on_demand, interval."""
        return self.name.lower()


_PRIOS = tuple(Priority)  # stored int -> Priority without an enum call


class SpoolError(Exception):
    """Base class of the spool's errors."""


class RecordRejected(SpoolError):
    """A record the spool refuses to store (not JSON-able, too large, uses a reserved field)."""

    def __init__(self, index: int, natural_key: str, reason: str) -> None:
        self.index = index
        self.natural_key = natural_key
        self.reason = reason
        super().__init__(f"record #{index} (natural key {natural_key!r}): {reason}")


class SpoolFull(SpoolError):
    """The budget is full of records at least as urgent as these: none of the add was stored."""

    def __init__(self, priority: Priority, count: int, report: QueueDepthExceeded) -> None:
        self.priority = priority
        self.count = count
        self.report = report
        super().__init__(f"refused {count} {priority.label} record(s): {report.message()}")


class _NoRoom(Exception):
    """Internal: the budget cannot take these records (add() rolls back, raises SpoolFull)."""


class SpoolCorrupt(SpoolError):
    """The database file is not a spool of a version we understand."""


# Built once: json.dumps with arguments builds a new encoder per call (~10 % of an add). The
# encoder holds only its options, so sharing it is no shared mutable state.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
# A str as a JSON string, exactly as _ENCODER writes it (the C function json itself uses).
_quote: Callable[[str], str] = json.encoder.encode_basestring
_DECODER = json.JSONDecoder()  # options only, like _ENCODER


def encode_body(record: dict[str, Any]) -> str:
    """The stored form of a record: compact JSON, one object. Raises TypeError/ValueError."""
    return _ENCODER.encode(record)


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
    """What the agent publishes in its status message (``to_dict``)."""

    depth: int
    in_flight: int
    added: int
    duplicates: int
    acked: int
    depth_by_class: dict[str, int] = field(default_factory=dict)
    used_bytes: int = 0
    disk_bytes: int = 0
    max_bytes: int = 0
    max_records: int | None = None
    aged_out: dict[str, int] = field(default_factory=dict)  # lifetime, persisted in the file
    refused: dict[str, int] = field(default_factory=dict)  # since this process opened the spool
    storm: bool = False  # interval reads are being throttled
    throttled: int = 0  # next_batch calls that held interval reads back
    queue_depth_exceeded: QueueDepthExceeded | None = None  # the current episode, if any

    def to_dict(self) -> dict[str, object]:
        return {
            "depth": self.depth,
            "in_flight": self.in_flight,
            "added": self.added,
            "duplicates": self.duplicates,
            "acked": self.acked,
            "depth_by_class": dict(self.depth_by_class),
            "used_bytes": self.used_bytes,
            "disk_bytes": self.disk_bytes,
            "max_bytes": self.max_bytes,
            "max_records": self.max_records,
            "aged_out": dict(self.aged_out),
            "refused": dict(self.refused),
            "storm": self.storm,
            "throttled": self.throttled,
            "queue_depth_exceeded": (
                None if self.queue_depth_exceeded is None else self.queue_depth_exceeded.to_dict()
            ),
        }


_Row = tuple[int, str, int, float, str, int]
_PageRow = tuple[int, int, int, float, int, bytes]  # seq, last, count, created_at, size, entries


def iso_utc(t: float) -> str:
    """Epoch seconds (>= 0) → RFC 3339 UTC with milliseconds, e.g. 2023-11-14T22:13:20.000Z.

    Every uplink message is stamped with it, so the second is formatted once and cached: 0.6 µs
    instead of 2.4 µs through datetime. The digits are datetime's (microseconds rounded half to
    even, then cut to milliseconds): checked equal on 1.2 million times, edges included."""
    s = int(t)
    us = round((t - s) * 1e6)
    if us >= 1_000_000:
        s, us = s + 1, us - 1_000_000
    return f"{_utc_second(s)}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def _utc_second(s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))


class PackedBatch(NamedTuple):
    """Whole pages of interval reads handed out (and marked in flight) as one readings
    message's ``records`` array, as ``add`` encoded them (``Spool.next_packed``).

    ``first_seq``..``last_seq`` spans a run of adjacent pages and no other page, so the batch is
    acknowledged or released as that range (rows in the range are not touched). A named tuple,
    not a frozen dataclass: one is made per uplink message, and a frozen dataclass's __init__
    took 1.1 us of that message's time, a tuple 0.3 (measured)."""

    first_seq: int
    last_seq: int
    records: int  # not ``count``: a tuple has a count() method
    entries: bytes  # the array's members, comma-separated, UTF-8
    size: int  # sum of the records' sizes (what batch budgets count)

    @property
    def span(self) -> tuple[int, int]:
        return (self.first_seq, self.last_seq)


class Spool:
    """Durable, prioritised FIFO of JSON records with in-flight tracking and a disk budget."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_records: int | None = None,
        interval_max_age_s: float | None = None,
        storm_interval_rate: float = DEFAULT_STORM_INTERVAL_RATE,
        storm_hold_s: float = DEFAULT_STORM_HOLD_S,
        storm_min_records: int = DEFAULT_STORM_MIN_RECORDS,
        wal_autocheckpoint_pages: int | None = None,
        page_records: int = DEFAULT_PAGE_RECORDS,
        page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"spool max_bytes {max_bytes} < minimum {MIN_MAX_BYTES}")
        if max_records is not None and max_records < 1:
            raise ValueError(f"spool max_records {max_records} must be >= 1")
        if interval_max_age_s is not None and not interval_max_age_s > 0:
            raise ValueError(f"spool interval_max_age_s {interval_max_age_s} must be > 0")
        self.path = path
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.max_record_bytes = max_record_bytes
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.interval_max_age_s = interval_max_age_s
        if storm_min_records < 1:
            raise ValueError(f"spool storm_min_records {storm_min_records} must be >= 1")
        self.storm_min_records = storm_min_records
        if page_records < 1 or page_bytes < 1:
            raise ValueError(f"spool page_records {page_records} and page_bytes {page_bytes} >= 1")
        self.page_records = page_records
        self.page_bytes = page_bytes
        self.throttle = IntervalThrottle(clock, storm_interval_rate, storm_hold_s)
        self._listeners: list[Callable[[], None]] = []
        self.added = 0
        self.duplicates = 0
        self.acked = 0
        self.refused = dict.fromkeys(Priority, 0)
        self._episode: QueueDepthExceeded | None = None
        self._next_age_check = -math.inf
        self._next_shrink = -math.inf
        self._db = sqlite3.connect(str(path), isolation_level=None)
        try:
            self._open(wal_autocheckpoint_pages)
        except SpoolCorrupt:
            self._db.close()
            raise
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise SpoolCorrupt(f"{path}: {e}") from e

    # -- plumbing -------------------------------------------------------------------------------
    def _open(self, wal_pages: int | None) -> None:
        db = self._db
        fresh = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'").fetchone() is None
        if fresh:  # must precede the first table; lets ack() give freed pages back
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            raise sqlite3.DatabaseError("cannot switch to WAL mode")
        db.execute("PRAGMA synchronous=FULL")
        # Debian builds SQLite with SECURE_DELETE on: every page a delete frees is zero-filled
        # through the WAL (measured: half the uplink's delete cost). FAST still zeroes deleted
        # cells in place, where that costs no extra I/O, so the live pages keep no old readings.
        db.execute("PRAGMA secure_delete=FAST")
        # Reading a page through mmap instead of read(): the uplink's page query 19.6 -> 12.2 us
        # per message (measured). The cost: a read error of the flash (or a file truncated
        # behind our back) is SIGBUS, not an SQLite error; systemd restarts the agent, and
        # nothing committed is lost.
        db.execute(f"PRAGMA mmap_size={min(self.max_bytes, MMAP_MAX_BYTES)}")
        # The natural-key index of rows makes a delete touch about one index page per record: a
        # larger cache keeps a grouped delete from spilling pages to the WAL twice (measured:
        # 1,000-row range deletes 7.9 -> 4.7 us/record, 20,000-row 4.3 -> 1.6).
        db.execute(f"PRAGMA cache_size={-CACHE_KIB}")
        self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        self._wal_pages = wal_pages or wal_pages_for(self.max_bytes, self._page_size)
        db.execute(f"PRAGMA wal_autocheckpoint={int(self._wal_pages)}")
        db.execute(f"PRAGMA journal_size_limit={int(self._wal_pages) * self._page_size}")
        self.reserve = DiskReserve(self.max_bytes, self._page_size, self._wal_pages)
        version = None
        if not fresh:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            version = None if row is None else row[0]
            if version == "1":
                self._migrate_v1()
                version = "2"
            if version == "2":
                self._migrate_v2()
                version = "3"
            if version not in ("3", SCHEMA_VERSION):
                raise SpoolCorrupt(f"{self.path}: spool schema {version!r}, expected 1 to 4")
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        with self._tx():
            if meta.get("schema") != SCHEMA_VERSION:  # fresh, or 3: the pages table is new
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (SCHEMA_VERSION,),
                )
            if "spool_id" not in meta:
                meta["spool_id"] = f"{self._rng.getrandbits(64):016x}"
                db.execute("INSERT INTO meta VALUES ('spool_id', ?)", (meta["spool_id"],))
        self._spool_id = int(meta["spool_id"], 16)
        # Only the last 16 hex digits of an id depend on the sequence number: format those.
        self._id_prefix = self._record_id_slow(0)[:19]
        self._id_low = (2 << 62) | ((self._spool_id & 0xF) << _SEQ_BITS)
        self.aged_out = {p: int(meta.get(f"aged.{p.label}", 0)) for p in Priority}
        self._counts = dict.fromkeys(Priority, 0)
        for prio, n in db.execute("SELECT priority, COUNT(*) FROM records GROUP BY priority"):
            self._counts[Priority(prio)] = int(n)
        (paged,) = db.execute("SELECT total(count) FROM pages").fetchone()
        self._page_records = int(paged)  # records stored in pages (all interval reads)
        self._counts[Priority.INTERVAL] += self._page_records
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        high = max(int(row[0]) if row else 0, int(meta.get("seq_high", 0)))
        row = db.execute("SELECT max(last) FROM pages").fetchone()
        self._next_seq = max(high, int(row[0] or 0)) + 1
        self._auto_vacuum = int(db.execute("PRAGMA auto_vacuum").fetchone()[0])
        # In-flight marks live in an in-memory temp table: a restart means no message is in
        # flight any more, so they never need to reach the disk (nor cost an fsync).
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("CREATE TEMP TABLE inflight (seq INTEGER PRIMARY KEY)")
        # Records of pages handed out one by one (next_batch) and in flight.
        db.execute("CREATE TEMP TABLE page_marks (seq INTEGER PRIMARY KEY)")
        self._page_marks = 0  # rows in temp.page_marks
        # Pages handed out whole (next_packed): first seq -> records. Every page with seq <=
        # _cursor is in flight or gone (a release moves it back): next_packed starts there.
        self._pages_out: dict[int, int] = {}
        self._cursor = 0

    def _migrate_v1(self) -> None:
        """Schema 1 kept a random record id with its own unique index. Records keep their order
        and natural keys; they get new record ids (re-sends are deduplicated by natural key)."""
        db = self._db
        with self._tx():
            db.execute(
                "CREATE TABLE records_v2 (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "natural_key TEXT NOT NULL UNIQUE, priority INTEGER NOT NULL, "
                "created_at REAL NOT NULL, body TEXT NOT NULL, size INTEGER NOT NULL)"
            )
            db.execute(
                "INSERT INTO records_v2 SELECT seq, natural_key, priority, created_at, body, size "
                "FROM records ORDER BY seq"
            )
            db.execute("DROP TABLE records")
            db.execute("ALTER TABLE records_v2 RENAME TO records")
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")  # applies auto_vacuum to the old file
        log.info("spool %s migrated from schema 1 to 2", self.path)

    def _migrate_v2(self) -> None:
        """Schema 3 added a column to records (no longer written). Interval reads stored as rows
        by schema 2 or 3 stay rows: the uplink sends them through its per-record path."""
        with self._tx():
            self._db.execute("ALTER TABLE records ADD COLUMN head TEXT")
            self._db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
        log.info("spool %s migrated from schema 2 to 3", self.path)

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def record_id(self, seq: int) -> str:
        """The record id of sequence number ``seq`` in this spool (see the module docstring)."""
        h = f"{self._id_low | (seq & _SEQ_MASK):016x}"
        return f"{self._id_prefix}{h[:4]}-{h[4:]}"

    def _record_id_slow(self, seq: int) -> str:
        v = (self._spool_id << _SEQ_BITS) | (seq & _SEQ_MASK)  # 122 bits
        x = ((v >> 74) << 80) | (4 << 76) | (((v >> 62) & 0xFFF) << 64) | (2 << 62) | (v & _LOW62)
        h = f"{x:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _seq(self, record_id: str) -> int | None:
        """The sequence number behind one of our record ids; None for anything else."""
        # Fast path (the uplink hands back thousands of ids a second): an id of this spool is
        # its fixed prefix, then the 16 hex digits of _id_low | seq with a dash after four.
        if (
            isinstance(record_id, str)
            and len(record_id) == 36
            and record_id.startswith(self._id_prefix)
            and record_id[23] == "-"
        ):
            try:
                low = int(record_id[19:23] + record_id[24:], 16)
            except ValueError:
                return None
            return low & _SEQ_MASK if low & ~_SEQ_MASK == self._id_low else None
        try:
            x = int(record_id.replace("-", ""), 16)
        except (ValueError, AttributeError):
            return None
        if len(record_id) != 36 or (x >> 76) & 0xF != 4 or (x >> 62) & 3 != 2:
            return None
        v = ((x >> 80) << 74) | (((x >> 64) & 0xFFF) << 62) | (x & _LOW62)
        if v >> _SEQ_BITS != self._spool_id:
            return None
        return v & _SEQ_MASK

    def _seqs(self, ids: Iterable[str]) -> list[int]:
        return [s for s in map(self._seq, ids) if s is not None]

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every ``add`` that stored something (the uplink wakes up)."""
        self._listeners.append(listener)

    # -- API ------------------------------------------------------------------------------------
    def add(self, items: Sequence[tuple[dict[str, Any], str]], priority: Priority) -> list[str]:
        """Store ``(record, natural_key)`` pairs in one transaction.

        Returns the record ids of the records stored, in order; a record whose natural key is
        already spooled (interval reads: earlier in the same call) is dropped and counted in
        ``duplicates`` (it gets no id). Raises ``RecordRejected`` (and stores none of ``items``)
        if any record is unusable, and ``SpoolFull`` (storing none) if the budget is full of
        more urgent records.
        """
        prio = Priority(priority)
        now = self._clock.now()
        encoded = [self._encode(i, rec, key) for i, (rec, key) in enumerate(items)]
        if not encoded:
            return []
        # Rows (alarms, on-demand replies, events) take their seqs first, then the pages: a
        # page's seq..last range then holds no row, so a range ack or release is exact.
        paged = [
            i
            for i, (rec, _) in enumerate(items)
            if prio is Priority.INTERVAL and _EVENT_FIELD not in rec
        ]
        in_pages = set(paged)
        first = seq = self._next_seq
        rows: list[_Row] = []
        row_item: dict[int, int] = {}  # seq -> index in items
        for i, (_, natural_key) in enumerate(items):
            if i not in in_pages:
                body, size = encoded[i]
                rows.append((seq, natural_key, int(prio), now, body, size))
                row_item[seq] = i
                seq += 1
        pages, page_ids = self._paginate(items, encoded, paged, seq, now)
        if pages:
            seq = pages[-1][1] + 1
        self._next_seq = seq  # never reused, even if this add fails
        counts = dict(self._counts)
        aged = dict.fromkeys(Priority, 0)
        stored: dict[int, str] = dict(page_ids)  # index in items -> record id
        try:
            with self._tx():
                self._age_by_time(now, counts, aged)
                live_before = self._live_bytes()
                if rows:
                    inserted = self._db.executemany(
                        "INSERT OR IGNORE INTO records "
                        "(seq, natural_key, priority, created_at, body, size) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        rows,
                    ).rowcount
                    seqs = [r[0] for r in rows]
                    if inserted != len(rows):  # some natural keys were spooled already
                        have = {
                            s
                            for (s,) in self._db.execute(
                                "SELECT seq FROM records WHERE seq >= ?", (first,)
                            )
                        }
                        seqs = [s for s in seqs if s in have]
                    stored.update((row_item[s], self.record_id(s)) for s in seqs)
                if pages:
                    self._db.executemany(
                        "INSERT INTO pages (seq, last, count, created_at, size, entries) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        pages,
                    )
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('seq_high', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(seq - 1),),
                    )
                counts[prio] += len(stored)
                live = self._live_bytes()
                grew = self.reserve.note_growth(live - live_before)
                if stored:
                    self._enforce_budget(prio, first, counts, aged, live)
                if any(aged.values()):
                    self._persist_aged(aged)
        except _NoRoom:
            self._note_refused(prio, len(stored))
            assert self._episode is not None
            raise SpoolFull(prio, len(stored), self._episode) from None
        except sqlite3.DatabaseError as e:
            raise SpoolError(f"{self.path}: storing {len(items)} record(s) failed: {e}") from e
        self._counts = counts
        self._page_records += len(page_ids)
        self._after_commit(grew)
        for p, n in aged.items():
            self.aged_out[p] += n
        ids = [stored[i] for i in sorted(stored)]
        self.added += len(ids)
        self.duplicates += len(items) - len(ids)
        if any(aged.values()):
            self._note_aged(aged)
        elif self._episode is not None:
            self._maybe_end_episode()
        if ids:
            for listener in list(self._listeners):
                listener()
        return ids

    def _paginate(
        self,
        items: Sequence[tuple[dict[str, Any], str]],
        encoded: list[tuple[str, int]],
        paged: list[int],
        seq: int,
        now: float,
    ) -> tuple[list[_PageRow], dict[int, str]]:
        """The page rows for ``items[i] for i in paged`` from seq ``seq`` on (a natural key seen
        earlier in the call is dropped), and the record id of each paged item by its index."""
        pages: list[_PageRow] = []
        ids: dict[int, str] = {}
        seen: set[str] = set()
        tail = f',"priority":"{Priority.INTERVAL.label}","spooled_at":"{iso_utc(now)}"'
        prefix, low, mask, quote = self._id_prefix, self._id_low, _SEQ_MASK, _quote
        entries: list[str] = []
        first, size = seq, 0
        for i in paged:
            natural_key = items[i][1]
            if natural_key in seen:
                continue
            seen.add(natural_key)
            body, rec_size = encoded[i]
            if entries and (len(entries) >= self.page_records or size + rec_size > self.page_bytes):
                pages.append((first, seq - 1, len(entries), now, size, ",".join(entries).encode()))
                entries, first, size = [], seq, 0
            h = f"{low | (seq & mask):016x}"
            record_id = f"{prefix}{h[:4]}-{h[4:]}"
            rest = "}" if body == "{}" else "," + body[1:]
            entries.append(
                f'{{"record_id":"{record_id}","natural_key":{quote(natural_key)}{tail}{rest}'
            )
            ids[i] = record_id
            size += rec_size
            seq += 1
        if entries:
            pages.append((first, seq - 1, len(entries), now, size, ",".join(entries).encode()))
        return pages, ids

    def _encode(self, index: int, record: object, natural_key: object) -> tuple[str, int]:
        key = natural_key if isinstance(natural_key, str) else repr(natural_key)
        if not isinstance(natural_key, str) or not natural_key:
            raise RecordRejected(index, key, "natural key must be a non-empty string")
        if not isinstance(record, dict):
            raise RecordRejected(index, key, f"record must be a dict, not {type(record).__name__}")
        if not RESERVED_FIELDS.isdisjoint(record):
            clash = sorted(RESERVED_FIELDS & record.keys())
            raise RecordRejected(index, key, f"uses reserved field(s) {clash}")
        try:
            body = encode_body(record)
        except (TypeError, ValueError) as e:
            raise RecordRejected(index, key, f"not JSON-serialisable: {e}") from e
        size = len(body.encode()) + len(key.encode())
        if size > self.max_record_bytes:
            raise RecordRejected(index, key, f"{size} bytes > limit {self.max_record_bytes}")
        return body, size

    # -- budget ---------------------------------------------------------------------------------
    def _live_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (int(pages) - int(free)) * self._page_size

    def used_bytes(self) -> int:
        """What the budget counts: live pages plus the reserve for WAL and shm."""
        return self._live_bytes() + self.reserve.reserve

    def disk_bytes(self) -> int:
        """Database, WAL and shm files as they are on disk now."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _over(self, counts: dict[Priority, int], live: int | None = None) -> tuple[int, int]:
        """(bytes over the usable budget, records over the cap), both >= 0."""
        if live is None:
            live = self._live_bytes()
        over_records = 0
        if self.max_records is not None:
            over_records = max(0, sum(counts.values()) - self.max_records)
        return max(0, live - self.reserve.usable), over_records

    def _enforce_budget(
        self,
        prio: Priority,
        first_new: int,
        counts: dict[Priority, int],
        aged: dict[Priority, int],
        live: int,
    ) -> None:
        """Age out older, less urgent records until the new ones fit; raise SpoolFull if not."""
        over_bytes, over_records = self._over(counts, live)
        if not over_bytes and not over_records:
            return
        classes = (
            [Priority.INTERVAL]
            if prio == Priority.INTERVAL
            else [Priority.INTERVAL, Priority.ON_DEMAND]
        )
        for cls in classes:
            n = 0
            while (over_bytes or over_records) and counts[cls] > 0:
                per_record = max(1, self._live_bytes() // max(1, sum(counts.values())))
                n = max(2 * n, over_records, math.ceil(over_bytes / per_record), 1)
                deleted = self._db.execute(
                    "DELETE FROM records WHERE seq IN (SELECT seq FROM records "
                    f"WHERE {_CLASS_WHERE[cls]} AND seq < ? "
                    "AND seq NOT IN (SELECT seq FROM temp.inflight) ORDER BY seq LIMIT ?)",
                    (first_new, n),
                ).rowcount
                if deleted <= 0 and cls is Priority.INTERVAL:
                    deleted = self._age_pages(first_new, n)
                if deleted <= 0:
                    break
                counts[cls] -= deleted
                aged[cls] += deleted
                over_bytes, over_records = self._over(counts)
        if (over_bytes or over_records) and prio != Priority.ALARM:
            raise _NoRoom

    def _age_pages(self, before: int, records: int, created_before: float = math.inf) -> int:
        """Delete the oldest pages not in flight (first seq < ``before``, stored before
        ``created_before``) until ``records`` records went; returns how many went."""
        victims: list[int] = []
        total = 0
        cur = self._db.execute(
            "SELECT seq, last, count FROM pages WHERE seq < ? AND created_at < ? ORDER BY seq",
            (before, created_before),
        )
        try:
            for seq, last, count in cur:
                if seq in self._pages_out or self._marked(seq, last):
                    continue
                victims.append(seq)
                total += count
                if total >= records:
                    break
        finally:
            cur.close()
        for chunk in _chunks(victims):
            self._db.execute(
                f"DELETE FROM pages WHERE seq IN ({','.join('?' * len(chunk))})", chunk
            )
        return total

    def _marked(self, first: int, last: int) -> bool:
        """Whether records of the page first..last were handed out one by one (next_batch)."""
        if not self._page_marks:
            return False
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM temp.page_marks WHERE seq BETWEEN ? AND ?)",
            (first, last),
        ).fetchone()
        return bool(row[0])

    def _age_by_time(
        self, now: float, counts: dict[Priority, int], aged: dict[Priority, int]
    ) -> None:
        """Interval reads older than interval_max_age_s go (checked at most once a minute)."""
        if self.interval_max_age_s is None or counts[Priority.INTERVAL] == 0:
            return
        mono = self._clock.monotonic()
        if mono < self._next_age_check:
            return
        self._next_age_check = mono + AGE_CHECK_EVERY_S
        cutoff = now - self.interval_max_age_s
        while True:
            deleted = self._db.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records "
                "WHERE priority = ? AND created_at < ? "
                "AND seq NOT IN (SELECT seq FROM temp.inflight) ORDER BY seq LIMIT 5000)",
                (int(Priority.INTERVAL), cutoff),
            ).rowcount
            counts[Priority.INTERVAL] -= deleted
            aged[Priority.INTERVAL] += deleted
            if deleted < 5000:
                break
        deleted = self._age_pages(self._next_seq, counts[Priority.INTERVAL], cutoff)
        counts[Priority.INTERVAL] -= deleted
        aged[Priority.INTERVAL] += deleted

    def _persist_aged(self, aged: dict[Priority, int]) -> None:
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
            [(f"aged.{p.label}", str(n)) for p, n in aged.items() if n],
        )

    def _report(
        self,
        counts: dict[Priority, int],
        aged: dict[Priority, int],
        refused: dict[Priority, int],
    ) -> QueueDepthExceeded:
        prev = self._episode
        aged_total = dict(prev.aged_out) if prev else {}
        refused_total = dict(prev.refused) if prev else {}
        for p, n in aged.items():
            if n:
                aged_total[p.label] = aged_total.get(p.label, 0) + n
        for p, n in refused.items():
            if n:
                refused_total[p.label] = refused_total.get(p.label, 0) + n
        return QueueDepthExceeded(
            since=prev.since if prev else self._clock.now(),
            depth={p.label: counts[p] for p in Priority},
            used_bytes=self.used_bytes(),
            disk_bytes=self.disk_bytes(),
            max_bytes=self.max_bytes,
            records=sum(counts.values()),
            max_records=self.max_records,
            aged_out=aged_total,
            refused=refused_total,
        )

    def _start_or_update(self, report: QueueDepthExceeded) -> None:
        if self._episode is None:
            log.warning("%s", report.message())
        self._episode = report

    def _note_aged(self, aged: dict[Priority, int]) -> None:
        self._start_or_update(self._report(self._counts, aged, {}))

    def _note_refused(self, prio: Priority, n: int) -> None:
        self.refused[prio] += n
        self._start_or_update(self._report(self._counts, {}, {prio: n}))

    def _maybe_end_episode(self) -> None:
        assert self._episode is not None
        if self.used_bytes() > EPISODE_END_FRACTION * self.max_bytes:
            return
        if self.max_records is not None and self.depth() > EPISODE_END_FRACTION * self.max_records:
            return
        ep = self._episode
        self._episode = None
        log.info(
            "spool back under budget (%d records, %d bytes of %d); the episode aged out %s "
            "and refused %s",
            self.depth(),
            self.used_bytes(),
            self.max_bytes,
            format_counts(ep.aged_out),
            format_counts(ep.refused),
        )

    # -- uplink side ----------------------------------------------------------------------------
    def next_batch(self, max_records: int, max_bytes: int) -> list[SpoolRecord]:
        """Pending (not in-flight) records, most urgent class first, oldest first within a class,
        at most ``max_records`` and ``max_bytes`` of bodies, but always at least one if any
        pending record may go now (so a record near the size limit cannot block the queue).
        Interval reads only fill what no more urgent record wants, and are throttled during a
        storm (module docstring). Interval reads stored as rows (migrated, or carrying an
        event) come before paged ones, which this path decodes record by record."""
        if max_records <= 0:
            return []
        batch: list[SpoolRecord] = []
        budget = [max_bytes]
        urgent = self._counts[Priority.ALARM] + self._counts[Priority.ON_DEMAND]
        if urgent:
            full = self._fill(batch, budget, "priority < 2", max_records)
            if full or len(batch) >= max_records:
                return batch
        room = max_records - len(batch)
        allowance = self.throttle.allowance(self._storming())
        if allowance is not None and allowance < room:
            self.throttle.throttled += 1
            room = allowance
        if room > 0 and self._counts[Priority.INTERVAL] > 0:
            before = len(batch)
            full = False
            if self._counts[Priority.INTERVAL] > self._page_records:
                full = self._fill(batch, budget, "priority = 2", before + room)
            if not full and len(batch) < before + room and self._page_records:
                self._fill_from_pages(batch, budget, before + room)
            if allowance is not None:
                self.throttle.take(len(batch) - before)
        return batch

    def _storming(self) -> bool:
        urgent = self._counts[Priority.ALARM] + self._counts[Priority.ON_DEMAND]
        return urgent >= self.storm_min_records

    def _fill(self, batch: list[SpoolRecord], budget: list[int], where: str, limit: int) -> bool:
        """Append pending rows matching ``where`` until ``batch`` holds ``limit``; True if the
        byte budget stopped it."""
        cur = self._db.execute(
            "SELECT seq, natural_key, priority, created_at, body, size FROM records "
            f"WHERE {where} AND seq NOT IN (SELECT seq FROM temp.inflight) "
            "ORDER BY priority, seq LIMIT ?",
            (limit - len(batch),),
        )
        # Per-record work kept to the minimum (the uplink reads every record once): the id
        # formatted inline, the priority by index rather than an enum call.
        prefix, low, mask, prios, rows = self._id_prefix, self._id_low, _SEQ_MASK, _PRIOS, batch
        left = budget[0]
        try:
            for seq, natural_key, prio, created_at, body, size in cur:
                if rows and size > left:
                    budget[0] = left
                    return True
                left -= size
                h = f"{low | (seq & mask):016x}"
                rows.append(
                    SpoolRecord(
                        f"{prefix}{h[:4]}-{h[4:]}", natural_key, prios[prio], created_at, body, size
                    )
                )
        finally:
            cur.close()
        budget[0] = left
        return False

    def _fill_from_pages(self, batch: list[SpoolRecord], budget: list[int], limit: int) -> None:
        """Append pending records of pages (not handed out whole, not marked) until ``batch``
        holds ``limit`` or the byte budget is reached: the slow path, record by record."""
        marks: set[int] = set()
        if self._page_marks:
            marks = {s for (s,) in self._db.execute("SELECT seq FROM temp.page_marks")}
        left = budget[0]
        cur = self._db.execute("SELECT seq, created_at, entries FROM pages ORDER BY seq")
        try:
            for first, created_at, entries in cur:
                if first in self._pages_out:
                    continue
                for seq, rec, _ in self._unpage(created_at, entries):
                    if seq in marks:
                        continue
                    if batch and rec.size > left:
                        return
                    left -= rec.size
                    batch.append(rec)
                    if len(batch) >= limit:
                        return
        finally:
            cur.close()
            budget[0] = left

    def _unpage(self, created_at: float, entries: bytes) -> Iterator[tuple[int, SpoolRecord, str]]:
        """A page's records as ``add`` stored them: (seq, record, its entry's exact text)."""
        text = entries.decode()
        i = 0
        while i < len(text):
            entry, end = _DECODER.raw_decode(text, i)
            raw = text[i:end]
            i = end + 1  # past the comma
            record_id = entry.pop("record_id")
            natural_key = entry.pop("natural_key")
            for name in _ENVELOPE_FIELDS[2:]:
                del entry[name]
            body = encode_body(entry)
            size = len(body.encode()) + len(natural_key.encode())
            seq = self._seq(record_id)
            assert seq is not None, f"page entry with a foreign record id {record_id}"
            yield (
                seq,
                SpoolRecord(record_id, natural_key, Priority.INTERVAL, created_at, body, size),
                raw,
            )

    def stored(self, priority: Priority | None = None) -> list[SpoolRecord]:
        """Every record stored (pending and in flight), in seq order: for inspection (tests,
        tools), not for the uplink. Reads the whole spool."""
        out: list[tuple[int, SpoolRecord]] = []
        where = "" if priority is None else f"WHERE priority = {int(Priority(priority))}"
        for seq, key, prio, created_at, body, size in self._db.execute(
            f"SELECT seq, natural_key, priority, created_at, body, size FROM records {where}"
        ):
            out.append(
                (seq, SpoolRecord(self.record_id(seq), key, _PRIOS[prio], created_at, body, size))
            )
        if priority in (None, Priority.INTERVAL):
            for created_at, entries in self._db.execute(
                "SELECT created_at, entries FROM pages ORDER BY seq"
            ).fetchall():
                out.extend((seq, rec) for seq, rec, _ in self._unpage(created_at, entries))
        out.sort(key=lambda p: p[0])
        return [r for _, r in out]

    def next_packed(self, max_records: int, max_bytes: int) -> PackedBatch | None:
        """``next_packed_many`` for one message; None where it returns nothing."""
        batches = self.next_packed_many(1, max_records, max_bytes)
        return batches[0] if batches else None

    def next_packed_many(self, batches: int, max_records: int, max_bytes: int) -> list[PackedBatch]:
        """Up to ``batches`` readings messages' ``records`` arrays, each the next pending pages,
        whole: at most ``max_records`` records and ``max_bytes`` of record sizes. Marked in
        flight in memory; one query for all of them (measured: the query's fixed cost was ~10 us
        of the uplink's ~110 us per message).

        Returns [] (or the batches before it) when this path does not apply and the caller uses
        ``next_batch``: nothing paged pending, alarms or on-demand replies pending (they go
        first), interval reads stored as rows pending (older, or carrying an event), records of
        pages handed out one by one, interval reads throttled by a storm, or a page larger than
        a batch (``page_records`` above the uplink's batch: that path splits it)."""
        if batches <= 0 or max_records <= 0 or not self._page_records:
            return []
        if self._counts[Priority.ALARM] + self._counts[Priority.ON_DEMAND]:
            return []
        if self._counts[Priority.INTERVAL] > self._page_records or self._page_marks:
            return []
        if self.throttle.allowance(self._storming()) is not None:
            return []
        out = self._pages_out
        done: list[PackedBatch] = []
        taken: list[tuple[int, int, int, bytes]] = []
        size = 0

        def finish() -> None:
            nonlocal taken, size
            for seq, _, count, _ in taken:
                out[seq] = count
            self._cursor = taken[-1][0]
            entries = taken[0][3] if len(taken) == 1 else b",".join(t[3] for t in taken)
            count = sum(t[2] for t in taken)
            done.append(PackedBatch(taken[0][0], taken[-1][1], count, entries, size))
            taken, size = [], 0

        cur = self._db.execute(
            "SELECT seq, last, count, size, entries FROM pages WHERE seq > ? ORDER BY seq",
            (self._cursor,),
        )
        try:
            n = 0
            for seq, last, count, page_size, entries in cur:
                if seq in out:  # a batch is a run of adjacent pages: its span must be exact
                    if taken:
                        finish()
                        n = 0
                    self._cursor = seq
                    if len(done) == batches:
                        break
                    continue
                if taken and (n + count > max_records or size + page_size > max_bytes):
                    finish()
                    n = 0
                    if len(done) == batches:
                        break  # this page is read again by the next call
                if count > max_records or page_size > max_bytes:
                    break  # too large for one batch: next_batch splits it
                taken.append((seq, last, count, entries))
                n += count
                size += page_size
                if n >= max_records or size >= max_bytes:
                    finish()
                    n = 0
                    if len(done) == batches:
                        break
        finally:
            cur.close()
        if taken:
            finish()
        return done

    def _split(self, seqs: list[int]) -> tuple[list[int], dict[int, int]]:
        """``seqs`` as (rows, {seq: the first seq of its page}); seqs of neither (gone) are
        dropped. Pages are looked up and decoded one by one: the per-record path only."""
        if not seqs:
            return [], {}
        rows: set[int] = set()
        for chunk in _chunks(seqs):
            rows.update(
                s
                for (s,) in self._db.execute(
                    f"SELECT seq FROM records WHERE seq IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        paged: dict[int, int] = {}
        present: dict[int, set[int]] = {}  # page -> seqs in it
        if self._page_records:
            for s in seqs:
                if s in rows:
                    continue
                page = self._db.execute(
                    "SELECT seq, last, created_at, entries FROM pages WHERE seq <= ? "
                    "ORDER BY seq DESC LIMIT 1",
                    (s,),
                ).fetchone()
                if page is None or s > page[1]:
                    continue
                if page[0] not in present:
                    present[page[0]] = {q for q, _, _ in self._unpage(page[2], page[3])}
                if s in present[page[0]]:
                    paged[s] = page[0]
        return [s for s in seqs if s in rows], paged

    def mark_in_flight(self, ids: Iterable[str]) -> None:
        """These records are in a message awaiting its PUBACK: next_batch skips them.

        One statement per 500 ids and no transaction of its own (the marks live in temp tables
        in memory)."""
        rows, paged = self._split(self._seqs(ids))
        for chunk in _chunks(rows):
            self._db.execute(
                "INSERT OR IGNORE INTO temp.inflight (seq) "
                f"VALUES {','.join(['(?)'] * len(chunk))}",
                chunk,
            )
        if paged:
            self._page_marks += self._db.executemany(
                "INSERT OR IGNORE INTO temp.page_marks (seq) VALUES (?)", ((s,) for s in paged)
            ).rowcount

    def release(self, ids: Iterable[str] = (), spans: Iterable[tuple[int, int]] = ()) -> None:
        """In-flight back to pending: the message carrying them was not acknowledged.
        ``spans`` are ``PackedBatch.span`` values."""
        rows, paged = self._split(self._seqs(ids))
        with self._tx():
            self._db.executemany("DELETE FROM temp.inflight WHERE seq = ?", ((s,) for s in rows))
            if paged:
                self._page_marks -= self._db.executemany(
                    "DELETE FROM temp.page_marks WHERE seq = ?", ((s,) for s in paged)
                ).rowcount
        for lo, hi in _merge(spans):
            for seq in [s for s in self._pages_out if lo <= s <= hi]:
                del self._pages_out[seq]
            self._cursor = min(self._cursor, lo - 1)

    def release_all(self) -> int:
        with self._tx():
            n = self._db.execute("DELETE FROM temp.inflight").rowcount
            marks = self._db.execute("DELETE FROM temp.page_marks").rowcount
        self._page_marks -= marks
        n += marks + sum(self._pages_out.values())
        self._pages_out.clear()
        self._cursor = 0
        return n

    def ack(self, ids: Iterable[str] = (), spans: Iterable[tuple[int, int]] = ()) -> int:
        """Delete records the broker acknowledged; returns how many were deleted. ``spans`` are
        ``PackedBatch.span`` values: adjacent ones are merged, each range is one DELETE of the
        pages in it. Records of a page acknowledged by id are cut out of it (the slow path).

        The delete is committed without its own fsync (synchronous=NORMAL for this transaction
        only): WAL mode keeps the file consistent either way, and the next add's fsync'd commit
        makes it durable. A power cut before that can only bring acknowledged records back,
        which are then sent again and dropped by the head end by natural key (at-least-once);
        it can never lose a record. fsync per delete was the uplink's main cost (measured)."""
        rows, paged = self._split(self._seqs(ids))
        ranges = _merge(spans)
        if not rows and not paged and not ranges:
            return 0
        gone = [0, 0, 0]
        paged_gone = 0
        db = self._db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._tx():
                for chunk in _chunks(rows):
                    marks = ",".join("?" * len(chunk))
                    for (prio,) in db.execute(
                        f"DELETE FROM records WHERE seq IN ({marks}) RETURNING priority", chunk
                    ).fetchall():
                        gone[prio] += 1
                    db.execute(f"DELETE FROM temp.inflight WHERE seq IN ({marks})", chunk)
                if paged:
                    paged_gone += self._ack_page_records(paged)
                for lo, hi in ranges:
                    for (count,) in db.execute(
                        "DELETE FROM pages WHERE seq BETWEEN ? AND ? RETURNING count", (lo, hi)
                    ).fetchall():
                        paged_gone += count
                    for seq in [s for s in self._pages_out if lo <= s <= hi]:
                        del self._pages_out[seq]
        finally:
            db.execute("PRAGMA synchronous=FULL")
        gone[Priority.INTERVAL] += paged_gone
        self._page_records -= paged_gone
        n = sum(gone)
        for p in Priority:
            self._counts[p] -= gone[p]
        self.acked += n
        if n and self._episode is not None:
            self._maybe_end_episode()
        return n

    def _ack_page_records(self, paged: dict[int, int]) -> int:
        """Cut acknowledged records out of their pages (a page left empty is deleted); returns
        how many records went."""
        db = self._db
        gone = 0
        for first in set(paged.values()):
            row = db.execute(
                "SELECT created_at, entries FROM pages WHERE seq = ?", (first,)
            ).fetchone()
            keep: list[tuple[SpoolRecord, str]] = []
            for seq, rec, raw in self._unpage(row[0], row[1]):
                if seq in paged:
                    gone += 1
                else:
                    keep.append((rec, raw))
            if keep:
                db.execute(
                    "UPDATE pages SET count = ?, size = ?, entries = ? WHERE seq = ?",
                    (
                        len(keep),
                        sum(r.size for r, _ in keep),
                        ",".join(raw for _, raw in keep).encode(),
                        first,
                    ),
                )
            else:
                db.execute("DELETE FROM pages WHERE seq = ?", (first,))
        self._page_marks -= db.executemany(
            "DELETE FROM temp.page_marks WHERE seq = ?", ((s,) for s in paged)
        ).rowcount
        return gone

    def _after_commit(self, grew: bool) -> None:
        """Learn the WAL's real size; if the reserve grew, trim the database file to its share."""
        with contextlib.suppress(FileNotFoundError):
            grew |= self.reserve.note_wal_file(os.stat(f"{self.path}-wal").st_size)
        if not grew:
            return
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        excess = pages - self.reserve.file_cap // self._page_size
        if excess > 0 and self._auto_vacuum == 2:
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            if free:
                self._db.executescript(f"PRAGMA incremental_vacuum({min(free, excess)});")

    def shrink(self) -> None:
        """Give freed pages back to the file system once half the file is free (a drained
        backlog), at most every SHRINK_EVERY_S and 4,096 pages a step. Called by the uplink when
        it is idle (nothing pending or in flight), not on every ack: a step moves pages and
        took ~90 ms in the middle of a drain (measured, bench/uplink.py)."""
        if self._auto_vacuum != 2 or self._clock.monotonic() < self._next_shrink:
            return
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        if free >= 32 and free * 2 >= pages:
            self._next_shrink = self._clock.monotonic() + SHRINK_EVERY_S
            self._db.executescript(f"PRAGMA incremental_vacuum({min(free, 4096)});")

    # -- figures --------------------------------------------------------------------------------
    def depth(self) -> int:
        """Records stored, pending and in flight."""
        return sum(self._counts.values())

    def in_flight(self) -> int:
        """Records handed out and not acknowledged, or acknowledged and waiting for the
        uplink's grouped delete."""
        row = self._db.execute("SELECT count(*) FROM temp.inflight").fetchone()
        return int(row[0]) + self._page_marks + sum(self._pages_out.values())

    def depth_by_priority(self) -> dict[Priority, int]:
        return dict(self._counts)

    def stats(self) -> SpoolStats:
        return SpoolStats(
            depth=self.depth(),
            in_flight=self.in_flight(),
            added=self.added,
            duplicates=self.duplicates,
            acked=self.acked,
            depth_by_class={p.label: n for p, n in self._counts.items()},
            used_bytes=self.used_bytes(),
            disk_bytes=self.disk_bytes(),
            max_bytes=self.max_bytes,
            max_records=self.max_records,
            aged_out={p.label: n for p, n in self.aged_out.items()},
            refused={p.label: n for p, n in self.refused.items()},
            storm=self.throttle.storm(self._storming()),
            throttled=self.throttle.throttled,
            queue_depth_exceeded=(
                None
                if self._episode is None
                else replace(
                    self._episode,
                    depth={p.label: n for p, n in self._counts.items()},
                    records=self.depth(),
                    used_bytes=self.used_bytes(),
                    disk_bytes=self.disk_bytes(),
                )
            ),
        )

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted seq ranges, adjacent ones joined (a window's acks usually make one range)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _chunks(seqs: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(seqs), _CHUNK):
        yield seqs[i : i + _CHUNK]


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
