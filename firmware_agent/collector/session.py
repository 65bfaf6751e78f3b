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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from gurux_dlms import (
    GXDateTime,
    GXDLMSClient,
    GXDLMSConfirmedServiceError,
    GXDLMSException,
    GXDLMSExceptionResponse,
    GXReplyData,
)
from gurux_dlms.enums import Authentication, InterfaceType
from gurux_dlms.objects import GXDLMSClock, GXDLMSData, GXDLMSProfileGeneric, GXDLMSRegister

from . import obis as obis_codes
from .wrapper import WrapperError, parse_frame

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


class SessionStateError(DlmsError):
    """The caller used the session out of order (e.g. rows before capture objects)."""


# ---------------------------------------------------------------------------------- exchange


@dataclass(frozen=True)
class CaptureColumn:
    class_id: int
    obis: str
    attribute: int
    data_index: int


class Exchange(Generic[T]):
    """One request and its reply frames. Send ``request``; pass each reply frame to ``feed``;
    send what it returns; when it returns None, ``result`` holds the outcome."""

    def __init__(
        self,
        session: DlmsSession,
        request: bytes,
        target: str,
        complete: Callable[[GXReplyData], T],
    ) -> None:
        self._session = session
        self.request = request
        self.target = target
        self._complete = complete
        self._reply = GXReplyData()
        self._done = False
        self._result: T | None = None
        self.frames = 0

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
        self.frames += 1
        self._session._check_frame(frame)
        client = self._session.client
        reply = self._reply
        ok = _translate(lambda: client.getData(bytes(frame), reply, None), frame)
        if not ok:
            raise MalformedReply("incomplete APDU in frame", frame)
        if reply.error:
            code = int(reply.error)
            raise DataAccessError(_name(DATA_ACCESS_RESULTS, code), code, self.target)
        if reply.isMoreData():
            nxt = _translate(lambda: client.receiverReady(reply), frame)
            return bytes(nxt)
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


# ---------------------------------------------------------------------------------- session


class DlmsSession:
    """One client association with one meter (public client, no security, LN referencing)."""

    def __init__(
        self, client_address: int = 16, server_address: int = 1, *, max_receive_pdu: int = 0xFFFF
    ) -> None:
        self.client_address = client_address
        self.server_address = server_address
        self.client = GXDLMSClient(
            True, client_address, server_address, Authentication.NONE, None, InterfaceType.WRAPPER
        )
        self.client.maxReceivePDUSize = max_receive_pdu
        self._profiles: dict[str, GXDLMSProfileGeneric] = {}
        self.associated = False

    @property
    def negotiated_conformance(self) -> int:
        return int(self.client.negotiatedConformance)

    @property
    def max_pdu(self) -> int:
        """After association: the PDU size the meter announced."""
        return int(self.client.maxReceivePDUSize)

    def _check_frame(self, frame: bytes) -> None:
        try:
            header, _ = parse_frame(frame)
        except WrapperError as exc:
            raise MalformedReply(f"{exc.reason}: {exc.detail}", frame) from None
        if header.source != self.server_address or header.destination != self.client_address:
            raise MalformedReply(
                f"wrong-wport: frame {header.source}->{header.destination}, expected "
                f"{self.server_address}->{self.client_address}",
                frame,
            )

    @staticmethod
    def _one(frames: Any, what: str) -> bytes:
        if not frames:
            raise SessionStateError(f"{what}: gurux produced no request (not associated?)")
        if len(frames) != 1:
            raise SessionStateError(f"{what}: request split into {len(frames)} frames")
        return bytes(frames[0])

    # ------------------------------------------------------------------ association

    def associate(self) -> Exchange[None]:
        """AARQ -> AARE. (WRAPPER has no SNRM/UA: gurux's snrmRequest() is None here.)"""

        def done(reply: GXReplyData) -> None:
            self.client.parseAareResponse(reply.data)
            self.associated = True

        return Exchange(self, self._one(self.client.aarqRequest(), "AARQ"), "AARQ", done)

    def release(self) -> Exchange[None]:
        def done(reply: GXReplyData) -> None:
            self.associated = False

        return Exchange(self, self._one(self.client.releaseRequest(), "RLRQ"), "RLRQ", done)

    # ------------------------------------------------------------------ reads

    def read_value(
        self, obis: str, class_id: int = obis_codes.IC_REGISTER, attribute: int = 2
    ) -> Exchange[Any]:
        """Raw attribute value as gurux decodes it (no scaler applied; octet-string -> bytes)."""
        obj = {
            obis_codes.IC_REGISTER: GXDLMSRegister,
            obis_codes.IC_DATA: GXDLMSData,
            obis_codes.IC_CLOCK: GXDLMSClock,
            obis_codes.IC_PROFILE_GENERIC: GXDLMSProfileGeneric,
        }.get(class_id)
        if obj is None:
            raise SessionStateError(f"IC {class_id} is not supported by read_value")
        target = f"IC {class_id} {obis} attr {attribute}"
        request = self._one(self.client.read(obj(obis), attribute), target)
        return Exchange(self, request, target, lambda reply: reply.value)

    def read_scaler_unit(self, obis: str) -> Exchange[tuple[int, int]]:
        """Register attribute 3 as (scaler exponent, unit code)."""

        def done(reply: GXReplyData) -> tuple[int, int]:
            value = reply.value
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError(f"scaler_unit of {obis} is {value!r}, not a 2-structure")
            return int(value[0]), int(value[1])

        reg = GXDLMSRegister(obis)
        target = f"IC 3 {obis} attr 3"
        return Exchange(self, self._one(self.client.read(reg, 3), target), target, done)

    def read_clock(self, obis: str = obis_codes.CLOCK) -> Exchange[datetime]:
        clock = GXDLMSClock(obis)

        def done(reply: GXReplyData) -> datetime:
            self.client.updateValue(clock, 2, reply.value)
            return _to_datetime(clock.time)

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
                CaptureColumn(int(o.objectType), str(o.logicalName), int(c.attributeIndex),
                              int(c.dataIndex))
                for o, c in pg.captureObjects
            ]

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
        target = f"IC 7 {obis} attr 2 by range"
        request = self._one(
            self.client.readRowsByRange(pg, start.astimezone(UTC), end.astimezone(UTC)), target
        )
        return Exchange(self, request, target, done)
