"""The seed 002 readings API as pure functions: query parsing, time formats, the page document.

Why pure: the pagination contract ("field for field" with the seed's examples) is the part a
utility's MDMS integration depends on, so it is tested on plain values, apart from aiohttp and
SQLite.

Semantics taken from the seed's two example pages (page 2 repeats ``records_total: 100`` while
carrying records 101–200, so ``records_total`` counts the records *in this response*, not in the
whole result): ``filter_params`` echoes ``start_date`` as given and the request's ``offset``;
``last_offset`` = offset + records returned, to be passed as the next request's ``offset``;
``last_date`` is the time of the last record returned (null on an empty page); each record's
``offset`` is its 1-based position in the whole result. A client stops on an empty page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
SEED_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# The fields of one record in the seed's examples, in their order.
RECORD_FIELDS = (
    "offset",
    "time",
    "arrival_time",
    "device_id",
    "measure_name",
    "load",
    "crrnt",
    "pf",
    "kva",
    "kw",
    "vltg",
)
VALUE_FIELDS = ("load", "crrnt", "pf", "kva", "kw", "vltg")


class QueryError(ValueError):
    """A request parameter that is missing or unusable; names the parameter."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.message = message
        super().__init__(f"{param}: {message}")

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "parameter": self.param}


def parse_time(param: str, text: object) -> int:
    """Seed style ``2023-02-27 16:00:00.000000`` or RFC 3339 (``...T...Z``) → µs since the epoch.
    A time without zone is UTC (the seed's times carry none)."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError(param, "missing or empty")
    value = text.strip()
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            param, f"{text!r} is not a time like '2023-02-27 16:00:00.000000'"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_time(us: int) -> str:
    """µs since the epoch → the seed's ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC, no zone)."""
    t = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
    return t.strftime(SEED_TIME_FORMAT)


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(name, f"{raw!r} is not an integer") from None
    if not low <= value <= high:
        raise QueryError(name, f"{value} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class ReadingsQuery:
    """``GET /readings?start_date=…&page_size=…&offset=…``."""

    start_date: str  # as the client wrote it: echoed back in filter_params
    start_us: int
    page_size: int = DEFAULT_PAGE_SIZE
    offset: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ReadingsQuery:
        start = params.get("start_date")
        start_us = parse_time("start_date", start)
        assert start is not None
        page_size = _int_param(params, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        offset = _int_param(params, "offset", 0, 0, 2**62)
        return cls(start, start_us, page_size, offset)


@dataclass(frozen=True)
class StoredReading:
    """One reading as the head end keeps it, in the units of the seed's schema."""

    time_us: int
    arrival_us: int
    device_id: str
    measure_name: str
    values: Mapping[str, Any]  # load, crrnt, pf, kva, kw, vltg (None when the meter had none)


def record_json(reading: StoredReading, offset: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "offset": offset,
        "time": format_time(reading.time_us),
        "arrival_time": format_time(reading.arrival_us),
        "device_id": reading.device_id,
        "measure_name": reading.measure_name,
    }
    for name in VALUE_FIELDS:
        doc[name] = reading.values.get(name)
    return doc


def page_response(query: ReadingsQuery, rows: Sequence[StoredReading]) -> dict[str, Any]:
    """The response document of one page (``rows`` = the page's readings, in result order)."""
    records = [record_json(r, query.offset + i + 1) for i, r in enumerate(rows)]
    return {
        "filter_params": {"start_date": query.start_date, "offset": query.offset},
        "results": {
            "records_total": len(records),
            "last_offset": query.offset + len(records),
            "last_date": records[-1]["time"] if records else None,
        },
        "records": records,
    }
