"""Pushes from meters (DataNotification, EventNotificationRequest) into alarm records.

Sans-IO: ``parse_push`` takes one WRAPPER frame and returns an ``Alarm`` (records.py: the same
record the gateway's own alarms use) or raises ``PushError`` naming what was wrong. The edges
(the UDP listener in ``push_listener.py``, the mesh's unsolicited-frame callback) feed
``PushReceiver.on_push``, which spools alarms at ``Priority.ALARM`` and quarantines what does not
parse.

Body layout (the meter emulator sends it; the DLMS specification leaves the DataNotification body
to the push setup's object list, so this is our push setup 0.0.25.9.0.255's list):

    DataNotification (0x0F):
        long-invoke-id-and-priority  u32
        date-time                    octet-string (0 or 12 bytes: A-XDR length, no tag)
        notification-body            structure {
            octet-string[6]   push setup logical name (0.0.25.9.0.255)      -- class 40, attr 1
            octet-string      device id (0.0.96.1.0.255), ASCII             -- class 1, attr 2
            octet-string[12]  meter clock at the event (0.0.1.0.0.255)      -- class 8, attr 2
            long-unsigned     event code (0.0.96.11.0.255, standard log)    -- class 1, attr 2
        }

Event codes (standard event log, as DSMR/IDIS number them): 1 power down (last gasp), 2 power up
(power restored), 40/42/44 terminal cover removed / strong DC field / meter cover removed
(tamper). Unknown codes are still alarms (event ``event-<code>``). An EventNotificationRequest
(0xC2) carrying attribute 2 of 0.0.96.11.0.255 is mapped the same way. gurux's client parses the
DataNotification body as a 4-element list through ``getData(frame, reply, notify)``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..clock import Clock
from ..spool import Priority, Spool, SpoolError
from .obis import bytes_to_obis
from .quarantine import MALFORMED_PAYLOAD, Quarantine
from .records import Alarm, iso_utc
from .wrapper import WrapperError, parse_frame

log = logging.getLogger(__name__)

DATA_NOTIFICATION = 0x0F
EVENT_NOTIFICATION = 0xC2
PUSH_SETUP = "0.0.25.9.0.255"
EVENT_CODE_OBJECT = "0.0.96.11.0.255"

LAST_GASP = "last-gasp"
POWER_RESTORED = "power-restored"
TAMPER = "tamper"
EVENT_CODES: dict[int, str] = {
    1: LAST_GASP,
    2: POWER_RESTORED,
    40: TAMPER,  # terminal cover removed
    42: TAMPER,  # strong DC field detected
    44: TAMPER,  # meter cover removed
}
EVENT_CODE_NAMES: dict[int, str] = {
    1: "power down",
    2: "power up",
    40: "terminal cover removed",
    42: "strong DC field detected",
    44: "meter cover removed",
}

Unwrap = Callable[[bytes], bytes]


class PushError(ValueError):
    """A push that cannot become an alarm; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str, frame: bytes = b"") -> None:
        self.reason = reason
        self.detail = detail
        self.frame = bytes(frame)
        super().__init__(f"{reason}: {detail}")


# ------------------------------------------------------------------------------- A-XDR decoding


class _Reader:
    def __init__(self, data: bytes, frame: bytes) -> None:
        self.data = data
        self.pos = 0
        self.frame = frame

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PushError(
                "truncated",
                f"{what}: needs {n} bytes at offset {self.pos}, APDU has {len(self.data)}",
                self.frame,
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def length(self, what: str) -> int:
        first = self.u8(what)
        if first < 0x80:
            return first
        n = first & 0x7F
        if n == 0 or n > 4:
            raise PushError("bad-length", f"{what}: length prefix 0x{first:02x}", self.frame)
        return int.from_bytes(self.take(n, what), "big")


_FIXED: dict[int, tuple[int, str]] = {
    0x03: (1, "?"),  # boolean
    0x05: (4, ">i"),  # double-long
    0x06: (4, ">I"),  # double-long-unsigned
    0x0F: (1, ">b"),  # integer
    0x10: (2, ">h"),  # long
    0x11: (1, ">B"),  # unsigned
    0x12: (2, ">H"),  # long-unsigned
    0x14: (8, ">q"),  # long64
    0x15: (8, ">Q"),  # long64-unsigned
    0x16: (1, ">B"),  # enum
}


def _data(r: _Reader, depth: int = 0) -> Any:
    """One A-XDR Data value: lists for array/structure, bytes for octet-string, str, int."""
    if depth > 16:
        raise PushError("too-deep", "nesting deeper than 16", r.frame)
    tag = r.u8("data tag")
    if tag == 0x00:
        return None
    if tag in (0x01, 0x02):
        return [_data(r, depth + 1) for _ in range(r.length("element count"))]
    if tag == 0x09:
        return bytes(r.take(r.length("octet-string length"), "octet-string"))
    if tag == 0x0A:
        raw = r.take(r.length("visible-string length"), "visible-string")
        return raw.decode("ascii", errors="replace")
    if tag == 0x19:
        return bytes(r.take(12, "date-time"))
    if tag in _FIXED:
        size, fmt = _FIXED[tag]
        raw = r.take(size, f"data type 0x{tag:02x}")
        return bool(raw[0]) if fmt == "?" else struct.unpack(fmt, raw)[0]
    raise PushError("unknown-type", f"A-XDR data tag 0x{tag:02x} at offset {r.pos - 1}", r.frame)


def cosem_datetime(raw: bytes) -> datetime | None:
    """A 12-byte COSEM date-time as aware UTC; None if 'not specified' (0xFF fields)."""
    if len(raw) != 12:
        return None
    year, month, day, _dow, hour, minute, second, hundredths = struct.unpack(">HBBBBBBB", raw[:9])
    deviation = struct.unpack(">h", raw[9:11])[0]
    if 0xFFFF in (year,) or 0xFF in (month, day, hour, minute) or month > 12 or day > 31:
        return None
    sec = 0 if second == 0xFF else second
    cs = 0 if hundredths == 0xFF else hundredths
    try:
        dt = datetime(year, month, day, hour, minute, sec, cs * 10_000, tzinfo=UTC)
    except ValueError:
        return None
    if deviation != -0x8000:  # 0x8000: deviation not specified -> treat as UTC
        # COSEM deviation: minutes local time is *behind* UTC (UTC = local + deviation).
        dt = dt.fromtimestamp(dt.timestamp() + deviation * 60, UTC)
    return dt


# ------------------------------------------------------------------------------- parsing


def parse_push(
    meter_id: str,
    frame: bytes,
    arrival: float,
    *,
    unwrap: Unwrap | None = None,
) -> Alarm:
    """One WRAPPER frame with a DataNotification or EventNotificationRequest -> an alarm.
    ``unwrap`` deciphers a secured APDU (the security helper's suite 0) before parsing."""
    try:
        _, apdu = parse_frame(frame)
    except WrapperError as exc:
        raise PushError(f"wrapper-{exc.reason}", exc.detail, frame) from None
    if unwrap is not None:
        try:
            apdu = unwrap(apdu)
        except Exception as exc:  # the security layer names its own errors (MAC Fail, replay)
            raise PushError("unwrap-failed", f"{type(exc).__name__}: {exc}", frame) from exc
    if not apdu:
        raise PushError("empty", "no APDU in the frame", frame)
    if apdu[0] == DATA_NOTIFICATION:
        return _data_notification(meter_id, apdu, frame, arrival)
    if apdu[0] == EVENT_NOTIFICATION:
        return _event_notification(meter_id, apdu, frame, arrival)
    raise PushError("not-a-push", f"APDU tag 0x{apdu[0]:02x} is no notification", frame)


def _data_notification(meter_id: str, apdu: bytes, frame: bytes, arrival: float) -> Alarm:
    r = _Reader(apdu, frame)
    r.u8("tag")
    invoke_id = int.from_bytes(r.take(4, "long-invoke-id-and-priority"), "big")
    stamp = r.take(r.length("date-time length"), "date-time")
    if len(stamp) not in (0, 12):
        raise PushError("bad-date-time", f"date-time of {len(stamp)} bytes, not 0 or 12", frame)
    body = _data(r)
    if r.pos != len(apdu):
        raise PushError("trailing-bytes", f"{len(apdu) - r.pos} bytes after the body", frame)
    if not isinstance(body, list) or len(body) < 4:
        raise PushError("bad-body", f"body {_short(body)} is not a 4-element structure", frame)
    setup, device, clock_raw, code = body[:4]
    if not isinstance(setup, bytes) or len(setup) != 6:
        raise PushError("bad-body", f"push setup name {_short(setup)} is not 6 bytes", frame)
    if not isinstance(code, int) or isinstance(code, bool):
        raise PushError("bad-body", f"event code {_short(code)} is not an integer", frame)
    device_id = device.decode("ascii", "replace") if isinstance(device, bytes) else str(device)
    when = cosem_datetime(clock_raw) if isinstance(clock_raw, bytes) else None
    when = when or (cosem_datetime(stamp) if stamp else None)
    return _alarm(
        meter_id,
        code,
        when,
        arrival,
        push_setup=bytes_to_obis(setup),
        invoke_id=invoke_id & 0x00FFFFFF,
        values={"device": device_id} if device_id != meter_id else {},
    )


def _event_notification(meter_id: str, apdu: bytes, frame: bytes, arrival: float) -> Alarm:
    r = _Reader(apdu, frame)
    r.u8("tag")
    stamp = b""
    present = r.u8("time presence")
    # 0x01: OPTIONAL present, then an A-XDR octet-string; 0x09: gurux's tagged octet-string
    if present in (0x01, 0x09):
        stamp = r.take(r.length("time length"), "time")
    elif present != 0x00:
        raise PushError("bad-time", f"time field starts with 0x{present:02x}", frame)
    class_id = int.from_bytes(r.take(2, "class id"), "big")
    ln = bytes_to_obis(r.take(6, "logical name"))
    attribute = r.u8("attribute")
    value = _data(r)
    if ln != EVENT_CODE_OBJECT or attribute != 2:
        raise PushError(
            "unknown-event-object", f"IC {class_id} {ln} attr {attribute} is no event code", frame
        )
    if not isinstance(value, int) or isinstance(value, bool):
        raise PushError("bad-body", f"event code {_short(value)} is not an integer", frame)
    return _alarm(meter_id, value, cosem_datetime(stamp) if stamp else None, arrival)


def _alarm(
    meter_id: str,
    code: int,
    when: datetime | None,
    arrival: float,
    **extra: Any,
) -> Alarm:
    return Alarm(
        device_id=meter_id,
        event=EVENT_CODES.get(code, f"event-{code}"),
        time=iso_utc(when if when is not None else arrival),
        arrival_time=iso_utc(arrival),
        code=code,
        description=EVENT_CODE_NAMES.get(code, ""),
        **extra,
    )


def _short(value: object) -> str:
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------- receiving


@dataclass
class PushStats:
    received: int = 0
    alarms: int = 0
    duplicates: int = 0
    malformed: int = 0
    unstored: int = 0  # alarms the spool refused (its budget full of alarms) or failed to store
    by_event: dict[str, int] = field(default_factory=dict)


class PushReceiver:
    """Where unsolicited frames go: alarms to the spool at top priority, garbage to quarantine.

    ``on_push(meter_id, frame)`` is the callback for the mesh (MeshLinks routes frames nobody
    asked for here) and for the UDP listener. It never raises: a bad push is counted and
    quarantined as "Malformed Payload"."""

    def __init__(
        self,
        spool: Spool,
        clock: Clock,
        *,
        quarantine: Quarantine | None = None,
        unwrap_for: Callable[[str], Unwrap | None] | None = None,
        listener: Callable[[Alarm], None] | None = None,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self.quarantine = quarantine
        self.unwrap_for = unwrap_for
        self.listener = listener
        self.stats = PushStats()

    def on_push(self, meter_id: str, frame: bytes) -> None:
        self.stats.received += 1
        unwrap = self.unwrap_for(meter_id) if self.unwrap_for is not None else None
        try:
            alarm = parse_push(meter_id, frame, self.clock.now(), unwrap=unwrap)
        except PushError as exc:
            self.stats.malformed += 1
            log.warning("%s from meter %s: push %s", MALFORMED_PAYLOAD, meter_id, exc)
            if self.quarantine is not None:
                self.quarantine.add(meter_id, "push", exc.reason, frame, exc.detail)
            return
        try:
            stored = self.spool.add([(alarm.to_dict(), alarm.natural_key)], Priority.ALARM)
        except SpoolError as exc:  # a disk full of alarms, or a failing disk: say so loudly
            self.stats.unstored += 1
            log.error(
                "alarm from meter %s (%s) could not be spooled: %s", meter_id, alarm.event, exc
            )
            return
        if not stored:
            self.stats.duplicates += 1
            return
        self.stats.alarms += 1
        self.stats.by_event[alarm.event] = self.stats.by_event.get(alarm.event, 0) + 1
        log.warning("alarm from meter %s: %s at %s", meter_id, alarm.event, alarm.time)
        if self.listener is not None:
            self.listener(alarm)
