"""What the uplink tests share: running an Uplink around a test body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from firmware_agent.uplink.mqtt import Uplink


def run_with_uplink(
    uplink: Uplink, body: Callable[[Uplink], Awaitable[None]], timeout: float = 30.0
) -> None:
    async def main() -> None:
        task = asyncio.create_task(uplink.run())
        try:
            await asyncio.wait_for(body(uplink), timeout)
        finally:
            await uplink.stop(flush_timeout=1.0)
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
