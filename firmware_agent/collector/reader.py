"""Read one meter: associate, clock, energy register, recent load-profile rows, release.

The only module here that awaits: it drives ``DlmsSession`` exchanges through a ``MeterLink``,
retrying a request on timeout. Anything that goes wrong surfaces as one ``MeterReadError`` naming
the meter and the stage, with the typed DLMS or link error as its cause, so the agent's polling
loop logs it and moves on to the next meter.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from ..clock import Clock
from ..config import MeterConfig
from . import obis
from .link import LinkError, LinkTimeout, MeterLink
from .records import Column, Reading, RecordError, reading_from_register, reading_from_row
from .session import DlmsError, DlmsSession, Exchange

T = TypeVar("T")

RELEASE_TIMEOUT_S = 1.0


class MeterReadError(Exception):
    """A read of one meter failed at ``stage``; ``cause`` is the DlmsError/LinkError/RecordError."""

    def __init__(self, meter_id: str, stage: str, cause: Exception) -> None:
        self.meter_id = meter_id
        self.stage = stage
        self.cause = cause
        super().__init__(f"meter {meter_id}: {stage}: {type(cause).__name__}: {cause}")


@dataclass
class MeterCache:
    """What a meter's profile looks like (columns with scalers, capture period). Keep one per
    meter between reads to save round trips. Capture objects are re-read every time."""

    columns: dict[str, tuple[Column, ...]] = field(default_factory=dict)
    capture_period_s: dict[str, int] = field(default_factory=dict)
    scalers: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class MeterRead:
    meter_id: str
    readings: tuple[Reading, ...]
    meter_time: str
    clock_drift_s: float  # meter clock minus gateway clock (positive: meter runs ahead)
    energy_wh: float
    started_at: float  # gateway wall clock when the read began
    timings_s: dict[str, float]  # stage -> seconds on the monotonic clock, plus "total"
    round_trips: int
    warnings: tuple[str, ...] = ()


class _Driver:
    def __init__(self, link: MeterLink, timeout: float, retries: int) -> None:
        self.link = link
        self.timeout = timeout
        self.retries = retries
        self.round_trips = 0

    async def run(self, exchange: Exchange[T], timeout: float | None = None) -> T:
        frame: bytes | None = exchange.request
        while frame is not None:
            reply = await self._request(frame, self.timeout if timeout is None else timeout)
            frame = exchange.feed(reply)
        return exchange.result

    async def _request(self, frame: bytes, timeout: float) -> bytes:
        for attempt in range(self.retries + 1):
            self.round_trips += 1
            try:
                return await self.link.request(frame, timeout)
            except LinkTimeout:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")


async def read_meter(
    link: MeterLink,
    meter: MeterConfig,
    clock: Clock,
    *,
    profile_rows: int = 4,
    timeout: float = 5.0,
    retries: int = 2,
    cache: MeterCache | None = None,
    profile: str = obis.LOAD_PROFILE,
) -> MeterRead:
    """One complete read; raises MeterReadError (never a bare gurux/socket exception)."""
    if meter.security.level != "none":
        raise MeterReadError(
            meter.id, "associate", DlmsError(f"security level {meter.security.level!r} unsupported")
        )
    cache = cache if cache is not None else MeterCache()
    session = DlmsSession(meter.client_address, meter.server_address)
    driver = _Driver(link, timeout, retries)
    timings: dict[str, float] = {}
    started_at = clock.now()
    t_start = clock.monotonic()
    stage = "associate"
    warnings: list[str] = []

    def lap(name: str, since: float) -> float:
        now = clock.monotonic()
        timings[name] = now - since
        return now

    try:
        t = clock.monotonic()
        await driver.run(session.associate())
        t = lap("associate", t)

        stage = "clock"
        before = clock.now()
        meter_dt = await driver.run(session.read_clock())
        after = clock.now()
        drift = meter_dt.timestamp() - (before + after) / 2
        t = lap("clock", t)

        stage = "energy"
        energy_col = await _register_column(driver, session, cache, obis.ACTIVE_ENERGY_IMPORT)
        raw = await driver.run(session.read_value(obis.ACTIVE_ENERGY_IMPORT))
        energy = reading_from_register(meter.id, energy_col, raw, meter_dt, clock.now())
        readings: list[Reading] = [energy]
        t = lap("energy", t)

        stage = "profile"
        if profile_rows > 0:
            readings += await _read_profile(
                driver, session, cache, meter.id, profile, meter_dt, profile_rows, clock
            )
        t = lap("profile", t)

        stage = "release"
        try:
            await driver.run(session.release())
        except (DlmsError, LinkError) as exc:
            warnings.append(f"release failed: {exc}")
        lap("release", t)
    except (DlmsError, LinkError, RecordError) as exc:
        if isinstance(exc, DlmsError) and session.associated and stage != "release":
            await _abandon(link, session)
        raise MeterReadError(meter.id, stage, exc) from exc
    timings["total"] = clock.monotonic() - t_start
    return MeterRead(
        meter_id=meter.id,
        readings=tuple(readings),
        meter_time=energy.time,
        clock_drift_s=drift,
        energy_wh=energy.values[obis.ACTIVE_ENERGY_IMPORT],
        started_at=started_at,
        timings_s=timings,
        round_trips=driver.round_trips,
        warnings=tuple(warnings),
    )


async def _abandon(link: MeterLink, session: DlmsSession) -> None:
    """Best-effort release after a failed read so the meter does not keep a stale association."""
    with contextlib.suppress(DlmsError, LinkError):
        await _Driver(link, RELEASE_TIMEOUT_S, 0).run(session.release())


async def _register_column(
    driver: _Driver, session: DlmsSession, cache: MeterCache, code: str
) -> Column:
    if code not in cache.scalers:
        cache.scalers[code] = await driver.run(session.read_scaler_unit(code))
    scaler, unit = cache.scalers[code]
    return Column(code, obis.IC_REGISTER, 2, scaler, unit)


async def _read_profile(
    driver: _Driver,
    session: DlmsSession,
    cache: MeterCache,
    meter_id: str,
    profile: str,
    meter_now: datetime,
    rows: int,
    clock: Clock,
) -> list[Reading]:
    # Capture objects first: gurux needs them to decode the buffer, and they tell us the columns.
    capture = await driver.run(session.read_capture_objects(profile))
    columns: list[Column] = []
    for c in capture:
        if c.class_id in (obis.IC_REGISTER, 4, 5) and c.attribute == 2:
            columns.append(await _register_column(driver, session, cache, c.obis))
        else:
            columns.append(Column(c.obis, c.class_id, c.attribute))
    cache.columns[profile] = tuple(columns)
    if profile not in cache.capture_period_s:
        period = await driver.run(session.read_value(profile, obis.IC_PROFILE_GENERIC, 4))
        if not isinstance(period, int) or period <= 0:
            raise RecordError(f"capture period of {profile} is {period!r}")
        cache.capture_period_s[profile] = period
    period = cache.capture_period_s[profile]
    end_s = math.floor(meter_now.timestamp() / period) * period
    start_s = end_s - (rows - 1) * period
    start = datetime.fromtimestamp(start_s, UTC)
    end = datetime.fromtimestamp(end_s, UTC)
    table = await driver.run(session.read_rows_by_range(profile, start, end))
    arrival = clock.now()
    return [reading_from_row(meter_id, profile, columns, row, arrival) for row in table]
