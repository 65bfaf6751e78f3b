"""Helpers for the head-end simulator's tests: messages as the gateway encodes them, and the API
served on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from firmware_agent.spool import Priority, SpoolRecord
from firmware_agent.uplink import payloads
from hil.headend.api import build_app
from hil.headend.db import HeadEndDb


def reading(device: str, time: str, n: int, **values: Any) -> SpoolRecord:
    body = {"device_id": device, "time": time, "arrival_time": time, **values}
    return SpoolRecord.from_data(
        f"00000000-0000-4000-8000-{n:012d}",
        f"{device}|1.0.99.1.0.255|{time}",
        Priority.INTERVAL,
        1_700_000_000.0,
        body,
    )


def message(
    mid: str, *records: SpoolRecord, gateway: str = "gateway-01"
) -> payloads.ReadingsMessage:
    """Encoded and decoded again, as it crosses the broker."""
    data = payloads.encode_readings(gateway, records, message_id=mid, sent_at=1.7e9)
    return payloads.decode_readings(data)


@asynccontextmanager
async def served(
    db: HeadEndDb, export_dir: Path, stage_delay_s: float = 0.0
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    runner = web.AppRunner(build_app(db, export_dir, stage_delay_s=stage_delay_s))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield session, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())
