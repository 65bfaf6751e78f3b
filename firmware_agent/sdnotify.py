"""Telling systemd how the agent is doing: sd_notify(3) over ``$NOTIFY_SOCKET``, and a watchdog
feeder that pets systemd only while the agent's loops are alive.

Why our own and not libsystemd bindings: the protocol is one AF_UNIX datagram of ``KEY=VALUE``
lines, and the laptop install (hes-diag) must not need a C library for it. The unit runs the agent
as ``Type=notify`` with ``WatchdogSec=``: systemd waits for ``READY=1`` before it calls the
service started, and restarts it when ``WATCHDOG=1`` stops arriving.

Why the feeder asks the loops: petting from a timer alone proves only that the event loop turns.
A mesh or collector task that died, or a loop that stopped reporting progress, would then leave
a gateway that looks healthy to systemd and reads no meter. :class:`WatchdogPolicy` (sans-IO)
decides from task ends and heartbeats; :class:`WatchdogFeeder` is the asyncio edge that sends.

Without ``$NOTIFY_SOCKET`` (tests, the simulator, a terminal) every call is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from firmware_agent.clock import Clock

log = logging.getLogger(__name__)

#: Longest AF_UNIX socket path (sun_path is 108 bytes, including the final NUL for paths).
MAX_PATH_BYTES = 107
_KEY = re.compile(r"[A-Z_][A-Z0-9_]*\Z")


class NotifyError(ValueError):
    """``$NOTIFY_SOCKET`` or ``$WATCHDOG_USEC`` holds something we cannot use (says which)."""


# --- the sans-IO part: messages and environment ----------------------------------------------


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """One notification datagram: ``KEY=VALUE`` lines, in order.

    A newline inside a value would start another assignment (a STATUS text could then say
    ``READY=1``), so newlines in STATUS become `` / ``; in any other key they are an error.
    """
    lines: list[str] = []
    for key, value in fields:
        if not _KEY.match(key):
            raise ValueError(f"sd_notify key {key!r} is not upper-case letters, digits and _")
        if "\n" in value or "\r" in value:
            if key != "STATUS":
                raise ValueError(f"sd_notify {key} value contains a newline: {value!r}")
            value = " / ".join(part for part in value.splitlines() if part.strip())
        lines.append(f"{key}={value}")
    if not lines:
        raise ValueError("an sd_notify message needs at least one field")
    return ("\n".join(lines) + "\n").encode()


def parse_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a socket address: an absolute path, or ``@name`` (abstract)."""
    if value.startswith("@"):
        name = value[1:].encode()
        if not name or len(name) > MAX_PATH_BYTES:
            raise NotifyError(f"NOTIFY_SOCKET {value!r}: abstract name empty or too long")
        return b"\0" + name
    if value.startswith("/"):
        if len(os.fsencode(value)) > MAX_PATH_BYTES:
            raise NotifyError(f"NOTIFY_SOCKET {value!r}: longer than {MAX_PATH_BYTES} bytes")
        return value
    # systemd >= 253 also hands out vsock:... addresses (to VMs); not for a gateway agent.
    raise NotifyError(f"NOTIFY_SOCKET {value!r}: neither an absolute path nor @abstract")


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd set for *this* process (``WatchdogSec=``), or None.

    ``$WATCHDOG_PID`` names the process the timeout is meant for: a child that inherited the
    environment (e.g. a spawned virtual radio) must not think it is watched.
    """
    usec = environ.get("WATCHDOG_USEC")
    if usec is None:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None:
        if not owner.isdigit():
            raise NotifyError(f"WATCHDOG_PID {owner!r} is not a process id")
        if int(owner) != pid:
            return None
    if not usec.isdigit() or int(usec) == 0:
        raise NotifyError(f"WATCHDOG_USEC {usec!r} is not a positive number of microseconds")
    return int(usec) / 1_000_000


@dataclass(frozen=True)
class NotifyEnv:
    """What the environment says: where to send (None: not under systemd) and the watchdog."""

    address: str | bytes | None
    watchdog_s: float | None


def read_env(environ: Mapping[str, str], pid: int) -> NotifyEnv:
    """Parse ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``; NotifyError if bad."""
    raw = environ.get("NOTIFY_SOCKET")
    address = parse_address(raw) if raw else None
    watchdog = watchdog_seconds(environ, pid) if address is not None else None
    return NotifyEnv(address, watchdog)


# --- the edge: one datagram socket ---------------------------------------------------------------


class Notifier:
    """Sends notifications to systemd; a no-op when not started by systemd.

    Sending never raises and never blocks the event loop (non-blocking socket): a lost
    notification is counted and logged once per kind of error. If it matters, systemd notices by
    itself (start timeout, watchdog).
    """

    def __init__(self, address: str | bytes | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address is not None else None
        self.sent = 0
        self.failures = 0
        self._logged: set[int] = set()
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """From ``os.environ`` (or ``environ``) for process ``pid`` (default: this one)."""
        env = read_env(os.environ if environ is None else environ, pid or os.getpid())
        return cls(env.address, env.watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: tuple[str, str]) -> bool:
        """Send one message of ``(KEY, VALUE)`` fields; True when the datagram went out."""
        data = encode(fields)
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(data, self.address)
        except OSError as exc:
            self.failures += 1
            code = exc.errno or 0
            if code not in self._logged:
                self._logged.add(code)
                why = errno.errorcode.get(code, str(code))
                log.warning("cannot notify systemd at %r (%s): %s", self.address, why, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd now calls the unit active (Type=notify)."""
        return self.send(("READY", "1"), *_status(status))

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``."""
        return self.send(("STATUS", text))

    def watchdog(self, status: str | None = None) -> bool:
        """Pet the watchdog (and optionally update the status line in the same datagram)."""
        return self.send(("WATCHDOG", "1"), *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun: systemd stops expecting watchdog pets."""
        return self.send(("STOPPING", "1"), *_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout (a long flush, a slow board)."""
        if seconds <= 0:
            raise ValueError(f"extend_timeout needs a positive time, not {seconds}")
        return self.send(("EXTEND_TIMEOUT_USEC", str(round(seconds * 1_000_000))))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[tuple[str, str], ...]:
    return () if text is None else (("STATUS", text),)


# --- the sans-IO watchdog decision ------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Whether to pet, and if not, which loops are to blame (one phrase each)."""

    healthy: bool
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        return "all loops alive" if self.healthy else "; ".join(self.reasons)


@dataclass
class _Loop:
    max_silence_s: float | None
    last_beat: float
    ended: str | None = None


@dataclass
class WatchdogPolicy:
    """Which loops must be alive for the watchdog to be fed.

    A loop is dead once it ended (sticky: the agent does not restart its tasks, systemd restarts
    the agent), or while it has been silent longer than its ``max_silence_s`` (a loop that
    reports progress by :meth:`beat`). Time is whatever monotonic clock the caller passes.
    """

    _loops: dict[str, _Loop] = field(default_factory=dict)

    def expect(self, name: str, now: float, max_silence_s: float | None = None) -> None:
        """Watch loop ``name`` from ``now``; with ``max_silence_s`` it must beat that often."""
        if name in self._loops:
            raise ValueError(f"watchdog: loop {name!r} is already watched")
        if max_silence_s is not None and max_silence_s <= 0:
            raise ValueError(f"watchdog: loop {name!r}: max_silence_s must be > 0")
        self._loops[name] = _Loop(max_silence_s, now)

    def beat(self, name: str, now: float) -> None:
        """Loop ``name`` made progress at ``now``."""
        self._get(name).last_beat = now

    def ended(self, name: str, how: str) -> None:
        """Loop ``name`` is gone (``how``: returned, cancelled, or the exception)."""
        loop = self._get(name)
        if loop.ended is None:
            loop.ended = how

    def check(self, now: float) -> Verdict:
        reasons: list[str] = []
        for name, loop in self._loops.items():
            if loop.ended is not None:
                reasons.append(f"{name} ended ({loop.ended})")
            elif loop.max_silence_s is not None and now - loop.last_beat > loop.max_silence_s:
                silent = now - loop.last_beat
                reasons.append(f"{name} silent for {silent:.0f} s (limit {loop.max_silence_s:g} s)")
        return Verdict(not reasons, tuple(reasons))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._loops)

    def _get(self, name: str) -> _Loop:
        try:
            return self._loops[name]
        except KeyError:
            raise ValueError(f"watchdog: no loop named {name!r} is watched") from None


# --- the asyncio edge -----------------------------------------------------------------------------


def _how_it_ended(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "returned" if exc is None else f"{type(exc).__name__}: {exc}"


class WatchdogFeeder:
    """Pets systemd's watchdog every ``period_s`` (half of ``WatchdogSec=``) while healthy.

    Register loops with :meth:`watch_task` (dead when the task ends) and, for loops that can
    report progress, :meth:`heartbeat`. When the policy says a loop is dead the feeder logs it
    once, stops petting and puts the reason in ``systemctl status``; systemd then kills and
    restarts the agent after ``WatchdogSec=``. A feeder woken much later than asked also logs
    how long the event loop was blocked: the usual cause of a watchdog kill.
    """

    def __init__(
        self,
        notifier: Notifier,
        clock: Clock,
        policy: WatchdogPolicy | None = None,
        *,
        period_s: float | None = None,
        status: Callable[[], str] | None = None,
    ) -> None:
        self.notifier = notifier
        self.clock = clock
        self.policy = policy or WatchdogPolicy()
        timeout = notifier.watchdog_s
        if period_s is None:
            period_s = timeout / 2 if timeout is not None else None
        elif timeout is not None and period_s >= timeout:
            raise ValueError(f"pet period {period_s} s must be shorter than WatchdogSec {timeout}")
        self.period_s = period_s
        self._status = status
        self._last_status: str | None = None
        self.pets = 0
        self.withheld = 0
        self._unhealthy: Verdict | None = None

    @property
    def active(self) -> bool:
        """True when systemd asked for a watchdog (``WatchdogSec=`` set, for this process)."""
        return self.period_s is not None and self.notifier.enabled

    def watch_task(self, name: str, task: asyncio.Task[Any]) -> None:
        """Loop ``name`` is alive while ``task`` runs."""
        self.policy.expect(name, self.clock.monotonic())

        def done(t: asyncio.Task[Any]) -> None:
            self.policy.ended(name, _how_it_ended(t))

        task.add_done_callback(done)

    def heartbeat(self, name: str, max_silence_s: float) -> Callable[[], None]:
        """A function loop ``name`` calls on progress; silent > ``max_silence_s`` means dead."""
        self.policy.expect(name, self.clock.monotonic(), max_silence_s)
        return lambda: self.policy.beat(name, self.clock.monotonic())

    def tick(self) -> Verdict:
        """One decision: pet if every loop is alive (also the unit of the tests)."""
        verdict = self.policy.check(self.clock.monotonic())
        if verdict.healthy:
            if self._unhealthy is not None:
                log.warning("watchdog: loops alive again, feeding systemd")
                self._unhealthy = None
            text = self._status() if self._status is not None else None
            if text == self._last_status:
                text = None  # unchanged: keep the datagram small
            else:
                self._last_status = text
            if self.notifier.watchdog(text):
                self.pets += 1
        else:
            self.withheld += 1
            if verdict != self._unhealthy:
                self._unhealthy = verdict
                log.error("watchdog: not feeding systemd: %s", verdict.describe())
                self.notifier.status(f"unhealthy: {verdict.describe()}")
                self._last_status = None
        return verdict

    async def run(self) -> None:
        """Pet until cancelled. Returns at once when there is no watchdog to feed.

        Not an agent worker: its return is not a failure. Cancel it when shutdown begins.
        """
        if not self.active or self.period_s is None:
            return
        period = self.period_s
        while True:
            self.tick()
            due = self.clock.monotonic() + period
            await asyncio.sleep(period)
            late = self.clock.monotonic() - due
            if late > period:
                log.warning(
                    "watchdog: the event loop was blocked for about %.1f s (WatchdogSec %.0f s)",
                    late, period * 2,
                )  # fmt: skip


@contextlib.contextmanager
def notifier_from_env(environ: Mapping[str, str] | None = None) -> Iterator[Notifier]:
    """``with notifier_from_env() as n:``: a Notifier closed at the end; a bad environment is
    logged and gives a disabled one (the agent must still run from a shell)."""
    try:
        notifier = Notifier.from_env(environ)
    except NotifyError as exc:
        log.error("not notifying systemd: %s", exc)
        notifier = Notifier(None)
    try:
        yield notifier
    finally:
        notifier.close()
