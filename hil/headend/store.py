"""The head end's in-memory view of what arrived: records de-duplicated by natural key, gateway
status, rejected messages. Tests wait on it; the durable, shared store is ``HeadEndDb``.

Why both: several head-end workers share one SQLite database (that is where "exactly once" is
decided), while each worker's in-memory view lets a test block until its own share arrived.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from firmware_agent.uplink import payloads


class HeadEndError(Exception):
    """The head end could not connect or subscribe, or a wait timed out."""


@dataclass(frozen=True)
class InvalidMessage:
    topic: str
    error: str
    payload: bytes


@dataclass
class ReadingStore:
    """Received readings, de-duplicated by natural key, plus gateway status and rejects.

    Thread-safe: paho's network thread writes, tests read."""

    records: list[dict[str, Any]] = field(default_factory=list)
    messages: list[payloads.ReadingsMessage] = field(default_factory=list)
    duplicates: int = 0
    status: dict[str, payloads.StatusMessage] = field(default_factory=dict)
    status_history: list[payloads.StatusMessage] = field(default_factory=list)
    invalid: list[InvalidMessage] = field(default_factory=list)
    _keys: set[str] = field(default_factory=set, repr=False, compare=False)
    _cond: threading.Condition = field(
        default_factory=threading.Condition, repr=False, compare=False
    )

    def add_readings(self, msg: payloads.ReadingsMessage) -> int:
        """Keep a message's new records; returns how many were new."""
        with self._cond:
            self.messages.append(msg)
            new = 0
            for rec in msg.records:
                key = rec["natural_key"]
                if key in self._keys:
                    self.duplicates += 1
                    continue
                self._keys.add(key)
                self.records.append(
                    {**rec, "message_id": msg.message_id, "gateway_id": msg.gateway_id}
                )
                new += 1
            self._cond.notify_all()
            return new

    def add_status(self, msg: payloads.StatusMessage) -> None:
        with self._cond:
            self.status[msg.gateway_id] = msg
            self.status_history.append(msg)
            self._cond.notify_all()

    def add_invalid(self, item: InvalidMessage) -> None:
        with self._cond:
            self.invalid.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.records)

    def wait_for(self, n: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.records) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HeadEndError(
                        f"head end has {len(self.records)} of {n} records after {timeout} s "
                        f"({self.duplicates} duplicates, {len(self.invalid)} invalid messages)"
                    )
                self._cond.wait(remaining)
            return list(self.records)

    def wait_for_status(
        self, gateway_id: str, state: str, timeout: float
    ) -> payloads.StatusMessage:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                st = self.status.get(gateway_id)
                if st is not None and st.state == state:
                    return st
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HeadEndError(
                        f"{gateway_id} not {state!r} after {timeout} s "
                        f"(last: {st.state if st else 'none'})"
                    )
                self._cond.wait(remaining)
