"""MQTT topics and JSON payloads between gateway and head end (sans-IO: bytes in, objects out).

Why batches: one MQTT message carries many spool records, so one PUBACK acknowledges them all and
per-message overhead (TLS record, PUBACK round trip, fsync of the delete) is shared. Each record
keeps its own ``record_id`` and ``natural_key`` so the head end can drop the duplicates that
at-least-once delivery produces. The documented contract is docs/mqtt.md and docs/schemas/.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from firmware_agent.spool import RESERVED_FIELDS, PackedBatch, Priority, SpoolRecord
from firmware_agent.spool import iso_utc as _spool_iso_utc

READINGS_SCHEMA = "readings/1"
STATUS_SCHEMA = "status/1"
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
PRIORITY_NAMES = {
    Priority.ALARM: "alarm",
    Priority.ON_DEMAND: "on_demand",
    Priority.INTERVAL: "interval",
}
_PRIORITY_BY_NAME = {v: k for k, v in PRIORITY_NAMES.items()}


class PayloadError(ValueError):
    """A payload or topic that does not follow the contract; names the field that is wrong."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


class MessageTooLarge(PayloadError):
    """The encoded batch exceeds the per-message cap; the caller sends fewer records."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__("payload", f"{size} bytes > limit {limit}")


# -- topics -----------------------------------------------------------------------------------
def check_topic_level(what: str, value: str) -> None:
    # Four ``in`` tests, not a generator over the characters: every readings message is checked
    # (0.16 us instead of 0.47, measured with timeit).
    if not value or "/" in value or "+" in value or "#" in value or "\0" in value:
        raise PayloadError(what, f"{value!r} is not usable as one MQTT topic level")


def readings_topic(prefix: str, gateway_id: str) -> str:
    check_topic_level("gateway_id", gateway_id)
    return f"{prefix}/{gateway_id}/readings"


def status_topic(prefix: str, gateway_id: str) -> str:
    check_topic_level("gateway_id", gateway_id)
    return f"{prefix}/{gateway_id}/status"


def event_topic(prefix: str, gateway_id: str, kind: str) -> str:
    """Where unsolicited messages of one kind go, e.g. ``ami/gw-01/events/cim``."""
    check_topic_level("gateway_id", gateway_id)
    check_topic_level("event kind", kind)
    return f"{prefix}/{gateway_id}/events/{kind}"


def events_filter(prefix: str) -> str:
    return f"{prefix}/+/events/+"


def readings_filter(prefix: str) -> str:
    return f"{prefix}/+/readings"


def status_filter(prefix: str) -> str:
    return f"{prefix}/+/status"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """``prefix/gateway/kind`` → its three parts (the prefix may itself contain slashes)."""
    parts = topic.rsplit("/", 2)
    if len(parts) != 3 or not all(parts):
        raise PayloadError("topic", f"{topic!r} is not <prefix>/<gateway_id>/<kind>")
    return parts[0], parts[1], parts[2]


# -- time -------------------------------------------------------------------------------------
def iso_utc(t: float) -> str:
    """Epoch seconds → RFC 3339 UTC with milliseconds, e.g. 2023-11-14T22:13:20.000Z (the
    spool's own function: it writes spooled_at into the records' stored heads)."""
    return _spool_iso_utc(t)


def parse_iso_utc(where: str, value: object) -> float:
    if not isinstance(value, str):
        raise PayloadError(where, "expected an RFC 3339 UTC timestamp string")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise PayloadError(where, f"{value!r} is not an RFC 3339 timestamp") from e
    if t.tzinfo is None:
        raise PayloadError(where, f"{value!r} has no time zone")
    return t.timestamp()


# -- readings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadingsMessage:
    message_id: str
    gateway_id: str
    sent_at: str
    records: tuple[dict[str, Any], ...]  # each with record_id, natural_key, priority, spooled_at


# Built once (json.dumps with arguments builds an encoder per call): options only, no state.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
_quote = json.encoder.encode_basestring  # a str as JSON, as _ENCODER writes it


def _dump(value: object) -> str:
    return _ENCODER.encode(value)


def record_entry_json(rec: SpoolRecord, spooled_at: str) -> str:
    """One record of a message as JSON text: the envelope fields, then the stored body's members
    spliced in as they are (the spool refuses bodies that use the envelope's field names).
    Byte for byte what the spool stores for a record in a page (``Spool.add``)."""
    head = (
        f'{{"record_id":{_quote(rec.record_id)},"natural_key":{_quote(rec.natural_key)},'
        f'"priority":"{PRIORITY_NAMES[rec.priority]}","spooled_at":"{spooled_at}"'
    )
    return head + ("}" if rec.body == "{}" else "," + rec.body[1:])


def encode_readings(
    gateway_id: str,
    records: Sequence[SpoolRecord],
    *,
    message_id: str,
    sent_at: float,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> bytes:
    """One readings message; raises ``MessageTooLarge`` beyond ``max_bytes``."""
    check_topic_level("gateway_id", gateway_id)
    if not records:
        raise PayloadError("records", "a readings message carries at least one record")
    envelope = _dump(
        {
            "schema": READINGS_SCHEMA,
            "message_id": message_id,
            "gateway_id": gateway_id,
            "sent_at": iso_utc(sent_at),
        }
    )
    stamps: dict[float, str] = {}  # records of one spool commit share their timestamp
    entries = []
    for rec in records:
        stamp = stamps.get(rec.created_at)
        if stamp is None:
            stamp = stamps[rec.created_at] = iso_utc(rec.created_at)
        entries.append(record_entry_json(rec, stamp))
    data = (envelope[:-1] + ',"records":[' + ",".join(entries) + "]}").encode()
    if len(data) > max_bytes:
        raise MessageTooLarge(len(data), max_bytes)
    return data


def encode_packed(
    gateway_id: str,
    packed: PackedBatch,
    *,
    message_id: str,
    sent_at: float,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> bytes:
    """The readings message of pages the spool encoded itself (``Spool.next_packed_many``): the
    same bytes ``encode_readings`` makes of those records, without per-record work here."""
    check_topic_level("gateway_id", gateway_id)
    if packed.records < 1:
        raise PayloadError("records", "a readings message carries at least one record")
    envelope = (
        f'{{"schema":"{READINGS_SCHEMA}","message_id":{_quote(message_id)},'
        f'"gateway_id":{_quote(gateway_id)},"sent_at":"{iso_utc(sent_at)}","records":['
    ).encode()
    data = b"".join((envelope, packed.entries, b"]}"))
    if len(data) > max_bytes:
        raise MessageTooLarge(len(data), max_bytes)
    return data


def envelope_overhead(gateway_id: str, n_records: int) -> int:
    """Bytes a batch of ``n_records`` adds around the record bodies (an upper bound): lets the
    uplink ask the spool for a batch that will fit."""
    fixed = 160 + len(gateway_id)
    per_record = 190  # ids, natural-key quoting, priority, spooled_at, separators
    return fixed + per_record * n_records


def _load_object(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError("payload", f"not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise PayloadError("payload", "must be a JSON object")
    return doc


def _str_field(doc: dict[str, Any], key: str, where: str = "") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where}{key}", "missing or not a non-empty string")
    return value


def decode_readings(payload: bytes, *, max_bytes: int | None = None) -> ReadingsMessage:
    """Check a readings message against the contract; raise ``PayloadError`` naming the field."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise MessageTooLarge(len(payload), max_bytes)
    doc = _load_object(payload)
    if doc.get("schema") != READINGS_SCHEMA:
        raise PayloadError("schema", f"{doc.get('schema')!r}, expected {READINGS_SCHEMA!r}")
    message_id = _str_field(doc, "message_id")
    gateway_id = _str_field(doc, "gateway_id")
    sent_at = _str_field(doc, "sent_at")
    parse_iso_utc("sent_at", sent_at)
    records = doc.get("records")
    if not isinstance(records, list) or not records:
        raise PayloadError("records", "missing or not a non-empty array")
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        where = f"records[{i}]."
        if not isinstance(rec, dict):
            raise PayloadError(f"records[{i}]", "must be an object")
        for key in ("record_id", "natural_key"):
            _str_field(rec, key, where)
        if rec.get("priority") not in _PRIORITY_BY_NAME:
            raise PayloadError(
                f"{where}priority",
                f"{rec.get('priority')!r}, expected one of {sorted(_PRIORITY_BY_NAME)}",
            )
        parse_iso_utc(f"{where}spooled_at", rec.get("spooled_at"))
        out.append(rec)
    return ReadingsMessage(message_id, gateway_id, sent_at, tuple(out))


def priority_from_name(name: str) -> Priority:
    try:
        return _PRIORITY_BY_NAME[name]
    except KeyError:
        raise PayloadError(
            "priority", f"{name!r}, expected one of {sorted(_PRIORITY_BY_NAME)}"
        ) from None


# -- unsolicited events (through the spool) ----------------------------------------------------
EVENT_FIELD = "uplink_event"
_EVENT_KEYS = frozenset({EVENT_FIELD, "content_type", "payload"})


@dataclass(frozen=True)
class Event:
    kind: str
    content_type: str
    payload: bytes


def event_record(kind: str, payload: str, content_type: str) -> dict[str, Any]:
    """A spool record that the uplink publishes on its own to ``<prefix>/<gw>/events/<kind>``
    (not inside a readings batch), e.g. an unsolicited CIM outage REPLY. Spooling it (priority
    ALARM) makes it as durable as a reading: deleted only after its own PUBACK."""
    check_topic_level("event kind", kind)
    if not content_type:
        raise PayloadError("content_type", "an event needs a content type")
    return {EVENT_FIELD: kind, "content_type": content_type, "payload": payload}


def as_event(rec: SpoolRecord) -> Event | None:
    """The event a spooled record carries, or None for an ordinary reading."""
    if f'"{EVENT_FIELD}":' not in rec.body:  # cheap test first: most records are readings
        return None
    data = rec.data
    if set(data) != _EVENT_KEYS:
        return None
    kind, ctype, payload = data[EVENT_FIELD], data["content_type"], data["payload"]
    if not all(isinstance(v, str) for v in (kind, ctype, payload)):
        return None
    try:
        check_topic_level("event kind", kind)
    except PayloadError:
        return None
    return Event(kind, ctype, payload.encode())


# -- status (birth / last will) ---------------------------------------------------------------
@dataclass(frozen=True)
class StatusMessage:
    gateway_id: str
    state: str  # "online" | "offline"
    sent_at: str
    reason: str
    spool: dict[str, Any] | None = None  # SpoolStats.to_dict() when sent; none in the last will


def encode_status(
    gateway_id: str,
    state: str,
    *,
    sent_at: float,
    reason: str = "",
    spool: Mapping[str, object] | None = None,
) -> bytes:
    """A retained status message. For the last will, ``sent_at`` is when the will was
    registered (connect time): the broker publishes it later, unchanged, so it carries no
    ``spool`` figures (they would be stale by then)."""
    check_topic_level("gateway_id", gateway_id)
    if state not in (STATUS_ONLINE, STATUS_OFFLINE):
        raise PayloadError("state", f"{state!r}, expected 'online' or 'offline'")
    doc: dict[str, object] = {
        "schema": STATUS_SCHEMA,
        "gateway_id": gateway_id,
        "state": state,
        "sent_at": iso_utc(sent_at),
        "reason": reason,
    }
    if spool is not None:
        doc["spool"] = dict(spool)
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_status(payload: bytes) -> StatusMessage:
    doc = _load_object(payload)
    if doc.get("schema") != STATUS_SCHEMA:
        raise PayloadError("schema", f"{doc.get('schema')!r}, expected {STATUS_SCHEMA!r}")
    gateway_id = _str_field(doc, "gateway_id")
    state = _str_field(doc, "state")
    if state not in (STATUS_ONLINE, STATUS_OFFLINE):
        raise PayloadError("state", f"{state!r}, expected 'online' or 'offline'")
    sent_at = _str_field(doc, "sent_at")
    parse_iso_utc("sent_at", sent_at)
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise PayloadError("reason", "must be a string")
    spool = doc.get("spool")
    if spool is not None and not isinstance(spool, dict):
        raise PayloadError("spool", "must be an object")
    return StatusMessage(gateway_id, state, sent_at, reason, spool)


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RESERVED_FIELDS",
    "MessageTooLarge",
    "PayloadError",
    "ReadingsMessage",
    "StatusMessage",
    "decode_readings",
    "decode_status",
    "encode_readings",
    "encode_status",
    "readings_topic",
    "status_topic",
]
