"""A radio that survives its board: reopen with backoff when the port vanishes or the board dies.

:class:`ReconnectingTransceiver` wraps a factory of fresh inner transceivers (for ``spinel+pty://``
each one spawns a new virtual RCP; for a UART each one reopens the device path). A receive pump
owns the inner radio's ``receive()``: a Transceiver raises from ``receive()`` only when its link is
gone, so that is the exact signal of a lost board (no matching on error texts). Repeated timeouts
(a board that hangs with its port still open) count as lost too. Then the inner radio is closed,
the loss is reported, and a background task reopens a fresh one with jittered exponential backoff,
re-applying the channel, TX power and raw stream the layers above had set.

Meanwhile ``receive()`` simply waits (frames resume after the reopen), and every other call raises
:class:`RadioReconnecting` at once: a transmit is never queued behind the caller's back, because a
frame sent seconds late is worse than a failure the caller can see and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from drivers.rcp_host import SpinelTransceiver
from drivers.spinel import status_name
from drivers.transceiver import (
    RadioError,
    RadioInfo,
    RadioTimeout,
    RxFrame,
    Transceiver,
    TxResult,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Transceiver)
State = Literal["open", "reconnecting", "closed"]
Sleep = Callable[[float], Awaitable[None]]
RadioFactory = Callable[[], Transceiver]

#: Consecutive timed-out operations after which a board that still has its port open is
#: considered gone (each Spinel request has already been retried by the inner driver).
LOST_AFTER_TIMEOUTS = 3
RX_QUEUE_SIZE = 1024
RECENT_EVENTS = 32


def find_layer(radio: Transceiver, kind: type[R]) -> R | None:
    """The first layer of type ``kind`` in a stack of wrappers (each exposing the radio it wraps
    as ``.inner``, as CapturingTransceiver and this module's wrapper do), or None. Lets the mesh
    find the reconnecting layer under a capture, and this wrapper find the Spinel driver under
    one, whatever order the agent stacks them in."""
    layer: object = radio
    for _ in range(16):  # wrappers do not nest deeper; a cycle must not hang us
        if isinstance(layer, kind):
            return layer
        layer = getattr(layer, "inner", None)
        if layer is None:
            return None
    return None


class RadioReconnecting(RadioError):
    """The radio's link is down and is being reopened; the operation was not performed."""


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff. Pure: the randomness comes in, the delay goes out.

    Attempt ``n`` (0-based) waits ``min_s · factor^n`` capped at ``max_s``, then less by up to
    ``jitter`` of that (never below ``min_s``), so gateways that lost power together do not
    hammer a shared USB hub or head end in lockstep."""

    min_s: float = 0.2
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be within 0..1, got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        try:
            base = min(self.max_s, self.min_s * self.factor ** max(0, attempt))
        except OverflowError:
            base = self.max_s
        return max(self.min_s, base * (1.0 - self.jitter * rng.random()))


class RadioEventKind(enum.Enum):
    RESET = "reset"  # the board rebooted on its own; the inner driver re-applied settings
    LINK_LOST = "link_lost"  # port vanished, child died, or the board stopped answering
    REOPEN_FAILED = "reopen_failed"  # one reopen attempt failed; another follows after a delay
    REOPENED = "reopened"  # a fresh radio is open with the settings re-applied


@dataclass(frozen=True)
class RadioEvent:
    """What happened to the radio, for listeners (agent log, diag API)."""

    kind: RadioEventKind
    reason: str
    info: RadioInfo | None = None  # REOPENED: what the (possibly different) board is
    previous_hwaddr: bytes | None = None  # REOPENED: the EUI-64 before, when it changed
    attempt: int = 0  # REOPEN_FAILED / REOPENED: which reopen attempt (1-based)
    retry_in_s: float | None = None  # LINK_LOST / REOPEN_FAILED: delay before the next attempt

    @property
    def hwaddr_changed(self) -> bool:
        return self.previous_hwaddr is not None


@dataclass
class ReconnectStats:
    """Counters for the diag API."""

    links_lost: int = 0
    reopens: int = 0  # successful reopens
    failures: int = 0  # failed reopen attempts
    resets: int = 0  # unsolicited board resets the inner driver recovered from by itself
    hwaddr_changes: int = 0
    rx_dropped: int = 0  # frames dropped because nobody was receiving
    last_error: str | None = None
    last_reset_reason: str | None = None


class ReconnectingTransceiver(Transceiver):
    """A :class:`Transceiver` that reopens a fresh inner radio from ``factory`` whenever the
    link to the board is lost, until :meth:`close`. ``open()`` itself tries once: a board that
    is absent at start-up is a configuration problem the caller should hear about."""

    def __init__(
        self,
        factory: RadioFactory,
        *,
        name: str = "radio",
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        listener: Callable[[RadioEvent], None] | None = None,
        lost_after_timeouts: int = LOST_AFTER_TIMEOUTS,
        rx_queue_size: int = RX_QUEUE_SIZE,
    ) -> None:
        if lost_after_timeouts < 1:
            raise ValueError(f"lost_after_timeouts must be >= 1, got {lost_after_timeouts}")
        self.name = name
        self.backoff = backoff or Backoff()
        self.listener = listener
        self.stats = ReconnectStats()
        self.info: RadioInfo | None = None
        self._factory = factory
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._lost_after_timeouts = lost_after_timeouts
        self._state: State = "closed"
        self._changed = asyncio.Event()
        self._inner: Transceiver | None = None
        self._pump: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._rx: asyncio.Queue[RxFrame | None] = asyncio.Queue(rx_queue_size)
        self._timeouts = 0
        self._closing = False
        self._opened = False
        self._events: deque[RadioEvent] = deque(maxlen=RECENT_EVENTS)
        # What the layers above set, re-applied on every reopen.
        self._channel: int | None = None
        self._tx_power: int | None = None
        self._raw_stream: bool | None = None

    # --- state for the layers above ---------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def inner(self) -> Transceiver | None:
        """The radio currently open (None while reconnecting or closed)."""
        return self._inner if self._state == "open" else None

    @property
    def recent_events(self) -> tuple[RadioEvent, ...]:
        return tuple(self._events)

    async def wait_open(self) -> None:
        """Return once the radio is open; raise :class:`RadioError` if it is closed instead."""
        while self._state != "open":
            if self._state == "closed":
                raise RadioError(f"{self.name}: radio closed")
            await self._changed.wait()

    def _set_state(self, state: State) -> None:
        self._state = state
        self._changed.set()
        self._changed = asyncio.Event()

    def _emit(self, event: RadioEvent) -> None:
        self._events.append(event)
        if self.listener is not None:
            try:
                self.listener(event)
            except Exception:  # a listener's bug must not stop the recovery
                log.exception("%s: radio event listener failed on %s", self.name, event.kind.value)

    # --- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> RadioInfo:
        if self._opened:
            raise RadioError(f"{self.name}: already open")
        inner = self._factory()
        info = await inner.open()
        self._opened = True
        self._install(inner, info)
        log.info("%s: radio open: %s, EUI-64 %s", self.name, info.ncp_version, info.hwaddr.hex(":"))
        return info

    async def close(self) -> None:
        self._closing = True
        self._set_state("closed")
        tasks = [t for t in (self._recovery, self._pump) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._recovery = self._pump = None
        inner, self._inner = self._inner, None
        if inner is not None:
            with contextlib.suppress(RadioError):
                await inner.close()
        if self._rx.full():
            self._rx.get_nowait()
        self._rx.put_nowait(None)  # wake receivers: closed

    def _install(self, inner: Transceiver, info: RadioInfo) -> None:
        self._inner = inner
        self.info = info
        self._timeouts = 0
        spinel = find_layer(inner, SpinelTransceiver)
        if spinel is not None:
            self._watch_resets(inner, spinel)
        self._pump = asyncio.create_task(self._pump_frames(inner), name=f"{self.name}-rx-pump")
        self._set_state("open")

    def _watch_resets(self, inner: Transceiver, spinel: SpinelTransceiver) -> None:
        """Hear the Spinel driver's unsolicited resets (it re-applies its settings itself; we
        count and report them). Only while ``inner`` is the current radio: a lost radio's
        late notifications are not this board's resets."""

        def on_reset(status: int) -> None:
            if inner is self._inner:
                self._on_board_reset(status)

        spinel.add_reset_listener(on_reset)

    def _on_board_reset(self, status: int) -> None:
        reason = status_name(status)
        self.stats.resets += 1
        self.stats.last_reset_reason = reason
        log.warning(
            "%s: board reset detected (%s); driver re-applies its settings",
            self.name,
            reason,
            extra={"fields": {"event": "radio_reset", "reason": reason}},
        )
        self._emit(RadioEvent(RadioEventKind.RESET, reason))

    # --- losing and regaining the link ------------------------------------------------------------

    async def _pump_frames(self, inner: Transceiver) -> None:
        while True:
            try:
                frame = await inner.receive()
            except RadioError as exc:
                self._link_lost(inner, str(exc))
                return
            except Exception as exc:  # a driver bug: treat like a lost link, keep the loop alive
                log.exception("%s: receive failed unexpectedly", self.name)
                self._link_lost(inner, f"receive failed: {exc!r}")
                return
            if frame is None:
                continue
            if self._rx.full():
                self._rx.get_nowait()  # the freshest frames matter most to a MAC
                self.stats.rx_dropped += 1
            self._rx.put_nowait(frame)

    def _link_lost(self, inner: Transceiver, reason: str) -> None:
        if inner is not self._inner or self._state != "open" or self._closing:
            return  # already handled, or closing on purpose
        self.stats.links_lost += 1
        self.stats.last_error = reason
        self._set_state("reconnecting")
        delay = self.backoff.delay(0, self._rng)
        log.error(
            "%s: radio link lost (%s); reopening in %.2f s",
            self.name,
            reason,
            delay,
            extra={"fields": {"event": "radio_link_lost", "reason": reason}},
        )
        self._emit(RadioEvent(RadioEventKind.LINK_LOST, reason, retry_in_s=delay))
        self._recovery = asyncio.create_task(
            self._recover(inner, delay), name=f"{self.name}-reconnect"
        )

    async def _recover(self, old: Transceiver, first_delay: float) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:  # already finished when it was the pump that saw the loss
            pump.cancel()
            await asyncio.wait([pump])
        self._inner = None
        try:
            await old.close()
        except RadioError as exc:
            log.debug("%s: closing the lost radio: %s", self.name, exc)
        attempt, delay = 0, first_delay
        while not self._closing:
            await self._sleep(delay)
            attempt += 1
            try:
                inner, info = await self._reopen()
            except Exception as exc:
                self.stats.failures += 1
                self.stats.last_error = str(exc)
                delay = self.backoff.delay(attempt, self._rng)
                if not isinstance(exc, RadioError):
                    log.exception("%s: reopen attempt %d crashed", self.name, attempt)
                log.warning(
                    "%s: reopen attempt %d failed (%s); next in %.2f s",
                    self.name,
                    attempt,
                    exc,
                    delay,
                    extra={"fields": {"event": "radio_reopen_failed", "attempt": attempt}},
                )
                self._emit(
                    RadioEvent(
                        RadioEventKind.REOPEN_FAILED, str(exc), attempt=attempt, retry_in_s=delay
                    )
                )
                continue
            previous = self.info.hwaddr if self.info is not None else None
            changed = previous if previous is not None and previous != info.hwaddr else None
            self.stats.reopens += 1
            if changed is not None:
                self.stats.hwaddr_changes += 1
                log.warning(
                    "%s: the reopened board has another EUI-64: %s (was %s)",
                    self.name,
                    info.hwaddr.hex(":"),
                    changed.hex(":"),
                )
            self._install(inner, info)
            log.info(
                "%s: radio reopened after %d attempt(s): %s, EUI-64 %s; settings re-applied",
                self.name,
                attempt,
                info.ncp_version,
                info.hwaddr.hex(":"),
                extra={"fields": {"event": "radio_reopened", "attempt": attempt}},
            )
            self._emit(
                RadioEvent(
                    RadioEventKind.REOPENED,
                    "reopened",
                    info=info,
                    previous_hwaddr=changed,
                    attempt=attempt,
                )
            )
            return

    async def _reopen(self) -> tuple[Transceiver, RadioInfo]:
        """A fresh inner radio, open and set up as the layers above left the old one."""
        inner = self._factory()
        info = await inner.open()
        try:
            if self._channel is not None:
                await inner.set_channel(self._channel)
            if self._tx_power is not None:
                await inner.set_tx_power(self._tx_power)
            if self._raw_stream is not None:
                await inner.enable_raw_stream(self._raw_stream)
        except BaseException:
            with contextlib.suppress(RadioError):
                await inner.close()
            raise
        return inner, info

    # --- operations -------------------------------------------------------------------------------

    def _current(self, what: str) -> Transceiver:
        if self._state == "reconnecting":
            raise RadioReconnecting(
                f"{self.name}: cannot {what}: the radio is reconnecting "
                f"(link lost: {self.stats.last_error})"
            )
        if self._state == "closed" or self._inner is None:
            raise RadioError(f"{self.name}: cannot {what}: radio closed")
        return self._inner

    async def _call(self, what: str, op: Callable[[Transceiver], Awaitable[T]]) -> T:
        inner = self._current(what)
        try:
            result = await op(inner)
        except RadioTimeout as exc:
            self._timeouts += 1
            if self._timeouts >= self._lost_after_timeouts:
                self._link_lost(inner, f"{self._timeouts} operations timed out in a row: {exc}")
            raise
        except RadioError as exc:
            await asyncio.sleep(0)  # the receive pump may be noticing a dead link right now
            if inner is not self._inner or self._state != "open":
                raise RadioReconnecting(
                    f"{self.name}: cannot {what}: the radio link was lost ({exc}); reconnecting"
                ) from exc
            raise
        self._timeouts = 0
        return result

    async def set_channel(self, channel: int) -> None:
        await self._call(f"set channel {channel}", lambda r: r.set_channel(channel))
        self._channel = channel

    async def set_tx_power(self, dbm: int) -> None:
        await self._call(f"set TX power {dbm} dBm", lambda r: r.set_tx_power(dbm))
        self._tx_power = dbm

    async def enable_raw_stream(self, enabled: bool = True) -> None:
        await self._call("set raw stream", lambda r: r.enable_raw_stream(enabled))
        self._raw_stream = enabled

    async def transmit(self, psdu: bytes) -> TxResult:
        return await self._call("transmit", lambda r: r.transmit(psdu))

    async def receive(self, timeout: float | None = None) -> RxFrame | None:
        """The next frame. While the link is being reopened this just waits: frames resume
        from the new radio. Raises :class:`RadioError` once the radio is closed."""
        if self._state == "closed" and self._rx.empty():
            raise RadioError(f"{self.name}: radio closed")
        try:
            async with asyncio.timeout(timeout):
                item = await self._rx.get()
        except TimeoutError:
            return None
        if item is None:
            self._rx.put_nowait(None)  # keep waking later receivers too
            raise RadioError(f"{self.name}: radio closed")
        return item

    async def energy_scan(self, channels: list[int], duration_ms: int) -> dict[int, int]:
        return await self._call("scan energy", lambda r: r.energy_scan(channels, duration_ms))

    async def sample_rssi(self) -> int:
        return await self._call("sample RSSI", lambda r: r.sample_rssi())
