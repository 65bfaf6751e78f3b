"""Link cost for a node's parent selection: ETX from what a node can measure about a neighbour.

Before a node has sent anything to a neighbour it only knows how well it hears it: RSL in (EWMA
of received power) and, once the neighbour's Enh-Acks have reported it, RSL out. The weaker of
the two gives a first ETX estimate:

====================================  =====================================================
RSL ≥ ``rsl_good_dbm`` (−93 dBm)       ETX 1.0 (128)
cut-off ≤ RSL < good                   linear from 1.0 up to ``etx_at_cutoff`` (3.0 = 384)
RSL < ``rsl_cutoff_dbm`` (−103 dBm)    unusable: a barely-heard node is never a parent
====================================  =====================================================

Why these numbers: on the medium's 2-FSK curve (``hil.phy``, −105 dBm sensitivity) a 127-byte
frame is lost 1 % of the time at −104 dBm and practically never above −102, i.e. about 12 dB
over the thermal floor. The 10 dB from the cut-off up to "good" is margin for interference and
fades; the slope makes two solid hops (2 × 256 rank) cheaper than one marginal hop
(256 + 3 × 256), which is what keeps a mesh off the cliff edge.

Once frames have been sent, they count too — neighbours.py's definition (attempts / acks × 128,
capped at 1024) over the last ``window`` frames, so it follows a link that goes bad instead of
averaging over its whole life, with the RSL estimate standing in for ``prior_frames`` more
frames: one lost frame makes a link dearer, a run of them puts it out of use, and a link is
never judged on a single frame. Link ETX = max(RSL estimate, that), so a lucky run of acks on a
marginal link does not make it look solid either.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from firmware_agent.mesh.neighbours import ETX_MAX, ETX_SCALE, Neighbour


@dataclass(frozen=True)
class LinkCostConfig:
    rsl_good_dbm: float = -93.0
    rsl_cutoff_dbm: float = -103.0
    etx_at_cutoff: int = 3 * ETX_SCALE
    #: How many recent frames the measured ETX covers.
    window: int = 16
    #: How many frames' worth of weight the RSL estimate has against the measured frames.
    prior_frames: int = 8
    #: Frames older than this are forgotten: a link nobody has used for a while is judged on
    #: its RSL again (a congested minute must not bar a neighbour for good).
    memory_s: float = 300.0

    def __post_init__(self) -> None:
        if self.rsl_good_dbm <= self.rsl_cutoff_dbm:
            raise ValueError(
                f"rsl_good_dbm {self.rsl_good_dbm} must be above rsl_cutoff_dbm "
                f"{self.rsl_cutoff_dbm}"
            )
        if (
            not ETX_SCALE <= self.etx_at_cutoff <= ETX_MAX
            or self.window < 1
            or self.prior_frames < 1
        ):
            raise ValueError(f"bad link cost settings: {self}")


def link_rsl(link: Neighbour) -> float:
    """The level a link works at: the weaker of RSL in and (once reported) RSL out."""
    out = link.rsl_out_dbm
    return link.rsl_in_dbm if out is None or out >= link.rsl_in_dbm else out


def rsl_etx(rsl_dbm: float, config: LinkCostConfig) -> int | None:
    """ETX × 128 estimated from a received signal level; None below the cut-off."""
    if rsl_dbm < config.rsl_cutoff_dbm:
        return None
    if rsl_dbm >= config.rsl_good_dbm:
        return ETX_SCALE
    span = config.rsl_good_dbm - config.rsl_cutoff_dbm
    below = (config.rsl_good_dbm - rsl_dbm) / span
    return round(ETX_SCALE + below * (config.etx_at_cutoff - ETX_SCALE))


@dataclass
class LinkRecord:
    """Recent transmission outcomes towards one neighbour (for the measured ETX)."""

    window: int = 8
    frames: deque[tuple[int, bool]] = field(default_factory=deque)
    consecutive_failures: int = 0
    streak_since: float = 0.0  # when the current run of failures began
    last_at: float = 0.0  # when the latest frame's outcome came

    def add(self, attempts: int, acked: bool, now: float) -> None:
        self.last_at = now
        self.frames.append((attempts, acked))
        if len(self.frames) > self.window:
            self.frames.popleft()
        if acked:
            self.consecutive_failures = 0
        else:
            if not self.consecutive_failures:
                self.streak_since = now
            self.consecutive_failures += 1

    def clear(self) -> None:
        self.frames.clear()
        self.consecutive_failures = 0

    def etx(self) -> int | None:
        """attempts / acks × 128 over the window, capped at 1024; None before any frame."""
        if not self.frames:
            return None
        attempts = sum(a for a, _ in self.frames)
        acks = sum(1 for _, ok in self.frames if ok)
        if not acks:
            return ETX_MAX
        return min(ETX_MAX, round(attempts / acks * ETX_SCALE))


def link_etx(
    rsl_dbm: float | None, record: LinkRecord | None, config: LinkCostConfig, now: float
) -> int | None:
    """The ETX × 128 a node uses for a link at time ``now``, or None when the link is not
    usable (not heard, or heard below the cut-off)."""
    if rsl_dbm is None:
        return None
    estimate = rsl_etx(rsl_dbm, config)
    if estimate is None or record is None or not record.frames:
        return estimate
    if now - record.last_at > config.memory_s:
        record.clear()
        return estimate
    attempts = sum(a for a, _ in record.frames) * ETX_SCALE + config.prior_frames * estimate
    acks = sum(1 for _, ok in record.frames if ok) + config.prior_frames
    return max(estimate, min(ETX_MAX, round(attempts / acks)))
