"""``hil headend``: N MQTT workers sharing one subscription and one database, plus the HTTP API.

Why workers in one process share nothing but the database and the broker's ``$share`` group: that
is exactly how separate head-end processes on separate hosts would split the load, so the same
test shows the scale-out (run two of these processes against one database file and they behave
the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from hil.headend.api import build_app
from hil.headend.db import HeadEndDb
from hil.headend.subscriber import HeadEnd, HeadEndTls


@dataclass(frozen=True)
class HeadEndOptions:
    broker_host: str
    broker_port: int
    tls: HeadEndTls
    db_path: Path
    export_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    workers: int = 1
    shared_group: str = "headend"
    topic_prefix: str = "ami"
    client_id: str = "headend"
    stage_delay_s: float = 0.0


def start_workers(options: HeadEndOptions) -> list[HeadEnd]:
    """Connect and subscribe every worker (blocking); each has its own client id and database
    connection. Raises ``HeadEndError`` if one cannot (the others are stopped)."""
    started: list[HeadEnd] = []
    try:
        for i in range(options.workers):
            worker = HeadEnd(
                options.broker_host,
                options.broker_port,
                options.tls,
                topic_prefix=options.topic_prefix,
                client_id=f"{options.client_id}-{i + 1}",
                shared_group=options.shared_group,
                db=HeadEndDb(options.db_path),
            )
            started.append(worker)
            worker.start()
    except BaseException:
        stop_workers(started)
        raise
    return started


def stop_workers(workers: list[HeadEnd]) -> None:
    for worker in workers:
        worker.stop()
        if worker.db is not None:
            worker.db.close()


async def serve(options: HeadEndOptions, ready: Callable[[str], None], stop: asyncio.Event) -> None:
    """Run until ``stop`` is set; ``ready(url)`` once the API listens and workers subscribed."""
    workers = await asyncio.to_thread(start_workers, options)
    api_db = HeadEndDb(options.db_path)
    runner = web.AppRunner(
        build_app(api_db, options.export_dir, stage_delay_s=options.stage_delay_s)
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, options.listen_host, options.listen_port)
        await site.start()
        port = int(runner.addresses[0][1])  # the bound port, also when asked for 0
        host = f"[{options.listen_host}]" if ":" in options.listen_host else options.listen_host
        ready(f"http://{host}:{port}")
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await asyncio.to_thread(stop_workers, workers)
        api_db.close()
