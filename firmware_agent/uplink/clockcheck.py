"""Is the gateway's clock off by more than five minutes? (sans-IO)

Why: seed 000's FAQ: certificate validation fails when a gateway's clock drifts more than five
minutes from the head end's, and the operator must be told it is the clock, not the certificate.

What we compare with, and why it is sound: the head end stamps each command it sends with its own
clock (MQTT v5 user property ``sent-at``, RFC 3339 UTC or epoch seconds; the CIM Header's
Timestamp is fed in the same way). For a message received at local time ``r`` and sent at
head-end time ``s``, ``r - s = transit + offset`` with ``transit >= 0``. So every sample is an
upper bound of our offset, and the smallest recent sample is the tightest one (the NTP-style
minimum filter). The gateway connects with a clean session that expires at once, so the broker
never holds commands for it and a live command's transit is well under a second; retained
messages are not used. A sample below ``-limit`` proves our clock is behind by more than the
limit (nothing arrives before it is sent); a minimum above ``+limit`` over the window means it is
ahead. A TLS verify error "certificate is not yet valid" or "has expired" for the broker's own
certificate is reported separately (mqtt.py) with the same advice, because then no command can
arrive at all.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass

DEFAULT_LIMIT_S = 300.0
DEFAULT_WINDOW = 8


@dataclass(frozen=True)
class SkewVerdict:
    offset_s: float  # our clock minus the reference (upper bound; see the module docstring)
    skewed: bool
    source: str
    message: str


def parse_reference_time(value: str | bytes) -> float:
    """``sent-at`` as RFC 3339 (``2024-01-02T03:04:05.000Z``) or epoch seconds → epoch seconds.
    Raises ``ValueError`` naming the value."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"sent-at {text!r}: not RFC 3339 or epoch seconds") from None
    if t.tzinfo is None:
        raise ValueError(f"sent-at {text!r}: no time zone")
    return t.timestamp()


class ClockSkewCheck:
    """Keeps the last ``window`` samples and says whether the clock is off by more than
    ``limit_s``. ``observe`` returns a verdict only when the state changes (skewed ↔ fine),
    so the caller logs once per episode."""

    def __init__(self, limit_s: float = DEFAULT_LIMIT_S, window: int = DEFAULT_WINDOW) -> None:
        if limit_s <= 0 or window < 1:
            raise ValueError("limit_s must be > 0 and window >= 1")
        self.limit_s = limit_s
        self._samples: deque[float] = deque(maxlen=window)
        self._skewed = False
        self.last: SkewVerdict | None = None

    @property
    def skewed(self) -> bool:
        return self._skewed

    @property
    def offset_s(self) -> float | None:
        """Best estimate (the smallest recent sample), or None before any sample."""
        return min(self._samples) if self._samples else None

    def observe(self, reference: float, local: float, source: str) -> SkewVerdict | None:
        self._samples.append(local - reference)
        best = min(self._samples)
        newest = self._samples[-1]
        if newest < -self.limit_s:
            offset, skewed = newest, True  # a message from the future: certainly behind
        else:
            offset, skewed = best, best > self.limit_s  # every recent sample says: ahead
        if skewed:
            way = "behind" if offset < 0 else "ahead of"
            msg = (
                f"system clock off: {abs(offset):.0f} s {way} the head end's clock "
                f"(from {source}; limit {self.limit_s:.0f} s): TLS certificate validation "
                f"will fail, check NTP"
            )
        else:
            msg = f"system clock within {self.limit_s:.0f} s of the head end's ({source})"
        verdict = SkewVerdict(offset, skewed, source, msg)
        changed = skewed != self._skewed or self.last is None
        self._skewed = skewed
        self.last = verdict
        return verdict if changed else None
