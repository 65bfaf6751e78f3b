"""Interval reads: one loop per meter, spread with jitter, isolated from each other.

A meter that fails (timeout, bad reply, anything) is counted and retried at its next slot; it
never stalls or kills another meter's loop. Readings are committed to the spool before anything
else happens to them. The collector issue adds daily registers, catch-up after an outage and
on-demand reads that jump the queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from firmware_agent.clock import Clock
from firmware_agent.collector.link import MeterLink
from firmware_agent.collector.reader import MeterCache, read_meter
from firmware_agent.config import CollectorConfig, MeterConfig
from firmware_agent.spool import Priority, Spool

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class MeterStatus:
    meter_id: str
    reads_ok: int = 0
    reads_failed: int = 0
    readings: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_duration_s: float | None = None
    clock_drift_s: float | None = None

    @property
    def state(self) -> str:
        if self.last_attempt is None:
            return "pending"
        return "ok" if self.last_error is None else "failing"


class Collector:
    """Reads every configured meter on its interval and spools the readings."""

    def __init__(
        self,
        meters: tuple[MeterConfig, ...],
        link_for: Callable[[MeterConfig], MeterLink],
        spool: Spool,
        clock: Clock,
        cfg: CollectorConfig,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.meters = meters
        self.link_for = link_for
        self.spool = spool
        self.clock = clock
        self.cfg = cfg
        self.rng = rng
        self.sleep = sleep
        self.status = {m.id: MeterStatus(m.id) for m in meters}
        self._caches = {m.id: MeterCache() for m in meters}
        self.readings_total = 0

    async def run(self) -> None:
        """Run every meter's loop until cancelled."""
        tasks = [
            asyncio.create_task(self._meter_loop(m), name=f"meter-{m.id}") for m in self.meters
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _meter_loop(self, meter: MeterConfig) -> None:
        await self.sleep(self.rng.uniform(0, self.cfg.jitter_s))
        while True:
            started = self.clock.monotonic()
            await self.read_once(meter)
            elapsed = self.clock.monotonic() - started
            jitter = self.rng.uniform(-self.cfg.jitter_s, self.cfg.jitter_s) / 2
            await self.sleep(max(0.0, self.cfg.interval_s - elapsed + jitter))

    async def read_once(self, meter: MeterConfig) -> int:
        """Read one meter now and spool what it returned; returns the number of readings."""
        status = self.status[meter.id]
        status.last_attempt = self.clock.now()
        started = self.clock.monotonic()
        try:
            result = await read_meter(
                self.link_for(meter),
                meter,
                self.clock,
                profile_rows=self.cfg.profile_rows,
                timeout=self.cfg.timeout_s,
                retries=self.cfg.retries,
                cache=self._caches[meter.id],
            )
            items = [(r.to_dict(), r.natural_key) for r in result.readings]
            if items:
                self.spool.add(items, Priority.INTERVAL)
        except Exception as exc:  # per-meter isolation: one bad meter never stops the others
            status.reads_failed += 1
            status.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("read of meter %s failed: %s", meter.id, status.last_error)
            return 0
        finally:
            status.last_duration_s = self.clock.monotonic() - started
        status.reads_ok += 1
        status.readings += len(items)
        status.last_success = self.clock.now()
        status.last_error = None
        status.clock_drift_s = result.clock_drift_s
        self.readings_total += len(items)
        log.info(
            "read meter %s: %d readings in %.2f s", meter.id, len(items), status.last_duration_s
        )
        return len(items)
