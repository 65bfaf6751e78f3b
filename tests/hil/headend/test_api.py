"""The head end's HTTP API over a real loopback socket: paging, errors, the file lifecycle."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
from pathlib import Path
from typing import Any

import pytest

from hil.headend.db import HeadEndDb
from hil.headend.files import FileStatus, LifecycleError, check_transition
from tests.hil.headend.helpers import message, reading, run, served


def minute(m: int) -> str:
    return f"2024-05-01T10:{m:02d}:00Z"


def fill(db: HeadEndDb, n: int = 25) -> None:
    recs = [reading(f"m{i % 3}", minute(i), i, kw=float(i), load=i) for i in range(n)]
    db.ingest(message("a", *recs[: n // 2]), "w1")
    db.ingest(message("b", *recs[n // 2 :]), "w2")


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({}, "start_date"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"start_date": "2024-05-01 10:00:00", "page_size": "0"}, "page_size"),
        ({"start_date": "2024-05-01 10:00:00", "page_size": "1001"}, "page_size"),
        ({"start_date": "2024-05-01 10:00:00", "page_size": "ten"}, "page_size"),
        ({"start_date": "2024-05-01 10:00:00", "offset": "-1"}, "offset"),
    ],
)
def test_bad_queries_get_400_naming_the_parameter(
    db: HeadEndDb, tmp_path: Path, query: dict[str, str], param: str
) -> None:
    async def go() -> tuple[int, Any]:
        async with (
            served(db, tmp_path) as (http, base),
            http.get(f"{base}/readings", params=query) as r,
        ):
            return r.status, await r.json()

    status, doc = run(go)
    assert status == 400
    assert doc["parameter"] == param and doc["error"]


def test_walking_the_pages_returns_every_reading_once_in_time_order(
    db: HeadEndDb, tmp_path: Path
) -> None:
    fill(db)

    async def go() -> list[dict[str, Any]]:
        pages = []
        async with served(db, tmp_path) as (http, base):
            offset = 0
            while True:
                params = {"start_date": "2024-05-01 10:03:00.000000", "page_size": "10"}
                params["offset"] = str(offset)
                async with http.get(f"{base}/readings", params=params) as r:
                    doc = await r.json()
                pages.append(doc)
                if not doc["records"]:
                    return pages
                offset = doc["results"]["last_offset"]

    pages = run(go)
    assert [p["results"]["records_total"] for p in pages] == [10, 10, 2, 0]
    assert pages[-1]["results"] == {"records_total": 0, "last_offset": 22, "last_date": None}
    records = [r for p in pages for r in p["records"]]
    assert [r["offset"] for r in records] == list(range(1, 23))
    assert [r["time"] for r in records] == [
        f"2024-05-01 10:{m:02d}:00.000000" for m in range(3, 25)
    ]
    assert pages[1]["results"]["last_date"] == "2024-05-01 10:22:00.000000"


def test_file_request_goes_through_the_seed_lifecycle_and_yields_a_gzip(
    db: HeadEndDb, tmp_path: Path
) -> None:
    fill(db)
    exports = tmp_path / "exports"

    async def go() -> tuple[dict[str, Any], set[str], list[dict[str, Any]], bytes]:
        seen: set[str] = set()
        async with served(db, exports, stage_delay_s=0.05) as (http, base):
            body = {"start_date": "2024-05-01 10:05:00.000000", "end_date": "2024-05-01 10:09:00"}
            async with http.post(f"{base}/readings/file", json=body) as r:
                assert r.status == 200
                created = await r.json()
            assert created["status"] == "queued" and list(created) == ["request_id", "status"]
            rid = created["request_id"]
            for _ in range(200):
                async with http.get(f"{base}/readings/file", params={"request_id": rid}) as r:
                    doc = await r.json()
                seen.add(doc["status"])
                if doc["status"] in ("completed", "failed"):
                    break
                await asyncio.sleep(0.01)
            async with http.get(f"{base}/files/{doc['sftp_location']}") as r:
                assert r.status == 200
                data = await r.read()
            return doc, seen, [created], data

    doc, seen, _, data = run(go)
    assert doc["status"] == "completed", doc
    assert "running" in seen  # the stage delay lets a poller see it
    assert db.file_request_history(doc["request_id"]) == [
        "queued", "submitted", "running", "completed",
    ]  # fmt: skip
    assert list(doc) == ["request_id", "status", "sftp_location", "record_count"]
    assert doc["sftp_location"].startswith(doc["request_id"] + "/run-")
    assert doc["sftp_location"].endswith("-part-r-00000.gz")
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(data).decode())))
    assert doc["record_count"] == len(rows) == 5  # 10:05 .. 10:09 inclusive
    assert rows[0]["time"] == "2024-05-01 10:05:00.000000"
    assert rows[0]["kw"] == "5.0" and rows[0]["device_id"] == "m2"


def test_a_file_that_cannot_be_written_fails_with_the_reason(db: HeadEndDb, tmp_path: Path) -> None:
    fill(db)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")

    async def go() -> dict[str, Any]:
        async with served(db, blocker) as (http, base):
            body = {"start_date": "2024-05-01 10:00:00", "end_date": "2024-05-01 11:00:00"}
            async with http.post(f"{base}/readings/file", json=body) as r:
                rid = (await r.json())["request_id"]
            for _ in range(200):
                async with http.get(f"{base}/readings/file", params={"request_id": rid}) as r:
                    doc: dict[str, Any] = await r.json()
                if doc["status"] in ("completed", "failed"):
                    return doc
                await asyncio.sleep(0.01)
            raise AssertionError(doc)

    doc = run(go)
    assert doc["status"] == "failed" and "sftp_location" not in doc
    assert "Error" in doc["error"]
    assert db.file_request_history(doc["request_id"])[-1] == "failed"


def test_bad_file_requests(db: HeadEndDb, tmp_path: Path) -> None:
    async def go() -> list[tuple[int, Any]]:
        out = []
        async with served(db, tmp_path) as (http, base):
            bad = {"start_date": "2024-05-02 00:00:00", "end_date": "2024-05-01 00:00:00"}
            for kw in ({"json": bad}, {"data": b"{nope"}, {"json": ["x"]}):
                async with http.post(f"{base}/readings/file", **kw) as r:  # type: ignore[arg-type]
                    out.append((r.status, await r.json()))
            async with http.get(f"{base}/readings/file") as r:
                out.append((r.status, await r.json()))
            async with http.get(f"{base}/readings/file", params={"request_id": "nope"}) as r:
                out.append((r.status, await r.json()))
            async with http.get(f"{base}/files/../../etc/passwd") as r:
                out.append((r.status, None))
        return out

    out = run(go)
    assert [s for s, _ in out] == [400, 400, 400, 400, 404, 404]
    assert out[0][1]["parameter"] == "end_date"
    assert out[1][1]["parameter"] == "body" and "not JSON" in out[1][1]["error"]
    assert out[2][1]["parameter"] == "body"
    assert out[3][1]["parameter"] == "request_id"


def test_lifecycle_never_goes_back_or_changes_once_finished() -> None:
    check_transition(FileStatus.QUEUED, FileStatus.SUBMITTED)
    check_transition(FileStatus.QUEUED, FileStatus.FAILED)
    for current, new in [
        (FileStatus.QUEUED, FileStatus.RUNNING),
        (FileStatus.RUNNING, FileStatus.SUBMITTED),
        (FileStatus.COMPLETED, FileStatus.FAILED),
        (FileStatus.FAILED, FileStatus.COMPLETED),
    ]:
        with pytest.raises(LifecycleError, match=f"from '{current.value}' to '{new.value}'"):
            check_transition(current, new)
