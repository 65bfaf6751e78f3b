"""Meter ping: the lightest DLMS proof of life.

An ICMPv6 echo proves the node's radio, not its meter. The cheapest thing that proves the DLMS
side answers is the public client's association (wPort 16, lowest security, no keys, so it
works for suite 0 meters too and spends no invocation counter): AARQ -> AARE. The round trip is
that one exchange's; the release (RLRQ) after it is a courtesy so the meter frees the
association, sent with a short timeout and never counted against the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clock import Clock, SystemClock
from ..config import MeterConfig
from .drive import release_quietly, run_exchange
from .link import LinkError, MeterLink
from .session import DlmsError, DlmsSession

PUBLIC_CLIENT = 16
RELEASE_WAIT_S = 0.5
"""How long the courtesy release may wait, at most (less when the ping's timeout is shorter)."""


@dataclass(frozen=True)
class PingResult:
    meter_id: str
    reachable: bool
    round_trip_s: float | None = None  # AARQ -> AARE on the monotonic clock; None: no answer
    hops: int | None = None  # on the preferred mesh path, filled in by whoever knows the mesh
    error: str | None = None  # why not reachable: the link's or the DLMS error, named


async def ping_meter(
    link: MeterLink,
    meter: MeterConfig,
    timeout_s: float,
    *,
    clock: Clock | None = None,
) -> PingResult:
    """Associate as the public client and release. Never raises for the meter's or the link's
    failures: silence, garbage and refusals become an unreachable result naming the error.
    Hold the meter's lock around it (the collector's ``exclusive``): frames of two exchanges
    must not interleave on one link."""
    if timeout_s <= 0:
        raise ValueError(f"ping timeout must be positive, got {timeout_s}")
    clock = clock if clock is not None else SystemClock()
    session = DlmsSession(PUBLIC_CLIENT, meter.server_address)
    start = clock.monotonic()
    try:
        await run_exchange(link, session.associate(), timeout_s)
    except (LinkError, DlmsError) as exc:
        return PingResult(meter.id, False, error=f"{type(exc).__name__}: {exc}")
    round_trip = clock.monotonic() - start
    # the meter answered the AARQ; a lost RLRE changes nothing
    await release_quietly(link, session, min(RELEASE_WAIT_S, timeout_s))
    return PingResult(meter.id, True, round_trip)
