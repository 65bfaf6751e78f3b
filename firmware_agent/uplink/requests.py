"""MQTT v5 request/response plumbing for head-end commands (sans-IO: no client, no sockets).

Why a module of its own: the transport (``mqtt.py``) and the command handlers (``commands.py``)
meet here and nowhere else. The transport turns a PUBLISH on ``<prefix>/<gateway>/cmd/<name>``
into a ``CommandRequest``; the agent's handler turns that into a ``CommandResponse``; the
transport publishes it, QoS 1, to the request's Response Topic with the same Correlation Data.
Transport-level garbage (no Response Topic, oversized payload, a wildcard in the Response Topic,
an unknown topic shape) is refused here with a typed reason, so a handler only ever sees a request
that can be answered.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from firmware_agent.uplink.payloads import PayloadError, check_topic_level

CONTENT_TYPE_JSON = "application/json"
STATUS_OK = "ok"
STATUS_ERROR = "error"
ERROR_SCHEMA = "cmd-error/1"
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024  # firmware images travel by reference, not inline
MAX_CORRELATION_BYTES = 256
MAX_COMMAND_NAME = 64


@dataclass(frozen=True)
class CommandRequest:
    """One command as the handler sees it. ``name`` is the topic level after ``cmd/``
    (e.g. ``read``, ``ping``, ``meter-status``); ``received_at`` is the injected clock's
    ``now()`` when the message arrived, so deadlines are measured from arrival."""

    name: str
    payload: bytes
    content_type: str | None
    correlation: bytes | None
    response_topic: str | None
    received_at: float
    user_properties: tuple[tuple[str, str], ...] = ()
    topic: str = ""


@dataclass(frozen=True)
class CommandResponse:
    """What the handler answers. ``status`` travels as the MQTT v5 user property ``status`` so a
    requester can tell success from failure without parsing the payload."""

    payload: bytes
    content_type: str
    status: str
    user_properties: tuple[tuple[str, str], ...] = field(default=())


CommandHandler = Callable[[CommandRequest], Awaitable[CommandResponse | None]]


class RejectReason(enum.Enum):
    """Why the transport refused a request before any handler saw it."""

    BAD_TOPIC = "bad-topic"
    NO_RESPONSE_TOPIC = "no-response-topic"
    BAD_RESPONSE_TOPIC = "bad-response-topic"
    OVERSIZED = "oversized"
    BAD_CORRELATION = "bad-correlation"
    HANDLER_FAILED = "handler-failed"
    HANDLER_TIMEOUT = "handler-timeout"
    BUSY = "busy"
    RETAINED = "retained"
    NO_HANDLER = "no-handler"


class RequestRejected(Exception):
    """A request the transport refuses; names the reason and what was wrong."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


def command_filter(prefix: str, gateway_id: str) -> str:
    """The subscription that receives every command for this gateway."""
    check_topic_level("gateway_id", gateway_id)
    return f"{prefix}/{gateway_id}/cmd/+"


def command_topic(prefix: str, gateway_id: str, name: str) -> str:
    check_topic_level("gateway_id", gateway_id)
    check_topic_level("command name", name)
    return f"{prefix}/{gateway_id}/cmd/{name}"


def command_name(prefix: str, gateway_id: str, topic: str) -> str:
    """``<prefix>/<gateway>/cmd/<name>`` → ``name``; ``RequestRejected(BAD_TOPIC)`` otherwise."""
    head = f"{prefix}/{gateway_id}/cmd/"
    if not topic.startswith(head):
        raise RequestRejected(RejectReason.BAD_TOPIC, f"{topic!r} is not under {head!r}")
    name = topic[len(head) :]
    try:
        check_topic_level("command name", name)
    except PayloadError as e:
        raise RequestRejected(
            RejectReason.BAD_TOPIC, f"{topic!r}: command name {e.message}"
        ) from None
    if len(name) > MAX_COMMAND_NAME:
        raise RequestRejected(
            RejectReason.BAD_TOPIC, f"command name longer than {MAX_COMMAND_NAME}"
        )
    return name


def check_response_topic(topic: str | None) -> str:
    """A Response Topic we may publish to: present, non-empty, no wildcards (MQTT v5 §3.3.2.3.5)."""
    if topic is None or topic == "":
        raise RequestRejected(
            RejectReason.NO_RESPONSE_TOPIC,
            "the request has no Response Topic property: nowhere to answer",
        )
    if any(c in topic for c in "+#\0"):
        raise RequestRejected(
            RejectReason.BAD_RESPONSE_TOPIC, f"Response Topic {topic!r} contains a wildcard or NUL"
        )
    if topic.startswith("$"):
        raise RequestRejected(
            RejectReason.BAD_RESPONSE_TOPIC, f"Response Topic {topic!r} is a broker ($) topic"
        )
    return topic


def build_request(
    *,
    prefix: str,
    gateway_id: str,
    topic: str,
    payload: bytes,
    content_type: str | None,
    correlation: bytes | None,
    response_topic: str | None,
    user_properties: tuple[tuple[str, str], ...],
    received_at: float,
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> CommandRequest:
    """Validate what the transport received; raise ``RequestRejected`` naming the problem.
    The response topic is checked first: without it no error reply can be sent either."""
    check_response_topic(response_topic)
    name = command_name(prefix, gateway_id, topic)
    if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
        raise RequestRejected(
            RejectReason.BAD_CORRELATION,
            f"Correlation Data of {len(correlation)} bytes > {MAX_CORRELATION_BYTES}",
        )
    if len(payload) > max_bytes:
        raise RequestRejected(
            RejectReason.OVERSIZED, f"payload of {len(payload)} bytes > limit {max_bytes}"
        )
    return CommandRequest(
        name,
        payload,
        content_type,
        correlation,
        response_topic,
        received_at,
        user_properties,
        topic,
    )


def error_response(
    reason: RejectReason | str, detail: str, *, command: str = ""
) -> CommandResponse:
    """The ``cmd-error/1`` JSON reply (docs/schemas/cmd-error.schema.json)."""
    code = reason.value if isinstance(reason, RejectReason) else reason
    doc = {"schema": ERROR_SCHEMA, "status": STATUS_ERROR, "error": code, "detail": detail}
    if command:
        doc["command"] = command
    return CommandResponse(
        json.dumps(doc, separators=(",", ":")).encode(), CONTENT_TYPE_JSON, STATUS_ERROR
    )


__all__ = [
    "CONTENT_TYPE_JSON",
    "STATUS_ERROR",
    "STATUS_OK",
    "CommandHandler",
    "CommandRequest",
    "CommandResponse",
    "RejectReason",
    "RequestRejected",
    "build_request",
    "check_response_topic",
    "command_filter",
    "command_name",
    "command_topic",
    "error_response",
]
