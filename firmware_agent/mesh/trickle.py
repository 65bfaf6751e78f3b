"""The Trickle timer (RFC 6206) that paces DIOs: fast after a change, exponentially slower while
the network agrees, so a quiet mesh of a thousand nodes is not flooded with announcements.

Sans-IO: the owner asks :meth:`Trickle.deadline` when to call :meth:`Trickle.poll`, and ``poll``
says whether to transmit now. Time is passed in; randomness comes from the injected generator.
RPL's defaults (RFC 6550 §8.3.1): Imin = 2^3 ms, Imax = Imin × 2^20 (≈ 2.3 h), k = 10. Wi-SUN
FAN profiles use much larger Imin (15 s and more); the gateway's config chooses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class TrickleConfig:
    imin_s: float = 0.008
    doublings: int = 20
    k: int = 10  # redundancy constant; 0 means "never suppress"

    @property
    def imax_s(self) -> float:
        return self.imin_s * (1 << self.doublings)


class Trickle:
    """One Trickle instance. Call :meth:`start` once, then :meth:`poll` at :meth:`deadline`."""

    def __init__(self, config: TrickleConfig, rng: random.Random) -> None:
        if config.imin_s <= 0 or config.doublings < 0 or config.k < 0:
            raise ValueError(f"bad Trickle parameters: {config}")
        self.config = config
        self.rng = rng
        self.interval = config.imin_s
        self._interval_start = 0.0
        self._t = 0.0  # the transmission point inside the current interval
        self._counter = 0
        self._fired = True
        self.transmissions = 0
        self.suppressed = 0
        self.resets = 0

    def start(self, now: float) -> None:
        self.interval = self.config.imin_s
        self._begin(now)

    def _begin(self, now: float) -> None:
        self._interval_start = now
        self._counter = 0
        self._t = self.rng.uniform(self.interval / 2, self.interval)
        self._fired = False

    def deadline(self) -> float:
        """When :meth:`poll` must next be called."""
        if self._fired:
            return self._interval_start + self.interval
        return self._interval_start + self._t

    def poll(self, now: float) -> bool:
        """Advance to ``now``; True when a transmission is due now."""
        transmit = False
        if not self._fired and now >= self._interval_start + self._t:
            self._fired = True
            if self.config.k == 0 or self._counter < self.config.k:
                transmit = True
                self.transmissions += 1
            else:
                self.suppressed += 1
        end = self._interval_start + self.interval
        if now >= end:
            self.interval = min(self.interval * 2, self.config.imax_s)
            self._begin(end if now - end < self.interval else now)
            if now >= self._interval_start + self._t:  # the new point already passed too
                return self.poll(now) or transmit
        return transmit

    def consistent(self) -> None:
        """A consistent transmission was heard (e.g. a DIO with our DODAG version and rank)."""
        self._counter += 1

    def inconsistent(self, now: float) -> None:
        """Something changed: back to Imin (unless already there)."""
        if self.interval > self.config.imin_s:
            self.resets += 1
            self.interval = self.config.imin_s
            self._begin(now)
