"""Bulk readings files (seed 002: ``POST /readings/file``): the request lifecycle and the file.

Why a state machine of its own: the seed fixes the order queued → submitted → running →
completed | failed; a request may fail from any state before it completes, never go back, and a
finished request never changes again. Keeping that rule here, apart from aiohttp and SQLite, lets
the test check the rule itself.

The file is gzip-compressed CSV with a header row of the seed's record fields (what the seed's
Glue job writes as ``run-<ms>-part-r-00000.gz``); the location is relative to the export
directory, as the seed's ``sftp_location`` is relative to the SFTP root.
"""

from __future__ import annotations

import csv
import enum
import gzip
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.headend.pagination import VALUE_FIELDS, QueryError, StoredReading, format_time, parse_time

CSV_FIELDS = ("time", "arrival_time", "device_id", "measure_name", *VALUE_FIELDS)


class FileStatus(enum.Enum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


_NEXT = {
    FileStatus.QUEUED: {FileStatus.SUBMITTED, FileStatus.FAILED},
    FileStatus.SUBMITTED: {FileStatus.RUNNING, FileStatus.FAILED},
    FileStatus.RUNNING: {FileStatus.COMPLETED, FileStatus.FAILED},
    FileStatus.COMPLETED: set(),
    FileStatus.FAILED: set(),
}


class LifecycleError(ValueError):
    """A status change the seed's lifecycle does not allow."""


def check_transition(current: FileStatus, new: FileStatus) -> None:
    if new not in _NEXT[current]:
        allowed = sorted(s.value for s in _NEXT[current]) or ["none: it is finished"]
        raise LifecycleError(
            f"file request cannot go from {current.value!r} to {new.value!r} "
            f"(allowed: {', '.join(allowed)})"
        )


@dataclass(frozen=True)
class FileRequestBody:
    """The POST body: ``{"start_date": ..., "end_date": ...}`` (end inclusive)."""

    start_date: str
    end_date: str
    start_us: int
    end_us: int

    @classmethod
    def parse(cls, doc: object) -> FileRequestBody:
        if not isinstance(doc, Mapping):
            raise QueryError("body", "must be a JSON object with start_date and end_date")
        start, end = doc.get("start_date"), doc.get("end_date")
        start_us, end_us = parse_time("start_date", start), parse_time("end_date", end)
        if end_us < start_us:
            raise QueryError("end_date", f"{end!r} is before start_date {start!r}")
        assert isinstance(start, str) and isinstance(end, str)
        return cls(start, end, start_us, end_us)


@dataclass(frozen=True)
class FileRequest:
    request_id: str
    status: FileStatus
    start_date: str
    end_date: str
    sftp_location: str | None = None
    record_count: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The seed's GET response: request_id, status, then record_count and sftp_location
        once known (and the reason when failed)."""
        doc: dict[str, Any] = {"request_id": self.request_id, "status": self.status.value}
        if self.sftp_location is not None:
            doc["sftp_location"] = self.sftp_location
        if self.record_count is not None:
            doc["record_count"] = self.record_count
        if self.error is not None:
            doc["error"] = self.error
        return doc


def file_location(request_id: str, started_ms: int) -> str:
    return f"{request_id}/run-{started_ms}-part-r-00000.gz"


def csv_row(reading: StoredReading) -> list[str]:
    row = [
        format_time(reading.time_us),
        format_time(reading.arrival_us),
        reading.device_id,
        reading.measure_name,
    ]
    for name in VALUE_FIELDS:
        value = reading.values.get(name)
        row.append("" if value is None else str(value))
    return row


def write_file(path: Path, readings: Iterable[StoredReading]) -> int:
    """Write the gzip CSV atomically (temp file, fsync, rename); returns the number of rows.
    An I/O edge: called from the export runner's thread, never from the API's handlers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    count = 0
    with tmp.open("wb") as raw:
        with (
            gzip.GzipFile(fileobj=raw, mode="wb") as gz,
            io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
        ):
            writer = csv.writer(text)
            writer.writerow(CSV_FIELDS)
            for reading in readings:
                writer.writerow(csv_row(reading))
                count += 1
        raw.flush()
        os.fsync(raw.fileno())
    tmp.replace(path)
    return count


__all__ = [
    "CSV_FIELDS",
    "FileRequest",
    "FileRequestBody",
    "FileStatus",
    "LifecycleError",
    "check_transition",
    "file_location",
    "parse_time",
    "write_file",
]
