"""Sans-IO DLMS/COSEM server (logical-name referencing, WRAPPER) for the emulated meters.

gurux-dlms 1.0.203's server classes are broken (see docs/ARCHITECTURE), so the meter side is ours
and gurux's *client* is its conformance peer. ``MeterServer.handle`` takes one WRAPPER frame and
returns the reply frame or None; it never raises on bad input. Every rejected frame is counted in
``counters`` under a stable reason and the latest is kept in ``last_fault`` (with hex) so a test or
an operator can see exactly what was wrong.

Supported: AARQ/AARE with lowest-level security, RLRQ/RLRE, GET-Request-Normal (with selective
access) and GET-Request-Next (block transfer when a reply exceeds the negotiated PDU size),
SET-Request-Normal and ACTION-Request-Normal (dispatched to the objects' ``set``/``action``).
Associations are kept per client wPort, as a meter keeps one per client SAP.

With ``ServerSecurity`` (suite 0) a non-public client must associate with HLS-GMAC (mechanism 5,
LN-with-ciphering context, calling AP title, CtoS, glo-initiate-request); the meter answers
authentication-required with its StoC and system title, checks the client's f(StoC) in the
reply_to_HLS_authentication action and answers f(CtoS); every request after that is glo-ciphered
(or general-glo-ciphered) and so is every reply. Invocation counters are *enforced*: one counter
per key set, and a frame whose counter is not above the last accepted one is refused with
exception-response invocation-counter-error (counted ``replayed-counter``). The public client
(wPort 16) always stays at lowest security.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from firmware_agent.clock import Clock
from firmware_agent.collector.ciphering import (
    GENERAL_GLO_CIPHERING,
    GLO_TAGS,
    SC_AUTHENTICATED_ENCRYPTION,
    AuthenticationFailed,
    CipheringError,
    Suite0,
    is_ciphered,
    protect,
    unprotect,
)
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
    READ_WRITE_DENIED,
    AccessError,
    AssociationLnObject,
    CosemObject,
    CounterObject,
    Selection,
    build_directory,
)

# APDU tags.
AARQ = 0x60
AARE = 0x61
RLRQ = 0x62
RLRE = 0x63
GET_REQUEST = 0xC0
SET_REQUEST = 0xC1
ACTION_REQUEST = 0xC3
GET_RESPONSE = 0xC4
SET_RESPONSE = 0xC5
ACTION_RESPONSE = 0xC7
EXCEPTION_RESPONSE = 0xD8
INITIATE_REQUEST = 0x01
INITIATE_RESPONSE = 0x08
CONFIRMED_SERVICE_ERROR = 0x0E
_KNOWN_UNSUPPORTED = {0xC2, 0x22, 0x23, 0xD9, 0xE0}

# Exception-Response (state-error, service-error), numbered as IEC 62056-5-3 and gurux do.
STATE_SERVICE_NOT_ALLOWED = 1
STATE_SERVICE_UNKNOWN = 2
SERVICE_OPERATION_NOT_POSSIBLE = 1
SERVICE_NOT_SUPPORTED = 2
SERVICE_OTHER_REASON = 3
SERVICE_PDU_TOO_LONG = 4
SERVICE_DECIPHERING_ERROR = 5
SERVICE_INVOCATION_COUNTER_ERROR = 6

# Association-result and acse-service-user diagnostics.
ACCEPTED = 0
REJECTED_PERMANENT = 1
DIAG_NULL = 0
DIAG_NO_REASON = 1
DIAG_CONTEXT_NOT_SUPPORTED = 2
DIAG_CALLING_AP_TITLE_NOT_RECOGNISED = 3
DIAG_MECHANISM_NOT_RECOGNISED = 11
DIAG_MECHANISM_REQUIRED = 12
DIAG_AUTHENTICATION_FAILURE = 13
DIAG_AUTHENTICATION_REQUIRED = 14
# Initiate errors carried in a ConfirmedServiceError inside a rejecting AARE.
INITIATE_OTHER = 0
INITIATE_VERSION_TOO_LOW = 1
INITIATE_INCOMPATIBLE_CONFORMANCE = 2
INITIATE_PDU_TOO_SHORT = 3

_CONTEXT_PREFIX = bytes.fromhex("06076085740508 01".replace(" ", ""))
CONTEXT_LN_NO_CIPHERING = 1
CONTEXT_LN_CIPHERING = 3
_MECHANISM_PREFIX = bytes.fromhex("608574050802")
MECHANISM_LOWEST = 0
MECHANISM_HIGH_GMAC = 5
ASSOCIATION_LN = "0.0.40.0.0.255"
INVOCATION_COUNTER = "0.0.43.1.0.255"
IC_ASSOCIATION_LN = 15

# Conformance block: the 24-bit string as a big-endian integer; bit n of the standard is 1<<(23-n).
CONF_BLOCK_TRANSFER_WITH_GET = 1 << (23 - 11)
CONF_GET = 1 << (23 - 19)
CONF_SET = 1 << (23 - 20)
CONF_SELECTIVE_ACCESS = 1 << (23 - 21)
CONF_ACTION = 1 << (23 - 23)
SERVER_CONFORMANCE = (
    CONF_BLOCK_TRANSFER_WITH_GET | CONF_GET | CONF_SET | CONF_SELECTIVE_ACCESS | CONF_ACTION
)

PUBLIC_CLIENT = 16
MIN_PDU = 64  # gurux's client refuses an AARE announcing less
_BLOCK_OVERHEAD = 12  # C4 02 iid last u32 choice + up to 3 length bytes
_CIPHER_OVERHEAD = 1 + 3 + 5 + 12  # glo tag, length, SC || IC, tag


class _Reject(Protocol):
    def __call__(self, diag: int, why: str, initiate_error: int | None = None) -> bytes: ...


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
class ServerSecurity:
    """The meter's suite 0 setup: its key set, its system title and randomness for StoC."""

    suite: Suite0
    system_title: bytes
    rng: random.Random
    security_control: int = SC_AUTHENTICATED_ENCRYPTION

    def __post_init__(self) -> None:
        if len(self.system_title) != 8:
            raise ValueError(f"system title must be 8 bytes, got {len(self.system_title)}")


@dataclass
class _Association:
    conformance: int
    client_max_pdu: int
    transfer: _Transfer | None = None
    ciphered: bool = False
    authenticated: bool = True
    client_title: bytes | None = None
    stoc: bytes = b""
    ctos: bytes = b""
    general: bool = False  # the last request came general-glo-ciphered: answer in kind


@dataclass
class _Aarq:
    context: bytes | None = None
    mechanism: bytes | None = None
    user_information: bytes | None = None
    calling_title: bytes | None = None
    calling_auth: bytes | None = None
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
        security: ServerSecurity | None = None,
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
        self.security = security
        self.client_counter = 0  # highest client invocation counter accepted (one key set)
        self.send_counter = 1  # the next counter this meter ciphers with
        self._current: _Association | None = None
        self.objects.setdefault(
            INVOCATION_COUNTER, CounterObject(INVOCATION_COUNTER, lambda: self.client_counter)
        )
        self.objects.setdefault(
            ASSOCIATION_LN, AssociationLnObject(ASSOCIATION_LN, self._association_status)
        )

    def desync_counters(self, *, client: int | None = None, send: int | None = None) -> None:
        """Fault injection: as after a meter-side reset, set the highest client counter the
        meter believes it accepted (a jump up refuses the gateway's next frames) and/or the
        meter's own next send counter (a reset to 0 makes its frames look replayed)."""
        if client is not None:
            self.client_counter = client
        if send is not None:
            self.send_counter = send
        self.counters["counter-desyncs"] += 1

    def _association_status(self) -> tuple[bytes, bytes | None, int]:
        assoc = self._current
        ciphered = assoc is not None and assoc.ciphered
        context = _CONTEXT_PREFIX + bytes(
            [CONTEXT_LN_CIPHERING if ciphered else CONTEXT_LN_NO_CIPHERING]
        )
        mechanism = _MECHANISM_PREFIX + bytes(
            [MECHANISM_HIGH_GMAC if ciphered else MECHANISM_LOWEST]
        )
        state = 0 if assoc is None else (2 if assoc.authenticated else 1)
        return context, mechanism, state

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
            if is_ciphered(apdu):
                return self._secured(client, apdu, frame)
            if tag in (GET_REQUEST, SET_REQUEST, ACTION_REQUEST):
                assoc = self._associations.get(client)
                if assoc is not None and assoc.ciphered:
                    self._fault(
                        "unciphered-request",
                        f"plain APDU 0x{tag:02x} in a ciphered association",
                        frame,
                    )
                    return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_OPERATION_NOT_POSSIBLE)
                return self._service(client, apdu, frame)
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

        plain_context = _CONTEXT_PREFIX + bytes([CONTEXT_LN_NO_CIPHERING])
        ciphered_context = _CONTEXT_PREFIX + bytes([CONTEXT_LN_CIPHERING])
        hls = self.security is not None and client != PUBLIC_CLIENT
        if hls and aarq.mechanism is None:
            return reject(DIAG_MECHANISM_REQUIRED, f"client wPort {client} needs HLS-GMAC")
        if aarq.context != (ciphered_context if hls else plain_context):
            seen = aarq.context.hex() if aarq.context else "none"
            return reject(DIAG_CONTEXT_NOT_SUPPORTED, f"application context {seen} not supported")
        wanted = _MECHANISM_PREFIX + bytes([MECHANISM_HIGH_GMAC if hls else MECHANISM_LOWEST])
        if aarq.mechanism is not None and aarq.mechanism != wanted:
            return reject(
                DIAG_MECHANISM_NOT_RECOGNISED, f"mechanism {aarq.mechanism.hex()} not supported"
            )
        if client != PUBLIC_CLIENT and not hls:
            return reject(DIAG_MECHANISM_REQUIRED, f"client wPort {client} needs authentication")
        if aarq.user_information is None:
            return reject(DIAG_NO_REASON, "no user-information", INITIATE_OTHER)
        initiate = aarq.user_information
        if hls:
            return self._aarq_hls(client, aarq, frame, context, reject)
        version, conformance, client_pdu = _parse_initiate(initiate)
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

    def _aarq_hls(
        self,
        client: int,
        aarq: _Aarq,
        frame: bytes,
        context: bytes,
        reject: _Reject,
    ) -> bytes:
        sec = self.security
        assert sec is not None and aarq.user_information is not None
        title = aarq.calling_title
        if title is None or len(title) != 8:
            return reject(DIAG_CALLING_AP_TITLE_NOT_RECOGNISED, "no 8-byte calling-AP-title")
        ctos = aarq.calling_auth
        if ctos is None or not 8 <= len(ctos) <= 64:
            return reject(DIAG_AUTHENTICATION_FAILURE, "CtoS challenge must be 8..64 bytes")
        try:
            u = unprotect(sec.suite, aarq.user_information, title)
        except CipheringError as exc:
            self._associations.pop(client, None)
            self._fault("deciphering-failed", f"glo-initiate-request: {exc}", frame)
            return _aare(context, REJECTED_PERMANENT, DIAG_AUTHENTICATION_FAILURE)
        if not self._fresh(u.invocation_counter, frame):
            # Say which counter the meter wants (as for a ciphered service) so the gateway can
            # report a desync rather than a bare rejection.
            self._associations.pop(client, None)
            return _counter_error(self.client_counter)
        version, conformance, client_pdu = _parse_initiate(u.apdu)
        if version < 6:
            return reject(DIAG_NO_REASON, f"DLMS version {version}", INITIATE_VERSION_TOO_LOW)
        negotiated = conformance & SERVER_CONFORMANCE
        if not negotiated & CONF_GET:
            return reject(
                DIAG_NO_REASON,
                f"conformance 0x{conformance:06x} lacks get",
                INITIATE_INCOMPATIBLE_CONFORMANCE,
            )
        if client_pdu < 12 + _CIPHER_OVERHEAD:
            return reject(DIAG_NO_REASON, f"client PDU {client_pdu}", INITIATE_PDU_TOO_SHORT)
        stoc = sec.rng.randbytes(16)
        self._associations[client] = _Association(
            negotiated,
            client_pdu,
            ciphered=True,
            authenticated=False,
            client_title=title,
            stoc=stoc,
            ctos=ctos,
        )
        self.counters["hls-pending"] += 1
        glo = self._protect(_initiate_response(negotiated, self.max_pdu), general=False)
        return _aare_hls(context, sec.system_title, stoc, glo)

    # ------------------------------------------------------------------ suite 0

    def _fresh(self, ic: int, frame: bytes) -> bool:
        """Enforce strictly increasing client counters (one key set, so one counter)."""
        if ic <= self.client_counter:
            self._fault(
                "replayed-counter",
                f"invocation counter {ic} is not above {self.client_counter}",
                frame,
            )
            return False
        self.client_counter = ic
        return True

    def _protect(self, apdu: bytes, *, general: bool) -> bytes:
        sec = self.security
        assert sec is not None
        ic = self.send_counter
        self.send_counter = ic + 1
        return protect(
            sec.suite,
            apdu,
            sec.system_title,
            ic & 0xFFFFFFFF,
            sc=sec.security_control,
            general=general,
        )

    def _secured(self, client: int, apdu: bytes, frame: bytes) -> bytes | None:
        assoc = self._associations.get(client)
        sec = self.security
        if sec is None or assoc is None or not assoc.ciphered:
            self._fault("unexpected-ciphering", f"ciphered APDU 0x{apdu[0]:02x}", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_OPERATION_NOT_POSSIBLE)
        try:
            u = unprotect(sec.suite, apdu, assoc.client_title)
        except AuthenticationFailed as exc:
            self._fault("deciphering-failed", str(exc), frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_DECIPHERING_ERROR)
        except CipheringError as exc:
            self._fault("malformed-ciphering", str(exc), frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_DECIPHERING_ERROR)
        if not self._fresh(u.invocation_counter, frame):
            return _counter_error(self.client_counter)
        self.counters["ciphered-requests"] += 1
        assoc.general = u.service == GENERAL_GLO_CIPHERING
        plain = u.apdu
        if not assoc.authenticated or _is_hls_reply(plain):
            # A repeated reply_to_HLS_authentication (its answer was lost; the client retries
            # with a fresh counter) is answered again rather than refused: the proof is the
            # same f(StoC), checked again, and the client still needs f(CtoS).
            reply = self._hls_reply(client, assoc, plain, frame)
        elif plain[0] in (GET_REQUEST, SET_REQUEST, ACTION_REQUEST):
            reply = self._service(client, plain, frame)
        else:
            self._fault("unsupported-service", f"ciphered APDU 0x{plain[0]:02x}", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_NOT_SUPPORTED)
        if reply[0] not in GLO_TAGS:
            return reply  # exception-responses travel plain
        return self._protect(reply, general=assoc.general)

    def _hls_reply(self, client: int, assoc: _Association, plain: bytes, frame: bytes) -> bytes:
        """Pass 3 and 4 of HLS: only reply_to_HLS_authentication is served until it succeeds."""
        sec = self.security
        assert sec is not None and assoc.client_title is not None
        if len(plain) < 13 or plain[0] != ACTION_REQUEST or plain[1] != 1:
            self._fault("hls-pending", f"APDU {plain[:2].hex()} before HLS completed", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_OPERATION_NOT_POSSIBLE)
        invoke = plain[2]
        class_id, ln, method, has_params = struct.unpack_from(">H6sbB", plain, 3)
        target = (class_id, bytes_to_obis(ln), method)
        if target != (IC_ASSOCIATION_LN, ASSOCIATION_LN, 1) or has_params != 1:
            self._fault("hls-pending", f"action {target} before HLS completed", frame)
            return bytes([ACTION_RESPONSE, 1, invoke, READ_WRITE_DENIED, 0])
        proof = axdr.decode_all(plain[13:])
        try:
            if proof.tag != axdr.OCTET_STRING or not isinstance(proof.value, bytes):
                raise AuthenticationFailed("hls-fail", "f(StoC) is not an octet-string")
            sec.suite.verify_hls(assoc.client_title, assoc.stoc, proof.value)
        except AuthenticationFailed as exc:
            self._associations.pop(client, None)
            self._fault("hls-failed", str(exc), frame)
            return bytes([ACTION_RESPONSE, 1, invoke, OTHER_REASON, 0])
        if assoc.authenticated:
            self.counters["hls-repeated"] += 1
        else:
            assoc.authenticated = True
            self.counters["associations"] += 1
        ic = self.send_counter
        self.send_counter = ic + 1
        answer = sec.suite.hls_response(sec.system_title, ic & 0xFFFFFFFF, assoc.ctos)
        return bytes([ACTION_RESPONSE, 1, invoke, 0, 1, 0]) + axdr.octets(answer)

    # ------------------------------------------------------------------ xDLMS services

    def _service(self, client: int, apdu: bytes, frame: bytes) -> bytes:
        self._current = self._associations.get(client)
        try:
            if apdu[0] == GET_REQUEST:
                return self._get(client, apdu, frame)
            return self._set_or_action(client, apdu, frame)
        finally:
            self._current = None

    def _set_or_action(self, client: int, apdu: bytes, frame: bytes) -> bytes:
        tag = apdu[0]
        assoc = self._associations.get(client)
        if assoc is None:
            self._fault("not-associated", f"0x{tag:02x} from client wPort {client}", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_OPERATION_NOT_POSSIBLE)
        need = CONF_SET if tag == SET_REQUEST else CONF_ACTION
        if not assoc.conformance & need:
            self._fault("not-negotiated", f"0x{tag:02x} was not negotiated", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_NOT_SUPPORTED)
        if len(apdu) < 13:
            raise ApduError(f"APDU 0x{tag:02x} of {len(apdu)} bytes is too short")
        kind, invoke = apdu[1], apdu[2]
        if kind != 1:
            self._fault("unsupported-service", f"0x{tag:02x} choice {kind}", frame)
            return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_NOT_SUPPORTED)
        class_id, ln, member, flag = struct.unpack_from(">H6sbB", apdu, 3)
        now = self.model.meter_time(self.clock.now())
        if tag == SET_REQUEST:
            if flag != 0:
                raise ApduError("SET with selective access is not served")
            value = axdr.decode_all(apdu[13:])
            try:
                self._object(class_id, ln).set(member, value, now)
            except AccessError as exc:
                self.counters[f"access-error-{exc.result}"] += 1
                self._fault("data-access-error", exc.detail, frame)
                return bytes([SET_RESPONSE, 1, invoke, exc.result])
            self.counters["sets"] += 1
            return bytes([SET_RESPONSE, 1, invoke, 0])
        if flag == 1:
            params: axdr.Value | None = axdr.decode_all(apdu[13:])
        elif flag == 0 and len(apdu) == 13:
            params = None
        else:
            raise ApduError(f"bad method-invocation-parameters flag {flag} or trailing bytes")
        try:
            out = self._object(class_id, ln).action(member, params, now)
        except AccessError as exc:
            self.counters[f"action-error-{exc.result}"] += 1
            self._fault("action-error", exc.detail, frame)
            return bytes([ACTION_RESPONSE, 1, invoke, exc.result, 0])
        self.counters["actions"] += 1
        if out is None:
            return bytes([ACTION_RESPONSE, 1, invoke, 0, 0])
        return bytes([ACTION_RESPONSE, 1, invoke, 0, 1, 0]) + out

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
        if assoc.ciphered:
            limit -= _CIPHER_OVERHEAD
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

    def _object(self, class_id: int, ln: bytes) -> CosemObject:
        name = bytes_to_obis(ln)
        obj = self.objects.get(name)
        if obj is None:
            raise AccessError(OBJECT_UNDEFINED, f"no object {name}")
        if obj.class_id != class_id:
            raise AccessError(
                OBJECT_CLASS_INCONSISTENT, f"{name} is IC {obj.class_id}, not IC {class_id}"
            )
        return obj

    def _read(self, class_id: int, ln: bytes, attribute: int, selection: Selection | None) -> bytes:
        obj = self._object(class_id, ln)
        now = self.model.meter_time(self.clock.now())
        return obj.get(attribute, selection, now)


# ---------------------------------------------------------------------------------- codecs


_HLS_METHOD = struct.pack(">H", IC_ASSOCIATION_LN) + bytes([0, 0, 40, 0, 0, 255, 1])


def _is_hls_reply(plain: bytes) -> bool:
    """ACTION-Request-Normal of Association LN 0.0.40.0.0.255 method 1 (reply_to_HLS_...)."""
    return (
        len(plain) >= 13 and plain[:2] == bytes([ACTION_REQUEST, 1]) and plain[3:12] == _HLS_METHOD
    )


def _exception(state: int, service: int) -> bytes:
    return bytes([EXCEPTION_RESPONSE, state, service])


def _counter_error(accepted: int) -> bytes:
    """Exception-response invocation-counter-error with the lowest counter the meter accepts."""
    expected = struct.pack(">I", (accepted + 1) & 0xFFFFFFFF)
    return _exception(STATE_SERVICE_NOT_ALLOWED, SERVICE_INVOCATION_COUNTER_ERROR) + expected


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
        elif tag == 0xA6:
            if len(content) < 2 or content[0] != 0x04 or content[1] != len(content) - 2:
                raise ApduError("calling-AP-title is not an octet string")
            out.calling_title = content[2:]
        elif tag == 0xAC:
            if len(content) < 2 or content[0] != 0x80 or content[1] != len(content) - 2:
                raise ApduError("calling-authentication-value is not a charstring")
            out.calling_auth = content[2:]
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
        initiate = _initiate_response(conformance, max_pdu)
    elif initiate_error is not None:
        initiate = bytes([CONFIRMED_SERVICE_ERROR, 0x01, 0x06, initiate_error])
    else:
        initiate = b""
    if initiate:
        octets = b"\x04" + _ber_len_bytes(len(initiate)) + initiate
        body += b"\xbe" + _ber_len_bytes(len(octets)) + octets
    return bytes([AARE]) + _ber_len_bytes(len(body)) + body


def _initiate_response(conformance: int, max_pdu: int) -> bytes:
    return (
        bytes([INITIATE_RESPONSE, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00])
        + conformance.to_bytes(3, "big")
        + struct.pack(">H", max_pdu)
        + b"\x00\x07"
    )


def _aare_hls(context: bytes, title: bytes, stoc: bytes, glo_initiate: bytes) -> bytes:
    """Accepted, authentication-required, with the meter's system title, HIGH_GMAC, StoC and a
    glo-initiate-response (element order as gurux and the Green Book examples have it)."""
    body = bytes([0xA1]) + _ber_len_bytes(len(context)) + context
    body += bytes([0xA2, 0x03, 0x02, 0x01, ACCEPTED])
    body += bytes([0xA3, 0x05, 0xA1, 0x03, 0x02, 0x01, DIAG_AUTHENTICATION_REQUIRED])
    body += bytes([0xA4, 2 + len(title), 0x04, len(title)]) + title
    body += bytes([0x88, 0x02, 0x07, 0x80])
    mechanism = _MECHANISM_PREFIX + bytes([MECHANISM_HIGH_GMAC])
    body += bytes([0x89, len(mechanism)]) + mechanism
    body += bytes([0xAA, 2 + len(stoc), 0x80, len(stoc)]) + stoc
    octets = b"\x04" + _ber_len_bytes(len(glo_initiate)) + glo_initiate
    body += b"\xbe" + _ber_len_bytes(len(octets)) + octets
    return bytes([AARE]) + _ber_len_bytes(len(body)) + body
