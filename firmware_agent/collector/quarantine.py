"""Payloads nobody could parse, kept with their hex, meter, stage and reason for diagnosis.

Why a store of its own: a meter that answers garbage must not lose its next read, and the
evidence must survive for the engineer who looks at it later. The rows live in the collector's
state file (``collector.state_file``, next to the spool by default), not in the spool's own
database: the spool's write lock and disk budget belong to readings, and a storm of garbage must
never compete with them. Rows are capped (hex per row, rows in total) so a babbling meter cannot
fill the disk. Counters by reason are kept apart from the rows, so they survive the cap.

Synchronous SQLite on the agent's thread (as the spool is): one small insert per bad payload.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..clock import Clock
from .records import iso_utc

MALFORMED_PAYLOAD = "Malformed Payload"
"""The seed 000 name of the condition, used in status and alarm records."""

DEFAULT_MAX_HEX_BYTES = 2048
DEFAULT_MAX_ROWS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    meter_id TEXT    NOT NULL,
    at       REAL    NOT NULL,
    stage    TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    detail   TEXT    NOT NULL,
    hex      TEXT    NOT NULL,
    size     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_meter ON quarantine (meter_id, seq);
CREATE TABLE IF NOT EXISTS quarantine_counts (
    meter_id TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (meter_id, reason)
);
"""


@dataclass(frozen=True)
class QuarantinedPayload:
    """One payload that could not be parsed. ``hex`` is capped; ``size`` is the real length."""

    seq: int
    meter_id: str
    at: float
    stage: str
    reason: str
    detail: str
    hex: str
    size: int

    def to_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "meter_id": self.meter_id,
            "at": iso_utc(self.at),
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail,
            "hex": self.hex,
            "size": self.size,
        }


class Quarantine:
    """SQLite table of unparsable payloads, with counts by meter and reason."""

    def __init__(
        self,
        path: Path | str,
        clock: Clock,
        *,
        max_hex_bytes: int = DEFAULT_MAX_HEX_BYTES,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.path = path
        self._clock = clock
        self.max_hex_bytes = max_hex_bytes
        self.max_rows = max_rows
        self._db = sqlite3.connect(str(path), isolation_level=None)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(self, meter_id: str, stage: str, reason: str, payload: bytes, detail: str = "") -> int:
        """Keep one payload; returns its sequence number. Oldest rows go past ``max_rows``."""
        data = bytes(payload)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "INSERT INTO quarantine (meter_id, at, stage, reason, detail, hex, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    meter_id,
                    self._clock.now(),
                    stage,
                    reason,
                    detail[:500],
                    data[: self.max_hex_bytes].hex(),
                    len(data),
                ),
            )
            seq = int(cur.lastrowid or 0)
            self._db.execute(
                "INSERT INTO quarantine_counts (meter_id, reason, n) VALUES (?, ?, 1) "
                "ON CONFLICT (meter_id, reason) DO UPDATE SET n = n + 1",
                (meter_id, reason),
            )
            self._db.execute("DELETE FROM quarantine WHERE seq <= ?", (seq - self.max_rows,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return seq

    def recent(self, limit: int = 50, meter_id: str | None = None) -> list[QuarantinedPayload]:
        """Newest first (for the diag layer)."""
        where, args = ("WHERE meter_id = ?", (meter_id,)) if meter_id is not None else ("", ())
        rows = self._db.execute(
            "SELECT seq, meter_id, at, stage, reason, detail, hex, size FROM quarantine "
            f"{where} ORDER BY seq DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [QuarantinedPayload(*row) for row in rows]

    def counts(self, meter_id: str | None = None) -> dict[str, int]:
        """Payloads quarantined so far by reason (all meters, or one)."""
        if meter_id is None:
            rows = self._db.execute(
                "SELECT reason, SUM(n) FROM quarantine_counts GROUP BY reason"
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT reason, n FROM quarantine_counts WHERE meter_id = ?", (meter_id,)
            ).fetchall()
        return {str(reason): int(n) for reason, n in rows}

    def total(self, meter_id: str | None = None) -> int:
        return sum(self.counts(meter_id).values())

    def close(self) -> None:
        self._db.close()
