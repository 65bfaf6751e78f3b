"""Meter misbehaviour on command: sans-IO wrappers around ``MeterServer.handle``.

A collector is only as good as its handling of meters that answer garbage, answer late, answer the
wrong thing or do not answer at all; the rig has to make each of those happen on demand and
reproducibly. ``FaultyMeter`` sits in front of one ``MeterServer`` and, per frame, either serves it
normally or applies the first queued ``Fault`` that is due. Randomness comes from an injected
``random.Random``, so a seeded test sees the same garbage every run. Delays are not waited for here
(sans-IO): ``respond`` returns the reply with the delay and the edge (UDP/TCP in ``udp.py``, the
mesh node) sends it when due.

Fault kinds:

- ``garbage``: random bytes instead of the reply (no WRAPPER header either);
- ``corrupt``: the real reply cut short at a random point, its header length patched so the frame
  itself is well formed and only the APDU is broken;
- ``silence``: the request is lost: no processing, no reply;
- ``lost-reply``: the meter serves the request (its counters, associations and objects move on)
  and the reply is lost on the way back. Under suite 0 this is the case that matters: a
  retry that resent the same ciphered bytes would be a replay to the meter;
- ``slow``: the real reply, due ``delay_s`` later;
- ``wrong-apdu``: a well-formed reply of another service (RLRE for an AARQ, an ACTION-Response for
  a GET, a GET-Response for anything else);
- ``desync``: the highest client invocation counter the meter believes it accepted jumps by
  ``DESYNC_JUMP`` (``MeterServer.desync_counters``, as after a meter-side reset), then the frame is
  served normally; the gateway's next secured frames look replayed to the meter until a
  ``security reset`` reads 0.0.43.1.0.255 and resynchronises.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from firmware_agent.collector.wrapper import WrapperError, build_frame, parse_frame

from .dlms_server import MeterServer

_AARQ = 0x60
_GET_REQUEST = 0xC0
_RLRE = bytes([0x63, 0x03, 0x80, 0x01, 0x00])
DESYNC_JUMP = 1_000_000


class FaultKind(StrEnum):
    GARBAGE = "garbage"
    CORRUPT = "corrupt"
    SILENCE = "silence"
    LOST_REPLY = "lost-reply"
    SLOW = "slow"
    WRONG_APDU = "wrong-apdu"
    DESYNC = "desync"


class FaultSpecError(ValueError):
    """A fault specification (``--fault``) that cannot be understood; names the bad part."""


@dataclass
class Fault:
    """One misbehaviour: which, for how many frames, how likely, and after how many good ones."""

    kind: FaultKind
    count: int | None = 1  # frames it hits; None: every frame from now on
    probability: float = 1.0  # chance each due frame is hit
    after: int = 0  # frames served normally before it starts
    delay_s: float = 2.0  # slow only

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise FaultSpecError(f"fault count must be at least 1, got {self.count}")
        if not 0.0 < self.probability <= 1.0:
            raise FaultSpecError(f"fault probability must be in (0, 1], got {self.probability}")
        if self.after < 0 or self.delay_s < 0:
            raise FaultSpecError("fault 'after' and 'delay' must not be negative")


@dataclass(frozen=True)
class Reply:
    """A frame the meter sends back and how long after the request it is due."""

    frame: bytes
    delay_s: float = 0.0


_SPEC = re.compile(r"^(?P<kind>[a-z-]+)(?::(?P<count>\*|\d+))?(?P<opts>(?:,[a-z]+=[^,]+)*)$")


def parse_fault(spec: str) -> Fault:
    """``KIND[:COUNT|*][,p=PROB][,after=N][,delay=SECONDS]``, e.g. ``garbage:1``,
    ``slow:*,delay=3``, ``silence:2,after=4,p=0.5``. COUNT defaults to 1; ``*``: every frame."""
    m = _SPEC.match(spec.strip())
    if m is None:
        raise FaultSpecError(f"fault {spec!r} is not KIND[:COUNT][,key=value...]")
    try:
        kind = FaultKind(m["kind"])
    except ValueError:
        kinds = ", ".join(k.value for k in FaultKind)
        raise FaultSpecError(f"fault kind {m['kind']!r} is not one of {kinds}") from None
    count = None if m["count"] == "*" else int(m["count"] or 1)
    fault = Fault(kind, count)
    for opt in filter(None, m["opts"].split(",")):
        key, _, value = opt.partition("=")
        try:
            if key == "p":
                fault.probability = float(value)
            elif key == "after":
                fault.after = int(value)
            elif key == "delay":
                fault.delay_s = float(value)
            else:
                raise FaultSpecError(f"fault option {key!r} is not p, after or delay")
        except ValueError as exc:
            if isinstance(exc, FaultSpecError):
                raise
            raise FaultSpecError(f"fault option {key}={value!r} is not a number") from None
    fault.__post_init__()
    return fault


class FaultyMeter:
    """A ``MeterServer`` that misbehaves as told; ``handle`` has the server's shape (no delays)."""

    def __init__(
        self, server: MeterServer, rng: random.Random, faults: Iterable[Fault] = ()
    ) -> None:
        self.server = server
        self.rng = rng
        self.faults: list[Fault] = list(faults)
        self.counters: Counter[str] = Counter()

    @property
    def server_wport(self) -> int:
        return self.server.server_wport

    def inject(self, fault: Fault) -> None:
        """Queue a fault after those already queued (each applies once the previous is spent)."""
        self.faults.append(fault)

    def clear(self) -> None:
        self.faults.clear()

    def handle(self, frame: bytes) -> bytes | None:
        reply = self.respond(frame)
        return None if reply is None else reply.frame

    def respond(self, frame: bytes) -> Reply | None:
        """The reply to ``frame`` (or None), with the delay after which it is due."""
        fault = self._due()
        if fault is None:
            return self._serve(frame)
        self.counters[fault.kind.value] += 1
        if fault.kind == FaultKind.SILENCE:
            return None
        if fault.kind == FaultKind.LOST_REPLY:
            self.server.handle(frame)
            return None
        if fault.kind == FaultKind.DESYNC:
            self.server.desync_counters(client=self.server.client_counter + DESYNC_JUMP)
            return self._serve(frame)
        if fault.kind == FaultKind.GARBAGE:
            self.server.handle(frame)  # the meter did the work; what it sent was garbled
            return Reply(self.rng.randbytes(self.rng.randint(1, 64)))
        real = self.server.handle(frame)
        if real is None:
            return None
        if fault.kind == FaultKind.SLOW:
            return Reply(real, fault.delay_s)
        if fault.kind == FaultKind.CORRUPT:
            return Reply(self._corrupt(real))
        return Reply(self._wrong_apdu(frame, real))

    def _serve(self, frame: bytes) -> Reply | None:
        real = self.server.handle(frame)
        return None if real is None else Reply(real)

    def _due(self) -> Fault | None:
        """The fault that applies to this frame, consuming one of its frames; None: behave."""
        while self.faults and self.faults[0].count == 0:
            self.faults.pop(0)
        if not self.faults:
            return None
        fault = self.faults[0]
        if fault.after > 0:
            fault.after -= 1
            return None
        if fault.probability < 1.0 and self.rng.random() >= fault.probability:
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count == 0:
                self.faults.pop(0)
        return fault

    def _corrupt(self, real: bytes) -> bytes:
        try:
            header, apdu = parse_frame(real)
        except WrapperError:
            return real[: max(1, len(real) // 2)]
        if len(apdu) < 2:
            return build_frame(header.source, header.destination, b"")
        return build_frame(
            header.source, header.destination, apdu[: self.rng.randint(1, len(apdu) - 1)]
        )

    @staticmethod
    def _wrong_apdu(request: bytes, real: bytes) -> bytes:
        try:
            header, _ = parse_frame(real)
            _, asked = parse_frame(request)
        except WrapperError:
            return real
        invoke = asked[2] if len(asked) > 2 else 0x81
        if asked[:1] == bytes([_AARQ]):
            apdu = _RLRE
        elif asked[:1] == bytes([_GET_REQUEST]):
            apdu = bytes([0xC7, 0x01, invoke, 0x00])  # ACTION-Response-Normal, success
        else:
            apdu = bytes([0xC4, 0x01, invoke, 0x00, 0x00])  # GET-Response-Normal, null data
        return build_frame(header.source, header.destination, apdu)
