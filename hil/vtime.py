"""A virtual-time asyncio event loop: the agent, the medium and the emulated meters run a
simulated day in minutes, unchanged, because they only ever wait on the loop's clock.

The loop's ``time()`` is a number we advance ourselves. Whenever the loop would block waiting for
its next timer, it first polls real I/O without waiting; if nothing is ready it jumps its clock
to that timer instead of sleeping. Callbacks, tasks, ``asyncio.sleep``, ``wait_for`` timeouts and
``call_at`` all work as on a real loop; the order of events is the same, only the waiting is gone.

What does not fit: work that finishes in *real* time (threads, ``run_in_executor``, sockets to
real peers). The clock races past it, so timeouts around it fire at once. Simulations therefore
keep everything in-process (``spinel+loop://`` radios, meters on the medium) and leave the MQTT
uplink out. A loop with nothing scheduled at all blocks on real I/O as a normal loop does.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without waiting, and turns a wait for a timer into a jump
    of the owning loop's clock."""

    def __init__(self) -> None:
        super().__init__()
        self.clock: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout is None or timeout <= 0:
            if not ready and timeout is None:
                return super().select(None)  # nothing scheduled: wait for real I/O
            return ready
        assert self.clock is not None
        self.clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock starts at ``start`` and only moves when every task is
    waiting for a timer."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.clock = self
        self._virtual_now = start
        # Timers due within this much of now run in the same turn; virtual time is exact.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the selector does this; tests may too)."""
        if seconds < 0:
            raise ValueError("virtual time cannot go back")
        self._virtual_now += seconds


def run(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """``asyncio.run`` on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
