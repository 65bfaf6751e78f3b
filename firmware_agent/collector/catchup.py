"""Catch-up of missed load-profile intervals: per meter, the newest capture time already spooled.

Why persisted: after an outage of the gateway (restart) or of a meter (no answer for hours), the
next read must ask for exactly the rows the head end has not had, no more (the mesh is slow) and
no fewer (a gap is lost revenue data). The mark moves only after the rows are committed to the
spool, so nothing is skipped; a crash between that commit and the mark's update re-reads those
rows, and the copies are sent too (the spool deduplicates interval reads only within one add):
the head end drops them by natural key. Kept in the collector's state file next to the quarantine.

``profile_range`` is the pure part: which capture times to ask for, given the mark, the meter's
clock, the capture period and the cap.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profile_marks (
    meter_id TEXT NOT NULL,
    profile  TEXT NOT NULL,
    newest   REAL NOT NULL,
    PRIMARY KEY (meter_id, profile)
);
"""


@dataclass(frozen=True)
class ProfileRange:
    """Capture times ``start`` .. ``end`` inclusive (``rows`` of them); ``left_behind`` missed
    intervals after ``end`` are left for the next reads because of the cap."""

    start: datetime
    end: datetime
    rows: int
    left_behind: int


def profile_range(
    newest_spooled: float | None,
    meter_now: datetime,
    period_s: int,
    *,
    default_rows: int,
    max_intervals: int,
) -> ProfileRange | None:
    """The rows to read: everything after ``newest_spooled`` up to the meter's last complete
    capture, oldest first, at most ``max_intervals`` of them (the oldest missed ones first, so
    the next read continues where this one stopped). With no mark: the last ``default_rows``.
    None when nothing new has been captured since the mark."""
    if period_s <= 0:
        raise ValueError(f"capture period must be positive, got {period_s}")
    end_s = math.floor(meter_now.timestamp() / period_s) * period_s
    if newest_spooled is not None and newest_spooled > end_s + period_s:
        newest_spooled = None  # the meter's clock went back (reset, replaced): start afresh
    if newest_spooled is None:
        rows = max(1, min(default_rows, max_intervals))
        start_s = end_s - (rows - 1) * period_s
        return ProfileRange(_dt(start_s), _dt(end_s), rows, 0)
    first_s = (math.floor(newest_spooled / period_s) + 1) * period_s
    if first_s > end_s:
        return None
    missed = int((end_s - first_s) // period_s) + 1
    rows = min(missed, max_intervals)
    last_s = first_s + (rows - 1) * period_s
    return ProfileRange(_dt(first_s), _dt(last_s), rows, missed - rows)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class ProfileMarks:
    """SQLite map (meter, profile) -> newest capture time (POSIX seconds) already spooled."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def newest(self, meter_id: str, profile: str) -> float | None:
        row = self._db.execute(
            "SELECT newest FROM profile_marks WHERE meter_id = ? AND profile = ?",
            (meter_id, profile),
        ).fetchone()
        return None if row is None else float(row[0])

    def advance(self, meter_id: str, profile: str, newest: float) -> None:
        """Move the mark forward (never back: a late, older row cannot re-open a range)."""
        self._db.execute(
            "INSERT INTO profile_marks (meter_id, profile, newest) VALUES (?, ?, ?) "
            "ON CONFLICT (meter_id, profile) DO UPDATE SET newest = MAX(newest, excluded.newest)",
            (meter_id, profile, newest),
        )

    def close(self) -> None:
        self._db.close()
