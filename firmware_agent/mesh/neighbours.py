"""Neighbour table with link metrics and the gateway's own SNR measurement (sans-IO).

Real RCPs report no per-frame noise floor, so the gateway keeps its own per-channel noise floor
(idle RSSI samples and energy-scan results) and computes SNR = RSSI − noise floor of that channel,
per frame and per link. The floor is a low percentile of recent samples, not their mean: an idle
sample that happens to land on someone's frame reads high, and a floor pulled up by it would
understate every link's SNR.

RSL in is an EWMA with factor 1/8 of received power; RSL out is what the peer reports of us in
its RSL IE; ETX = attempts / acks × 128 capped at 1024, as Wi-SUN (and wsbrd) define it, over
the last 8 frames sent.
Each link gets two classes: an SNR class (ok / marginal / low, against configured thresholds)
and the head-end dashboard colour of seed 000 (green; orange = loss or latency over 2000 ms;
red = silent, likely a power failure).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

EWMA_FACTOR = 1 / 8
ETX_SCALE = 128
ETX_MAX = 1024
#: Recent per-frame SNR samples kept per link for percentiles.
SNR_HISTORY = 64
#: ETX counts the last this many frame exchanges (a link that goes bad shows it within a few).
ETX_WINDOW = 8
#: Recent noise samples kept per channel; the floor is their NOISE_PERCENTILE-th percentile.
NOISE_HISTORY = 32
NOISE_PERCENTILE = 20


def ewma(old: float | None, sample: float, factor: float = EWMA_FACTOR) -> float:
    return sample if old is None else old + factor * (sample - old)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty list (no interpolation: a reported figure is
    always one that was measured)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats
    return ordered[int(rank) - 1]


class SnrClass(enum.Enum):
    OK = "ok"
    MARGINAL = "marginal"
    LOW = "low"
    UNKNOWN = "unknown"  # no noise floor yet


class Colour(enum.Enum):
    """Seed 000's dashboard colours for a link."""

    GREEN = "green"
    ORANGE = "orange"  # loss, or latency over the limit
    RED = "red"  # silent: likely a power failure


@dataclass(frozen=True)
class LinkThresholds:
    snr_ok_db: float = 18.0  # at or above: ok
    snr_floor_db: float = 12.0  # below: low (routing moves traffic off the link)
    silent_after_s: float = 900.0  # not heard for this long: red
    latency_limit_s: float = 2.0  # seed 000: orange over 2000 ms
    loss_etx: int = 2 * ETX_SCALE  # ETX above this (over half the frames retried or lost): orange


@dataclass
class Neighbour:
    mac: bytes
    channel: int
    rssi_dbm: int
    lqi: int
    last_heard: float
    rsl_in_dbm: float
    snr_db: float | None = None  # EWMA of per-frame SNR
    last_snr_db: float | None = None  # the latest frame's
    rsl_out_dbm: float | None = None  # the peer's RSL IE: how well it hears us
    rsl_out_at: float | None = None
    frames_heard: int = 0
    tx_attempts: int = 0
    tx_acks: int = 0
    tx_failures: int = 0  # frames given up on after all retries
    latency_s: float | None = None  # EWMA of request → answer round trips through this link
    snr_history: deque[float] = field(default_factory=lambda: deque(maxlen=SNR_HISTORY))
    #: (attempts, acked) of the last ETX_WINDOW frames sent to this neighbour.
    recent_tx: deque[tuple[int, bool]] = field(default_factory=lambda: deque(maxlen=ETX_WINDOW))

    @property
    def etx(self) -> int | None:
        """ETX × 128 over the recent frames (capped at 1024), or None before the first one.
        Recent, not lifetime: a link that was good for a month and fails now must look bad
        now, or traffic would stay on it."""
        if not self.recent_tx:
            return None
        attempts = sum(a for a, _ in self.recent_tx)
        acks = sum(1 for _, acked in self.recent_tx if acked)
        if not acks:
            return ETX_MAX
        return min(ETX_MAX, round(attempts / acks * ETX_SCALE))

    def snr_percentiles(self) -> dict[str, float] | None:
        """p10 / p50 / p90 of recent per-frame SNR (dB), or None before any."""
        if not self.snr_history:
            return None
        recent = list(self.snr_history)
        return {f"p{p}": percentile(recent, p) for p in (10, 50, 90)}

    def snr_class(self, limits: LinkThresholds) -> SnrClass:
        if self.snr_db is None:
            return SnrClass.UNKNOWN
        if self.snr_db < limits.snr_floor_db:
            return SnrClass.LOW
        if self.snr_db < limits.snr_ok_db:
            return SnrClass.MARGINAL
        return SnrClass.OK

    def colour(self, limits: LinkThresholds, now: float) -> Colour:
        if now - self.last_heard > limits.silent_after_s:
            return Colour.RED
        etx = self.etx
        if (etx is not None and etx > limits.loss_etx) or (
            self.latency_s is not None and self.latency_s > limits.latency_limit_s
        ):
            return Colour.ORANGE
        return Colour.GREEN


class NeighbourTable:
    """What the gateway knows of each neighbour it hears, plus per-channel noise floors."""

    def __init__(self, limits: LinkThresholds | None = None) -> None:
        self.limits = limits or LinkThresholds()
        self._neighbours: dict[bytes, Neighbour] = {}
        self._noise: dict[int, deque[float]] = {}

    # --- noise floor ---------------------------------------------------------------------------

    def noise_sample(self, channel: int, dbm: float) -> None:
        """An idle-RSSI sample or an energy-scan result for ``channel``."""
        self._noise.setdefault(channel, deque(maxlen=NOISE_HISTORY)).append(float(dbm))

    def noise_floor(self, channel: int) -> float | None:
        samples = self._noise.get(channel)
        return percentile(list(samples), NOISE_PERCENTILE) if samples else None

    def noise_floors(self) -> dict[int, float]:
        return {ch: percentile(list(s), NOISE_PERCENTILE) for ch, s in self._noise.items() if s}

    # --- link events ---------------------------------------------------------------------------

    def heard(self, mac: bytes, rssi_dbm: int, lqi: int, channel: int, when: float) -> Neighbour:
        """A frame from ``mac``; its SNR against this channel's floor is ``last_snr_db``."""
        nb = self._neighbours.get(mac)
        floor = self.noise_floor(channel)
        snr = None if floor is None else rssi_dbm - floor
        if nb is None:
            nb = Neighbour(mac, channel, rssi_dbm, lqi, when, float(rssi_dbm))
            self._neighbours[mac] = nb
        else:
            nb.rssi_dbm, nb.lqi, nb.channel, nb.last_heard = rssi_dbm, lqi, channel, when
            nb.rsl_in_dbm = ewma(nb.rsl_in_dbm, rssi_dbm)
        nb.last_snr_db = snr
        if snr is not None:
            nb.snr_db = ewma(nb.snr_db, snr)
            nb.snr_history.append(snr)
        nb.frames_heard += 1
        return nb

    def reported_rsl(self, mac: bytes, rsl_dbm: float, when: float) -> None:
        """The peer's RSL IE (in an ack or data frame): how strongly it receives us."""
        nb = self._neighbours.get(mac)
        if nb is not None:
            nb.rsl_out_dbm, nb.rsl_out_at = rsl_dbm, when

    def transmitted(self, mac: bytes, attempts: int, acked: bool) -> None:
        nb = self._neighbours.get(mac)
        if nb is not None:
            nb.tx_attempts += attempts
            nb.tx_acks += int(acked)
            nb.tx_failures += int(not acked)
            nb.recent_tx.append((attempts, acked))

    def round_trip(self, mac: bytes, seconds: float) -> None:
        """A request sent through ``mac`` was answered after ``seconds``."""
        nb = self._neighbours.get(mac)
        if nb is not None:
            nb.latency_s = ewma(nb.latency_s, seconds)

    # --- queries -------------------------------------------------------------------------------

    def get(self, mac: bytes) -> Neighbour | None:
        return self._neighbours.get(mac)

    def all(self) -> list[Neighbour]:
        return sorted(self._neighbours.values(), key=lambda n: n.mac)

    def rows(self, now: float) -> list[dict[str, object]]:
        """One JSON-able row per neighbour: what the diag API and hes-diag show."""
        out: list[dict[str, object]] = []
        for nb in self.all():
            out.append(
                {
                    "mac": nb.mac.hex(),
                    "channel": nb.channel,
                    "rssi_dbm": nb.rssi_dbm,
                    "lqi": nb.lqi,
                    "rsl_in_dbm": round(nb.rsl_in_dbm, 1),
                    "rsl_out_dbm": nb.rsl_out_dbm,
                    "noise_floor_dbm": self.noise_floor(nb.channel),
                    "snr_db": None if nb.snr_db is None else round(nb.snr_db, 1),
                    "snr_percentiles_db": nb.snr_percentiles(),
                    "etx": nb.etx,
                    "latency_s": nb.latency_s,
                    "frames_heard": nb.frames_heard,
                    "last_heard_s_ago": round(now - nb.last_heard, 1),
                    "snr_class": nb.snr_class(self.limits).value,
                    "colour": nb.colour(self.limits, now).value,
                }
            )
        return out
