"""Clocks: everything that waits or timestamps takes one, so tests and the emulator can run on
virtual time and production runs on the system's."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (UTC): what records and certificates carry."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: what timeouts and rates are measured on."""


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to: for tests and virtual-time simulation."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._wall += seconds
        self._mono += seconds


class LoopClock:
    """The running event loop's clock, anchored to a wall-clock epoch: under a virtual-time
    loop (the simulator) records and timeouts follow simulated time; on a normal loop it is
    the monotonic clock with the wall time it started at."""

    def __init__(self, loop: asyncio.AbstractEventLoop, epoch: float) -> None:
        self._loop = loop
        self._offset = epoch - loop.time()

    def now(self) -> float:
        return self._offset + self._loop.time()

    def monotonic(self) -> float:
        return self._loop.time()
