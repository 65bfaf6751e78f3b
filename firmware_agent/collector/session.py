"""Sans-IO DLMS client session over WRAPPER, built on gurux-dlms's ``GXDLMSClient``.

gurux does the APDU work; this module gives it a shape the agent can drive from any transport:
each operation is an ``Exchange`` that holds the frame to send and is fed the reply frames until it
needs no more (block transfer asks for the next block itself). gurux's many exception types and
its ``reply.error`` integers become one typed hierarchy (``DlmsError``) whose messages use the
DLMS names, so a log line says "object-undefined", not "4".
"""

from __future__ import annotations

import contextlib
import io
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from gurux_dlms import (
    GXByteBuffer,
    GXDateTime,
    GXDLMSClient,
    GXDLMSConfirmedServiceError,
    GXDLMSException,
    GXDLMSExceptionResponse,
    GXReplyData,
)
from gurux_dlms.enums import Authentication, DataType, InterfaceType
from gurux_dlms.objects import (
    GXDLMSClock,
    GXDLMSObject,
    GXDLMSProfileGeneric,
    GXDLMSRegister,
)

from . import obis as obis_codes
from .apdu_check import ApduShapeError, ResponseShape, stale_reason
from .ciphering import (
    CIPHERED_TAGS,
    GLO_TAGS,
    SC_AUTHENTICATED_ENCRYPTION,
    AuthenticationFailed,
    CipheringError,
    Unprotected,
    is_ciphered,
    protect,
    unprotect,
)
from .wrapper import WrapperError, build_frame, parse_frame

if TYPE_CHECKING:
    from ..config import MeterConfig
    from .keys import MeterKeys

T = TypeVar("T")

DATA_ACCESS_RESULTS: dict[int, str] = {
    0: "success",
    1: "hardware-fault",
    2: "temporary-failure",
    3: "read-write-denied",
    4: "object-undefined",
    9: "object-class-inconsistent",
    11: "object-unavailable",
    12: "type-unmatched",
    13: "scope-of-access-violated",
    14: "data-block-unavailable",
    15: "long-get-aborted",
    16: "no-long-get-in-progress",
    17: "long-set-aborted",
    18: "no-long-set-in-progress",
    19: "data-block-number-invalid",
    250: "other-reason",
}
ASSOCIATION_RESULTS = {0: "accepted", 1: "rejected-permanent", 2: "rejected-transient"}
ACSE_DIAGNOSTICS = {
    0: "null",
    1: "no-reason-given",
    2: "application-context-name-not-supported",
    3: "calling-AP-title-not-recognized",
    4: "calling-AP-invocation-identifier-not-recognized",
    5: "calling-AE-qualifier-not-recognized",
    6: "calling-AE-invocation-identifier-not-recognized",
    7: "called-AP-title-not-recognized",
    8: "called-AP-invocation-identifier-not-recognized",
    9: "called-AE-qualifier-not-recognized",
    10: "called-AE-invocation-identifier-not-recognized",
    11: "authentication-mechanism-name-not-recognised",
    12: "authentication-mechanism-name-required",
    13: "authentication-failure",
    14: "authentication-required",
}
EXCEPTION_STATES = {1: "service-not-allowed", 2: "service-unknown"}
EXCEPTION_SERVICES = {
    1: "operation-not-possible",
    2: "service-not-supported",
    3: "other-reason",
    4: "pdu-too-long",
    5: "deciphering-error",
    6: "invocation-counter-error",
}


def _name(table: dict[int, str], value: object) -> str:
    try:
        return table.get(int(value), f"unknown-{int(value)}")  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(value)


# ---------------------------------------------------------------------------------- errors


class DlmsError(Exception):
    """Base of every error a DLMS exchange reports; the agent logs it and moves on."""


class AssociationRejected(DlmsError):
    def __init__(self, result: str, diagnostic: str) -> None:
        self.result = result
        self.diagnostic = diagnostic
        super().__init__(f"association {result}: {diagnostic}")


class DataAccessError(DlmsError):
    def __init__(self, result: str, code: int, target: str) -> None:
        self.result = result
        self.code = code
        self.target = target
        super().__init__(f"{target}: data-access-result {result} ({code})")


class ConfirmedServiceError(DlmsError):
    def __init__(self, service: str, error: str, value: int) -> None:
        self.service = service
        self.error = error
        self.value = value
        super().__init__(f"confirmed-service-error {service}: {error} ({value})")


class ExceptionResponse(DlmsError):
    def __init__(self, state: str, service_error: str) -> None:
        self.state = state
        self.service_error = service_error
        super().__init__(f"exception-response {state}: {service_error}")


class MalformedReply(DlmsError):
    def __init__(self, reason: str, frame: bytes) -> None:
        self.reason = reason
        self.frame_hex = bytes(frame[:512]).hex()
        super().__init__(f"malformed reply ({reason}): {self.frame_hex}")


class StaleReply(DlmsError):
    """A well-formed reply that answers some other request (a late reply to an earlier,
    timed-out one: over the mesh a reply can come seconds late), or comes from another
    association's wPorts. Not the meter's answer: the driver discards it and keeps waiting."""

    def __init__(self, target: str, reason: str, frame: bytes) -> None:
        self.target = target
        self.reason = reason
        self.frame_hex = bytes(frame[:64]).hex()
        super().__init__(f"{target}: stale reply discarded ({reason})")


class SessionStateError(DlmsError):
    """The caller used the session out of order (e.g. rows before capture objects)."""


class MacFailure(DlmsError):
    """Suite 0 says the frame is not authentic: its tag does not verify, the HLS proof is wrong,
    or the meter could not decipher ours. Reported as "MAC Fail" (often a desynchronised
    counter or wrong keys)."""

    def __init__(self, meter: str, detail: str) -> None:
        self.meter = meter
        self.detail = detail
        super().__init__(f"MAC Fail (meter {meter}): {detail}")


class CounterDesync(MacFailure):
    """The meter refused our invocation counter (exception-response invocation-counter-error):
    it expects a higher one, as after a meter-side reset. ``security reset`` recovers."""

    def __init__(self, meter: str, expected: int | None) -> None:
        self.expected = expected
        wants = f", it expects at least {expected}" if expected is not None else ""
        super().__init__(meter, f"meter refused our invocation counter{wants}")


class ReplayedFrame(DlmsError):
    """A verified frame whose invocation counter is not above the last one accepted from that
    meter: a replayed or stale frame (or a meter that reset its own counter)."""

    def __init__(self, meter: str, counter: int, last: int) -> None:
        self.meter = meter
        self.counter = counter
        self.last = last
        super().__init__(
            f"replayed frame from meter {meter}: invocation counter {counter} is not above "
            f"{last}, the last accepted"
        )


# ---------------------------------------------------------------------------------- exchange


@dataclass(frozen=True)
class CaptureColumn:
    class_id: int
    obis: str
    attribute: int
    data_index: int


class Exchange(Generic[T]):
    """One request and its reply frames. Send ``request``; pass each reply frame to ``feed``;
    send what it returns; when it returns None, ``result`` holds the outcome.

    The exchange keeps the *plain* frame of the request outstanding, so that a transport that
    timed out can ask ``retry_frame()`` for it again: under suite 0 that is the same APDU
    protected with a fresh invocation counter. Resending the ciphered bytes would be a replay to
    a meter that processed the first copy and only the reply was lost, and it would answer
    invocation-counter-error (a false "MAC Fail")."""

    def __init__(
        self,
        session: DlmsSession,
        plain: bytes,
        target: str,
        complete: Callable[[GXReplyData], T],
        *,
        protected: bytes | None = None,
    ) -> None:
        self._session = session
        self._plain = plain
        self.request = protected if protected is not None else session._outgoing(plain)
        self.target = target
        self._complete = complete
        self._reply = GXReplyData()
        self._shape = ResponseShape()
        self._done = False
        self._result: T | None = None
        self.frames = 0
        self.retries = 0

    def retry_frame(self) -> bytes:
        """The request outstanding now, to send again after a lost request or reply: the same
        plain APDU, re-protected (a fresh invocation counter) when the session ciphers."""
        if self._done:
            raise SessionStateError(f"{self.target}: exchange already complete")
        self.retries += 1
        return self._session._outgoing(self._plain)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def result(self) -> T:
        if not self._done:
            raise SessionStateError(f"{self.target}: exchange not complete")
        return self._result  # type: ignore[return-value]

    def feed(self, frame: bytes) -> bytes | None:
        """Take one reply frame; returns the next frame to send, or None when finished."""
        if self._done:
            raise SessionStateError(f"{self.target}: exchange already complete")
        # StaleReply before anything of the exchange changes: the real reply may follow
        frame = self._session._answer(frame, parse_frame(self._plain)[1], self.target)
        apdu = parse_frame(frame)[1]
        self.frames += 1
        try:
            self._shape.check(apdu)
        except ApduShapeError as exc:
            raise MalformedReply(f"{self.target}: {exc}", frame) from None
        client = self._session.client
        reply = self._reply
        ok = _translate(lambda: client.getData(bytes(frame), reply, None), frame)
        if not ok:
            raise MalformedReply("incomplete APDU in frame", frame)
        if reply.error:
            code = int(reply.error)
            raise DataAccessError(_name(DATA_ACCESS_RESULTS, code), code, self.target)
        if reply.isMoreData():
            self._session._next_invoke()  # each block request its own id: a late block is stale
            nxt = _translate(lambda: client.receiverReady(reply), frame)
            self._plain = bytes(nxt)
            return self._session._outgoing(self._plain)
        self._result = _translate(lambda: self._complete(reply), frame)
        self._done = True
        return None


def _translate(fn: Callable[[], Any], frame: bytes) -> Any:
    """Run a gurux call, turning its exceptions into DlmsError subclasses. gurux print()s some
    parse complaints ("Unknown tag"); they are swallowed so they cannot reach the agent's stdout."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()
    except DlmsError:
        raise
    except GXDLMSExceptionResponse as exc:
        raise ExceptionResponse(
            _name(EXCEPTION_STATES, exc.exceptionStateError),
            _name(EXCEPTION_SERVICES, exc.exceptionServiceError),
        ) from exc
    except GXDLMSConfirmedServiceError as exc:
        raise ConfirmedServiceError(
            _enum_name(exc.confirmedServiceError),
            _enum_name(exc.serviceError),
            int(exc.serviceErrorValue or 0),
        ) from exc
    except GXDLMSException as exc:
        if hasattr(exc, "result"):
            raise AssociationRejected(
                _name(ASSOCIATION_RESULTS, exc.result), _name(ACSE_DIAGNOSTICS, exc.diagnostic)
            ) from exc
        code = int(exc.errorCode)
        raise DataAccessError(_name(DATA_ACCESS_RESULTS, code), code, "reply") from exc
    except Exception as exc:  # gurux raises bare Exception/ValueError/IndexError on bad bytes
        raise MalformedReply(f"{type(exc).__name__}: {exc}", frame) from exc


def _enum_name(value: object) -> str:
    name = getattr(value, "name", None)
    return str(name).lower().replace("_", "-") if name else str(value)


def _to_datetime(value: object) -> datetime:
    if isinstance(value, GXDateTime):
        value = value.value
    if not isinstance(value, datetime):
        raise ValueError(f"expected a date-time, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _Target(GXDLMSObject):  # type: ignore[misc]  # gurux is untyped
    """The object gurux's ``read``/``method``/``write`` need: class id and logical name, and for
    a write the value and its type (``DataType.STRUCTURE`` with bytes: pre-encoded A-XDR)."""

    def __init__(
        self,
        class_id: int,
        obis: str,
        value: Any = None,
        data_type: DataType = DataType.NONE,
    ) -> None:
        try:
            super().__init__(class_id, obis)
        except Exception as exc:  # gurux raises a bare Exception for a bad logical name
            raise SessionStateError(f"logical name {obis!r}: {exc}") from None
        self._value = value
        self._type = data_type

    def getValue(self, settings: Any, e: Any) -> Any:
        return self._value

    def getDataType(self, index: int) -> DataType:
        return self._type

    def getUIDataType(self, index: int) -> DataType:
        return self._type


# ---------------------------------------------------------------------------------- session


class CounterBook(Protocol):
    """Where a secured session takes its send counters and checks the meter's (counters.py)."""

    def reserve(self, meter: str) -> int: ...

    def accept(self, meter: str, ic: int) -> None: ...


@dataclass
class Suite0Security:
    """What a session needs for security suite 0 with one meter: its keys (and system title),
    the gateway's system title, the counter store, and randomness for the HLS challenge."""

    meter_id: str
    keys: MeterKeys
    client_system_title: bytes
    counters: CounterBook
    rng: random.Random
    security_control: int = SC_AUTHENTICATED_ENCRYPTION

    def __post_init__(self) -> None:
        if len(self.client_system_title) != 8:
            raise ValueError(
                f"client system title must be 8 bytes, got {len(self.client_system_title)}"
            )


@dataclass
class InvokeIds:
    """The invoke-id sequence of one meter (1..15, rotating), shared by the sessions to it so a
    new session goes on where the last one stopped: a late reply to the previous session's
    n-th request must not match the new session's n-th. Not thread-safe; one event loop."""

    last: int = 0

    def next(self) -> int:
        self.last = self.last % 15 + 1
        return self.last


class DlmsSession:
    """One client association with one meter, LN referencing. Without ``security``: lowest
    level (the public client). With ``Suite0Security``: HLS-GMAC association and every xDLMS
    APDU glo-ciphered; gurux still builds and parses the plain APDUs inside."""

    def __init__(
        self,
        client_address: int = 16,
        server_address: int = 1,
        *,
        max_receive_pdu: int = 0xFFFF,
        security: Suite0Security | None = None,
        invoke_ids: InvokeIds | None = None,
    ) -> None:
        self.client_address = client_address
        self.server_address = server_address
        self.client = GXDLMSClient(
            True, client_address, server_address, Authentication.NONE, None, InterfaceType.WRAPPER
        )
        self.client.maxReceivePDUSize = max_receive_pdu
        self._profiles: dict[str, GXDLMSProfileGeneric] = {}
        self.associated = False
        self.security = security
        self._suite = security.keys.suite() if security is not None else None
        self._ciphered = False  # APDUs are wrapped from the glo-initiate on
        self.invoke_ids = invoke_ids if invoke_ids is not None else InvokeIds()

    def _next_invoke(self) -> int:
        """Rotate the invoke-id for the next GET/SET/ACTION request (1..15), so a late reply
        to an earlier request cannot pass for the answer to this one. Set on gurux's settings
        directly: ``GXDLMSClient.invokeID``'s setter writes ``settings.invokeID`` while the
        request builders read ``settings.invokeId`` (gurux 1.0.203), so it changes nothing."""
        invoke = self.invoke_ids.next()
        self.client.settings.invokeId = invoke
        return invoke

    # ------------------------------------------------------------------ suite 0 layer

    def _outgoing(self, frame: bytes) -> bytes:
        """Cipher a plain request frame gurux built (no-op without security)."""
        sec, suite = self.security, self._suite
        if sec is None or suite is None or not self._ciphered:
            return frame
        header, apdu = parse_frame(frame)
        if not apdu or apdu[0] not in GLO_TAGS:
            return frame  # RLRQ and the like travel as they are
        ic = sec.counters.reserve(sec.meter_id)
        wrapped = protect(suite, apdu, sec.client_system_title, ic, sc=sec.security_control)
        return build_frame(header.source, header.destination, wrapped)

    def _answer(self, frame: bytes, request: bytes, target: str) -> bytes:
        """The plain frame gurux reads from a reply frame to the plain ``request`` APDU:
        checked (wPorts, WRAPPER), deciphered (tag verified) and matched to the request
        (``StaleReply`` if it answers another one); only then is a ciphered frame's invocation
        counter accepted, so a late authentic reply of an earlier request, whose counter is
        below one accepted since, is discarded as stale rather than taken for a replay."""
        self._check_frame(frame, target)
        sec = self.security
        header, apdu = parse_frame(frame)
        if sec is None or not self._ciphered or apdu[:1] in (b"\x61", b"\x63"):
            why = stale_reason(request, apdu)  # AARE / RLRE are never ciphered
            if why is not None:
                raise StaleReply(target, why, frame)
            return frame
        if apdu[:1] == b"\xd8":
            _raise_security_exception(sec.meter_id, apdu)
            return frame
        u = self._unprotect(apdu, frame)
        why = stale_reason(request, u.apdu)
        if why is not None:
            raise StaleReply(target, why, frame)
        sec.counters.accept(sec.meter_id, u.invocation_counter)
        return build_frame(header.source, header.destination, u.apdu)

    def _decipher(self, apdu: bytes, frame: bytes) -> bytes:
        """Unprotect and accept the counter (the AARE's glo-initiate-response)."""
        sec = self.security
        assert sec is not None
        u = self._unprotect(apdu, frame)
        sec.counters.accept(sec.meter_id, u.invocation_counter)
        return u.apdu

    def _unprotect(self, apdu: bytes, frame: bytes) -> Unprotected:
        sec, suite = self.security, self._suite
        assert sec is not None and suite is not None
        if not is_ciphered(apdu):
            raise MacFailure(
                sec.meter_id,
                f"unprotected APDU 0x{apdu[:1].hex()} in a ciphered association",
            )
        try:
            return unprotect(suite, apdu, sec.keys.system_title)
        except AuthenticationFailed as exc:
            raise MacFailure(sec.meter_id, exc.detail) from None
        except CipheringError as exc:
            raise MalformedReply(f"{exc.reason}: {exc.detail}", frame) from None

    @property
    def negotiated_conformance(self) -> int:
        return int(self.client.negotiatedConformance)

    @property
    def max_pdu(self) -> int:
        """After association: the PDU size the meter announced."""
        return int(self.client.maxReceivePDUSize)

    def _check_frame(self, frame: bytes, target: str = "reply") -> None:
        """A well-formed WRAPPER frame (else MalformedReply) between our wPorts, reversed (else
        StaleReply: another association's frame)."""
        try:
            header, _ = parse_frame(frame)
        except WrapperError as exc:
            raise MalformedReply(f"{exc.reason}: {exc.detail}", frame) from None
        if header.source != self.server_address or header.destination != self.client_address:
            raise StaleReply(
                target,
                f"wrong-wport: frame {header.source}->{header.destination}, expected "
                f"{self.server_address}->{self.client_address}",
                frame,
            )

    @staticmethod
    def _one(frames: Any, what: str) -> bytes:
        """The one plain request frame gurux built (the exchange protects it)."""
        if not frames:
            raise SessionStateError(f"{what}: gurux produced no request (not associated?)")
        if len(frames) != 1:
            raise SessionStateError(
                f"{what}: request split into {len(frames)} frames (larger than the meter's PDU)"
            )
        return bytes(frames[0])

    # ------------------------------------------------------------------ association

    def associate(self) -> Exchange[None]:
        """AARQ -> AARE. (WRAPPER has no SNRM/UA: gurux's snrmRequest() is None here.)
        With suite 0: AARQ (HIGH_GMAC) -> AARE -> reply_to_HLS_authentication -> its response."""
        if self.security is not None:
            return _HlsAssociation(self)

        def done(reply: GXReplyData) -> None:
            self.client.parseAareResponse(reply.data)
            self.associated = True

        return Exchange(self, self._one(self.client.aarqRequest(), "AARQ"), "AARQ", done)

    def release(self) -> Exchange[None]:
        def done(reply: GXReplyData) -> None:
            self.associated = False
            self._ciphered = False

        return Exchange(self, self._one(self.client.releaseRequest(), "RLRQ"), "RLRQ", done)

    # ------------------------------------------------------------------ reads

    def read_value(
        self, obis: str, class_id: int = obis_codes.IC_REGISTER, attribute: int = 2
    ) -> Exchange[Any]:
        """Raw attribute value as gurux decodes it (no scaler applied; octet-string -> bytes)."""
        return self.read_attribute(obis, class_id, attribute)

    def read_attribute(self, obis: str, class_id: int, attribute: int) -> Exchange[Any]:
        """GET-Request-Normal of any attribute of any interface class; the value as gurux
        decodes it (bit-string -> GXBitString, octet-string -> bytes, structure -> list)."""
        target = f"IC {class_id} {obis} attr {attribute}"
        self._next_invoke()
        request = self._one(self.client.read(_Target(class_id, obis), attribute), target)
        return Exchange(self, request, target, lambda reply: reply.value)

    def action(
        self, obis: str, method: int, params: bytes | int = 0, class_id: int = obis_codes.IC_DATA
    ) -> Exchange[Any]:
        """ACTION-Request-Normal: ``params`` is encoded A-XDR Data (bytes, sent as they are) or
        an integer(8) (the Blue Book's "data ::= integer(0)" of parameterless methods). The
        result is the return parameter as gurux decodes it, or None."""
        target = f"IC {class_id} {obis} method {method}"
        if isinstance(params, bool) or not isinstance(params, int | bytes):
            raise SessionStateError(f"{target}: parameters must be encoded bytes or an int")
        kind = DataType.INT8 if isinstance(params, int) else DataType.STRUCTURE
        self._next_invoke()
        request = self._one(
            self.client.method(_Target(class_id, obis), method, params, kind), target
        )
        return Exchange(self, request, target, lambda reply: reply.value)

    def write(
        self,
        obis: str,
        attribute: int,
        value: Any,
        data_type: DataType | None = None,
        class_id: int = obis_codes.IC_DATA,
    ) -> Exchange[None]:
        """SET-Request-Normal. Without ``data_type`` the value is encoded A-XDR Data (bytes,
        sent as they are); with it, gurux encodes ``value`` as that type."""
        target = f"IC {class_id} {obis} attr {attribute} (set)"
        if data_type is None and not isinstance(value, bytes):
            raise SessionStateError(f"{target}: a value without a data type must be encoded bytes")
        item = _Target(class_id, obis, value, data_type or DataType.STRUCTURE)
        self._next_invoke()
        request = self._one(self.client.write(item, attribute), target)
        return Exchange(self, request, target, lambda reply: None)

    def read_scaler_unit(self, obis: str) -> Exchange[tuple[int, int]]:
        """Register attribute 3 as (scaler exponent, unit code)."""

        def done(reply: GXReplyData) -> tuple[int, int]:
            value = reply.value
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError(f"scaler_unit of {obis} is {value!r}, not a 2-structure")
            return int(value[0]), int(value[1])

        reg = GXDLMSRegister(obis)
        self._next_invoke()
        target = f"IC 3 {obis} attr 3"
        return Exchange(self, self._one(self.client.read(reg, 3), target), target, done)

    def read_clock(self, obis: str = obis_codes.CLOCK) -> Exchange[datetime]:
        clock = GXDLMSClock(obis)

        def done(reply: GXReplyData) -> datetime:
            self.client.updateValue(clock, 2, reply.value)
            return _to_datetime(clock.time)

        self._next_invoke()
        target = f"IC 8 {obis} attr 2"
        return Exchange(self, self._one(self.client.read(clock, 2), target), target, done)

    def read_capture_objects(self, obis: str) -> Exchange[list[CaptureColumn]]:
        """Profile generic attribute 3; must precede ``read_rows_by_range`` on the same profile."""
        pg = GXDLMSProfileGeneric(obis)

        def done(reply: GXReplyData) -> list[CaptureColumn]:
            pg.captureObjects = []
            self.client.updateValue(pg, 3, reply.value)
            self._profiles[obis] = pg
            return [
                CaptureColumn(
                    int(o.objectType), str(o.logicalName), int(c.attributeIndex), int(c.dataIndex)
                )
                for o, c in pg.captureObjects
            ]

        self._next_invoke()
        target = f"IC 7 {obis} attr 3"
        return Exchange(self, self._one(self.client.read(pg, 3), target), target, done)

    def read_rows_by_range(
        self, obis: str, start: datetime, end: datetime
    ) -> Exchange[list[list[Any]]]:
        """Buffer rows with start <= capture time <= end; date-time cells come back as aware UTC
        datetimes, numbers raw (apply scalers in records)."""
        pg = self._profiles.get(obis)
        if pg is None:
            raise SessionStateError(f"read capture objects of {obis} before its rows")
        if start.tzinfo is None or end.tzinfo is None:
            raise SessionStateError("range bounds must be timezone-aware datetimes")

        def done(reply: GXReplyData) -> list[list[Any]]:
            pg.buffer = []  # gurux's updateValue appends to the buffer
            if reply.value:
                self.client.updateValue(pg, 2, reply.value)
            return [
                [_to_datetime(c) if isinstance(c, GXDateTime) else c for c in row]
                for row in pg.buffer
            ]

        pg.buffer = []
        self._next_invoke()
        target = f"IC 7 {obis} attr 2 by range"
        request = self._one(
            self.client.readRowsByRange(pg, start.astimezone(UTC), end.astimezone(UTC)), target
        )
        return Exchange(self, request, target, done)


# ---------------------------------------------------------------------------------- suite 0

_CONTEXT_LN_CIPHERED = bytes.fromhex("60857405080103")
_CONTEXT_LN_PLAIN = bytes.fromhex("60857405080101")
_MECHANISM_HIGH_GMAC = bytes.fromhex("60857405080205")
_ASSOCIATION_LN = bytes([0, 0, 40, 0, 0, 255])
_IC_ASSOCIATION_LN = 15
_INVOKE_PRIORITY = 0xC0  # confirmed, high priority (as gurux sends); the id rotates
_DIAG_AUTHENTICATION_FAILURE = 13
_DIAG_AUTHENTICATION_REQUIRED = 14
_SERVICE_DECIPHERING_ERROR = 5
_SERVICE_INVOCATION_COUNTER_ERROR = 6


def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    return bytes([0x81, n]) if n < 0x100 else b"\x82" + n.to_bytes(2, "big")


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _ber_len(len(content)) + content


def _ber_elements(buf: bytes, pos: int, end: int) -> dict[int, bytes]:
    """Tag -> content of the BER elements in ``buf[pos:end]`` (one level, 1-byte tags)."""
    out: dict[int, bytes] = {}
    while pos < end:
        tag = buf[pos]
        first = buf[pos + 1]
        if first < 0x80:
            n, start = first, pos + 2
        else:
            count = first & 0x7F
            if not 1 <= count <= 2:
                raise ValueError(f"BER length form 0x{first:02x} at offset {pos + 1}")
            n, start = int.from_bytes(buf[pos + 2 : pos + 2 + count], "big"), pos + 2 + count
        if start + n > end:
            raise ValueError(f"BER element 0x{tag:02x} overruns its container")
        out[tag] = buf[start : start + n]
        pos = start + n
    return out


def _apdu_elements(apdu: bytes, tag: int) -> dict[int, bytes]:
    if not apdu or apdu[0] != tag:
        raise ValueError(f"APDU 0x{apdu[:1].hex()} where 0x{tag:02x} was expected")
    inner = _ber_elements(apdu, 0, len(apdu))
    body = inner[tag]
    return _ber_elements(body, 0, len(body))


def _octets(content: bytes, what: str) -> bytes:
    if len(content) < 2 or content[0] != 0x04 or content[1] != len(content) - 2:
        raise ValueError(f"{what} is not a short octet string")
    return content[2:]


def _raise_security_exception(meter: str, apdu: bytes) -> None:
    """An exception-response about our ciphering becomes a typed security error."""
    if len(apdu) >= 3 and apdu[2] == _SERVICE_INVOCATION_COUNTER_ERROR:
        expected = struct.unpack_from(">I", apdu, 3)[0] if len(apdu) >= 7 else None
        raise CounterDesync(meter, expected)
    if len(apdu) >= 3 and apdu[2] == _SERVICE_DECIPHERING_ERROR:
        raise MacFailure(meter, "meter could not decipher our request (deciphering-error)")


class _HlsAssociation(Exchange[None]):
    """AARQ with HIGH_GMAC and a glo-initiate-request -> AARE (authentication-required, StoC,
    glo-initiate-response) -> ACTION reply_to_HLS_authentication(f(StoC)) -> f(CtoS)."""

    def __init__(self, session: DlmsSession) -> None:
        sec, suite = session.security, session._suite
        assert sec is not None and suite is not None
        self._sec = sec
        self._suite = suite
        plain = session._one(session.client.aarqRequest(), "AARQ")
        self._initiate = _octets(
            _apdu_elements(parse_frame(plain)[1], 0x60)[0xBE], "user-information"
        )
        self._ctos = sec.rng.randbytes(16)
        self._step = "aare"
        self._session = session
        request = self._aarq()
        super().__init__(session, request, "AARQ (HLS-GMAC)", lambda reply: None, protected=request)

    def _aarq(self) -> bytes:
        """The AARQ, its glo-initiate-request protected with a fresh invocation counter."""
        sec, session = self._sec, self._session
        ic = sec.counters.reserve(sec.meter_id)
        glo = protect(
            self._suite, self._initiate, sec.client_system_title, ic, sc=sec.security_control
        )
        body = (
            _tlv(0xA1, _tlv(0x06, _CONTEXT_LN_CIPHERED))
            + _tlv(0xA6, _tlv(0x04, sec.client_system_title))
            + _tlv(0x8A, b"\x07\x80")
            + _tlv(0x8B, _MECHANISM_HIGH_GMAC)
            + _tlv(0xAC, _tlv(0x80, self._ctos))
            + _tlv(0xBE, _tlv(0x04, glo))
        )
        return build_frame(session.client_address, session.server_address, _tlv(0x60, body))

    def retry_frame(self) -> bytes:
        """Before the AARE: the AARQ again with a fresh counter (the meter starts a new pending
        association, with a new StoC). After it: the HLS proof action, re-protected."""
        if self._step == "aare" and not self._done:
            self.retries += 1
            return self._aarq()
        return super().retry_frame()

    def feed(self, frame: bytes) -> bytes | None:
        if self._done:
            raise SessionStateError(f"{self.target}: exchange already complete")
        session = self._session
        session._check_frame(frame, self.target)
        try:
            if self._step == "aare":
                apdu = parse_frame(frame)[1]
                if apdu[:1] and apdu[0] in CIPHERED_TAGS:
                    raise StaleReply(self.target, "a ciphered APDU before the AARE", frame)
                why = stale_reason(parse_frame(self._plain)[1], apdu)
                if why is not None:
                    raise StaleReply(self.target, why, frame)
                self.frames += 1
                return self._aare(apdu, frame)
            plain = session._answer(frame, parse_frame(self._plain)[1], self.target)
            self.frames += 1
            self._proof(parse_frame(plain)[1])
            return None
        except DlmsError:
            raise
        except (ValueError, IndexError, KeyError, struct.error) as exc:
            raise MalformedReply(f"{self._step}: {type(exc).__name__}: {exc}", frame) from exc

    def _aare(self, apdu: bytes, frame: bytes) -> bytes:
        session, sec = self._session, self._sec
        if apdu[:1] == b"\xd8":
            _raise_security_exception(sec.meter_id, apdu)
            raise ExceptionResponse(
                _name(EXCEPTION_STATES, apdu[1]), _name(EXCEPTION_SERVICES, apdu[2])
            )
        el = _apdu_elements(apdu, 0x61)
        result = el[0xA2][-1]
        diag = el[0xA3][-1] if 0xA3 in el else 0
        if result != 0 and diag == _DIAG_AUTHENTICATION_FAILURE:
            raise MacFailure(
                sec.meter_id,
                "meter refused the association with authentication-failure "
                "(keys or system title do not match)",
            )
        if result != 0:
            raise AssociationRejected(
                _name(ASSOCIATION_RESULTS, result), _name(ACSE_DIAGNOSTICS, diag)
            )
        if diag != _DIAG_AUTHENTICATION_REQUIRED:
            raise AssociationRejected(
                "accepted", f"{_name(ACSE_DIAGNOSTICS, diag)} where HLS needs authentication"
            )
        title = _octets(el[0xA4], "responding-AP-title")
        if title != sec.keys.system_title:
            raise MacFailure(
                sec.meter_id,
                f"meter answers as system title {title.hex()}, the key file says "
                f"{sec.keys.system_title.hex()}",
            )
        stoc_tlv = el[0xAA]
        if stoc_tlv[:1] != b"\x80" or stoc_tlv[1] != len(stoc_tlv) - 2:
            raise ValueError("responding-authentication-value is not a charstring")
        stoc = stoc_tlv[2:]
        session._ciphered = True
        initiate = session._decipher(_octets(el[0xBE], "user-information"), frame)
        if initiate[:1] != b"\x08":
            raise ValueError(f"glo-initiate-response carries 0x{initiate[:1].hex()}")
        # gurux's plain client learns the negotiated conformance and PDU size from a plain AARE.
        plain_aare = _tlv(
            0x61,
            _tlv(0xA1, _tlv(0x06, _CONTEXT_LN_PLAIN))
            + bytes.fromhex("A203020100A305A103020100")
            + _tlv(0xBE, _tlv(0x04, initiate)),
        )
        _translate(lambda: session.client.parseAareResponse(GXByteBuffer(plain_aare)), frame)
        proof = self._suite.hls_response(
            sec.client_system_title, sec.counters.reserve(sec.meter_id), stoc
        )
        action = (
            bytes([0xC3, 0x01, _INVOKE_PRIORITY | session._next_invoke()])
            + struct.pack(">H", _IC_ASSOCIATION_LN)
            + _ASSOCIATION_LN
            + bytes([0x01, 0x01, 0x09, len(proof)])
            + proof
        )
        self._step = "proof"
        self._plain = build_frame(session.client_address, session.server_address, action)
        return session._outgoing(self._plain)

    def _proof(self, apdu: bytes) -> None:
        sec = self._sec
        if len(apdu) < 4 or apdu[0] != 0xC7 or apdu[1] != 0x01:
            raise ValueError(f"reply to HLS is APDU {apdu[:2].hex()}, not Action-Response-Normal")
        if apdu[3] != 0:
            result = _name(DATA_ACCESS_RESULTS, apdu[3])
            raise MacFailure(sec.meter_id, f"meter refused our HLS proof (action-result {result})")
        if apdu[4:7] != b"\x01\x00\x09":
            raise ValueError("reply to HLS carries no octet-string f(CtoS)")
        proof = apdu[8 : 8 + apdu[7]]
        try:
            self._suite.verify_hls(sec.keys.system_title, self._ctos, proof)
        except AuthenticationFailed as exc:
            raise MacFailure(sec.meter_id, f"meter's f(CtoS): {exc.detail}") from None
        self._session.associated = True
        self._done = True
        self._result = None


SessionFactory = Callable[["MeterConfig"], "DlmsSession"]
"""Builds the session for one operation on one meter (a read, a push): ``plain_session`` or
what ``session_factory`` makes (suite 0 for the meters configured for it)."""


def plain_session(meter: MeterConfig, invoke_ids: InvokeIds | None = None) -> DlmsSession:
    """Lowest security: the public client; refuses a meter configured for more (a configuration
    error, not a MAC Fail). Without ``invoke_ids`` the session's invoke-ids start at 1: use
    ``plain_sessions()`` to carry them on from one session to the next."""
    if meter.security.level != "none":
        raise SessionStateError(
            f"meter {meter.id}: security level {meter.security.level!r} needs a secured session "
            "(keys), and none was given"
        )
    return DlmsSession(meter.client_address, meter.server_address, invoke_ids=invoke_ids)


def plain_sessions() -> SessionFactory:
    """A ``SessionFactory`` of ``plain_session``s whose invoke-ids go on per meter from one
    session to the next (reads, pushes, resets of one meter share the sequence)."""
    ids: dict[str, InvokeIds] = {}

    def make(meter: MeterConfig) -> DlmsSession:
        return plain_session(meter, ids.setdefault(meter.id, InvokeIds()))

    return make


def session_factory(
    keys: dict[str, MeterKeys],
    counters: CounterBook,
    client_system_title: bytes,
    rng: random.Random,
) -> SessionFactory:
    """A ``SessionFactory`` for reads, pushes and the scheduler: a meter configured
    ``security.level: suite0`` gets a suite 0 session with its keys (a meter missing from the key
    file is a configuration error, ``SessionStateError`` naming it, not a MAC Fail); any other
    meter a plain one. Invoke-ids go on per meter from one session to the next."""
    ids: dict[str, InvokeIds] = {}

    def make(meter: MeterConfig) -> DlmsSession:
        level = meter.security.level
        invoke_ids = ids.setdefault(meter.id, InvokeIds())
        if level == "none":
            return DlmsSession(meter.client_address, meter.server_address, invoke_ids=invoke_ids)
        if level != "suite0":
            raise SessionStateError(f"meter {meter.id}: security level {level!r} is not supported")
        meter_keys = keys.get(meter.id)
        if meter_keys is None:
            raise SessionStateError(f"meter {meter.id}: suite0 configured but not in the key file")
        sec = Suite0Security(meter.id, meter_keys, client_system_title, counters, rng)
        return DlmsSession(
            meter.client_address, meter.server_address, security=sec, invoke_ids=invoke_ids
        )

    return make
