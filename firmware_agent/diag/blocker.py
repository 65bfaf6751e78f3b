"""Fail-safe against handshake guessing on the diag API (seed 000: "more than five failed
handshake attempts ... temporarily blacklisted"), sans-IO.

The TLS edge tells it what happened per peer address (:meth:`HandshakeBlocker.failed`,
:meth:`~HandshakeBlocker.succeeded`) and asks before each handshake (:meth:`~HandshakeBlocker.
check`). The ``max_failures``-th failure within ``window_s`` blocks the address for ``block_s``;
attempts during the block are refused before any TLS, and do not extend it (a technician who
fixed a certificate waits a known time, not "until they stop trying"). Time comes from the
injected clock, so tests step through a block without sleeping.

Decisions come back as values (:class:`Decision`) with the message to log: no logging, sockets
or sleeps here. The table is bounded (``max_addresses``): a flood of one-off addresses evicts the
oldest non-blocked entries first, so it cannot grow memory without limit.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from dataclasses import dataclass, field

from firmware_agent.clock import Clock

DEFAULT_MAX_FAILURES = 5
DEFAULT_BLOCK_S = 600.0
DEFAULT_WINDOW_S = 600.0
DEFAULT_MAX_ADDRESSES = 4096


class BlockerSettingsError(ValueError):
    """A blocker setting that cannot work (names the setting and the value)."""


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # blocked: close before the handshake
    BLOCKED_NOW = "blocked_now"  # this failure crossed the limit: the address is blocked from now
    COUNTED = "counted"  # a failure, below the limit
    RELEASED = "released"  # a block ran out; this attempt is allowed again


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    address: str
    failures: int  # failures counted in the window, including this one
    blocked_until: float | None = None  # wall-clock seconds
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.REFUSE


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)  # monotonic times, oldest first
    blocked_until: float | None = None  # monotonic
    refused: int = 0  # attempts refused during the current block


def normalise(address: str) -> str:
    """One key per host: ``::ffff:192.0.2.1`` and ``192.0.2.1`` are the same peer; scope ids and
    case do not make a new one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class HandshakeBlocker:
    """Failed TLS handshakes per peer address, and the blocks they earn."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_failures: int = DEFAULT_MAX_FAILURES,
        block_s: float = DEFAULT_BLOCK_S,
        window_s: float = DEFAULT_WINDOW_S,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        if max_failures < 1:
            raise BlockerSettingsError(f"max_failures must be at least 1, got {max_failures}")
        if not block_s > 0:
            raise BlockerSettingsError(f"block_s must be positive, got {block_s}")
        if not window_s > 0:
            raise BlockerSettingsError(f"window_s must be positive, got {window_s}")
        if max_addresses < 1:
            raise BlockerSettingsError(f"max_addresses must be at least 1, got {max_addresses}")
        self.clock = clock
        self.max_failures = max_failures
        self.block_s = block_s
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._entries: dict[str, _Entry] = {}
        self.blocks_total = 0
        self.refused_total = 0

    def _wall(self, mono: float) -> float:
        return self.clock.now() + (mono - self.clock.monotonic())

    def check(self, address: str) -> Decision:
        """Before a handshake: may ``address`` try?"""
        key = normalise(address)
        now = self.clock.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry.blocked_until is None:
            return Decision(Verdict.ALLOW, key, 0 if entry is None else len(entry.failures))
        if now < entry.blocked_until:
            entry.refused += 1
            self.refused_total += 1
            left = entry.blocked_until - now
            return Decision(
                Verdict.REFUSE,
                key,
                len(entry.failures),
                self._wall(entry.blocked_until),
                f"diag API: refused {key} before TLS: blocked for another {left:.0f} s after "
                f"{self.max_failures} failed handshakes (attempt {entry.refused} while blocked)",
            )
        refused = entry.refused
        del self._entries[key]
        return Decision(
            Verdict.RELEASED,
            key,
            0,
            None,
            f"diag API: block of {key} ended after {self.block_s:g} s "
            f"({refused} attempts refused meanwhile)",
        )

    def failed(self, address: str, reason: str = "") -> Decision:
        """A handshake from ``address`` failed (bad certificate, garbage, reset, timeout)."""
        key = normalise(address)
        now = self.clock.monotonic()
        entry = self._entries.get(key)
        if entry is None:
            self._make_room()
            entry = self._entries[key] = _Entry()
        if entry.blocked_until is not None and now < entry.blocked_until:
            # Only possible when a handshake began just before the block: already counted.
            return Decision(
                Verdict.REFUSE, key, len(entry.failures), self._wall(entry.blocked_until)
            )
        while entry.failures and now - entry.failures[0] >= self.window_s:
            entry.failures.popleft()
        entry.failures.append(now)
        n = len(entry.failures)
        why = f": {reason}" if reason else ""
        if n >= self.max_failures:
            entry.blocked_until = now + self.block_s
            entry.refused = 0
            self.blocks_total += 1
            return Decision(
                Verdict.BLOCKED_NOW,
                key,
                n,
                self._wall(entry.blocked_until),
                f"diag API: {key} blocked for {self.block_s:g} s after {n} failed TLS "
                f"handshakes within {self.window_s:g} s{why}",
            )
        return Decision(
            Verdict.COUNTED,
            key,
            n,
            None,
            f"diag API: failed TLS handshake from {key} ({n} of {self.max_failures}){why}",
        )

    def succeeded(self, address: str) -> None:
        """A handshake completed: the peer holds a technician certificate; forget its misses."""
        entry = self._entries.get(normalise(address))
        if entry is not None and entry.blocked_until is None:
            del self._entries[normalise(address)]

    def blocked(self) -> dict[str, float]:
        """Addresses blocked now → wall-clock time the block ends (for the status endpoint)."""
        now = self.clock.monotonic()
        return {
            key: self._wall(e.blocked_until)
            for key, e in self._entries.items()
            if e.blocked_until is not None and now < e.blocked_until
        }

    def failures(self, address: str) -> int:
        entry = self._entries.get(normalise(address))
        return 0 if entry is None else len(entry.failures)

    def _make_room(self) -> None:
        if len(self._entries) < self.max_addresses:
            return
        now = self.clock.monotonic()
        # Expired blocks and stale failures first, then the oldest unblocked entry.
        for key in [
            k
            for k, e in self._entries.items()
            if (e.blocked_until is not None and now >= e.blocked_until)
            or (
                e.blocked_until is None
                and (not e.failures or now - e.failures[-1] >= self.window_s)
            )
        ]:
            del self._entries[key]
        if len(self._entries) < self.max_addresses:
            return
        unblocked = [
            (e.failures[-1], k) for k, e in self._entries.items() if e.blocked_until is None
        ]
        if unblocked:
            del self._entries[min(unblocked)[1]]
            return
        # Every slot holds a live block: drop the one ending soonest.
        soonest = min(self._entries, key=lambda k: self._entries[k].blocked_until or 0.0)
        del self._entries[soonest]
