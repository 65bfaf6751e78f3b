"""GET /readings against the seed 002 document's two example pages, field for field.

The seed shows the first and last record of page 1 (offsets 1 and 100) and page 2 (101 and 200)
of a query with start_date 2023-02-27 16:00:00.000000 and page_size 100. We store 200 readings
whose 1st, 100th, 101st and 200th are the seed's, fetch both pages over HTTP, and compare.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hil.headend.db import HeadEndDb
from hil.headend.pagination import RECORD_FIELDS
from tests.hil.headend.helpers import message, reading, run, served

T = "2023-02-27 16:00:00.000000"
# The example records as the seed document prints them.
SEED_RECORDS = {
    1: {"offset": 1, "time": T, "arrival_time": T,
        "device_id": "0001b33e-0898-33a6-ac1d-82b59b904034", "measure_name": "readings",
        "load": 18, "crrnt": 88.926, "pf": 0.918, "kva": 19.257, "kw": 17.674, "vltg": 0.217},
    100: {"offset": 100, "time": T, "arrival_time": T,
          "device_id": "00040f4a-f316-3114-bef0-504a37fbfbc4", "measure_name": "readings",
          "load": 12, "crrnt": 44.314, "pf": 0.913, "kva": 9.273, "kw": 8.464, "vltg": 0.209},
    101: {"offset": 101, "time": T, "arrival_time": T,
          "device_id": "00a0f4b9-c962-3c30-ae64-1a7e9313da75", "measure_name": "readings",
          "load": 15, "crrnt": 9.556, "pf": 0.958, "kva": 2.021, "kw": 1.936, "vltg": 0.212},
    200: {"offset": 200, "time": T, "arrival_time": T,
          "device_id": "011e2268-8ec6-3e78-b84e-96425c1b5d50", "measure_name": "readings",
          "load": 16, "crrnt": 67.688, "pf": 0.951, "kva": 15.083, "kw": 14.35, "vltg": 0.223},
}  # fmt: skip
SEED_PAGE_1 = {
    "filter_params": {"start_date": T, "offset": 0},
    "results": {"records_total": 100, "last_offset": 100, "last_date": T},
}
SEED_PAGE_2 = {
    "filter_params": {"start_date": T, "offset": 100},
    "results": {"records_total": 100, "last_offset": 200, "last_date": T},
}


def fill(db: HeadEndDb) -> None:
    records = []
    for n in range(1, 201):
        seed = SEED_RECORDS.get(n)
        if seed is not None:
            values = {k: seed[k] for k in ("load", "crrnt", "pf", "kva", "kw", "vltg")}
            records.append(reading(seed["device_id"], T, n, **values))
        else:
            records.append(reading(f"filler-{n:03d}", T, n, load=1, kw=0.5))
    for start in range(0, 200, 50):  # four messages, as a gateway batches them
        db.ingest(message(f"msg-{start}", *records[start : start + 50]), "w1")
    # Something before start_date and an alarm: neither may appear in the pages.
    db.ingest(message("early", reading("early", "2023-02-27 15:59:59.999999", 999)), "w1")
    db.ingest(message("alarm", reading("gasp", T, 998, type="alarm", event="last_gasp")), "w1")


def test_both_seed_pages_match_field_for_field(db: HeadEndDb, tmp_path: Path) -> None:
    fill(db)

    async def fetch() -> tuple[list[dict[str, Any]], list[str]]:
        async with served(db, tmp_path / "exports") as (http, base):
            pages, raw = [], []
            offset = None
            while True:
                params = {"start_date": T, "page_size": "100"}
                if offset is not None:
                    params["offset"] = str(offset)
                async with http.get(f"{base}/readings", params=params) as r:
                    assert r.status == 200
                    text = await r.text()
                doc = json.loads(text)
                if not doc["records"]:
                    break
                pages.append(doc)
                raw.append(text)
                offset = doc["results"]["last_offset"]
            return pages, raw

    pages, raw = run(fetch)
    assert len(pages) == 2
    for page, seed in zip(pages, (SEED_PAGE_1, SEED_PAGE_2), strict=True):
        assert list(page) == ["filter_params", "results", "records"]
        assert page["filter_params"] == seed["filter_params"]
        assert list(page["filter_params"]) == ["start_date", "offset"]
        assert page["results"] == seed["results"]
        assert list(page["results"]) == ["records_total", "last_offset", "last_date"]
        assert len(page["records"]) == 100
    got = {r["offset"]: r for page in pages for r in page["records"]}
    assert sorted(got) == list(range(1, 201))
    for n, seed in SEED_RECORDS.items():
        assert got[n] == seed
        assert list(got[n]) == list(RECORD_FIELDS)  # same fields, same order
    # Integers stay integers, decimals keep the seed's digits, on the wire.
    assert '"load": 18, "crrnt": 88.926' in raw[0] or '"load":18,"crrnt":88.926' in raw[0]
