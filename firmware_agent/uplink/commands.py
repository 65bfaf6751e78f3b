"""Head-end commands: parse a request, check it, call the gateway, build the response.

The transport (``mqtt.py`` + ``requests.py``) hands each MQTT v5 request to
``CommandDispatcher.handle``; the gateway itself is behind the ``GatewayOperations`` protocol,
which the agent implements. This module does no I/O of its own: it only awaits the operations.

Why it is built this way:

* A malformed command is the head end's bug, not ours: it gets an error response naming the
  field that is wrong (``cmd-error/1``, the transport's error shape, so a requester sees one
  error format), and nothing is raised out of ``handle``. Unknown fields are refused too, so a
  typo ("meterid") is not silently ignored.
* Commands act on meters this gateway serves; an unknown meter id is refused before anything
  touches the mesh.
* Firmware images travel by reference (a file name in the gateway's firmware directory, which
  the operator stages) or inline as base64 up to a cap: a whole image in one MQTT message is
  fine for a small meter image and wrong for a big one.
* Every operation except a firmware push runs under a timeout, so a hung meter cannot hold a
  request forever; a push reports per-meter results when it is done.

Commands (``<prefix>/<gateway>/cmd/<name>``), schemas in docs/schemas/cmd-<name>.*.json:
``read``, ``ping``, ``view-mesh``, ``firmware-push``, ``security-reset`` (JSON), and
``meter-status`` (CIM MeterStatusData XML, seed 003, answered by ``outage.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from firmware_agent.clock import Clock
from firmware_agent.collector.firmware import FirmwareImage, PushResult
from firmware_agent.collector.link import LinkError
from firmware_agent.collector.ping import PingResult
from firmware_agent.collector.reader import MeterReadError
from firmware_agent.collector.security_reset import ResetResult
from firmware_agent.collector.session import DlmsError
from firmware_agent.mesh.routes import RoutingTable
from firmware_agent.uplink import cim
from firmware_agent.uplink.outage import (
    MeterState,
    MeterStatusResponder,
    OutageConfig,
    Sleep,
)
from firmware_agent.uplink.payloads import iso_utc
from firmware_agent.uplink.requests import (
    CONTENT_TYPE_JSON,
    STATUS_ERROR,
    STATUS_OK,
    CommandRequest,
    CommandResponse,
    error_response,
)

log = logging.getLogger(__name__)

CONTENT_TYPE_XML = "application/xml"
STATUS_PARTIAL = "partial"  # firmware push: some meters failed

READ = "read"
PING = "ping"
VIEW_MESH = "view-mesh"
FIRMWARE_PUSH = "firmware-push"
SECURITY_RESET = "security-reset"
METER_STATUS = "meter-status"
COMMANDS = (READ, PING, VIEW_MESH, FIRMWARE_PUSH, SECURITY_RESET, METER_STATUS)

WHATS = ("interval", "registers", "instantaneous", "all")  # the collector's on-demand plans

# Error codes (the ``error`` member of cmd-error/1).
BAD_REQUEST = "bad-request"
UNKNOWN_COMMAND = "unknown-command"
UNKNOWN_METER = "unknown-meter"
UNREACHABLE = "meter-unreachable"
TIMEOUT = "timeout"
FAILED = "failed"

_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# -- what the gateway offers -------------------------------------------------------------------
@dataclass(frozen=True)
class MeshHop:
    node: str  # EUI-64 "00:12:4b:...", the root first
    snr_db: float | None  # of the link from the previous hop to this node; None for the root
    etx: float | None  # ETX x 128 of that link


@dataclass(frozen=True)
class MeshPath:
    hops: tuple[MeshHop, ...]
    cost: float
    usable: bool
    recovering: bool = False
    reasons: tuple[str, ...] = ()


class GatewayOperations(Protocol):
    """What commands may ask of the gateway; the agent implements it (see docs/commands.md)."""

    def meter_ids(self) -> Sequence[str]: ...

    def meter_status(self, meter_id: str) -> MeterState: ...

    async def ping(self, meter_id: str, timeout_s: float) -> PingResult: ...

    async def read_now(self, meter_id: str, what: str) -> list[dict[str, Any]]:
        """Read now (ahead of queued interval reads); the readings, as spooled records."""
        ...

    def view_mesh(self, meter_id: str) -> list[MeshPath]: ...

    async def push_firmware(
        self, meter_ids: Sequence[str], image: FirmwareImage, bytes_per_s: float | None
    ) -> list[PushResult]: ...

    async def security_reset(self, meter_id: str) -> ResetResult: ...

    def firmware_image(self, name: str) -> bytes:
        """The bytes of a staged image file (the name is already checked to be a plain file
        name); raise FileNotFoundError if there is none."""
        ...


@dataclass(frozen=True)
class CommandsConfig:
    """The ``uplink.commands`` section (see docs/commands.md for the YAML keys)."""

    timeout_s: float = 60.0  # every command but firmware-push
    ping_timeout_s: float = 5.0  # a ping's default; requests may ask for up to max_ping_timeout_s
    max_ping_timeout_s: float = 30.0
    max_inline_image_bytes: int = 512 * 1024  # decoded size of an inline (base64) image
    max_group: int = 1000  # meters per firmware push
    max_bytes_per_s: float = 1_000_000.0  # a firmware push may not ask for more
    max_response_bytes: int = 256 * 1024  # a read's readings beyond this are left out
    oms: OutageConfig = field(default_factory=OutageConfig)

    def __post_init__(self) -> None:
        for name in ("timeout_s", "ping_timeout_s", "max_ping_timeout_s", "max_bytes_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"commands.{name} must be > 0")
        if self.ping_timeout_s > self.max_ping_timeout_s:
            raise ValueError("commands.ping_timeout_s must be <= max_ping_timeout_s")
        if self.max_inline_image_bytes < 1 or self.max_group < 1:
            raise ValueError("commands.max_inline_image_bytes and max_group must be >= 1")
        if self.max_response_bytes < 1024:
            raise ValueError("commands.max_response_bytes must be >= 1024")


class CommandError(Exception):
    """Why a command cannot be answered with a result; ``code`` is the cmd-error/1 ``error``."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


def _bad(where: str, message: str) -> CommandError:
    return CommandError(BAD_REQUEST, f"{where}: {message}")


# -- request checks (pure) ---------------------------------------------------------------------
_FIELDS: dict[str, dict[str, bool]] = {  # command -> field -> required
    READ: {"meter_id": True, "what": False},
    PING: {"meter_id": True, "timeout_s": False},
    VIEW_MESH: {"meter_id": True},
    FIRMWARE_PUSH: {
        "meter_ids": True,
        "image_id": True,
        "image": True,
        "sha256": False,
        "bytes_per_s": False,
    },
    SECURITY_RESET: {"meter_id": True},
}


def parse_json_request(name: str, payload: bytes) -> dict[str, Any]:
    """The request object, with exactly the fields the command knows."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad("payload", f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _bad("payload", "must be a JSON object")
    fields = _FIELDS[name]
    extra = sorted(set(doc) - set(fields))
    if extra:
        raise _bad(extra[0], f"unknown field (a {name} request takes {', '.join(fields)})")
    for key, required in fields.items():
        if required and key not in doc:
            raise _bad(key, "missing")
    return doc


def _string(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str) or not value or len(value) > 256:
        raise _bad(key, "must be a non-empty string of at most 256 characters")
    return value


def _number(doc: dict[str, Any], key: str, low: float, high: float) -> float:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(key, "must be a number")
    if not low < value <= high:
        raise _bad(key, f"{value} is outside ({low:g}, {high:g}]")
    return float(value)


def decode_image(doc: dict[str, Any], cfg: CommandsConfig) -> tuple[str | None, bytes | None]:
    """``image`` is ``{"path": NAME}`` (staged on the gateway) or ``{"base64": DATA}``:
    returns (name, None) or (None, bytes)."""
    image = doc["image"]
    if not isinstance(image, dict) or len(image) != 1 or not set(image) <= {"path", "base64"}:
        raise _bad("image", 'must be {"path": NAME} or {"base64": DATA}')
    if "path" in image:
        name = image["path"]
        if not isinstance(name, str) or not _IMAGE_NAME.fullmatch(name) or ".." in name:
            raise _bad(
                "image.path",
                f"{name!r} is not a plain file name in the firmware directory "
                "(letters, digits, '.', '_', '-'; no '/', no '..')",
            )
        return name, None
    data = image["base64"]
    if not isinstance(data, str):
        raise _bad("image.base64", "must be a string")
    limit = cfg.max_inline_image_bytes
    if len(data) > 4 * ((limit + 2) // 3):
        raise _bad("image.base64", f"longer than the inline limit of {limit} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad("image.base64", f"not base64: {e}") from None
    if not raw:
        raise _bad("image.base64", "empty image")
    return None, raw


# -- responses ---------------------------------------------------------------------------------
def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def ping_json(r: PingResult) -> dict[str, Any]:
    return {
        "meter_id": r.meter_id,
        "reachable": r.reachable,
        "round_trip_ms": None if r.round_trip_s is None else round(r.round_trip_s * 1000, 1),
        "hops": r.hops,
        "error": r.error,
    }


def path_json(p: MeshPath) -> dict[str, Any]:
    return {
        "hops": [
            {"node": h.node, "snr_db": _round(h.snr_db, 1), "etx": _round(h.etx, 1)} for h in p.hops
        ],
        "cost": round(p.cost, 4),
        "usable": p.usable,
        "recovering": p.recovering,
        "reasons": list(p.reasons),
    }


def push_json(r: PushResult) -> dict[str, Any]:
    return {
        "meter_id": r.meter_id,
        "ok": r.ok,
        "stage": r.stage,
        "error": r.error,
        "blocks_total": r.blocks_total,
        "blocks_sent": r.blocks_sent,
        "resumed_blocks": r.resumed_blocks,
        "elapsed_s": round(r.elapsed_s, 3),
        "already_active": r.already_active,
    }


def _fit_readings(readings: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], bool]:
    size = 0
    for i, rec in enumerate(readings):
        size += len(_dump(rec)) + 1
        if size > limit:
            return readings[:i], True
    return readings, False


# -- the dispatcher ----------------------------------------------------------------------------
@dataclass
class CommandStats:
    received: dict[str, int] = field(default_factory=dict)  # per command name
    errors: dict[str, int] = field(default_factory=dict)  # per error code


class CommandDispatcher:
    """``handle(request) -> response`` for every command; never raises (but CancelledError)."""

    def __init__(
        self,
        ops: GatewayOperations,
        clock: Clock,
        cfg: CommandsConfig | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        respond: Callable[[CommandRequest, CommandResponse], None] | None = None,
        on_reference_time: Callable[[float, str], None] | None = None,
    ) -> None:
        """``respond`` sends an extra reply to a request (the uplink's ``Uplink.respond``): a
        MeterStatusData answer too big for one message goes out in several. ``on_reference_time``
        gets the head end's CIM Header Timestamp (``Uplink.observe_reference_time``), which the
        uplink's clock-skew check compares with our clock."""
        self.respond = respond
        self.on_reference_time = on_reference_time
        self.ops = ops
        self.clock = clock
        self.cfg = cfg or CommandsConfig()
        self.oms = MeterStatusResponder(ops, clock, self.cfg.oms, sleep=sleep)
        self.stats = CommandStats()
        self._json: dict[str, Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], str]]]] = {
            READ: self._read,
            PING: self._ping,
            VIEW_MESH: self._view_mesh,
            FIRMWARE_PUSH: self._firmware_push,
            SECURITY_RESET: self._security_reset,
        }

    async def handle(self, request: CommandRequest) -> CommandResponse:
        name = request.name
        self.stats.received[name] = self.stats.received.get(name, 0) + 1
        if name == METER_STATUS:
            return await self._meter_status(request)
        try:
            op = self._json.get(name)
            if op is None:
                raise CommandError(
                    UNKNOWN_COMMAND, f"{name!r}; this gateway knows {', '.join(COMMANDS)}"
                )
            doc = parse_json_request(name, request.payload)
            if name == FIRMWARE_PUSH:
                result, status = await op(doc)
            else:
                async with asyncio.timeout(self.cfg.timeout_s):
                    result, status = await op(doc)
        except CommandError as e:
            return self._error(name, e)
        except TimeoutError:
            return self._error(
                name, CommandError(TIMEOUT, f"no result within {self.cfg.timeout_s:g} s")
            )
        except Exception as e:  # a bug or an unexpected failure below: answer, log, go on
            log.exception("command %s failed", name)
            return self._error(name, CommandError(FAILED, f"{type(e).__name__}: {e}"))
        body = {
            "schema": f"cmd-{name}/1",
            "command": name,
            "status": status,
            "answered_at": iso_utc(self.clock.now()),
            "result": result,
        }
        return CommandResponse(_dump(body), CONTENT_TYPE_JSON, status)

    def _error(self, name: str, e: CommandError) -> CommandResponse:
        self.stats.errors[e.code] = self.stats.errors.get(e.code, 0) + 1
        log.warning("command %s refused: %s", name, e)
        return error_response(e.code, e.detail, command=name)

    # -- helpers ----------------------------------------------------------------------------
    def _meter(self, doc: dict[str, Any], key: str = "meter_id") -> str:
        meter = _string(doc, key)
        if meter not in set(self.ops.meter_ids()):
            raise CommandError(UNKNOWN_METER, f"{key}: {meter!r} is not served by this gateway")
        return meter

    # -- commands ---------------------------------------------------------------------------
    async def _read(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        meter = self._meter(doc)
        what = doc.get("what", "interval")
        if what not in WHATS:
            raise _bad("what", f"{what!r}, expected one of {', '.join(WHATS)}")
        try:
            readings = await self.ops.read_now(meter, what)
        except MeterReadError as e:
            raise CommandError(UNREACHABLE, str(e)) from None
        except (LinkError, DlmsError) as e:
            raise CommandError(UNREACHABLE, f"meter {meter}: {type(e).__name__}: {e}") from None
        kept, truncated = _fit_readings(list(readings), self.cfg.max_response_bytes)
        result = {
            "meter_id": meter,
            "what": what,
            "readings": kept,
            "truncated": truncated,  # all readings are spooled as on-demand records anyway
        }
        return result, STATUS_OK

    async def _ping(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        meter = self._meter(doc)
        timeout = self.cfg.ping_timeout_s
        if "timeout_s" in doc:
            timeout = _number(doc, "timeout_s", 0, self.cfg.max_ping_timeout_s)
        try:
            result = await self.ops.ping(meter, timeout)
        except (LinkError, DlmsError, TimeoutError) as e:
            result = PingResult(meter, False, error=f"{type(e).__name__}: {e}")
        return ping_json(result), STATUS_OK

    async def _view_mesh(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        meter = self._meter(doc)
        paths = self.ops.view_mesh(meter)
        return {"meter_id": meter, "paths": [path_json(p) for p in paths]}, STATUS_OK

    async def _security_reset(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        meter = self._meter(doc)
        try:
            r = await self.ops.security_reset(meter)
        except (LinkError, DlmsError) as e:
            raise CommandError(UNREACHABLE, f"meter {meter}: {type(e).__name__}: {e}") from None
        result = {
            "meter_id": r.meter,
            "meter_counter": r.meter_counter,
            "old_next": r.old_next,
            "new_next": r.new_next,
        }
        return result, STATUS_OK

    async def _firmware_push(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        cfg = self.cfg
        ids = doc["meter_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(m, str) and m for m in ids):
            raise _bad("meter_ids", "must be a non-empty array of meter ids")
        if len(ids) > cfg.max_group:
            raise _bad("meter_ids", f"{len(ids)} meters, at most {cfg.max_group} per push")
        if len(set(ids)) != len(ids):
            raise _bad("meter_ids", "lists a meter twice")
        known = set(self.ops.meter_ids())
        unknown = [m for m in ids if m not in known]
        if unknown:
            raise CommandError(
                UNKNOWN_METER, f"meter_ids: not served by this gateway: {', '.join(unknown[:10])}"
            )
        image_id = _string(doc, "image_id")
        if not image_id.isascii() or not image_id.isprintable():
            raise _bad("image_id", "must be printable ASCII")
        name, data = decode_image(doc, cfg)
        if name is not None:
            try:
                data = self.ops.firmware_image(name)
            except FileNotFoundError:
                raise _bad("image.path", f"no staged image {name!r} on this gateway") from None
            except OSError as e:
                raise _bad("image.path", f"{name!r} cannot be read: {e.strerror or e}") from None
        assert data is not None
        if "sha256" in doc:
            want = doc["sha256"]
            if not isinstance(want, str) or not _SHA256.fullmatch(want.lower()):
                raise _bad("sha256", "must be 64 hex digits")
            got = hashlib.sha256(data).hexdigest()
            if got != want.lower():
                raise _bad("sha256", f"image digest is {got}, the request says {want.lower()}")
        rate = None
        if "bytes_per_s" in doc:
            rate = _number(doc, "bytes_per_s", 0, cfg.max_bytes_per_s)
        image = FirmwareImage(image_id.encode("ascii"), data)
        results = await self.ops.push_firmware(ids, image, rate)
        ok = sum(r.ok for r in results)
        result = {
            "image_id": image_id,
            "sha256": image.sha256,
            "size": len(data),
            "succeeded": ok,
            "failed": len(results) - ok,
            "meters": [push_json(r) for r in results],
        }
        return result, STATUS_OK if ok == len(results) else STATUS_PARTIAL

    async def _meter_status(self, request: CommandRequest) -> CommandResponse:
        """CIM MeterStatusData GET → REPLY (XML both ways, errors too)."""
        now = self.clock.now()
        try:
            get = cim.parse_get(
                request.payload,
                max_meters=self.cfg.oms.max_meters,
                max_bytes=self.cfg.oms.max_reply_bytes * 4,
            )
        except cim.CimError as e:
            code = cim.REPLY_BAD_REQUEST
            if e.where in ("Header/Verb", "Header/Noun"):
                code = cim.REPLY_UNSUPPORTED
            elif e.where == "Assets" or "than the limit" in e.message:
                code = cim.REPLY_TOO_LARGE
            self.stats.errors[BAD_REQUEST] = self.stats.errors.get(BAD_REQUEST, 0) + 1
            log.warning("MeterStatusData request refused: %s", e)
            reply = cim.error_reply(
                cim.correlation_of(request.payload), code, str(e), timestamp=now
            )
            return CommandResponse(reply, CONTENT_TYPE_XML, STATUS_ERROR)
        if self.on_reference_time is not None:
            self.on_reference_time(get.timestamp, "CIM Header/Timestamp")
        try:
            answer = await self.oms.answer(get, request.received_at)
        except Exception as e:
            log.exception("MeterStatusData %s failed", get.correlation_id)
            self.stats.errors[FAILED] = self.stats.errors.get(FAILED, 0) + 1
            reply = cim.error_reply(
                get.correlation_id, cim.REPLY_BAD_REQUEST, f"{type(e).__name__}: {e}",
                timestamp=self.clock.now(),
            )  # fmt: skip
            return CommandResponse(reply, CONTENT_TYPE_XML, STATUS_ERROR)
        if len(answer.replies) > 1 and self.respond is not None:
            for part in answer.replies[:-1]:
                self.respond(request, CommandResponse(part, CONTENT_TYPE_XML, STATUS_OK))
        elif len(answer.replies) > 1:
            # no way to send several messages: refuse rather than answer in part
            reply = cim.error_reply(
                get.correlation_id, cim.REPLY_TOO_LARGE,
                f"the answer needs {len(answer.replies)} messages; ask for fewer meters",
                timestamp=self.clock.now(),
            )  # fmt: skip
            return CommandResponse(reply, CONTENT_TYPE_XML, STATUS_ERROR)
        return CommandResponse(answer.replies[-1], CONTENT_TYPE_XML, STATUS_OK)


# -- helpers the agent can use to implement GatewayOperations ----------------------------------
def format_eui64(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mesh_paths(routes: RoutingTable, node: bytes, now: float) -> list[MeshPath]:
    """Every valid path root → ``node`` (cheapest first) with each link's SNR and ETX, from the
    routing table: what ``GatewayOperations.view_mesh`` returns for a mesh meter."""
    out: list[MeshPath] = []
    for path in routes.paths(node, now):
        hops = [MeshHop(format_eui64(path.hops[0]), None, None)]
        for a, b in zip(path.hops, path.hops[1:], strict=False):
            q = routes.link(a, b)
            hops.append(MeshHop(format_eui64(b), q.snr_db if q else None, q.etx if q else None))
        out.append(MeshPath(tuple(hops), path.cost, path.usable, path.recovering, path.reasons))
    return out


__all__ = [
    "COMMANDS",
    "CONTENT_TYPE_XML",
    "CommandDispatcher",
    "CommandError",
    "CommandsConfig",
    "GatewayOperations",
    "MeshHop",
    "MeshPath",
    "MeterState",
    "PingResult",
    "decode_image",
    "format_eui64",
    "mesh_paths",
    "parse_json_request",
]
