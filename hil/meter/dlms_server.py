"""Sans-IO DLMS/COSEM server (logical-name referencing, WRAPPER) for the emulated meters.

gurux-dlms 1.0.203's server classes are broken (see docs/ARCHITECTURE), so the meter side is ours
and gurux's *client* is its conformance peer. ``MeterServer.handle`` takes one WRAPPER frame and
returns the reply frame or None; it never raises on bad input. Every rejected frame is counted in
``counters`` under a stable reason and the latest is kept in ``last_fault`` (with hex) so a test or
an operator can see exactly what was wrong.

Supported: AARQ/AARE with lowest-level security, RLRQ/RLRE, GET-Request-Normal (with selective
access) and GET-Request-Next (block transfer when a reply exceeds the negotiated PDU size).
Associations are kept per client wPort, as a meter keeps one per client SAP.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from firmware_agent.clock import Clock
from firmware_agent.collector.obis import bytes_to_obis
from firmware_agent.collector.wrapper import WrapperError, build_frame, parse_frame

from . import axdr
from .model import MeterModel
from .objects import (
    DATA_BLOCK_NUMBER_INVALID,
    NO_LONG_GET_IN_PROGRESS,
    OBJECT_CLASS_INCONSISTENT,
    OBJECT_UNDEFINED,
    OTHER_REASON,
    AccessError,
    CosemObject,
    Selection,
    build_directory,
)

# APDU tags.
AARQ = 0x60
AARE = 0x61
RLRQ = 0x62
RLRE = 0x63
GET_REQUEST = 0xC0
GET_RESPONSE = 0xC4
EXCEPTION_RESPONSE = 0xD8
INITIATE_REQUEST = 0x01
INITIATE_RESPONSE = 0x08
CONFIRMED_SERVICE_ERROR = 0x0E
_KNOWN_UNSUPPORTED = {0xC1, 0xC3, 0xC2, 0x21, 0x22, 0x23, 0xC8, 0xC9, 0xCB, 0xD9, 0xDB, 0xE0}

# Exception-Response (state-error, service-error), numbered as IEC 62056-5-3 and gurux do.
STATE_SERVICE_NOT_ALLOWED = 1
STATE_SERVICE_UNKNOWN = 2
SERVICE_OPERATION_NOT_POSSIBLE = 1
SERVICE_NOT_SUPPORTED = 2
SERVICE_OTHER_REASON = 3
SERVICE_PDU_TOO_LONG = 4

# Association-result and acse-service-user diagnostics.
ACCEPTED = 0
REJECTED_PERMANENT = 1
DIAG_NULL = 0
DIAG_NO_REASON = 1
DIAG_CONTEXT_NOT_SUPPORTED = 2
DIAG_MECHANISM_NOT_RECOGNISED = 11
DIAG_MECHANISM_REQUIRED = 12
# Initiate errors carried in a ConfirmedServiceError inside a rejecting AARE.
INITIATE_OTHER = 0
INITIATE_VERSION_TOO_LOW = 1
INITIATE_INCOMPATIBLE_CONFORMANCE = 2
INITIATE_PDU_TOO_SHORT = 3

_CONTEXT_PREFIX = bytes.fromhex("06076085740508 01".replace(" ", ""))
CONTEXT_LN_NO_CIPHERING = 1
_MECHANISM_PREFIX = bytes.fromhex("608574050802")

# Conformance block: the 24-bit string as a big-endian integer; bit n of the standard is 1<<(23-n).
CONF_BLOCK_TRANSFER_WITH_GET = 1 << (23 - 11)
CONF_GET = 1 << (23 - 19)
CONF_SELECTIVE_ACCESS = 1 << (23 - 21)
SERVER_CONFORMANCE = CONF_BLOCK_TRANSFER_WITH_GET | CONF_GET | CONF_SELECTIVE_ACCESS

PUBLIC_CLIENT = 16
MIN_PDU = 64  # gurux's client refuses an AARE announcing less
_BLOCK_OVERHEAD = 12  # C4 02 iid last u32 choice + up to 3 length bytes


class ApduError(ValueError):
    """An APDU the server cannot decode."""


@dataclass(frozen=True)
class ServerFault:
    """One frame the server refused or could not fully serve."""

    reason: str
    detail: str
    frame_hex: str


@dataclass
class _Transfer:
    invoke: int
    data: bytes
    chunk: int

    @property
    def blocks(self) -> int:
        return max(1, -(-len(self.data) // self.chunk))

    def block(self, n: int) -> tuple[bool, bytes]:
        part = self.data[(n - 1) * self.chunk : n * self.chunk]
        return n >= self.blocks, part


@dataclass
class _Association:
    conformance: int
    client_max_pdu: int
    transfer: _Transfer | None = None


@dataclass
class _Aarq:
    context: bytes | None = None
    mechanism: bytes | None = None
    user_information: bytes | None = None
    tags: list[int] = field(default_factory=list)


class MeterServer:
    """One emulated meter's DLMS server, bound to one server wPort."""

    def __init__(
        self,
        model: MeterModel,
        clock: Clock,
        *,
        server_wport: int = 1,
        max_pdu: int = 1024,
        objects: dict[str, CosemObject] | None = None,
    ) -> None:
        if not MIN_PDU <= max_pdu <= 0xFFFF:
            raise ValueError(f"max_pdu must be in {MIN_PDU}..65535, got {max_pdu}")
        self.model = model
        self.clock = clock
        self.server_wport = server_wport
        self.max_pdu = max_pdu
        self.objects = objects if objects is not None else build_directory(model)
        self.counters: Counter[str] = Counter()
        self.last_fault: ServerFault | None = None
        self._associations: dict[int, _Association] = {}

    # ------------------------------------------------------------------ entry point

    def handle(self, frame: bytes) -> bytes | None:
        """Serve one WRAPPER frame; returns the reply frame, or None when nothing is answered."""
        try:
            return self._handle(frame)
        except Exception as exc:  # a bug must not kill the serving loop; count it loudly
            self._fault("internal-error", f"{type(exc).__name__}: {exc}", frame)
            return None

    def associated(self, client_wport: int) -> bool:
        return client_wport in self._associations

    def _fault(self, reason: str, detail: str, frame: bytes) -> None:
        self.counters[reason] += 1
        self.last_fault = ServerFault(reason, detail, bytes(frame[:256]).hex())

    def _handle(self, frame: bytes) -> bytes | None:
        self.counters["frames"] += 1
        try:
            header, apdu = parse_frame(frame)
        except WrapperError as exc:
            self._fault(exc.reason, exc.detail, frame)
            if exc.reason in ("truncated", "trailing-bytes") and len(frame) >= 8:
                source, dest = struct.unpack_from(">HH", frame, 2)
                if dest == self.server_wport:
                    return build_frame(
                        self.server_wport,
                        source,
                        _exception(STATE_SERVICE_UNKNOWN, SERVICE_OTHER_REASON),
                    )
            return None
        if header.destination != self.server_wport:
            self._fault(
                "wrong-wport",
                f"destination wPort {header.destination}, this meter is {self.server_wport}",
                frame,
            )
            return None
        client = header.source
        reply = self._dispatch(client, apdu, frame)
        return None if reply is None else build_frame(self.server_wport, client, reply)

    def _dispatch(self, client: int, apdu: bytes, frame: bytes) -> bytes | None:
        if not apdu:
            self._fault("empty-apdu", "WRAPPER frame carries no APDU", frame)
            return _exception(STATE_SERVICE_UNKNOWN, SERVICE_OTHER_REASON)
        tag = apdu[0]
        try:
            if tag == AARQ:
                return self._aarq(client, apdu, frame)
            if tag == RLRQ:
                self._associations.pop(client, None)
                self.counters["released"] += 1
                return bytes([RLRE, 0x03, 0x80, 0x01, 0x00])
            if tag == GET_REQUEST:
                return self._get(client, apdu, frame)
        except (ApduError, axdr.AxdrError, IndexError, struct.error, ValueError) as exc:
            self._fault("malformed-apdu", f"0x{tag:02x}: {exc}", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_OTHER_REASON)
        if tag in _KNOWN_UNSUPPORTED:
            self._fault("unsupported-service", f"APDU 0x{tag:02x} is not served", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_NOT_SUPPORTED)
        self._fault("unknown-apdu", f"APDU tag 0x{tag:02x} is unknown", frame)
        return _exception(STATE_SERVICE_UNKNOWN, SERVICE_NOT_SUPPORTED)

    # ------------------------------------------------------------------ association

    def _aarq(self, client: int, apdu: bytes, frame: bytes) -> bytes:
        aarq = _parse_aarq(apdu)
        context = aarq.context or _CONTEXT_PREFIX + bytes([CONTEXT_LN_NO_CIPHERING])

        def reject(diag: int, why: str, initiate_error: int | None = None) -> bytes:
            self._associations.pop(client, None)
            self._fault("association-rejected", why, frame)
            return _aare(context, REJECTED_PERMANENT, diag, initiate_error=initiate_error)

        if aarq.context != _CONTEXT_PREFIX + bytes([CONTEXT_LN_NO_CIPHERING]):
            seen = aarq.context.hex() if aarq.context else "none"
            return reject(DIAG_CONTEXT_NOT_SUPPORTED, f"application context {seen} not supported")
        if aarq.mechanism is not None and aarq.mechanism != _MECHANISM_PREFIX + b"\x00":
            return reject(
                DIAG_MECHANISM_NOT_RECOGNISED, f"mechanism {aarq.mechanism.hex()} not supported"
            )
        if client != PUBLIC_CLIENT:
            return reject(DIAG_MECHANISM_REQUIRED, f"client wPort {client} needs authentication")
        if aarq.user_information is None:
            return reject(DIAG_NO_REASON, "no user-information", INITIATE_OTHER)
        version, conformance, client_pdu = _parse_initiate(aarq.user_information)
        if version < 6:
            return reject(DIAG_NO_REASON, f"DLMS version {version}", INITIATE_VERSION_TOO_LOW)
        negotiated = conformance & SERVER_CONFORMANCE
        if not negotiated & CONF_GET:
            return reject(
                DIAG_NO_REASON,
                f"conformance 0x{conformance:06x} lacks get",
                INITIATE_INCOMPATIBLE_CONFORMANCE,
            )
        if client_pdu < 12:
            return reject(DIAG_NO_REASON, f"client PDU {client_pdu}", INITIATE_PDU_TOO_SHORT)
        self._associations[client] = _Association(negotiated, client_pdu)
        self.counters["associations"] += 1
        return _aare(context, ACCEPTED, DIAG_NULL, conformance=negotiated, max_pdu=self.max_pdu)

    # ------------------------------------------------------------------ GET

    def _get(self, client: int, apdu: bytes, frame: bytes) -> bytes:
        assoc = self._associations.get(client)
        if assoc is None:
            self._fault("not-associated", f"GET from client wPort {client} before AARQ", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_OPERATION_NOT_POSSIBLE)
        if len(apdu) > self.max_pdu:
            self._fault("pdu-too-long", f"{len(apdu)} bytes > {self.max_pdu}", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_PDU_TOO_LONG)
        if len(apdu) < 3:
            raise ApduError("GET-Request shorter than 3 bytes")
        kind, invoke = apdu[1], apdu[2]
        if kind == 1:
            return self._get_normal(assoc, invoke, apdu[3:], frame)
        if kind == 2:
            if len(apdu) != 7:
                raise ApduError(f"GET-Request-Next of {len(apdu)} bytes, expected 7")
            return self._get_next(assoc, invoke, struct.unpack_from(">I", apdu, 3)[0], frame)
        self._fault("unsupported-service", f"GET-Request choice {kind}", frame)
        return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_NOT_SUPPORTED)

    def _get_normal(self, assoc: _Association, invoke: int, body: bytes, frame: bytes) -> bytes:
        assoc.transfer = None
        if len(body) < 10:
            raise ApduError(f"attribute descriptor needs 10 bytes, got {len(body)}")
        class_id, ln, attribute, has_access = struct.unpack_from(">H6sbB", body)
        selection = None
        if has_access == 1:
            if len(body) < 11:
                raise ApduError("access selection flag set but no selector")
            selection = Selection(body[10], axdr.decode_all(body[11:]))
        elif has_access != 0 or len(body) != 10:
            raise ApduError(f"bad access-selection flag {has_access} or trailing bytes")
        try:
            data = self._read(class_id, ln, attribute, selection)
        except AccessError as exc:
            self.counters[f"access-error-{exc.result}"] += 1
            self._fault("data-access-error", exc.detail, frame)
            return bytes([GET_RESPONSE, 1, invoke, 1, exc.result])
        limit = min(assoc.client_max_pdu, self.max_pdu)
        normal = bytes([GET_RESPONSE, 1, invoke, 0]) + data
        if len(normal) <= limit:
            return normal
        if not assoc.conformance & CONF_BLOCK_TRANSFER_WITH_GET:
            self._fault("too-long-no-blocks", f"{len(normal)} bytes > {limit}", frame)
            return bytes([GET_RESPONSE, 1, invoke, 1, OTHER_REASON])
        assoc.transfer = _Transfer(invoke, data, limit - _BLOCK_OVERHEAD)
        self.counters["block-transfers"] += 1
        return self._block(assoc.transfer, invoke, 1)

    def _get_next(self, assoc: _Association, invoke: int, acked: int, frame: bytes) -> bytes:
        transfer = assoc.transfer
        if transfer is None:
            self._fault("no-long-get", f"GET-Request-Next({acked}) with no transfer", frame)
            return _block_error(invoke, acked, NO_LONG_GET_IN_PROGRESS)
        if not 1 <= acked < transfer.blocks:
            self._fault("bad-block-number", f"block {acked} of {transfer.blocks}", frame)
            return _block_error(invoke, acked, DATA_BLOCK_NUMBER_INVALID)
        reply = self._block(transfer, invoke, acked + 1)
        if acked + 1 == transfer.blocks:
            self.counters["blocks-completed"] += 1
        return reply

    def _block(self, transfer: _Transfer, invoke: int, n: int) -> bytes:
        last, part = transfer.block(n)
        head = bytes([GET_RESPONSE, 2, invoke, 1 if last else 0]) + struct.pack(">I", n)
        return head + b"\x00" + axdr.length(len(part)) + part

    def _read(self, class_id: int, ln: bytes, attribute: int, selection: Selection | None) -> bytes:
        name = bytes_to_obis(ln)
        obj = self.objects.get(name)
        if obj is None:
            raise AccessError(OBJECT_UNDEFINED, f"no object {name}")
        if obj.class_id != class_id:
            raise AccessError(
                OBJECT_CLASS_INCONSISTENT, f"{name} is IC {obj.class_id}, not IC {class_id}"
            )
        now = self.model.meter_time(self.clock.now())
        return obj.get(attribute, selection, now)


# ---------------------------------------------------------------------------------- codecs


def _exception(state: int, service: int) -> bytes:
    return bytes([EXCEPTION_RESPONSE, state, service])


def _block_error(invoke: int, block: int, result: int) -> bytes:
    return bytes([GET_RESPONSE, 2, invoke, 1]) + struct.pack(">I", block) + bytes([1, result])


def _ber_length(buf: bytes, pos: int) -> tuple[int, int]:
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 2 or pos + 1 + count > len(buf):
        raise ApduError(f"BER length form 0x{first:02x} at offset {pos}")
    return int.from_bytes(buf[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def _ber_len_bytes(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    return bytes([0x81, n]) if n < 0x100 else b"\x82" + n.to_bytes(2, "big")


def _parse_aarq(apdu: bytes) -> _Aarq:
    total, pos = _ber_length(apdu, 1)
    if pos + total != len(apdu):
        raise ApduError(f"AARQ length {total} but {len(apdu) - pos} bytes follow")
    out = _Aarq()
    while pos < len(apdu):
        tag = apdu[pos]
        n, start = _ber_length(apdu, pos + 1)
        end = start + n
        if end > len(apdu):
            raise ApduError(f"AARQ element 0x{tag:02x} overruns the APDU")
        content = apdu[start:end]
        out.tags.append(tag)
        if tag == 0xA1:
            out.context = content
        elif tag == 0x8B:
            out.mechanism = content
        elif tag == 0xBE:
            if len(content) < 2 or content[0] != 0x04:
                raise ApduError("user-information is not an octet string")
            inner_len, inner = _ber_length(content, 1)
            if inner + inner_len != len(content):
                raise ApduError("user-information octet string length mismatch")
            out.user_information = content[inner:]
        pos = end
    return out


def _parse_initiate(ui: bytes) -> tuple[int, int, int]:
    """(dlms version, proposed conformance, client max receive PDU) of an InitiateRequest."""
    if not ui or ui[0] != INITIATE_REQUEST:
        raise ApduError(f"user-information 0x{ui[:1].hex()} is not an xDLMS InitiateRequest")
    pos = 1
    if ui[pos]:  # dedicated key
        pos += 1 + ui[pos + 1] + 1
    else:
        pos += 1
    pos += 2 if ui[pos] else 1  # response-allowed
    pos += 2 if ui[pos] else 1  # proposed quality of service
    version = ui[pos]
    pos += 1
    if ui[pos : pos + 2] != b"\x5f\x1f" or ui[pos + 2] != 4:
        raise ApduError("conformance block tag 5F1F 04 missing")
    conformance = int.from_bytes(ui[pos + 4 : pos + 7], "big")
    pos += 7
    if pos + 2 != len(ui):
        raise ApduError(f"InitiateRequest has {len(ui) - pos} bytes where max PDU size (2) goes")
    return version, conformance, struct.unpack_from(">H", ui, pos)[0]


def _aare(
    context: bytes,
    result: int,
    diagnostic: int,
    *,
    conformance: int = 0,
    max_pdu: int = 0,
    initiate_error: int | None = None,
) -> bytes:
    body = bytes([0xA1]) + _ber_len_bytes(len(context)) + context
    body += bytes([0xA2, 0x03, 0x02, 0x01, result])
    body += bytes([0xA3, 0x05, 0xA1, 0x03, 0x02, 0x01, diagnostic])
    if result == ACCEPTED:
        initiate = (
            bytes([INITIATE_RESPONSE, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00])
            + conformance.to_bytes(3, "big")
            + struct.pack(">H", max_pdu)
            + b"\x00\x07"
        )
    elif initiate_error is not None:
        initiate = bytes([CONFIRMED_SERVICE_ERROR, 0x01, 0x06, initiate_error])
    else:
        initiate = b""
    if initiate:
        octets = b"\x04" + _ber_len_bytes(len(initiate)) + initiate
        body += b"\xbe" + _ber_len_bytes(len(octets)) + octets
    return bytes([AARE]) + _ber_len_bytes(len(body)) + body
