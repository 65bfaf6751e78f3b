"""Outage questions from an OMS (seed 003): answer a MeterStatusData GET by its deadline, and turn
last-gasp / power-restored alarms into unsolicited REPLY messages.

Why it works this way:

* An OMS asks "which of these meters have power?" while it is analysing an outage, and it stops
  waiting at ``RespondByTimestamp`` (after that it marks every meter still open "Response Timed
  Out" itself). So we ping all meters at once (bounded), answer as soon as every ping is in, and
  otherwise answer a safety margin *before* the deadline with whatever we know, the meters still
  silent marked "Response Timed Out" — a late answer is worth nothing.
* A meter that does not answer is not necessarily off (the mesh may be at fault): we only say
  "power down" when its last word was a last gasp; otherwise it is "Response Timed Out".
* Category codes are the OMS's, so they come from a table in the configuration.

The deadline logic runs on the injected clock and sleep, so tests can drive it in virtual time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from firmware_agent.clock import Clock
from firmware_agent.collector.ping import PingResult
from firmware_agent.uplink import cim, payloads

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# Status categories (keys of the category table) and their default CIM codes.
POWER_DOWN = "power-down"
POWER_UP = "power-up"
NO_RESPONSE = "no-response"
DEFAULT_CATEGORIES: dict[str, str] = {
    POWER_DOWN: "3.26.0.47",
    POWER_UP: "3.26.0.216",
    NO_RESPONSE: "0.0.0.0",
}
DESCRIPTIONS = {
    POWER_DOWN: "power down",
    POWER_UP: "power up",
    NO_RESPONSE: cim.RESPONSE_TIMED_OUT,
}
UNKNOWN_METER = "Unknown Meter"  # description of the group of mRIDs this gateway does not serve

# Power states a gateway knows of a meter (MeterState.power).
POWER_ON = "on"
POWER_OFF = "off"
POWER_UNKNOWN = "unknown"

# The collector's alarm events (collector/push.py) that are outage and restoration events.
ALARM_EVENTS = {"last-gasp": POWER_DOWN, "power-restored": POWER_UP}
EVENT_KIND = "cim"  # unsolicited REPLYs go to <prefix>/<gateway>/events/cim
CONTENT_TYPE_XML = "application/xml"


@dataclass(frozen=True)
class MeterState:
    """What the gateway knows about a meter without asking it."""

    meter_id: str
    state: str  # the collector's: "pending" | "ok" | "failing"
    last_heard: float | None  # POSIX s of the last successful exchange
    power: str = POWER_UNKNOWN  # "on" | "off" (its last word was a last gasp) | "unknown"
    last_error: str | None = None


class StatusOperations(Protocol):
    """What the outage logic needs from the gateway (a subset of ``GatewayOperations``)."""

    def meter_ids(self) -> Sequence[str]: ...

    def meter_status(self, meter_id: str) -> MeterState: ...

    async def ping(self, meter_id: str, timeout_s: float) -> PingResult: ...


def power_state(
    last_gasp_at: float | None, restored_at: float | None, last_heard: float | None
) -> str:
    """A meter is off when its newest news is a last gasp, on when it is anything else."""
    newest_on = max((t for t in (restored_at, last_heard) if t is not None), default=None)
    if last_gasp_at is not None and (newest_on is None or last_gasp_at > newest_on):
        return POWER_OFF
    return POWER_UNKNOWN if newest_on is None else POWER_ON


@dataclass(frozen=True)
class OutageConfig:
    """The ``uplink.commands.oms`` section (see docs/commands.md for the YAML keys)."""

    categories: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CATEGORIES))
    default_respond_s: float = 30.0  # deadline when the GET has no RespondByTimestamp
    # a RespondByTimestamp further out is cut to this (below the transport's 300 s handler limit)
    max_respond_s: float = 240.0
    reply_margin_s: float = 1.0  # answer this long before the deadline
    ping_timeout_s: float = 10.0  # one ping never waits longer
    ping_concurrency: int = 16  # pings in flight at once
    max_meters: int = 2000  # per GET (a REPLY of 2000 mRIDs stays well under 256 KiB)
    max_reply_bytes: int = 256 * 1024  # per REPLY message (the uplink's MQTT message cap)

    def __post_init__(self) -> None:
        missing = [k for k in DEFAULT_CATEGORIES if k not in self.categories]
        if missing:
            raise ValueError(f"oms.categories lacks {', '.join(missing)}")
        for key, code in self.categories.items():
            if key not in DEFAULT_CATEGORIES:
                raise ValueError(
                    f"oms.categories.{key}: unknown status, use {list(DEFAULT_CATEGORIES)}"
                )
            if not cim._CATEGORY.fullmatch(code):
                raise ValueError(f"oms.categories.{key}: {code!r} is not #1.#2.#3.#4")
        for name in ("default_respond_s", "max_respond_s", "ping_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"oms.{name} must be > 0")
        if not 0 <= self.reply_margin_s < self.default_respond_s:
            raise ValueError("oms.reply_margin_s must be >= 0 and < default_respond_s")
        if self.ping_concurrency < 1 or self.max_meters < 1 or self.max_reply_bytes < 1024:
            raise ValueError("oms.ping_concurrency, max_meters >= 1; max_reply_bytes >= 1024")


def classify(ping: PingResult | None, state: MeterState) -> str:
    """Status category of one meter at answer time (``ping`` None: still pending)."""
    if ping is not None and ping.reachable:
        return POWER_UP
    if state.power == POWER_OFF:
        return POWER_DOWN
    return NO_RESPONSE


def status_events(
    statuses: Iterable[tuple[str, str]],
    unknown: Iterable[str],
    categories: Mapping[str, str],
    created: float,
) -> list[cim.EndDeviceEvent]:
    """(meter, status) pairs → one EndDeviceEvent per status (in a fixed order), plus one for
    the meters this gateway does not serve."""
    groups: dict[str, list[str]] = {POWER_DOWN: [], POWER_UP: [], NO_RESPONSE: []}
    for meter, status in statuses:
        groups[status].append(meter)
    when = cim.cim_time(created)
    events = [
        cim.EndDeviceEvent(categories[s], when, tuple(ms), DESCRIPTIONS[s])
        for s, ms in groups.items()
        if ms
    ]
    unknown_meters = tuple(unknown)
    if unknown_meters:
        events.append(
            cim.EndDeviceEvent(categories[NO_RESPONSE], when, unknown_meters, UNKNOWN_METER)
        )
    return events


@dataclass(frozen=True)
class StatusAnswer:
    """What a GET got: the REPLY messages and how each meter was classified (for logs/tests)."""

    replies: list[bytes]
    statuses: dict[str, str]  # meter → POWER_UP / POWER_DOWN / NO_RESPONSE
    unknown: tuple[str, ...]
    deadline: float  # POSIX s the OMS wanted the answer by (after capping)
    answered_at: float
    timed_out: tuple[str, ...]  # meters whose ping was still pending at answer time


class MeterStatusResponder:
    """Answers MeterStatusData GETs: parallel pings, bounded, answered by the deadline."""

    def __init__(
        self,
        ops: StatusOperations,
        clock: Clock,
        cfg: OutageConfig | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.ops = ops
        self.clock = clock
        self.cfg = cfg or OutageConfig()
        self.sleep = sleep

    def deadline(self, request: cim.MeterStatusRequest, received_at: float) -> float:
        cfg = self.cfg
        if request.respond_by is None:
            return received_at + cfg.default_respond_s
        return min(request.respond_by, received_at + cfg.max_respond_s)

    async def answer(self, request: cim.MeterStatusRequest, received_at: float) -> StatusAnswer:
        cfg = self.cfg
        deadline = self.deadline(request, received_at)
        answer_by = deadline - cfg.reply_margin_s
        known = set(self.ops.meter_ids())
        targets = [m for m in request.meters if m in known]
        unknown = tuple(m for m in request.meters if m not in known)
        results: dict[str, PingResult] = {}
        gate = asyncio.Semaphore(cfg.ping_concurrency)

        async def ping(meter: str) -> None:
            async with gate:
                budget = min(cfg.ping_timeout_s, answer_by - self.clock.now())
                if budget <= 0:
                    return
                try:
                    results[meter] = await self.ops.ping(meter, budget)
                except Exception as exc:  # one meter's failure is that meter's answer
                    results[meter] = PingResult(meter, False, error=f"{type(exc).__name__}: {exc}")

        tasks = [asyncio.create_task(ping(m), name=f"oms-ping-{m}") for m in targets]
        timer: asyncio.Future[None] = asyncio.ensure_future(
            self.sleep(max(0.0, answer_by - self.clock.now()))
        )
        try:
            pending: set[asyncio.Future[None]] = set(tasks)
            while pending and not timer.done():
                _, pending = await asyncio.wait(
                    pending | {timer}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(timer)
        finally:
            timer.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(timer, *tasks, return_exceptions=True)
        now = self.clock.now()
        statuses = {m: classify(results.get(m), self.ops.meter_status(m)) for m in targets}
        timed_out = tuple(m for m in targets if m not in results)
        events = status_events(statuses.items(), unknown, cfg.categories, now)
        replies = cim.build_replies(
            events,
            timestamp=now,
            correlation_id=request.correlation_id,
            max_bytes=cfg.max_reply_bytes,
        )
        late = now > deadline
        log.log(
            logging.WARNING if late else logging.INFO,
            "MeterStatusData %s: %d meters, %d up, %d down, %d timed out, %d unknown%s",
            request.correlation_id,
            len(request.meters),
            sum(s == POWER_UP for s in statuses.values()),
            sum(s == POWER_DOWN for s in statuses.values()),
            sum(s == NO_RESPONSE for s in statuses.values()),
            len(unknown),
            f" ({now - deadline:.1f} s after the deadline)" if late else "",
        )
        return StatusAnswer(replies, statuses, unknown, deadline, now, timed_out)


# -- unsolicited outage / restoration messages -------------------------------------------------
def _alarm_fields(alarm: Any) -> tuple[str, str, str]:
    if isinstance(alarm, Mapping):
        return (
            str(alarm.get("device_id", "")),
            str(alarm.get("event", "")),
            str(alarm.get("time", "")),
        )
    return str(alarm.device_id), str(alarm.event), str(alarm.time)


def outage_events(
    alarms: Iterable[Any], categories: Mapping[str, str] | None = None
) -> list[cim.EndDeviceEvent]:
    """Last-gasp and power-restored alarms (``records.Alarm`` or its ``to_dict()`` record) →
    EndDeviceEvents grouped by (category, createdDateTime = the meter's event time, to the
    second). Other alarms are skipped."""
    table = categories or DEFAULT_CATEGORIES
    groups: dict[tuple[str, str], list[str]] = {}
    for alarm in alarms:
        meter, event, time = _alarm_fields(alarm)
        status = ALARM_EVENTS.get(event)
        if status is None or not meter:
            continue
        created = cim.cim_time(cim.parse_time("alarm.time", time))
        members = groups.setdefault((status, created), [])
        if meter not in members:
            members.append(meter)
    return [
        cim.EndDeviceEvent(table[status], created, tuple(ms), DESCRIPTIONS[status])
        for (status, created), ms in groups.items()
    ]


def outage_replies(
    alarms: Iterable[Any],
    *,
    now: float,
    categories: Mapping[str, str] | None = None,
    max_bytes: int = cim.DEFAULT_MAX_MESSAGE_BYTES,
) -> list[bytes]:
    """Unsolicited REPLY messages (no CorrelationID) for outage/restoration alarms; empty if
    none of ``alarms`` is one. A storm of last gasps becomes few messages, each under
    ``max_bytes``."""
    events = outage_events(alarms, categories)
    if not events:
        return []
    return cim.build_replies(events, timestamp=now, correlation_id=None, max_bytes=max_bytes)


def outage_reply(
    alarm: Any, *, now: float, categories: Mapping[str, str] | None = None
) -> bytes | None:
    """One alarm → its unsolicited REPLY, or None if it is not an outage/restoration event."""
    replies = outage_replies([alarm], now=now, categories=categories)
    return replies[0] if replies else None


def outage_record(
    alarm: Any, *, now: float, categories: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], str] | None:
    """One outage/restoration alarm → a spool entry ``(record, natural_key)`` carrying its
    unsolicited REPLY as an event (published on ``<prefix>/<gw>/events/cim``); None for other
    alarms. Spool it at Priority.ALARM next to the alarm itself: it is then as durable as a
    reading, and its natural key (the alarm's, plus ``|cim``) lets the head end drop repeats."""
    reply = outage_reply(alarm, now=now, categories=categories)
    if reply is None:
        return None
    meter, event, time = _alarm_fields(alarm)
    record = payloads.event_record(EVENT_KIND, reply.decode("ascii"), CONTENT_TYPE_XML)
    return record, f"{meter}|alarm:{event}|{time}|cim"
