"""Read one meter: associate, clock, registers, instantaneous values, profile rows, release.

It drives ``DlmsSession`` exchanges through a ``MeterLink`` with ``drive.ExchangeDriver``
(resending ``retry_frame()`` on timeout, counting round trips). Anything that goes wrong
surfaces as one ``MeterReadError`` naming the meter and the stage, with the typed DLMS or link
error as its cause and the last frame the meter sent (``payload``), so the scheduler can
quarantine garbage and move on to the next meter.

What a read asks for is a ``ReadPlan``: the scheduler's interval read (energy register and the
profile rows after the newest one already spooled), the daily register read, an on-demand read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..clock import Clock
from ..config import MeterConfig
from . import obis
from .catchup import profile_range
from .drive import ExchangeDriver, release_quietly
from .link import LinkError, MeterLink
from .records import (
    Column,
    Reading,
    RecordError,
    iso_utc,
    reading_from_register,
    reading_from_row,
    reading_from_values,
)
from .session import (
    DlmsError,
    DlmsSession,
    MalformedReply,
    plain_session,
)
from .session import SessionFactory as SessionFactory  # re-exported: the agent imports it here
from .wrapper import WrapperError

INSTANTANEOUS = "instantaneous"
"""The ``source`` of a reading that gathers the instantaneous registers (V, I, P, S, PF, load)."""
INSTANTANEOUS_REGISTERS = (
    obis.VOLTAGE_L1,
    obis.CURRENT_L1,
    obis.ACTIVE_POWER_IMPORT,
    obis.APPARENT_POWER,
    obis.POWER_FACTOR,
    obis.LOAD_PERCENT,
)


class MeterReadError(Exception):
    """A read of one meter failed at ``stage``; ``cause`` is the DlmsError/LinkError/RecordError.
    ``payload`` is the last frame the meter sent in this read (the garbage, when it is garbage)."""

    def __init__(
        self, meter_id: str, stage: str, cause: Exception, payload: bytes | None = None
    ) -> None:
        self.meter_id = meter_id
        self.stage = stage
        self.cause = cause
        self.payload = payload
        super().__init__(f"meter {meter_id}: {stage}: {type(cause).__name__}: {cause}")

    @property
    def malformed(self) -> bool:
        """The meter answered, but with something we cannot parse ("Malformed Payload")."""
        return isinstance(self.cause, MalformedReply | RecordError | WrapperError)


@dataclass
class MeterCache:
    """What a meter's profile looks like (columns with scalers, capture period). Keep one per
    meter between reads to save round trips. Capture objects are re-read every time."""

    columns: dict[str, tuple[Column, ...]] = field(default_factory=dict)
    capture_period_s: dict[str, int] = field(default_factory=dict)
    scalers: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadPlan:
    """What one read asks of a meter. The clock is always read (drift, and the profile range is
    computed on the meter's clock). ``profile_since``: the newest capture time already spooled
    (POSIX s); rows after it are read, at most ``max_intervals``; None: the last
    ``profile_rows``."""

    registers: tuple[str, ...] = (obis.ACTIVE_ENERGY_IMPORT,)
    profile: str | None = obis.LOAD_PROFILE
    profile_rows: int = 4
    profile_since: float | None = None
    max_intervals: int = 96
    instantaneous: bool = False
    daily: bool = False  # the daily register read (the scheduler runs its drift check on it)


@dataclass(frozen=True)
class MeterRead:
    meter_id: str
    readings: tuple[Reading, ...]
    meter_time: str
    clock_drift_s: float  # meter clock minus gateway clock (positive: meter runs ahead)
    energy_wh: float | None  # active energy import, if the plan read it
    started_at: float  # gateway wall clock when the read began
    timings_s: dict[str, float]  # stage -> seconds on the monotonic clock, plus "total"
    round_trips: int
    warnings: tuple[str, ...] = ()
    profile_newest: float | None = None  # newest capture time among the profile rows read
    profile_left_behind: int = 0  # missed intervals left for later reads (catch-up cap)
    stale_replies: int = 0  # late replies to earlier requests, discarded (drive.py)


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
    plan: ReadPlan | None = None,
    session_factory: SessionFactory | None = None,
) -> MeterRead:
    """One complete read; raises MeterReadError (never a bare gurux/socket exception).
    Without a ``plan``: the energy register and the last ``profile_rows`` rows of ``profile``."""
    if plan is None:
        plan = ReadPlan(profile=profile if profile_rows > 0 else None, profile_rows=profile_rows)
    try:
        session = (session_factory or plain_session)(meter)
    except DlmsError as exc:
        raise MeterReadError(meter.id, "associate", exc) from exc
    cache = cache if cache is not None else MeterCache()
    driver = ExchangeDriver(link, timeout, retries)
    timings: dict[str, float] = {}
    started_at = clock.now()
    t_start = clock.monotonic()
    stage = "associate"
    warnings: list[str] = []
    energy: float | None = None
    newest: float | None = None
    left_behind = 0

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
        readings: list[Reading] = []
        for code in plan.registers:
            col = await _register_column(driver, session, cache, code)
            raw = await driver.run(session.read_value(code))
            reading = reading_from_register(meter.id, col, raw, meter_dt, clock.now())
            readings.append(reading)
            if code == obis.ACTIVE_ENERGY_IMPORT:
                energy = reading.values[code]
        t = lap("energy", t)

        if plan.instantaneous:
            stage = "instantaneous"
            values: list[tuple[Column, object]] = []
            for code in INSTANTANEOUS_REGISTERS:
                col = await _register_column(driver, session, cache, code)
                values.append((col, await driver.run(session.read_value(code))))
            readings.append(
                reading_from_values(meter.id, INSTANTANEOUS, values, meter_dt, clock.now())
            )
            t = lap("instantaneous", t)

        stage = "profile"
        if plan.profile is not None:
            rows, left_behind = await _read_profile(
                driver, session, cache, meter.id, plan, plan.profile, meter_dt, clock
            )
            readings += rows
            if rows:
                newest = max(datetime.fromisoformat(r.time).timestamp() for r in rows)
        t = lap("profile", t)

        stage = "release"
        try:
            await driver.run(session.release())
        except (DlmsError, LinkError) as exc:
            warnings.append(f"release failed: {exc}")
        lap("release", t)
    except (DlmsError, LinkError, RecordError) as exc:
        if isinstance(exc, DlmsError) and session.associated and stage != "release":
            await release_quietly(link, session)
        payload = driver.last_reply
        if isinstance(exc, MalformedReply):
            payload = bytes.fromhex(exc.frame_hex)
        raise MeterReadError(meter.id, stage, exc, payload) from exc
    timings["total"] = clock.monotonic() - t_start
    return MeterRead(
        meter_id=meter.id,
        readings=tuple(readings),
        meter_time=iso_utc(meter_dt),
        clock_drift_s=drift,
        energy_wh=energy,
        started_at=started_at,
        timings_s=timings,
        round_trips=driver.round_trips,
        warnings=tuple(warnings),
        profile_newest=newest,
        profile_left_behind=left_behind,
        stale_replies=driver.stale,
    )


async def _register_column(
    driver: ExchangeDriver, session: DlmsSession, cache: MeterCache, code: str
) -> Column:
    if code not in cache.scalers:
        cache.scalers[code] = await driver.run(session.read_scaler_unit(code))
    scaler, unit = cache.scalers[code]
    return Column(code, obis.IC_REGISTER, 2, scaler, unit)


async def _read_profile(
    driver: ExchangeDriver,
    session: DlmsSession,
    cache: MeterCache,
    meter_id: str,
    plan: ReadPlan,
    profile: str,
    meter_now: datetime,
    clock: Clock,
) -> tuple[list[Reading], int]:
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
        if not isinstance(period, int) or isinstance(period, bool) or period <= 0:
            raise RecordError(f"capture period of {profile} is {period!r}")
        cache.capture_period_s[profile] = period
    period = cache.capture_period_s[profile]
    span = profile_range(
        plan.profile_since,
        meter_now,
        period,
        default_rows=plan.profile_rows,
        max_intervals=plan.max_intervals,
    )
    if span is None:
        return [], 0
    table = await driver.run(session.read_rows_by_range(profile, span.start, span.end))
    arrival = clock.now()
    rows = [reading_from_row(meter_id, profile, columns, row, arrival) for row in table]
    return rows, span.left_behind
