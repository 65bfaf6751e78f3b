"""The spool's disk budget and storm throttle: pure policy, no SQLite (spool.py does the I/O).

Why separate: these are the two decisions that decide *what* is sent or dropped when the gateway is
under stress (a last-gasp storm, a long backhaul outage), so they are small, clock-driven and unit
tested on their own; spool.py only measures and executes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from firmware_agent.clock import Clock

SHM_RESERVE = 64 * 1024  # the -shm wal-index file (32 KiB for a WAL of up to ~4k frames)
MIN_WAL_PAGES = 16
MAX_WAL_PAGES = 1000  # SQLite's default wal_autocheckpoint
TX_PAGES = 64  # first guess of one add's WAL frames (inserts + aging + index + ptrmap pages)
GROWTH_PAGES = 16  # first guess of the pages one add allocates before aging frees room
MARGIN = 1.25


def wal_pages_for(max_bytes: int, page_size: int) -> int:
    """WAL auto-checkpoint threshold (pages) for a budget: SQLite's 1000 pages, or a sixteenth of
    a small budget so the WAL never eats it."""
    return max(MIN_WAL_PAGES, min(MAX_WAL_PAGES, max_bytes // page_size // 16))


class DiskReserve:
    """What the budget keeps back from the live pages so that database + WAL + shm files stay
    within ``max_bytes``, learnt from the spool's own transactions.

    Why learnt: the WAL holds up to the auto-checkpoint threshold plus one transaction, and an
    add that ages records out dirties index, freelist and pointer-map pages whose count depends
    on the data (measured: ~60-90 frames for 100 readings of 97 meters). The first guesses are
    generous; every commit's WAL file size and every add's page growth then raise them (x1.25)
    if the real figures are larger."""

    def __init__(self, max_bytes: int, page_size: int, wal_pages: int) -> None:
        self.max_bytes = max_bytes
        self.page_size = page_size
        self.wal_bytes = (wal_pages + TX_PAGES) * page_size
        self.growth_bytes = GROWTH_PAGES * page_size

    def note_wal_file(self, size: int) -> bool:
        """Learn from the WAL file's size after a commit; True if the reserve grew."""
        if size * MARGIN <= self.wal_bytes:
            return False
        self.wal_bytes = int(size * MARGIN)
        return True

    def note_growth(self, grown: int) -> bool:
        """Learn from the bytes one add allocated before aging; True if the reserve grew."""
        if grown * MARGIN <= self.growth_bytes:
            return False
        self.growth_bytes = int(grown * MARGIN)
        return True

    @property
    def reserve(self) -> int:
        return SHM_RESERVE + self.wal_bytes + self.growth_bytes

    @property
    def usable(self) -> int:
        """What the live pages (page_count - freelist_count, times page_size) may use."""
        return max(4 * self.page_size, self.max_bytes - self.reserve)

    @property
    def file_cap(self) -> int:
        """The database file's own share: beyond it, freed pages are given back (trimmed)."""
        return max(4 * self.page_size, self.max_bytes - SHM_RESERVE - self.wal_bytes)


@dataclass(frozen=True)
class QueueDepthExceeded:
    """Figures of one episode in which the spool hit its budget ("Queue Depth Exceeded").

    An episode starts at the first add that needed aging or was refused and ends when the spool
    is back under 90 % of its budget. ``aged_out``/``refused`` count this episode only."""

    since: float  # wall clock (clock.now()) of the first hit
    depth: dict[str, int]  # records per class now
    used_bytes: int  # live pages x page size + WAL reserve (what the budget counts)
    disk_bytes: int  # database + WAL + shm files as they are on disk
    max_bytes: int
    records: int
    max_records: int | None
    aged_out: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)

    def message(self) -> str:
        depth = ", ".join(f"{k} {v}" for k, v in self.depth.items())
        cap = f" of {self.max_records}" if self.max_records is not None else ""
        return (
            f"Queue Depth Exceeded: spool holds {self.records}{cap} records ({depth}), "
            f"{self.used_bytes} bytes of budget {self.max_bytes} (disk {self.disk_bytes}); "
            f"aged out {format_counts(self.aged_out)}, refused {format_counts(self.refused)}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "since": self.since,
            "depth": dict(self.depth),
            "records": self.records,
            "max_records": self.max_records,
            "used_bytes": self.used_bytes,
            "disk_bytes": self.disk_bytes,
            "max_bytes": self.max_bytes,
            "aged_out": dict(self.aged_out),
            "refused": dict(self.refused),
        }


def format_counts(by_class: dict[str, int]) -> str:
    """``12 (interval 10, on_demand 2)``: the total first, so log readers can grep one number."""
    total = sum(by_class.values())
    detail = ", ".join(f"{k} {v}" for k, v in by_class.items() if v)
    return f"{total} ({detail})" if detail else str(total)


class IntervalThrottle:
    """Token bucket for interval reads during a storm of alarms / on-demand replies.

    A storm lasts while the spool says so (enough alarm / on-demand records stored) and for
    ``hold_s`` after the last one was seen: last gasps trickle in over seconds, and the throttle
    must not flap open between them. During a storm interval reads are handed out at most at
    ``rate`` records/s (bucket of ``burst`` records); ``rate == 0`` holds them back entirely.
    Outside a storm there is no limit. Monotonic clock, so wall-clock steps do not matter."""

    def __init__(self, clock: Clock, rate: float, hold_s: float, burst: float | None = None):
        if rate < 0 or hold_s < 0 or not math.isfinite(rate):
            raise ValueError("throttle rate and hold must be finite and >= 0")
        self._clock = clock
        self.rate = rate
        self.hold_s = hold_s
        if burst is None:  # one second of rate; nothing at all when the rate is 0
            burst = max(1.0, rate) if rate > 0 else 0.0
        self.burst = burst
        self._storm_until = -math.inf
        self._tokens = 0.0
        self._last = clock.monotonic()
        self.throttled = 0  # next_batch calls that held interval reads back

    def storm(self, storming: bool) -> bool:
        now = self._clock.monotonic()
        if storming:
            if now >= self._storm_until:  # a new storm starts with a full bucket
                self._tokens = self.burst
                self._last = now
            self._storm_until = now + self.hold_s
            return True
        return now < self._storm_until

    def allowance(self, storming: bool) -> int | None:
        """How many interval reads may go now: None = no limit (no storm)."""
        if not self.storm(storming):
            return None
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return int(self._tokens)

    def take(self, n: int) -> None:
        self._tokens = max(0.0, self._tokens - n)
