"""The head-end simulator's HTTP API (seed 002) on aiohttp.

``GET /readings?start_date&page_size&offset`` pages through stored readings; ``POST
/readings/file`` queues a bulk file of a time range and ``GET /readings/file?request_id`` follows
it through queued → submitted → running → completed | failed. ``GET /files/<location>`` stands in
for the seed's SFTP download, ``GET /stats`` gives the dedup counters tests assert on.

Why one export task: the seed queues file requests (SQS) and a worker runs them one at a time;
a single asyncio task fed by a queue keeps that order, and the file is written in a thread so the
API keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from hil.headend.db import HeadEndDb
from hil.headend.files import FileRequestBody, FileStatus, file_location, write_file
from hil.headend.pagination import QueryError, ReadingsQuery, page_response

log = logging.getLogger("hil.headend.api")

DB = web.AppKey("db", HeadEndDb)
EXPORT_DIR = web.AppKey("export_dir", Path)
QUEUE: web.AppKey[asyncio.Queue[str]] = web.AppKey("queue")
STAGE_DELAY = web.AppKey("stage_delay", float)


def _bad_request(err: QueryError) -> web.Response:
    return web.json_response(err.to_json(), status=400)


async def get_readings(request: web.Request) -> web.Response:
    try:
        query = ReadingsQuery.parse(request.query)
    except QueryError as e:
        return _bad_request(e)
    rows = request.app[DB].page(query.start_us, query.page_size, query.offset)
    return web.json_response(page_response(query, rows))


async def post_readings_file(request: web.Request) -> web.Response:
    try:
        doc = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _bad_request(QueryError("body", f"not JSON: {e}"))
    try:
        body = FileRequestBody.parse(doc)
    except QueryError as e:
        return _bad_request(e)
    request_id = str(uuid.uuid4())
    created = request.app[DB].create_file_request(
        request_id, body.start_date, body.end_date, body.start_us, body.end_us
    )
    request.app[QUEUE].put_nowait(request_id)
    return web.json_response({"request_id": created.request_id, "status": created.status.value})


async def get_readings_file(request: web.Request) -> web.Response:
    request_id = request.query.get("request_id", "")
    if not request_id:
        return _bad_request(QueryError("request_id", "missing"))
    found = request.app[DB].file_request(request_id)
    if found is None:
        return web.json_response(
            {"error": f"no file request {request_id!r}", "parameter": "request_id"}, status=404
        )
    return web.json_response(found.to_json())


async def get_file(request: web.Request) -> web.StreamResponse:
    root = request.app[EXPORT_DIR].resolve()
    path = (root / request.match_info["location"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound(text=f"no file {request.match_info['location']!r}")
    return web.FileResponse(path, headers={"Content-Type": "application/gzip"})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[DB].stats().to_json())


async def run_export(app: web.Application, request_id: str) -> None:
    """Take one request from queued to completed (or failed, with the reason)."""
    db, delay = app[DB], app[STAGE_DELAY]
    try:
        db.advance_file_request(request_id, FileStatus.SUBMITTED)
        await asyncio.sleep(delay)
        start_us, end_us = db.file_request_range(request_id)
        db.advance_file_request(request_id, FileStatus.RUNNING)
        await asyncio.sleep(delay)
        location = file_location(request_id, int(time.time() * 1000))
        count = await asyncio.to_thread(
            write_file, app[EXPORT_DIR] / location, db.between(start_us, end_us)
        )
        db.advance_file_request(
            request_id, FileStatus.COMPLETED, sftp_location=location, record_count=count
        )
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the request fails, the exporter goes on with the next one
        log.warning("file request %s failed: %s", request_id, e)
        with contextlib.suppress(Exception):
            db.advance_file_request(request_id, FileStatus.FAILED, error=f"{type(e).__name__}: {e}")


async def _exporter(app: web.Application) -> AsyncIterator[None]:
    queue = app[QUEUE]

    async def loop() -> None:
        while True:
            await run_export(app, await queue.get())

    task = asyncio.create_task(loop(), name="headend-export")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_app(db: HeadEndDb, export_dir: Path, *, stage_delay_s: float = 0.0) -> web.Application:
    """The API over ``db``; files go under ``export_dir``. ``stage_delay_s`` holds each lifecycle
    stage that long, so a client can watch the states go by."""
    app = web.Application()
    app[DB] = db
    app[EXPORT_DIR] = export_dir
    app[QUEUE] = asyncio.Queue()
    app[STAGE_DELAY] = stage_delay_s
    app.router.add_get("/readings", get_readings)
    app.router.add_post("/readings/file", post_readings_file)
    app.router.add_get("/readings/file", get_readings_file)
    app.router.add_get("/files/{location:.+}", get_file)
    app.router.add_get("/stats", get_stats)
    app.cleanup_ctx.append(_exporter)
    return app
