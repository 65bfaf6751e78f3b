"""CIM ``MeterStatusData`` messages (IEC 61968-9 style), as the seed 003 OMS interface uses them.

Sans-IO: bytes in, dataclasses out, and back. The element names, their order and the value
formats follow the seed document exactly (``Message/Header/{Verb,Noun,Timestamp,
RespondByTimestamp,CorrelationID}``, ``Reply/ReplyCode``, ``Payload/EndDeviceEvents/
EndDeviceEvent/{category,createdDateTime,description,Assets/mRID}``).

Why it is lenient here and strict there:

* An OMS may or may not put its elements in an IEC namespace, and IEC 61968-100 names the root
  ``RequestMessage``/``ResponseMessage``/``EventMessage``; we match on local names, so all of
  these parse. We write plain ``<Message>`` without a namespace, as the seed shows it.
* The seed's own template has typographic quotes in its XML declaration (a word processor's
  doing); we accept those in the declaration only, so its example parses as printed.
* XML from the network is hostile until proven otherwise: a DOCTYPE (entity expansion bombs,
  external entities) is refused before the parser sees the document, and size is capped.
* Everything we write is ASCII (the seed asks for ASCII or MBCS); other characters become
  character references.

Every problem raises ``CimError`` naming the element that is wrong.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

VERB_GET = "GET"
VERB_REPLY = "REPLY"
NOUN = "MeterStatusData"
ROOTS = ("Message", "RequestMessage", "ResponseMessage", "EventMessage")

# ReplyCode "#1.#2" refers to the GET message itself, not to the meters' status (seed 003). The
# seed's list of allowed values did not survive; these are ours, documented in docs/commands.md.
REPLY_OK = "0.0"  # the GET was understood; per-meter outcomes are in the payload
REPLY_BAD_REQUEST = "5.1"  # not well-formed, or a required element missing / wrong
REPLY_UNSUPPORTED = "5.2"  # a Verb or Noun this gateway does not serve
REPLY_TOO_LARGE = "5.3"  # more meters (or bytes) than the gateway answers in one message

RESPONSE_TIMED_OUT = "Response Timed Out"  # the seed's meter_response text for a late meter
MAX_DESCRIPTION = 512  # characters, seed 003
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the seed's MSMQ limit; MQTT callers pass less

_CATEGORY = re.compile(r"\d{1,5}\.\d{1,5}\.\d{1,5}\.\d{1,5}")
_REPLY_CODE = re.compile(r"\d{1,5}\.\d{1,5}")
_DECLARATION_QUOTES = ("\u201c".encode(), "\u201d".encode(), "\u2033".encode())


class CimError(ValueError):
    """A CIM message that does not follow the contract; ``where`` names the element."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class EndDeviceEvent:
    """One response profile: a category and time shared by the meters listed in ``assets``."""

    category: str  # "#1.#2.#3.#4": domain, domain part, event type, event index
    created: str | None  # createdDateTime as written, e.g. "2010-04-18T13:31:23Z"
    assets: tuple[str, ...]  # mRIDs
    description: str | None = None


@dataclass(frozen=True)
class CimMessage:
    verb: str  # "GET" | "REPLY" (upper case)
    noun: str
    timestamp: str
    events: tuple[EndDeviceEvent, ...] = ()
    correlation_id: str | None = None  # None on unsolicited REPLY messages
    respond_by: str | None = None
    reply_code: str | None = None
    error: str | None = None  # our Reply/Error/details on an error reply (not in the seed)


@dataclass(frozen=True)
class MeterStatusRequest:
    """A MeterStatusData GET, checked: which meters, and by when."""

    correlation_id: str
    timestamp: float  # POSIX seconds
    respond_by: float | None
    category: str
    meters: tuple[str, ...]  # in request order, duplicates dropped


# -- time -------------------------------------------------------------------------------------
def cim_time(t: float) -> str:
    """POSIX seconds → the seed's ``YYYY-MM-DDThh:mm:ssZ`` (whole seconds, UTC)."""
    return dt.datetime.fromtimestamp(int(t // 1), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(where: str, text: str) -> float:
    """An ISO 8601 time with a zone (``Z`` or an offset) → POSIX seconds."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CimError(where, f"{text!r} is not an ISO 8601 date-time") from None
    if t.tzinfo is None:
        raise CimError(where, f"{text!r} has no time zone (expected e.g. 2010-04-18T13:31:23Z)")
    return t.timestamp()


# -- parsing ----------------------------------------------------------------------------------
def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _one(el: ET.Element, name: str, where: str, *, required: bool = True) -> ET.Element | None:
    found = _children(el, name)
    if len(found) > 1:
        raise CimError(f"{where}/{name}", f"appears {len(found)} times, at most once allowed")
    if not found:
        if required:
            raise CimError(f"{where}/{name}", "missing")
        return None
    return found[0]


def _text(el: ET.Element, name: str, where: str, *, required: bool = True) -> str | None:
    child = _one(el, name, where, required=required)
    if child is None:
        return None
    if len(child):
        raise CimError(f"{where}/{name}", "must hold text, not elements")
    text = (child.text or "").strip()
    if not text:
        if required:
            raise CimError(f"{where}/{name}", "empty")
        return None
    return text


def _fix_declaration(data: bytes) -> bytes:
    if not data.startswith(b"<?xml"):
        return data
    end = data.find(b"?>")
    if end < 0:
        return data
    head = data[:end]
    for quote in _DECLARATION_QUOTES:
        head = head.replace(quote, b'"')
    return head + data[end:]


def _root(data: bytes, max_bytes: int) -> ET.Element:
    if len(data) > max_bytes:
        raise CimError("Message", f"{len(data)} bytes, more than the limit of {max_bytes}")
    data = data.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not data.startswith(b"<"):
        raise CimError("Message", "not XML in ASCII or UTF-8 (the first character is not '<')")
    lowered = data.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise CimError("Message", "a DOCTYPE or ENTITY declaration is not accepted")
    try:
        root = ET.fromstring(_fix_declaration(data))
    except ET.ParseError as e:
        raise CimError("Message", f"not well-formed XML: {e}") from None
    if _local(root.tag) not in ROOTS:
        raise CimError(_local(root.tag) or "Message", f"root element must be one of {ROOTS}")
    return root


def _event(el: ET.Element, where: str, *, created_required: bool) -> EndDeviceEvent:
    category = _text(el, "category", where)
    assert category is not None
    if not _CATEGORY.fullmatch(category):
        raise CimError(f"{where}/category", f"{category!r} is not #1.#2.#3.#4")
    created = _text(el, "createdDateTime", where, required=created_required)
    if created is not None:
        parse_time(f"{where}/createdDateTime", created)
    description = _text(el, "description", where, required=False)
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise CimError(f"{where}/description", f"{len(description)} characters > {MAX_DESCRIPTION}")
    assets_el = _one(el, "Assets", where)
    assert assets_el is not None
    assets: list[str] = []
    for i, m in enumerate(assets_el):
        w = f"{where}/Assets/{_local(m.tag)}[{i}]"
        if _local(m.tag) != "mRID":
            raise CimError(w, "only mRID elements may appear in Assets")
        mrid = (m.text or "").strip()
        if not mrid or len(m):
            raise CimError(w, "empty mRID")
        assets.append(mrid)
    if not assets:
        raise CimError(f"{where}/Assets", "lists no mRID")
    return EndDeviceEvent(category, created, tuple(assets), description)


def parse_message(data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> CimMessage:
    """Any MeterStatusData-shaped message (GET or REPLY), checked element by element."""
    root = _root(data, max_bytes)
    header = _one(root, "Header", "Message")
    assert header is not None
    verb = _text(header, "Verb", "Header")
    noun = _text(header, "Noun", "Header")
    timestamp = _text(header, "Timestamp", "Header")
    assert verb is not None and noun is not None and timestamp is not None
    verb = verb.upper()
    parse_time("Header/Timestamp", timestamp)
    respond_by = _text(header, "RespondByTimestamp", "Header", required=False)
    if respond_by is not None:
        parse_time("Header/RespondByTimestamp", respond_by)
    correlation = _text(header, "CorrelationID", "Header", required=False)
    reply_code: str | None = None
    error: str | None = None
    reply = _one(root, "Reply", "Message", required=False)
    if reply is not None:
        reply_code = _text(reply, "ReplyCode", "Reply")
        assert reply_code is not None
        if not _REPLY_CODE.fullmatch(reply_code):
            raise CimError("Reply/ReplyCode", f"{reply_code!r} is not #1.#2")
        err = _one(reply, "Error", "Reply", required=False)
        if err is not None:
            error = _text(err, "details", "Reply/Error", required=False)
    elif verb == VERB_REPLY:
        raise CimError("Message/Reply", "missing (required on REPLY messages)")
    payload = _one(root, "Payload", "Message")
    assert payload is not None
    events_el = _one(payload, "EndDeviceEvents", "Payload")
    assert events_el is not None
    events: list[EndDeviceEvent] = []
    for i, ev in enumerate(events_el):
        where = f"EndDeviceEvents/EndDeviceEvent[{i}]"
        if _local(ev.tag) != "EndDeviceEvent":
            raise CimError(where, f"unexpected element {_local(ev.tag)!r}")
        events.append(_event(ev, where, created_required=verb == VERB_REPLY))
    return CimMessage(
        verb=verb,
        noun=noun,
        timestamp=timestamp,
        events=tuple(events),
        correlation_id=correlation,
        respond_by=respond_by,
        reply_code=reply_code,
        error=error,
    )


def parse_get(
    data: bytes, *, max_meters: int = 2000, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> MeterStatusRequest:
    """A MeterStatusData GET: exactly one EndDeviceEvent listing the meters, a CorrelationID."""
    msg = parse_message(data, max_bytes=max_bytes)
    if msg.verb != VERB_GET:
        raise CimError("Header/Verb", f"{msg.verb!r}, expected {VERB_GET!r}")
    if msg.noun != NOUN:
        raise CimError("Header/Noun", f"{msg.noun!r}, expected {NOUN!r}")
    if msg.correlation_id is None or msg.correlation_id == "0":
        raise CimError("Header/CorrelationID", "missing (required on GET; 0 is not a request id)")
    if len(msg.events) != 1:
        raise CimError(
            "EndDeviceEvents", f"{len(msg.events)} EndDeviceEvent elements, a GET has exactly one"
        )
    event = msg.events[0]
    meters = tuple(dict.fromkeys(event.assets))
    if len(meters) > max_meters:
        raise CimError("Assets", f"{len(meters)} meters, this gateway answers at most {max_meters}")
    return MeterStatusRequest(
        correlation_id=msg.correlation_id,
        timestamp=parse_time("Header/Timestamp", msg.timestamp),
        respond_by=None
        if msg.respond_by is None
        else parse_time("Header/RespondByTimestamp", msg.respond_by),
        category=event.category,
        meters=meters,
    )


def correlation_of(data: bytes) -> str | None:
    """Best effort: the CorrelationID of a message that may be otherwise broken (for the error
    reply). None if there is none or the XML does not parse."""
    try:
        root = _root(data, DEFAULT_MAX_MESSAGE_BYTES)
        header = _one(root, "Header", "Message")
        return None if header is None else _text(header, "CorrelationID", "Header", required=False)
    except CimError:
        return None


# -- building ---------------------------------------------------------------------------------
def _sub(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, name)
    if text is not None:
        el.text = text
    return el


def _check_event(ev: EndDeviceEvent) -> None:
    if not _CATEGORY.fullmatch(ev.category):
        raise CimError("EndDeviceEvent/category", f"{ev.category!r} is not #1.#2.#3.#4")
    if ev.created is not None:
        parse_time("EndDeviceEvent/createdDateTime", ev.created)
    if not ev.assets or any(not a.strip() for a in ev.assets):
        raise CimError("EndDeviceEvent/Assets", "needs at least one non-empty mRID")
    if ev.description is not None and len(ev.description) > MAX_DESCRIPTION:
        raise CimError("EndDeviceEvent/description", f"longer than {MAX_DESCRIPTION} characters")


def _event_element(ev: EndDeviceEvent) -> ET.Element:
    el = ET.Element("EndDeviceEvent")
    _sub(el, "category", ev.category)
    if ev.created is not None:
        _sub(el, "createdDateTime", ev.created)
    if ev.description is not None:
        _sub(el, "description", ev.description)
    assets = _sub(el, "Assets")
    for mrid in ev.assets:
        _sub(assets, "mRID", mrid)
    return el


def _envelope(msg: CimMessage) -> tuple[ET.Element, ET.Element]:
    if msg.verb not in (VERB_GET, VERB_REPLY):
        raise CimError("Header/Verb", f"{msg.verb!r}, expected GET or REPLY")
    root = ET.Element("Message")
    header = _sub(root, "Header")
    _sub(header, "Verb", msg.verb)
    _sub(header, "Noun", msg.noun)
    _sub(header, "Timestamp", msg.timestamp)
    if msg.respond_by is not None:
        _sub(header, "RespondByTimestamp", msg.respond_by)
    if msg.correlation_id is not None:
        _sub(header, "CorrelationID", msg.correlation_id)
    if msg.reply_code is not None:
        if not _REPLY_CODE.fullmatch(msg.reply_code):
            raise CimError("Reply/ReplyCode", f"{msg.reply_code!r} is not #1.#2")
        reply = _sub(root, "Reply")
        _sub(reply, "ReplyCode", msg.reply_code)
        if msg.error is not None:
            _sub(_sub(reply, "Error"), "details", msg.error)
    elif msg.verb == VERB_REPLY:
        raise CimError("Reply/ReplyCode", "required on REPLY messages")
    events = _sub(_sub(root, "Payload"), "EndDeviceEvents")
    return root, events


_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _serialise(el: ET.Element) -> bytes:
    return bytes(
        ET.tostring(el, encoding="us-ascii", xml_declaration=False, short_empty_elements=False)
    )


def build_message(msg: CimMessage) -> bytes:
    """One message, ASCII, with the XML declaration the seed shows."""
    root, events = _envelope(msg)
    for ev in msg.events:
        _check_event(ev)
        events.append(_event_element(ev))
    return _DECLARATION + _serialise(root)


def build_replies(
    events: Sequence[EndDeviceEvent],
    *,
    timestamp: float,
    correlation_id: str | None,
    reply_code: str = REPLY_OK,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[bytes]:
    """REPLY messages carrying ``events``, split (by mRID) so that none exceeds ``max_bytes``.
    Every part repeats the CorrelationID; each meter appears in exactly one part."""
    for ev in events:
        _check_event(ev)
    base = CimMessage(VERB_REPLY, NOUN, cim_time(timestamp), (), correlation_id, None, reply_code)
    empty = len(build_message(base))
    if not events:
        return [build_message(base)]
    out: list[bytes] = []
    current: list[EndDeviceEvent] = []
    size = empty

    def flush() -> None:
        nonlocal current, size
        if current:
            out.append(build_message(_replace_events(base, current)))
        current, size = [], empty

    for ev in events:
        shell = len(
            _serialise(
                _event_element(EndDeviceEvent(ev.category, ev.created, ("x",), ev.description))
            )
        )
        shell -= len(_serialise(_mrid("x")))
        costs = [len(_serialise(_mrid(m))) for m in ev.assets]
        if empty + shell + max(costs) > max_bytes:
            raise CimError("Message", f"one meter does not fit in {max_bytes} bytes")
        pending: list[str] = []
        for mrid, cost in zip(ev.assets, costs, strict=True):
            extra = cost + (0 if pending else shell)
            if size + extra > max_bytes:
                if pending:
                    current.append(
                        EndDeviceEvent(ev.category, ev.created, tuple(pending), ev.description)
                    )
                    pending = []
                flush()
                extra = cost + shell
            pending.append(mrid)
            size += extra
        current.append(EndDeviceEvent(ev.category, ev.created, tuple(pending), ev.description))
    flush()
    return out


def _mrid(text: str) -> ET.Element:
    el = ET.Element("mRID")
    el.text = text
    return el


def _replace_events(msg: CimMessage, events: Iterable[EndDeviceEvent]) -> CimMessage:
    return CimMessage(
        msg.verb,
        msg.noun,
        msg.timestamp,
        tuple(events),
        msg.correlation_id,
        msg.respond_by,
        msg.reply_code,
        msg.error,
    )


def error_reply(
    correlation_id: str | None, reply_code: str, detail: str, *, timestamp: float
) -> bytes:
    """A REPLY that says the GET could not be served: ReplyCode plus Reply/Error/details (our
    addition: the seed has no element for the reason), and an empty payload."""
    return build_message(
        CimMessage(
            VERB_REPLY,
            NOUN,
            cim_time(timestamp),
            (),
            correlation_id,
            None,
            reply_code,
            detail[:MAX_DESCRIPTION],
        )
    )


__all__ = [
    "NOUN",
    "REPLY_BAD_REQUEST",
    "REPLY_OK",
    "REPLY_TOO_LARGE",
    "REPLY_UNSUPPORTED",
    "RESPONSE_TIMED_OUT",
    "VERB_GET",
    "VERB_REPLY",
    "CimError",
    "CimMessage",
    "EndDeviceEvent",
    "MeterStatusRequest",
    "build_message",
    "build_replies",
    "cim_time",
    "correlation_of",
    "error_reply",
    "parse_get",
    "parse_message",
    "parse_time",
]
