"""Invocation (frame) counters per meter, in SQLite (WAL), for suite 0.

Two counters per meter:

- the next counter the gateway sends with. GCM must never see the same IV twice under one key, so
  a counter is *reserved* durably before any frame uses it: the store persists a ceiling ahead of
  use (``window`` counters at a time, synchronous=FULL) and after a crash starts again at the
  persisted ceiling, skipping at most ``window`` values and never reusing one. Reserving in windows
  keeps the per-frame cost off the disk (an fsync per frame would cost ~0.2 ms here, more on flash).
- the highest counter accepted from the meter: a frame at or below it is a replay
  (``ReplayedFrame``). Written per frame without fsync (WAL, synchronous=NORMAL): a power cut may
  forget the last few, never a process crash.

``resync`` (the operator's "security reset") moves the send counter *forward only* to what the
meter expects, because moving it back would reuse IVs.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .session import ReplayedFrame

MAX_COUNTER = 0xFFFFFFFF
FIRST_COUNTER = 1


class CounterExhausted(Exception):
    """The 32-bit send counter of a meter is used up: its keys must be changed."""


@dataclass(frozen=True)
class CounterState:
    meter: str
    next_send: int
    last_received: int | None


class CounterStore:
    """Per-meter send/receive invocation counters (one SQLite file, one connection)."""

    def __init__(self, path: str | Path, *, window: int = 256) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.path = Path(path)
        self.window = window
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS invocation_counters ("
            " meter TEXT PRIMARY KEY,"
            " send_ceiling INTEGER NOT NULL,"
            " last_received INTEGER)"
        )
        self._next: dict[str, int] = {}
        self._ceiling: dict[str, int] = {}
        self._received: dict[str, int | None] = {}

    def _load(self, meter: str) -> None:
        if meter in self._next:
            return
        row = self._db.execute(
            "SELECT send_ceiling, last_received FROM invocation_counters WHERE meter = ?",
            (meter,),
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO invocation_counters (meter, send_ceiling) VALUES (?, ?)",
                (meter, FIRST_COUNTER),
            )
            row = (FIRST_COUNTER, None)
        # Everything below the persisted ceiling may have been sent before a restart.
        self._next[meter] = int(row[0])
        self._ceiling[meter] = int(row[0])
        self._received[meter] = None if row[1] is None else int(row[1])

    def _persist_ceiling(self, meter: str, ceiling: int) -> None:
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "UPDATE invocation_counters SET send_ceiling = ? WHERE meter = ?", (ceiling, meter)
        )
        self._ceiling[meter] = ceiling

    def reserve(self, meter: str) -> int:
        """The next counter to send with; durable before it is returned."""
        self._load(meter)
        ic = self._next[meter]
        if ic > MAX_COUNTER:
            raise CounterExhausted(f"meter {meter}: invocation counter exhausted, change keys")
        if ic >= self._ceiling[meter]:
            self._persist_ceiling(meter, min(ic + self.window, MAX_COUNTER + 1))
        self._next[meter] = ic + 1
        return ic

    def accept(self, meter: str, ic: int) -> None:
        """Record a verified frame's counter from the meter; a counter not above the last one
        accepted is a replay."""
        self._load(meter)
        last = self._received[meter]
        if last is not None and ic <= last:
            raise ReplayedFrame(meter, ic, last)
        self._received[meter] = ic
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "UPDATE invocation_counters SET last_received = ? WHERE meter = ?", (ic, meter)
        )

    def resync(self, meter: str, next_send: int, *, forget_received: bool = True) -> CounterState:
        """Send from at least ``next_send`` on (never backwards: that would reuse IVs); with
        ``forget_received`` also accept whatever counter the meter sends next (it may have reset
        its own). Returns the new state."""
        if not FIRST_COUNTER <= next_send <= MAX_COUNTER:
            raise ValueError(f"meter {meter}: counter {next_send} outside 1..{MAX_COUNTER}")
        self._load(meter)
        nxt = max(self._next[meter], next_send)
        self._next[meter] = nxt
        self._persist_ceiling(meter, nxt)
        if forget_received:
            self._received[meter] = None
            self._db.execute(
                "UPDATE invocation_counters SET last_received = NULL WHERE meter = ?", (meter,)
            )
        return self.state(meter)

    def state(self, meter: str) -> CounterState:
        self._load(meter)
        return CounterState(meter, self._next[meter], self._received[meter])

    def close(self) -> None:
        self._db.close()
