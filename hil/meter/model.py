"""The physics of one emulated electricity meter: what it would measure at any instant.

Every quantity is a pure function of the meter's seed-drawn parameters and the time, so two reads
of the same interval agree, a simulated day costs nothing to "run", and a thousand meters need no
background task. Energy is the integral of a closed-form power curve, sampled at interval ends
with a small non-accumulating jitter; the interval's average power is then *derived* from the
energy step, so ``kW x hours == Wh`` holds exactly row by row and the register never runs back.
Quantities are rounded to the resolution the meter's registers carry *before* the dependent ones
are derived (pf before kVA, kVA before current), so the head end sees kva = V*I and kw = kva*pf.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

# Energy is counted from this instant (2020-01-01T00:00:00Z) plus a per-meter starting value.
ENERGY_ANCHOR_S = 1_577_836_800.0
_DAY_S = 86_400.0
_WEEK_S = 7 * _DAY_S


@dataclass(frozen=True)
class Sample:
    """One interval (or the interval now in progress) as the meter measures it.

    ``time`` is the capture time on the meter's clock (the end of the interval for a profile row,
    the instant itself for an instantaneous read).
    """

    time: float
    energy_wh: int
    vltg_kv: float
    crrnt_a: float
    pf: float
    kw: float
    kva: float
    load: int


class MeterModel:
    """Seeded, deterministic meter physics; ``rng`` is drawn from only in the constructor."""

    def __init__(
        self,
        meter_id: str,
        rng: random.Random,
        *,
        profile_period_s: float = 900,
        profile_depth: int = 960,
        clock_offset_s: float = 0.0,
    ) -> None:
        if profile_period_s <= 0:
            raise ValueError("profile_period_s must be positive")
        if profile_depth < 1:
            raise ValueError("profile_depth must be at least 1")
        self.meter_id = meter_id
        self.profile_period_s = float(profile_period_s)
        self.profile_depth = profile_depth
        self.clock_offset_s = clock_offset_s
        self._salt = rng.getrandbits(64)
        self._base_w = rng.uniform(400.0, 3000.0)
        self.rated_w = self._base_w * rng.uniform(2.2, 3.0)
        # (amplitude, period, phase) of the power curve's harmonics; amplitudes sum below 1 so
        # power stays positive: P in [0.4, 1.6] x base.
        self._terms = (
            (0.35, _DAY_S, rng.uniform(0, 2 * math.pi)),
            (0.10, _WEEK_S, rng.uniform(0, 2 * math.pi)),
            (0.10, rng.uniform(3_600.0, 18_000.0), rng.uniform(0, 2 * math.pi)),
            (0.05, rng.uniform(1_200.0, 5_400.0), rng.uniform(0, 2 * math.pi)),
        )
        self._energy0_wh = rng.uniform(1e5, 5e7)
        self._v_nominal = rng.uniform(218.0, 234.0)
        self._pf_nominal = rng.uniform(0.88, 0.96)
        # Jitter on the interval-end energy: at most a third of the smallest interval energy, so
        # successive interval ends can never reverse.
        self._jitter_wh = 0.3 * 0.4 * self._base_w * self.profile_period_s / 3600.0

    # ------------------------------------------------------------------ time on the meter

    def meter_time(self, gateway_now: float) -> float:
        """The meter's own clock, offset from the gateway's (the collector measures this drift)."""
        return gateway_now + self.clock_offset_s

    def interval_index(self, t: float) -> int:
        """Index k of the interval (t_(k-1), t_k] that contains ``t``."""
        return math.ceil(t / self.profile_period_s - 1e-9)

    def capture_time(self, k: int) -> float:
        return k * self.profile_period_s

    # ------------------------------------------------------------------ physics

    def _noise(self, k: int, channel: str) -> float:
        digest = hashlib.blake2b(f"{self._salt}:{k}:{channel}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _integral_wh(self, t: float) -> float:
        """Closed-form integral of the power curve from the anchor to ``t``, in Wh."""

        def g(x: float) -> float:
            acc = x
            for amp, period, phase in self._terms:
                acc -= amp * period / (2 * math.pi) * math.cos(2 * math.pi * x / period + phase)
            return acc

        return self._base_w * (g(t) - g(ENERGY_ANCHOR_S)) / 3600.0

    def energy_at_boundary(self, k: int) -> int:
        """Register value (Wh) at the end of interval k."""
        t = self.capture_time(k)
        jitter = self._jitter_wh * self._noise(k, "energy")
        return int(self._energy0_wh + self._integral_wh(t) + jitter)

    def interval(self, k: int) -> Sample:
        """The profile row captured at the end of interval k."""
        return self._sample(k, self.capture_time(k), self.energy_at_boundary(k))

    def instant(self, t: float) -> Sample:
        """Instantaneous values at meter time ``t``: the in-progress interval's averages, with the
        energy register interpolated linearly so it accumulates at exactly that power."""
        k = self.interval_index(t)
        e0 = self.energy_at_boundary(k - 1)
        e1 = self.energy_at_boundary(k)
        frac = (t - self.capture_time(k - 1)) / self.profile_period_s
        energy = e0 + int((e1 - e0) * min(max(frac, 0.0), 1.0))
        return self._sample(k, t, energy)

    def _sample(self, k: int, t: float, energy_wh: int) -> Sample:
        step_wh = self.energy_at_boundary(k) - self.energy_at_boundary(k - 1)
        power_w = round(step_wh * 3600.0 / self.profile_period_s)
        pf = round(min(0.99, max(0.85, self._pf_nominal + 0.06 * (self._noise(k, "pf") - 0.5))), 3)
        va = round(power_w / pf)
        daily = 3.0 * math.sin(2 * math.pi * t / _DAY_S)
        volts = self._v_nominal + daily + 6.0 * (self._noise(k, "v") - 0.5)
        volts = round(min(240.0, max(210.0, volts)), 1)
        amps = round(va / volts, 2)
        return Sample(
            time=t,
            energy_wh=energy_wh,
            vltg_kv=round(volts / 1000.0, 4),
            crrnt_a=amps,
            pf=pf,
            kw=power_w / 1000.0,
            kva=va / 1000.0,
            load=round(100.0 * power_w / self.rated_w),
        )

    # ------------------------------------------------------------------ load profile

    def newest_index(self, now: float) -> int:
        """Index of the newest captured row at meter time ``now`` (capture time <= now)."""
        return math.floor(now / self.profile_period_s + 1e-9)

    def oldest_index(self, now: float) -> int:
        return self.newest_index(now) - self.profile_depth + 1

    def rows_between(self, start: float, end: float, now: float) -> list[Sample]:
        """Captured rows with start <= capture time <= end, limited to what the buffer holds."""
        lo = max(math.ceil(start / self.profile_period_s - 1e-9), self.oldest_index(now))
        hi = min(math.floor(end / self.profile_period_s + 1e-9), self.newest_index(now))
        return [self.interval(k) for k in range(lo, hi + 1)]

    def rows_by_entry(self, first: int, last: int, now: float) -> list[Sample]:
        """Rows by 1-based entry number (1 = oldest in the buffer); ``last`` 0 means the newest."""
        oldest = self.oldest_index(now)
        hi = self.profile_depth if last == 0 else min(last, self.profile_depth)
        return [self.interval(oldest + e - 1) for e in range(max(first, 1), hi + 1)]
