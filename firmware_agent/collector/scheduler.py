"""The collector's schedules: interval reads, daily registers, catch-up, retries, on-demand reads.

What a utility expects of it, and how:

- Every meter reads at a stable minute of the interval (an offset from a hash of its id) plus a
  little random jitter, so a round is spread over the whole interval (no top-of-hour surge on the
  mesh) and a meter reads at about the same time every interval.
- A gateway-wide limit on reads in progress (``max_concurrent_reads``); an on-demand read waits
  for the next free slot ahead of every queued interval read.
- A failed read is retried within its interval with exponential backoff and jitter; a retry that
  would fall after the next slot is left to that slot.
- Catch-up: each meter's newest capture time already spooled is kept (``ProfileMarks``); a read
  asks for the rows after it (capped), so an outage of gateway or meter leaves no gap and no
  duplicates. The mark moves only after the spool committed the rows.
- Daily register reads at ``daily_read_at`` (UTC) with the clock drift check.
- Per-meter isolation: every meter has its own loop and every failure is caught and counted; a
  hung read is bounded by a timeout.
- Garbage ("Malformed Payload") is quarantined with its hex; a desynchronised or replayed
  security counter becomes one "MAC Fail" alarm per episode; DLMS errors are reported by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from firmware_agent.clock import Clock
from firmware_agent.collector import obis
from firmware_agent.collector.catchup import ProfileMarks
from firmware_agent.collector.link import LinkError, LinkTimeout, MeterLink
from firmware_agent.collector.quarantine import MALFORMED_PAYLOAD, Quarantine
from firmware_agent.collector.reader import (
    MeterCache,
    MeterRead,
    MeterReadError,
    ReadPlan,
    read_meter,
)
from firmware_agent.collector.records import (
    ALARM_CLOCK_DRIFT,
    ALARM_MAC_FAIL,
    Alarm,
    RecordError,
    iso_utc,
)
from firmware_agent.collector.session import (
    AssociationRejected,
    ConfirmedServiceError,
    DataAccessError,
    ExceptionResponse,
    MalformedReply,
    SessionFactory,
)
from firmware_agent.collector.wrapper import WrapperError
from firmware_agent.config import CollectorConfig, Config, MeterConfig
from firmware_agent.spool import Priority, Spool, SpoolError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

MAC_FAIL = "MAC Fail"
"""The seed 000 name of a frame whose tag or counter does not check out."""
# The security layer's errors, matched by class name (and their subclasses) so the scheduler
# needs no import of the ciphering module: a missing one must not stop plain reads.
MAC_FAIL_ERRORS = frozenset({"MacFailure", "ReplayedFrame", "CounterDesync"})

# What an on-demand read can ask for.
WHAT_INTERVAL = "interval"  # energy register and the profile rows not yet spooled
WHAT_REGISTERS = "registers"  # the daily registers (billing values) and the clock
WHAT_INSTANTANEOUS = "instantaneous"  # V, I, P, S, PF, load now
WHAT_ALL = "all"
WHATS = (WHAT_INTERVAL, WHAT_REGISTERS, WHAT_INSTANTANEOUS, WHAT_ALL)

CATCH_UP_READS_PER_SLOT = 4  # follow-up reads in one slot while rows are still left behind
READ_DEADLINE_FACTOR = 20  # a whole read may take this many (timeout x attempts) at most


class UnknownMeter(LookupError):
    """``read_now`` for a meter id that is not configured."""


class ReadBusy(RuntimeError):
    """Raised by ``read_now`` when the collector is not running."""


def state_path(config: Config) -> Path:
    """Where the collector keeps its state (quarantine, catch-up marks): ``collector.state_file``,
    or ``collector.sqlite`` next to the spool."""
    return config.collector.state_file or config.spool.path.with_name("collector.sqlite")


def meter_offset(meter_id: str, interval_s: float) -> float:
    """A stable offset in [0, interval) from the meter id: same minute every interval, spread
    evenly over the interval across meters (a hash, not the rng: stable across restarts)."""
    h = int.from_bytes(hashlib.sha256(meter_id.encode()).digest()[:8], "big")
    return h / 2**64 * interval_s


def next_slot(now: float, offset: float, interval_s: float) -> float:
    """The first time >= ``now`` of the form k x interval + offset."""
    k = (now - offset) // interval_s
    slot = k * interval_s + offset
    return slot if slot >= now else slot + interval_s


def backoff_s(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Retry delay after ``failures`` consecutive failures: base x 2^(n-1), capped, +-25 %."""
    delay = min(cap, base * float(2 ** max(0, failures - 1)))
    return delay * rng.uniform(0.75, 1.25)


def daily_due(now: float, last_daily_day: str | None, at_hhmm: str) -> str | None:
    """The UTC day whose daily read is due at ``now`` (it is past HH:MM and that day has not
    been read yet), or None."""
    dt = datetime.fromtimestamp(now, UTC)
    hour, minute = (int(x) for x in at_hhmm.split(":"))
    if (dt.hour, dt.minute) < (hour, minute):
        return None
    day = dt.date().isoformat()
    return None if last_daily_day == day else day


def error_name(cause: BaseException) -> str:
    """The short name an engineer searches for: the DLMS name, "MAC Fail", "Malformed Payload"."""
    if is_mac_fail(cause):
        return MAC_FAIL
    if isinstance(cause, MalformedReply | RecordError | WrapperError):
        return MALFORMED_PAYLOAD
    if isinstance(cause, ConfirmedServiceError):
        return f"{cause.service}: {cause.error}"
    if isinstance(cause, DataAccessError):
        return cause.result
    if isinstance(cause, ExceptionResponse):
        return cause.service_error
    if isinstance(cause, AssociationRejected):
        return f"association {cause.result}: {cause.diagnostic}"
    if isinstance(cause, LinkTimeout | TimeoutError):
        return "timeout"
    if isinstance(cause, LinkError):
        return "link error"
    return type(cause).__name__


def is_mac_fail(cause: BaseException) -> bool:
    return any(c.__name__ in MAC_FAIL_ERRORS for c in type(cause).__mro__)


def quarantine_reason(cause: BaseException) -> str:
    if isinstance(cause, MalformedReply):
        return cause.reason.split(":", 1)[0]
    if isinstance(cause, WrapperError):
        return f"wrapper-{cause.reason}"
    return type(cause).__name__


@dataclass
class MeterStatus:
    meter_id: str
    reads_ok: int = 0
    reads_failed: int = 0
    readings: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    # When the last good read began: the meter is known powered from then on (a reply sent
    # before a last gasp can arrive after it, so the end of the read proves less).
    last_success_started: float | None = None
    last_error: str | None = None
    last_error_name: str | None = None  # DLMS name, "MAC Fail", "Malformed Payload", "timeout"
    last_duration_s: float | None = None
    clock_drift_s: float | None = None
    consecutive_failures: int = 0
    quarantined: int = 0
    mac_fail: bool = False  # in a MAC Fail episode (alarm sent; ends with the next good read)
    on_demand: int = 0
    catch_up_rows: int = 0  # rows read beyond the newest spooled one after a gap
    last_daily: str | None = None  # UTC day of the last daily register read
    next_read_at: float | None = None

    @property
    def state(self) -> str:
        if self.last_attempt is None:
            return "pending"
        return "ok" if self.last_error is None else "failing"


class _Slots:
    """A counting semaphore whose waiters are served by priority (lower first), then FIFO."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int) -> None:
        while self._waiters and self._waiters[0][2].done():  # cancelled waiters
            heapq.heappop(self._waiters)
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())


@dataclass
class _MeterState:
    cache: MeterCache = field(default_factory=MeterCache)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Collector:
    """Reads every configured meter on its schedule and spools the readings and alarms."""

    def __init__(
        self,
        meters: tuple[MeterConfig, ...],
        link_for: Callable[[MeterConfig], MeterLink],
        spool: Spool,
        clock: Clock,
        cfg: CollectorConfig,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
        *,
        quarantine: Quarantine | None = None,
        marks: ProfileMarks | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.meters = meters
        self.by_id = {m.id: m for m in meters}
        self.link_for = link_for
        self.spool = spool
        self.clock = clock
        self.cfg = cfg
        self.rng = rng
        self.sleep = sleep
        # Without a state file the collector still works; its marks then live for one run.
        self.quarantine = quarantine if quarantine is not None else Quarantine(":memory:", clock)
        self.marks = marks if marks is not None else ProfileMarks(":memory:")
        self.session_factory = session_factory
        self.status = {m.id: MeterStatus(m.id) for m in meters}
        self._state = {m.id: _MeterState() for m in meters}
        self._slots = _Slots(cfg.max_concurrent_reads)
        self.readings_total = 0
        self.alarms_total = 0

    @property
    def _caches(self) -> dict[str, MeterCache]:
        return {k: v.cache for k, v in self._state.items()}

    # ---------------------------------------------------------------- schedules

    async def run(self) -> None:
        """Run every meter's loop until cancelled."""
        tasks = [
            asyncio.create_task(self._meter_loop(m), name=f"meter-{m.id}") for m in self.meters
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _meter_loop(self, meter: MeterConfig) -> None:
        interval = self.cfg.interval_s
        offset = meter_offset(meter.id, interval)
        status = self.status[meter.id]
        last_slot = -float("inf")
        while True:
            # Never twice in one slot, even when a read takes no time (virtual time).
            slot = next_slot(max(self.clock.now(), last_slot + 1e-3), offset, interval)
            last_slot = slot
            due = slot + self.rng.uniform(0, self.cfg.jitter_s)
            status.next_read_at = due
            await self._sleep_until(due)
            await self._slot_reads(meter, deadline=slot + interval)

    async def _slot_reads(self, meter: MeterConfig, deadline: float) -> None:
        """One slot's read, its retries with backoff, and catch-up follow-ups."""
        status = self.status[meter.id]
        failures = 0
        follow_ups = 0
        while True:
            result = await self._read(meter, Priority.INTERVAL, self._plan(meter, WHAT_INTERVAL))
            if result is not None:
                failures = 0
                if result.profile_left_behind > 0 and follow_ups < CATCH_UP_READS_PER_SLOT:
                    follow_ups += 1
                    continue
                return
            failures += 1
            delay = backoff_s(
                failures, self.cfg.retry_backoff_base_s, self.cfg.retry_backoff_cap_s, self.rng
            )
            if self.clock.now() + delay >= deadline:
                return  # the next slot reads it
            status.next_read_at = self.clock.now() + delay
            await self.sleep(delay)

    async def _sleep_until(self, t: float) -> None:
        delay = t - self.clock.now()
        if delay > 0:
            await self.sleep(delay)

    def _plan(self, meter: MeterConfig, what: str) -> ReadPlan:
        cfg = self.cfg
        since = self.marks.newest(meter.id, obis.LOAD_PROFILE)
        registers: tuple[str, ...] = (obis.ACTIVE_ENERGY_IMPORT,)
        daily = what in (WHAT_REGISTERS, WHAT_ALL) or (
            what == WHAT_INTERVAL
            and daily_due(self.clock.now(), self.status[meter.id].last_daily, cfg.daily_read_at)
            is not None
        )
        if daily:
            registers = tuple(dict.fromkeys((*registers, *cfg.daily_registers)))
        return ReadPlan(
            registers=registers,
            profile=obis.LOAD_PROFILE if what in (WHAT_INTERVAL, WHAT_ALL) else None,
            profile_rows=cfg.profile_rows,
            profile_since=since,
            max_intervals=cfg.catch_up_max_intervals,
            instantaneous=what in (WHAT_INSTANTANEOUS, WHAT_ALL),
            daily=daily,
        )

    # ---------------------------------------------------------------- on demand

    async def read_now(self, meter_id: str, what: str = WHAT_INTERVAL) -> MeterRead:
        """Read one meter now, ahead of every queued interval read; readings are spooled at
        Priority.ON_DEMAND. Raises UnknownMeter, ValueError (bad ``what``) or MeterReadError."""
        meter = self.by_id.get(meter_id)
        if meter is None:
            raise UnknownMeter(f"no meter {meter_id!r} is configured")
        if what not in WHATS:
            raise ValueError(f"what must be one of {', '.join(WHATS)}, got {what!r}")
        self.status[meter_id].on_demand += 1
        errors: list[MeterReadError] = []
        result = await self._read(meter, Priority.ON_DEMAND, self._plan(meter, what), errors)
        if result is None:
            raise errors[0]
        return result

    # ---------------------------------------------------------------- one read

    async def read_once(self, meter: MeterConfig) -> int:
        """Read one meter now (interval plan) and spool it; returns the number of readings."""
        result = await self._read(meter, Priority.INTERVAL, self._plan(meter, WHAT_INTERVAL))
        return 0 if result is None else len(result.readings)

    @contextlib.asynccontextmanager
    async def exclusive(self, meter_id: str) -> AsyncIterator[MeterConfig]:
        """The meter to oneself for an operation that is not a read (security reset, firmware):
        an on-demand gateway slot, then the meter's lock, in the same order reads take them."""
        meter = self.by_id.get(meter_id)
        if meter is None:
            raise UnknownMeter(meter_id)
        async with self._slots.slot(0), self._state[meter_id].lock:
            yield meter

    async def _read(
        self,
        meter: MeterConfig,
        priority: Priority,
        plan: ReadPlan,
        errors: list[MeterReadError] | None = None,
    ) -> MeterRead | None:
        """One read under the meter's lock and a gateway slot; never raises (isolation).
        Returns None on failure (and appends the error to ``errors`` when given)."""
        state = self._state[meter.id]
        status = self.status[meter.id]
        # The gateway slot first, then the meter: an on-demand read overtakes even this meter's
        # own queued interval read, and whoever holds a meter's lock already holds a slot (so
        # lock waits never block a slot holder: no deadlock).
        async with self._slots.slot(0 if priority == Priority.ON_DEMAND else 1), state.lock:
            status.last_attempt = self.clock.now()
            started = self.clock.monotonic()
            try:
                async with asyncio.timeout(self._read_deadline()):
                    result = await read_meter(
                        self.link_for(meter),
                        meter,
                        self.clock,
                        timeout=self.cfg.timeout_s,
                        retries=self.cfg.retries,
                        cache=state.cache,
                        plan=plan,
                        session_factory=self.session_factory,
                    )
                self._commit(meter, result, plan, priority)
            except MeterReadError as exc:
                self._failed(meter, exc)
                if errors is not None:
                    errors.append(exc)
                return None
            except TimeoutError as exc:
                err = MeterReadError(meter.id, "read", LinkTimeout(f"read hung: {exc}"))
                self._failed(meter, err)
                if errors is not None:
                    errors.append(err)
                return None
            except SpoolError as exc:
                # The spool is full of more urgent records (or failing): the readings were not
                # kept, and the catch-up mark did not move, so a later read fetches them again.
                err = MeterReadError(meter.id, "spool", exc)
                log.warning("readings of meter %s not spooled: %s", meter.id, exc)
                self._failed(meter, err)
                if errors is not None:
                    errors.append(err)
                return None
            except Exception as exc:  # per-meter isolation: one bad meter never stops others
                err = MeterReadError(meter.id, "collector", exc)
                log.exception("read of meter %s failed unexpectedly", meter.id)
                self._failed(meter, err)
                if errors is not None:
                    errors.append(err)
                return None
            finally:
                status.last_duration_s = self.clock.monotonic() - started
        return result

    def _read_deadline(self) -> float:
        return self.cfg.timeout_s * (self.cfg.retries + 1) * READ_DEADLINE_FACTOR

    def _commit(
        self, meter: MeterConfig, result: MeterRead, plan: ReadPlan, priority: Priority
    ) -> None:
        """Spool the readings (then move the catch-up mark), update status, raise drift alarms."""
        status = self.status[meter.id]
        items = [(r.to_dict(), r.natural_key) for r in result.readings]
        if items:
            self.spool.add(items, priority)
        if result.profile_newest is not None and plan.profile is not None:
            if plan.profile_since is not None:
                status.catch_up_rows += sum(1 for r in result.readings if r.source == plan.profile)
            self.marks.advance(meter.id, plan.profile, result.profile_newest)
        now = self.clock.now()
        if plan.daily:
            day = datetime.fromtimestamp(now, UTC).date().isoformat()
            if status.last_daily != day:
                status.last_daily = day
                self._drift_check(meter, result, day)
        status.reads_ok += 1
        status.readings += len(items)
        status.last_success = now
        status.last_success_started = status.last_attempt
        status.last_error = None
        status.last_error_name = None
        status.consecutive_failures = 0
        status.mac_fail = False
        status.clock_drift_s = result.clock_drift_s
        self.readings_total += len(items)
        for warning in result.warnings:
            log.info("meter %s: %s", meter.id, warning)
        log.info(
            "read meter %s: %d readings in %.2f s",
            meter.id,
            len(items),
            result.timings_s.get("total", 0.0),
        )

    def _drift_check(self, meter: MeterConfig, result: MeterRead, day: str) -> None:
        drift = result.clock_drift_s
        if abs(drift) <= self.cfg.clock_drift_alarm_s:
            return
        alarm = Alarm(
            device_id=meter.id,
            event=ALARM_CLOCK_DRIFT,
            time=f"{day}T00:00:00Z",  # one per meter and day, however often it is read
            arrival_time=iso_utc(self.clock.now()),
            description=(
                f"meter clock {'ahead' if drift > 0 else 'behind'} by {abs(drift):.1f} s "
                f"(limit {self.cfg.clock_drift_alarm_s:g} s)"
            ),
            values={"clock_drift_s": round(drift, 3), "meter_time": result.meter_time},
        )
        self._alarm(alarm)

    def _failed(self, meter: MeterConfig, exc: MeterReadError) -> None:
        status = self.status[meter.id]
        cause = exc.cause
        name = error_name(cause)
        status.reads_failed += 1
        status.consecutive_failures += 1
        status.last_error = f"{type(cause).__name__}: {exc}"
        status.last_error_name = name
        if exc.malformed:
            reason = quarantine_reason(cause)
            status.quarantined += 1
            self.quarantine.add(meter.id, exc.stage, reason, exc.payload or b"", str(cause))
            log.warning("%s from meter %s at %s: %s", MALFORMED_PAYLOAD, meter.id, exc.stage, cause)
        elif is_mac_fail(cause):
            if not status.mac_fail:
                status.mac_fail = True
                now = self.clock.now()
                self._alarm(
                    Alarm(
                        device_id=meter.id,
                        event=ALARM_MAC_FAIL,
                        time=iso_utc(now),
                        arrival_time=iso_utc(now),
                        description=f"{MAC_FAIL}: {cause}",
                        values={"stage": exc.stage, "error": type(cause).__name__},
                    )
                )
            log.warning("%s on meter %s at %s: %s", MAC_FAIL, meter.id, exc.stage, cause)
        else:
            log.warning("read of meter %s failed (%s): %s", meter.id, name, exc)

    def _alarm(self, alarm: Alarm) -> None:
        if self.spool.add([(alarm.to_dict(), alarm.natural_key)], Priority.ALARM):
            self.alarms_total += 1
            log.warning("alarm for meter %s: %s", alarm.device_id, alarm.description)
