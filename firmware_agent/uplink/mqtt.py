"""The MQTT v5 uplink: spool → broker over mutual TLS, QoS 1, at-least-once.

Why it is built this way:

* The spool, not paho, holds the backlog, and the uplink, not paho, keeps the in-flight window:
  at most ``max_inflight`` readings messages on the wire, and all QoS 1 messages together
  (readings, command replies, the status) within the broker's Receive Maximum. paho's own
  window is off (unlimited: it sends what it is handed at once) because it costs a scan of its
  outgoing messages on every PUBACK (~8 % of the uplink's thread, measured); its queue is capped
  as a safety net. The pump refills the window on the loop's next turn after PUBACKs were read,
  ~14 batches per spool query (refilling inside the reader callback, a few slots per PUBACK
  burst, cost more CPU than the slots it kept full saved, measured).
* A record leaves the spool only in the PUBACK handler for the message id (mid) that carried it,
  and only if the reason code is a success. On a disconnect every in-flight record goes back to
  pending and is sent again after reconnecting (the head end drops duplicates by natural key).
* Each connection attempt uses a fresh paho client with ``reconnect_on_failure=False`` and a clean
  session: we own reconnecting (jittered exponential backoff from an injected ``random.Random``)
  and paho never replays messages we have already released.
* paho runs on the asyncio loop, not on a thread of its own: the loop watches its socket
  (paho's socket callbacks → ``add_reader``/``add_writer`` → ``loop_read``/``loop_write``) and the
  pump calls ``loop_misc`` for keepalive. paho's callbacks therefore run on the asyncio thread,
  where all SQLite access and all state changes happen. Why: with a network thread every PUBACK
  and every publish crossed threads (a wake-up and a GIL hand-off per message, and the thread
  taking the GIL whenever a SQLite call released it); that was most of the uplink's cost per
  message (measured, bench/uplink.py). Only ``connect()`` (a blocking TCP + TLS handshake) runs
  in an executor thread, before the socket is handed to the loop.
* Failures are told apart, because the operator's fix differs: broker unreachable, TLS handshake
  failed (e.g. server certificate not trusted), client certificate rejected (with TLS 1.3 the
  broker checks our certificate after the handshake, so it shows up as "connection lost before
  CONNACK"), client certificate expired / not yet valid, the broker's certificate not valid at
  our time (the clock: seed 000's "Certificate Validation Failed"), not authorised (CONNACK
  reason code), publish refused (PUBACK reason code), paho's network loop died or stalled, and
  the system clock off by more than five minutes (clockcheck.py says how we know).
* Supervision: if paho's network handling dies (an exception escapes ``loop_read``,
  ``loop_write`` or ``loop_misc``) or the in-flight window has not moved for ``stall_timeout_s``,
  the connection is torn down and re-made with backoff, and every in-flight record goes back to
  pending.
* Commands (MQTT v5 request/response): the uplink subscribes to ``<prefix>/<gw>/cmd/+``, checks
  each request at the transport level (requests.py), runs the injected handler as its own task
  (bounded concurrency, timeout) and publishes the reply, QoS 1, to the Response Topic with the
  same Correlation Data. Replies wait in memory until their PUBACK and are re-sent after a
  reconnect until they expire (the requester owns retries beyond that).
* Unsolicited messages (CIM outage/restoration REPLY, ...) go through the spool as event records
  (``payloads.event_record``, priority ALARM) and are published one per message on
  ``<prefix>/<gw>/events/<kind>``: as durable as readings, deleted only after their own PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import math
import random
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from firmware_agent.clock import Clock
from firmware_agent.config import UplinkConfig
from firmware_agent.spool import Spool, SpoolRecord
from firmware_agent.uplink import payloads
from firmware_agent.uplink.clockcheck import DEFAULT_LIMIT_S, ClockSkewCheck, parse_reference_time
from firmware_agent.uplink.requests import (
    DEFAULT_MAX_REQUEST_BYTES,
    CommandHandler,
    CommandRequest,
    CommandResponse,
    RejectReason,
    RequestRejected,
    build_request,
    command_filter,
    error_response,
)
from firmware_agent.uplink.tls import (
    CertValidity,
    build_ssl_context,
    check_gateway_identity,
    expiry_warning,
    read_validity,
    validity_problem,
)

log = logging.getLogger("firmware_agent.uplink")


# -- errors -----------------------------------------------------------------------------------
class UplinkErrorKind(enum.Enum):
    BROKER_UNREACHABLE = "broker unreachable"
    TLS_HANDSHAKE_FAILED = "TLS handshake failed"
    CERT_VALIDATION_FAILED = "certificate validation failed"
    CLIENT_CERT_REJECTED = "client certificate rejected"
    CLIENT_CERT_EXPIRED = "client certificate expired"
    CLIENT_CERT_NOT_YET_VALID = "client certificate not yet valid"
    CLOCK_SKEW = "system clock off"
    NOT_AUTHORISED = "not authorised"
    CONNACK_REFUSED = "connection refused by the broker"
    CONNACK_TIMEOUT = "no CONNACK"
    CONNECTION_LOST = "connection lost"
    LOOP_DIED = "network loop died"
    LOOP_STALLED = "network loop stalled"
    PUBLISH_REFUSED = "publish refused"


class UplinkError(Exception):
    """One failed connection or publish, with the kind an operator acts on."""

    kind: ClassVar[UplinkErrorKind]

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{self.kind.value}: {detail}")


class BrokerUnreachable(UplinkError):
    kind = UplinkErrorKind.BROKER_UNREACHABLE


class TlsHandshakeFailed(UplinkError):
    kind = UplinkErrorKind.TLS_HANDSHAKE_FAILED


class ClientCertRejected(UplinkError):
    kind = UplinkErrorKind.CLIENT_CERT_REJECTED


class CertValidationFailed(TlsHandshakeFailed):
    """The broker's certificate is not valid at the gateway's time: usually the clock."""

    kind = UplinkErrorKind.CERT_VALIDATION_FAILED


class ClientCertExpired(ClientCertRejected):
    kind = UplinkErrorKind.CLIENT_CERT_EXPIRED


class ClientCertNotYetValid(ClientCertRejected):
    kind = UplinkErrorKind.CLIENT_CERT_NOT_YET_VALID


class ClockSkew(UplinkError):
    kind = UplinkErrorKind.CLOCK_SKEW


class LoopDied(UplinkError):
    kind = UplinkErrorKind.LOOP_DIED


class LoopStalled(UplinkError):
    kind = UplinkErrorKind.LOOP_STALLED


class NotAuthorised(UplinkError):
    kind = UplinkErrorKind.NOT_AUTHORISED


class ConnackRefused(UplinkError):
    kind = UplinkErrorKind.CONNACK_REFUSED


class ConnackTimeout(UplinkError):
    kind = UplinkErrorKind.CONNACK_TIMEOUT


class ConnectionLost(UplinkError):
    kind = UplinkErrorKind.CONNECTION_LOST


class PublishRefused(UplinkError):
    kind = UplinkErrorKind.PUBLISH_REFUSED


LOST_BEFORE_CONNACK = (
    "connection lost before CONNACK — the broker probably rejected our client certificate"
)
# TLS alerts a server sends when it does not accept the client's certificate (TLS 1.2 shows
# them during the handshake, TLS 1.3 after it).
_CLIENT_CERT_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_ACCESS_DENIED",
)
# CONNACK reason codes that mean "you may not": MQTT v5 §3.2.2.2.
_NOT_AUTHORISED_CODES = {0x86, 0x87, 0x8A, 0x8C}


# OpenSSL verify codes: the peer's certificate is outside its validity period at our time.
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10


def _utc(t: float) -> str:
    return payloads.iso_utc(t)[:19] + "Z"


def classify_connect_error(exc: BaseException, where: str, now: float | None = None) -> UplinkError:
    """Turn what ``connect()`` raised into one of our typed errors (``now``: the gateway's
    clock, quoted when a certificate's validity period is the problem)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in (
        _X509_V_ERR_CERT_NOT_YET_VALID,
        _X509_V_ERR_CERT_HAS_EXPIRED,
    ):
        at = f" (gateway time {_utc(now)})" if now is not None else ""
        return CertValidationFailed(
            f"the certificate of {where} is {exc.verify_message}{at}: if the broker's "
            "certificate is current, the gateway's clock is off by more than its validity "
            "margin — synchronise it (NTP); seed 000: drift over five minutes fails TLS"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsHandshakeFailed(
            f"server certificate of {where} not accepted: {exc.verify_message or exc}"
        )
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".upper()
        if "ALERT_CERTIFICATE_EXPIRED" in text:
            return ClientCertExpired(
                f"{where} refused our client certificate as expired "
                f"during the TLS handshake ({exc.reason or exc})"
            )
        if any(a in text for a in _CLIENT_CERT_ALERTS):
            return ClientCertRejected(
                f"{where} refused our client certificate during the "
                f"TLS handshake ({exc.reason or exc})"
            )
        return TlsHandshakeFailed(f"with {where}: {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return BrokerUnreachable(f"connection refused by {where}")
    if isinstance(exc, TimeoutError):
        return BrokerUnreachable(f"timed out connecting to {where}")
    if isinstance(exc, socket.gaierror):
        return BrokerUnreachable(f"cannot resolve {where}: {exc}")
    if isinstance(exc, OSError):
        return BrokerUnreachable(f"{where}: {exc.strerror or exc}")
    return BrokerUnreachable(f"{where}: {type(exc).__name__}: {exc}")


def classify_lost_before_connack(
    detail: str, validity: CertValidity | None, now: float
) -> UplinkError:
    """TLS 1.3: the broker judged our certificate after the handshake and hung up before CONNACK.
    Tell expired / not-yet-valid (by our clock, or by the alert paho logged) from the rest."""
    problem = validity_problem(validity, now) if validity is not None else None
    text = detail.upper()
    if problem == "expired" or "CERTIFICATE EXPIRED" in text or "CERTIFICATE_EXPIRED" in text:
        until = f" on {validity.not_after:%Y-%m-%d %H:%M} UTC" if validity is not None else ""
        return ClientCertExpired(
            f"{LOST_BEFORE_CONNACK}: our certificate expired{until}{detail}; renew it"
        )
    if problem == "not yet valid":
        assert validity is not None
        return ClientCertNotYetValid(
            f"{LOST_BEFORE_CONNACK}: our certificate is valid only from "
            f"{validity.not_before:%Y-%m-%d %H:%M} UTC, gateway time is {_utc(now)}{detail}; "
            "check the system clock"
        )
    return ClientCertRejected(f"{LOST_BEFORE_CONNACK}{detail}")


def classify_connack(code: ReasonCode, where: str) -> UplinkError:
    name = f"{code} (0x{code.value:02X})"
    if code.value in _NOT_AUTHORISED_CODES:
        return NotAuthorised(f"{where} refused the connection: {name}")
    return ConnackRefused(f"{where}: {name}")


def _publish_props() -> Properties:
    return Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


# -- backoff (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with 'equal jitter': half the step fixed, half random, so a fleet of
    gateways that lost the broker together does not reconnect in lock-step."""

    initial_s: float = 0.5
    maximum_s: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        step = min(self.maximum_s, self.initial_s * self.factor ** min(attempt, 64))
        return step / 2 + rng.uniform(0, step / 2)


# -- configuration and stats ------------------------------------------------------------------
@dataclass(frozen=True)
class UplinkTuning:
    """Knobs the YAML does not (yet) expose."""

    connect_timeout_s: float = 5.0
    connack_timeout_s: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    max_message_bytes: int = payloads.DEFAULT_MAX_MESSAGE_BYTES
    poll_interval_s: float = 1.0  # re-check the spool (and keepalive) even without a wake-up
    disconnect_timeout_s: float = 1.0  # for paho to write DISCONNECT before we close the socket
    ack_batch_records: int = 20_000  # delete acknowledged records in groups this large ...
    ack_max_delay_s: float = 0.5  # ... or this old (at once when nothing is in flight)
    status_interval_s: float = 300.0  # re-publish "online" with spool figures; 0: at connect only
    stall_timeout_s: float = 60.0  # in-flight messages with no PUBACK this long: loop stalled
    command_timeout_s: float = 300.0  # a handler taking longer gets a handler-timeout reply
    max_concurrent_commands: int = 16
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    response_ttl_s: float = 300.0  # unacknowledged replies are re-sent until this old
    max_pending_responses: int = 256
    clock_skew_limit_s: float = DEFAULT_LIMIT_S
    cert_warning_days: int = 30


@dataclass(frozen=True)
class UplinkStats:
    connected: bool
    last_error: str
    last_error_kind: UplinkErrorKind | None
    published_records: int
    published_messages: int
    inflight: int  # messages handed to paho and not yet acknowledged
    inflight_records: int
    connect_attempts: int
    connections: int
    tls_version: str  # negotiated protocol of the current/last connection, e.g. "TLSv1.3"
    cert_warning: str
    events_published: int = 0
    commands_received: int = 0
    commands_answered: int = 0  # replies PUBACKed by the broker
    commands_rejected: dict[str, int] = field(default_factory=dict)  # RejectReason value → n
    responses_pending: int = 0
    responses_expired: int = 0
    clock_offset_s: float | None = None  # our clock minus the head end's (upper bound)
    clock_warning: str = ""
    loop_restarts: int = 0  # connections torn down because paho's loop died or stalled


@dataclass
class _Batch:
    ids: list[str]  # records handed out one by one (next_batch)
    message_id: str
    n_bytes: int
    event: bool = False
    span: tuple[int, int] | None = None  # pages handed out as a range (next_packed_many)
    records: int = 0

    def spans(self) -> list[tuple[int, int]]:
        return [] if self.span is None else [self.span]


class _PahoLogHandler(logging.Handler):
    """Hands the text of each record paho logs at WARNING and above to ``sink``."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink(record.getMessage())


@dataclass
class _Session:
    """State of one connection attempt; callbacks from an older session are ignored."""

    gen: int
    client: paho.Client
    connack: asyncio.Event = field(default_factory=asyncio.Event)
    connack_received: bool = False
    connected: bool = False
    closed: bool = False  # the network side has gone (or we tore it down)
    user_disconnect: bool = False
    receive_maximum: int = 65535
    inflight: dict[int, _Batch] = field(default_factory=dict)
    status_mid: int | None = None
    status_acked: asyncio.Event = field(default_factory=asyncio.Event)
    last_log_error: str = ""
    error: UplinkError | None = None
    last_progress: float = 0.0  # loop time of the last PUBACK / CONNACK
    status_due: float = math.inf  # loop time of the next periodic "online" status
    response_mids: dict[int, int] = field(default_factory=dict)  # mid → response token
    responses_sent: set[int] = field(default_factory=set)
    fd: int = -1  # the socket the loop watches for paho (-1: not attached)
    next_misc: float = 0.0  # loop time of the next loop_misc (keepalive, ping timeout)


@dataclass
class _Response:
    topic: str
    payload: bytes
    props: Properties
    expires_at: float  # loop time


class Uplink:
    """Publishes spooled records to the broker until stopped. See the module docstring."""

    def __init__(
        self,
        cfg: UplinkConfig,
        gateway_id: str,
        spool: Spool,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        tuning: UplinkTuning | None = None,
        command_handler: CommandHandler | None = None,
    ) -> None:
        payloads.check_topic_level("gateway_id", gateway_id)
        if cfg.max_inflight < 1:
            raise ValueError(f"uplink.max_inflight must be >= 1, got {cfg.max_inflight}")
        if cfg.batch_max_records < 1:
            raise ValueError(f"uplink.batch_max_records must be >= 1, got {cfg.batch_max_records}")
        self.cfg = cfg
        self.gateway_id = gateway_id
        self._spool = spool
        self._clock = clock
        self._rng = rng or random.Random()
        self.tuning = tuning or UplinkTuning()
        if self.tuning.max_concurrent_commands < 1:
            raise ValueError("max_concurrent_commands must be >= 1")
        self.command_handler = command_handler
        self.command_filter = command_filter(cfg.topic_prefix, gateway_id)
        self.readings_topic = payloads.readings_topic(cfg.topic_prefix, gateway_id)
        self.status_topic = payloads.status_topic(cfg.topic_prefix, gateway_id)
        self._where = f"{cfg.host}:{cfg.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop_event: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._session: _Session | None = None
        self._gen = 0
        self._stopping = False
        self._flush_deadline = 0.0
        self._subscribed = False
        # stats
        self._connected = False
        self._last_error = ""
        self._last_error_kind: UplinkErrorKind | None = None
        self._published_records = 0
        self._published_messages = 0
        # Acknowledged records wait here for one grouped delete per wake-up instead of one
        # fsync'd transaction per PUBACK. Lost by a crash, they are sent again: at-least-once.
        self._acked: list[str] = []
        self._acked_spans: list[tuple[int, int]] = []
        self._acked_records = 0
        self._acked_since = 0.0  # loop time of the oldest acknowledgement not yet deleted
        self._connect_attempts = 0
        self._connections = 0
        self._tls_version = ""
        self._cert_warning = ""
        self._validity: CertValidity | None = None
        self._events_published = 0
        self._commands_received = 0
        self._commands_answered = 0
        self._commands_rejected: dict[str, int] = {}
        self._responses: dict[int, _Response] = {}
        self._response_token = 0
        self._responses_expired = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._clock_check = ClockSkewCheck(self.tuning.clock_skew_limit_s)
        self._clock_warning = ""
        self._loop_restarts = 0

    # -- public -----------------------------------------------------------------------------
    @property
    def stats(self) -> UplinkStats:
        s = self._session
        inflight = s.inflight if s is not None and not s.closed else {}
        return UplinkStats(
            connected=self._connected,
            last_error=self._last_error,
            last_error_kind=self._last_error_kind,
            published_records=self._published_records,
            published_messages=self._published_messages,
            inflight=len(inflight),
            inflight_records=sum(b.records for b in inflight.values()),
            connect_attempts=self._connect_attempts,
            connections=self._connections,
            tls_version=self._tls_version,
            cert_warning=self._cert_warning,
            events_published=self._events_published,
            commands_received=self._commands_received,
            commands_answered=self._commands_answered,
            commands_rejected=dict(self._commands_rejected),
            responses_pending=len(self._responses),
            responses_expired=self._responses_expired,
            clock_offset_s=self._clock_check.offset_s,
            clock_warning=self._clock_warning,
            loop_restarts=self._loop_restarts,
        )

    def wake(self) -> None:
        """Tell the uplink there may be new records (the spool does this itself on ``add``)."""
        if self._wake is not None:
            self._wake.set()

    def respond(self, request: CommandRequest, response: CommandResponse) -> None:
        """Send (another) reply to ``request``: for handlers that answer in several messages,
        e.g. CIM MeterStatusData REPLYs grouped by category. Queued until connected."""
        if request.response_topic is None:
            raise ValueError(f"command {request.name!r} has no Response Topic")
        props = _publish_props()
        if request.correlation is not None:
            props.CorrelationData = request.correlation
        props.ContentType = response.content_type
        props.UserProperty = [
            ("status", response.status),
            ("command", request.name),
            *response.user_properties,
        ]
        props.MessageExpiryInterval = max(1, int(self.tuning.response_ttl_s))
        if len(self._responses) >= self.tuning.max_pending_responses:
            oldest = min(self._responses)
            del self._responses[oldest]
            self._responses_expired += 1
            log.warning("uplink: too many unsent replies; dropped the oldest")
        self._response_token += 1
        now = self._loop.time() if self._loop is not None else 0.0
        self._responses[self._response_token] = _Response(
            request.response_topic, response.payload, props, now + self.tuning.response_ttl_s
        )
        self.wake()

    def observe_reference_time(self, reference: float, source: str) -> None:
        """A head-end timestamp (epoch s) just received, e.g. a CIM Header Timestamp: feeds the
        clock-skew check (clockcheck.py)."""
        verdict = self._clock_check.observe(reference, self._clock.now(), source)
        if verdict is None:
            return
        if verdict.skewed:
            self._clock_warning = verdict.message
            self._record_error(ClockSkew(verdict.message))
        else:
            if self._clock_warning:
                log.info("uplink: %s", verdict.message)
            self._clock_warning = ""

    async def run(self) -> None:
        """Connect, publish, reconnect, until ``stop()``. Raises ``TlsSetupError`` at once if
        the configured certificate files are unusable; every network failure is retried."""
        if self._done is not None and not self._done.is_set():
            raise RuntimeError("Uplink.run() is already running")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._done = asyncio.Event()
        try:
            ctx = build_ssl_context(self.cfg.tls)
            self._check_certificate()
            self._spool.release_all()
            if not self._subscribed:
                self._spool.subscribe(self.wake)
                self._subscribed = True
            attempt = 0
            while not self._stopping:
                healthy = await self._run_session(ctx)
                if self._stopping:
                    break
                attempt = 0 if healthy else attempt + 1
                delay = self.tuning.backoff.delay(attempt, self._rng)
                log.info("uplink: reconnecting to %s in %.2f s", self._where, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop_event.wait()
        finally:
            self._flush_acks()
            self._connected = False
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._done.set()

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop sending new batches, wait up to ``flush_timeout`` s for the PUBACKs of those in
        flight, publish the retained 'offline' status and disconnect. Unacknowledged records
        stay in the spool and are sent again by the next run."""
        self._stopping = True
        if self._loop is None or self._done is None:
            return
        self._flush_deadline = self._loop.time() + max(0.0, flush_timeout)
        assert self._stop_event is not None and self._wake is not None
        self._stop_event.set()
        self._wake.set()
        await self._done.wait()

    # -- one connection ---------------------------------------------------------------------
    def _check_certificate(self) -> None:
        check_gateway_identity(self.cfg.tls.cert_file, self.gateway_id)
        self._validity = read_validity(self.cfg.tls.cert_file)
        warning = expiry_warning(self._validity, self._clock.now(), self.tuning.cert_warning_days)
        self._cert_warning = warning or ""
        if warning:
            log.warning("uplink: %s", warning)

    def _make_client(self, ctx: ssl.SSLContext, gen: int) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.gateway_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        client.tls_set_context(ctx)
        client.connect_timeout = self.tuning.connect_timeout_s
        client.max_inflight_messages_set(0)  # we keep the window (module docstring)
        # A safety net only: one window of batches, the birth and 'offline' status messages,
        # and command replies (at most max_pending_responses of them are ever queued).
        client.max_queued_messages_set(
            self.cfg.max_inflight + 2 + self.tuning.max_pending_responses
        )
        client.will_set(
            self.status_topic,
            payloads.encode_status(
                self.gateway_id,
                payloads.STATUS_OFFLINE,
                sent_at=self._clock.now(),
                reason="connection lost",
            ),
            qos=1,
            retain=True,
        )
        loop = self._loop
        assert loop is not None
        loop_thread = threading.get_ident()

        def post(handler: Any, *args: Any) -> None:
            # On the loop (paho driven by it): at once. connect() runs in an executor thread,
            # where paho may log: hand that over to the loop.
            if threading.get_ident() == loop_thread:
                handler(*args)
            else:
                loop.call_soon_threadsafe(handler, *args)

        def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, props: Properties | None) -> None:
            post(self._handle_connect, gen, rc, props)

        def on_disconnect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            post(self._handle_disconnect, gen, rc)

        def on_publish(_c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            post(self._handle_publish, gen, mid, rc)

        def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
            post(
                self._handle_message,
                gen,
                msg.topic,
                bytes(msg.payload),
                msg.properties,
                bool(msg.retain),
            )

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        # paho's warnings and errors, through a logger of its own: an on_log callback would have
        # paho format a debug line for every packet (measured: 3% of the uplink's time).
        paho_log = logging.Logger(f"{__name__}.paho", logging.WARNING)  # outside logging's tree
        paho_log.addHandler(_PahoLogHandler(lambda text: post(self._handle_log, gen, text)))
        client.enable_logger(paho_log)
        return client

    # -- paho on the asyncio loop ---------------------------------------------------------------
    def _attach(self, session: _Session) -> bool:
        """Hand paho's connected socket to the loop: readable → ``loop_read``, writable while
        paho has bytes queued → ``loop_write``. False if the socket is already gone."""
        loop = self._loop
        assert loop is not None
        client = session.client
        sock = client.socket()
        if sock is None:
            return False
        session.fd = sock.fileno()

        def register_write(_c: Any, _u: Any, _s: Any) -> None:
            if session.fd >= 0:
                loop.add_writer(session.fd, self._on_writable, session)

        def unregister_write(_c: Any, _u: Any, _s: Any) -> None:
            if session.fd >= 0:
                loop.remove_writer(session.fd)

        def socket_close(_c: Any, _u: Any, _s: Any) -> None:
            self._detach(session)

        client.on_socket_register_write = register_write
        client.on_socket_unregister_write = unregister_write
        client.on_socket_close = socket_close
        loop.add_reader(session.fd, self._on_readable, session)
        session.next_misc = loop.time() + 1.0
        if client.want_write():
            self._on_writable(session)  # also registers the writer if bytes remain
        return True

    def _detach(self, session: _Session) -> None:
        if session.fd < 0 or self._loop is None:
            return
        self._loop.remove_reader(session.fd)
        self._loop.remove_writer(session.fd)
        session.fd = -1

    def _on_readable(self, session: _Session) -> None:
        client = session.client
        try:
            rc = client.loop_read()
            # TLS: one socket read may leave whole records in OpenSSL's buffer, which the loop's
            # selector cannot see: read on until it is empty.
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and (sock := client.socket()) is not None:
                if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                    break
                rc = client.loop_read()
        except Exception as exc:  # paho's handling (or a callback in it) died: reconnect
            self._loop_died(session, "loop_read", exc)
            return
        # Write what reading queued (e.g. our PUBACK of a command) now, not a turn later (the
        # writer callback takes over if the socket is full). The pump refills the window.
        self._flush_writes(session)

    def _flush_writes(self, session: _Session) -> None:
        if session.fd >= 0 and session.client.want_write():
            self._on_writable(session)

    def _on_writable(self, session: _Session) -> None:
        try:
            session.client.loop_write()
        except Exception as exc:
            self._loop_died(session, "loop_write", exc)

    def _loop_misc(self, session: _Session) -> None:
        """paho's timers (keepalive PINGREQ, no PINGRESP in time), at most once a second."""
        assert self._loop is not None
        now = self._loop.time()
        if session.closed or now < session.next_misc:
            return
        session.next_misc = now + 1.0
        try:
            session.client.loop_misc()
        except Exception as exc:
            self._loop_died(session, "loop_misc", exc)

    def _loop_died(self, session: _Session, where: str, exc: BaseException) -> None:
        """An exception escaped paho: its state is unknown, so the connection is dropped."""
        self._detach(session)
        if self._current(session.gen) is None:
            return
        log.debug("uplink: paho %s raised", where, exc_info=exc)
        self._loop_restarts += 1
        self._record_error(
            LoopDied(
                f"paho's network handling for {self._where} raised in {where} "
                f"({type(exc).__name__}: {exc}); reconnecting"
            ),
            session,
        )
        session.closed = True
        self._connected = False
        self._release(session)
        self._flush_acks()
        session.connack.set()
        if self._wake is not None:
            self._wake.set()

    async def _run_session(self, ctx: ssl.SSLContext) -> bool:
        """One connection from connect() to teardown; True if it got a successful CONNACK and
        ended for a reason that deserves a quick reconnect."""
        assert self._loop is not None
        self._gen += 1
        client = self._make_client(ctx, self._gen)
        session = _Session(self._gen, client)
        self._session = session
        self._connect_attempts += 1
        try:
            await self._loop.run_in_executor(
                None,
                functools.partial(
                    client.connect,
                    self.cfg.host,
                    self.cfg.port,
                    keepalive=self.cfg.keepalive_s,
                    clean_start=True,
                ),
            )
        except Exception as e:  # whatever connect() raised is classified, never fatal
            session.closed = True
            self._record_error(classify_connect_error(e, self._where, self._clock.now()))
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()
            return False
        sock = client.socket()
        if isinstance(sock, ssl.SSLSocket):
            self._tls_version = sock.version() or ""
        if not self._attach(session):
            # paho lost the socket while sending CONNECT (TLS 1.3: the broker refused our
            # certificate after the handshake); its disconnect report, posted from the executor
            # thread, names why. Let it run, and name it ourselves only if it did not.
            await asyncio.sleep(0)
            if session.error is None:
                detail = f" ({session.last_log_error or 'socket closed while sending CONNECT'})"
                self._record_error(
                    classify_lost_before_connack(detail, self._validity, self._clock.now()),
                    session,
                )
            session.closed = True
            return False
        session.last_progress = self._loop.time()
        try:
            try:
                async with asyncio.timeout(self.tuning.connack_timeout_s):
                    await session.connack.wait()
            except TimeoutError:
                self._record_error(
                    ConnackTimeout(
                        f"{self._where} accepted TCP/TLS but sent no CONNACK within "
                        f"{self.tuning.connack_timeout_s:g} s"
                    )
                )
                return False
            if not session.connected:
                return False
            await self._pump(session)
            return session.error is None or session.error.kind is UplinkErrorKind.CONNECTION_LOST
        finally:
            await self._teardown(session)

    async def _teardown(self, session: _Session) -> None:
        assert self._loop is not None
        if not session.closed and session.fd >= 0:
            # paho writes DISCONNECT from the loop's writer, then closes and reports it.
            session.user_disconnect = True
            with contextlib.suppress(Exception):
                session.client.disconnect()
            deadline = self._loop.time() + self.tuning.disconnect_timeout_s
            while not session.closed and session.fd >= 0 and self._loop.time() < deadline:
                await asyncio.sleep(0.01)
        # A dead or stalled loop never closed its socket: close it, so the broker sees us go.
        self._detach(session)
        with contextlib.suppress(Exception):
            sock = session.client.socket()
            if sock is not None:
                sock.close()
        session.closed = True
        self._release(session)
        self._flush_acks()
        self._connected = False

    def _release(self, session: _Session) -> None:
        ids = [i for b in session.inflight.values() for i in b.ids]
        spans = [sp for b in session.inflight.values() for sp in b.spans()]
        session.inflight.clear()
        if ids or spans:
            self._spool.release(ids, spans)

    async def _pump(self, session: _Session) -> None:
        """Keep the in-flight window full while connected."""
        assert self._wake is not None
        while not session.closed:
            if self._stopping:
                await self._close_gracefully(session)
                return
            self._loop_misc(session)
            if session.closed or self._supervise(session):
                return
            self._wake.clear()
            self._flush_acks(session)
            self._send_responses(session)
            self._fill_window(session)
            self._flush_writes(session)
            if not session.inflight and not self._acked_records and not self._spool.depth():
                self._spool.shrink()  # idle: give a drained backlog's pages back
            assert self._loop is not None
            if self._loop.time() >= session.status_due:
                self._publish_status(session, payloads.STATUS_ONLINE)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tuning.poll_interval_s):
                    await self._wake.wait()

    def _supervise(self, session: _Session) -> bool:
        """True (and the session marked failed) if the in-flight window stalled. (paho's
        handling dying is noticed where it raises: ``_loop_died``.)"""
        assert self._loop is not None
        if not (session.inflight or session.response_mids) or (
            self._loop.time() - session.last_progress <= self.tuning.stall_timeout_s
        ):
            return False
        self._loop_restarts += 1
        self._record_error(
            LoopStalled(
                f"no PUBACK from {self._where} for "
                f"{self.tuning.stall_timeout_s:g} s with messages in flight; reconnecting"
            ),
            session,
        )
        return True

    def _publish_status(self, session: _Session, state: str, reason: str = "") -> None:
        """The retained status with the spool's figures now (depth per class, bytes used of
        the budget, aged-out and refused counts, a Queue Depth Exceeded episode), so a head
        end sees a backlog building on a gateway that is online; "online" is repeated every
        ``status_interval_s``."""
        try:
            figures: dict[str, object] | None = self._spool.stats().to_dict()
        except Exception as exc:  # a status without figures beats no status
            log.warning("uplink: spool figures for the status message unavailable: %s", exc)
            figures = None
        payload = payloads.encode_status(
            self.gateway_id, state, sent_at=self._clock.now(), reason=reason, spool=figures
        )
        info = session.client.publish(self.status_topic, payload, qos=1, retain=True)
        session.status_mid = info.mid
        interval = self.tuning.status_interval_s
        if state == payloads.STATUS_ONLINE and interval > 0 and self._loop is not None:
            session.status_due = self._loop.time() + interval

    def _send_responses(self, session: _Session) -> None:
        """(Re)publish command replies not yet sent on this connection; drop expired ones."""
        assert self._loop is not None
        now = self._loop.time()
        for token, r in list(self._responses.items()):
            if token in session.responses_sent:
                continue
            if now > r.expires_at:
                del self._responses[token]
                self._responses_expired += 1
                log.warning("uplink: reply to %s expired unsent", r.topic)
                continue
            if self._wire_room(session) <= 0:
                return  # the broker's Receive Maximum: next turn
            info = session.client.publish(r.topic, r.payload, qos=1, properties=r.props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # paho's queue is full or the connection went: next turn
            session.responses_sent.add(token)
            session.response_mids[info.mid] = token

    def _flush_acks(self, session: _Session | None = None) -> None:
        """Delete acknowledged records: at once when nothing is in flight any more (or without
        a session: teardown), otherwise once ``ack_batch_records`` have gathered or the oldest
        is ``ack_max_delay_s`` old. Why: one transaction per group rather than per PUBACK (a
        page is one row; alarm and on-demand rows share their natural-key index pages, measured
        7.9 us/record in groups of 1,000, 1.6 in groups of 20,000). Until then the records stay
        marked in flight; after a crash they are sent again (at-least-once, deduplicated by
        natural key)."""
        if not self._acked_records:
            return
        if session is not None and session.inflight and not session.closed:
            assert self._loop is not None
            young = self._loop.time() - self._acked_since < self.tuning.ack_max_delay_s
            if young and self._acked_records < self.tuning.ack_batch_records:
                return
        self._spool.ack(self._acked, self._acked_spans)
        self._acked = []
        self._acked_spans = []
        self._acked_records = 0

    @staticmethod
    def _wire_room(session: _Session) -> int:
        """QoS 1 messages the broker's Receive Maximum still admits; one slot is kept for the
        status message, which is published outside the window."""
        used = len(session.inflight) + len(session.response_mids) + 1
        return session.receive_maximum - used

    def _fill_window(self, session: _Session) -> None:
        # max_inflight readings messages on the wire, within the broker's Receive Maximum
        # (module docstring).
        window = min(self.cfg.max_inflight, len(session.inflight) + self._wire_room(session))
        n = self.cfg.batch_max_records
        cap = self.tuning.max_message_bytes
        while n > 1 and payloads.envelope_overhead(self.gateway_id, n) > cap // 2:
            n //= 2  # leave at least half of the message for record bodies
        budget = cap - payloads.envelope_overhead(self.gateway_id, n)
        while len(session.inflight) < window and not session.closed:
            if self._publish_packed(session, window - len(session.inflight), n, max(budget, 1)):
                continue
            batch = self._spool.next_batch(n, max(budget, 1))
            if not batch:
                return
            rest = self._publish_events(session, batch, window)
            if rest is None:
                return
            if not rest:
                continue
            encoded = self._encode(rest)
            if encoded is None:
                return
            data, message_id, batch = encoded
            ids = [r.record_id for r in batch]
            self._spool.mark_in_flight(ids)
            info = session.client.publish(self.readings_topic, data, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._spool.release(ids)
                log.info(
                    "uplink: publish not accepted by paho (%s); waiting", paho.error_string(info.rc)
                )
                return
            session.inflight[info.mid] = _Batch(ids, message_id, len(data), records=len(ids))

    def _publish_packed(self, session: _Session, slots: int, n: int, budget: int) -> bool:
        """Publish up to ``slots`` batches as the spool packed them (one query, no per-record
        Python); False when the spool declines (``Spool.next_packed_many``) or paho refused."""
        batches = self._spool.next_packed_many(slots, n, budget)
        for i, packed in enumerate(batches):
            message_id = self._message_id()
            try:
                data = payloads.encode_packed(
                    self.gateway_id,
                    packed,
                    message_id=message_id,
                    sent_at=self._clock.now(),
                    max_bytes=self.tuning.max_message_bytes,
                )
            except payloads.MessageTooLarge:
                # Back to pending: next_batch sends these records in smaller messages.
                self._spool.release(spans=[b.span for b in batches[i:]])
                return False
            info = session.client.publish(self.readings_topic, data, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._spool.release(spans=[b.span for b in batches[i:]])
                log.info(
                    "uplink: publish not accepted by paho (%s); waiting",
                    paho.error_string(info.rc),
                )
                return False
            session.inflight[info.mid] = _Batch(
                [], message_id, len(data), span=packed.span, records=packed.records
            )
        return bool(batches)

    def _message_id(self) -> str:
        """A random (version 4) UUID from the injected rng: what ``uuid.UUID(int=..,
        version=4)`` makes, formatted without building the object (once per message)."""
        x = self._rng.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62) | (4 << 76) | (0x2 << 62)
        h = f"{x:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _publish_events(
        self, session: _Session, batch: list[SpoolRecord], window: int
    ) -> list[SpoolRecord] | None:
        """Publish the event records of ``batch`` one per message (in order, window permitting);
        return the readings to batch, or None when the window is full or paho refused."""
        readings: list[SpoolRecord] = []
        for rec in batch:
            event = payloads.as_event(rec)
            if event is None:
                readings.append(rec)
                continue
            if len(session.inflight) >= window:
                return None
            props = _publish_props()
            props.ContentType = event.content_type
            props.UserProperty = [
                ("record_id", rec.record_id),
                ("natural_key", rec.natural_key),
                ("priority", payloads.PRIORITY_NAMES[rec.priority]),
                ("spooled_at", payloads.iso_utc(rec.created_at)),
            ]
            topic = payloads.event_topic(self.cfg.topic_prefix, self.gateway_id, event.kind)
            self._spool.mark_in_flight([rec.record_id])
            info = session.client.publish(topic, event.payload, qos=1, properties=props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._spool.release([rec.record_id])
                return None
            session.inflight[info.mid] = _Batch(
                [rec.record_id], rec.record_id, len(event.payload), event=True, records=1
            )
        return readings

    def _encode(self, batch: list[SpoolRecord]) -> tuple[bytes, str, list[SpoolRecord]] | None:
        """Encode, halving the batch while it exceeds the message cap."""
        while True:
            message_id = self._message_id()
            try:
                data = payloads.encode_readings(
                    self.gateway_id,
                    batch,
                    message_id=message_id,
                    sent_at=self._clock.now(),
                    max_bytes=self.tuning.max_message_bytes,
                )
            except payloads.MessageTooLarge as e:
                if len(batch) == 1:
                    # Cannot happen with the spool's record cap below the message cap; keep the
                    # record (it is retried after a restart) rather than block or drop.
                    self._spool.mark_in_flight([batch[0].record_id])
                    self._record_error(
                        PublishRefused(
                            f"record {batch[0].record_id} alone is {e.size} bytes > message cap "
                            f"{e.limit}; held back"
                        )
                    )
                    return None
                batch = batch[: len(batch) // 2]
                continue
            return data, message_id, batch

    async def _close_gracefully(self, session: _Session) -> None:
        assert self._loop is not None and self._wake is not None
        while session.inflight and not session.closed:
            remaining = self._flush_deadline - self._loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
        if session.closed:
            return
        session.status_acked.clear()
        self._publish_status(session, payloads.STATUS_OFFLINE, "shutdown")
        wait = min(1.0, max(0.2, self._flush_deadline - self._loop.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await session.status_acked.wait()
        session.user_disconnect = True
        session.client.disconnect()

    # -- events from paho (run on the asyncio thread) ---------------------------------------
    def _current(self, gen: int) -> _Session | None:
        s = self._session
        if s is None or s.gen != gen or s.closed:
            return None
        return s

    def _handle_log(self, gen: int, text: str) -> None:
        s = self._current(gen)
        if s is not None:
            s.last_log_error = text
            log.debug("uplink: paho: %s", text)

    def _handle_connect(self, gen: int, rc: ReasonCode, props: Properties | None) -> None:
        s = self._current(gen)
        if s is None:
            return
        s.connack_received = True
        if rc.is_failure:
            self._record_error(classify_connack(rc, self._where), s)
        else:
            s.connected = True
            self._connected = True
            self._connections += 1
            receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
            if isinstance(receive_max, int) and receive_max > 0:
                s.receive_maximum = receive_max
            self._publish_status(s, payloads.STATUS_ONLINE)
            s.last_progress = self._loop.time() if self._loop is not None else 0.0
            s.client.subscribe(self.command_filter, options=SubscribeOptions(qos=1, noLocal=True))
            log.info(
                "uplink: connected to %s (%s, client id %s)",
                self._where,
                self._tls_version,
                self.gateway_id,
            )
            if self._wake is not None:
                self._wake.set()
        s.connack.set()

    def _handle_disconnect(self, gen: int, rc: ReasonCode) -> None:
        s = self._current(gen)
        if s is None:
            return
        detail = f" ({s.last_log_error})" if s.last_log_error else ""
        if s.user_disconnect:
            pass
        elif not s.connack_received:
            self._record_error(
                classify_lost_before_connack(
                    detail or f" ({rc})", self._validity, self._clock.now()
                ),
                s,
            )
        elif s.connected:
            self._record_error(ConnectionLost(f"{self._where}: {rc}{detail}"), s)
        s.closed = True
        self._connected = False
        self._release(s)
        self._flush_acks()
        s.connack.set()
        if self._wake is not None:
            self._wake.set()

    def _handle_publish(self, gen: int, mid: int, rc: ReasonCode) -> None:
        s = self._current(gen)
        if s is None:
            return
        if mid == s.status_mid:
            s.status_acked.set()
            return
        if self._loop is not None:
            s.last_progress = self._loop.time()
        token = s.response_mids.pop(mid, None)
        if token is not None:
            if self._responses.pop(token, None) is not None and not rc.is_failure:
                self._commands_answered += 1
            if rc.is_failure:
                log.warning("uplink: reply refused by %s: %s", self._where, rc)
            return
        batch = s.inflight.pop(mid, None)
        if batch is None:
            return
        if rc.is_failure:
            self._spool.release(batch.ids, batch.spans())
            self._record_error(
                PublishRefused(
                    f"{self._where} refused message {batch.message_id} on {self.readings_topic}: "
                    f"{rc} (0x{rc.value:02X})"
                ),
                s,
            )
            s.user_disconnect = True  # back off before trying again
            s.client.disconnect()
        else:
            if not self._acked_records and self._loop is not None:
                self._acked_since = self._loop.time()
            self._acked.extend(batch.ids)
            self._acked_spans.extend(batch.spans())
            self._acked_records += batch.records
            if batch.event:
                self._events_published += 1
            else:
                self._published_records += batch.records
            self._published_messages += 1
        if self._wake is not None:
            self._wake.set()

    def _handle_message(
        self, gen: int, topic: str, payload: bytes, props: Properties | None, retained: bool
    ) -> None:
        s = self._current(gen)
        if s is None:
            return
        self._commands_received += 1
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        content_type = getattr(props, "ContentType", None)
        user = tuple((str(k), str(v)) for k, v in (getattr(props, "UserProperty", None) or []))
        now = self._clock.now()
        for key, value in user:
            if key == "sent-at" and not retained:
                try:
                    self.observe_reference_time(parse_reference_time(value), f"{topic} sent-at")
                except ValueError as e:
                    log.info("uplink: ignoring %s", e)
        try:
            if retained:
                raise RequestRejected(
                    RejectReason.RETAINED,
                    "retained commands are refused (they would replay on every connect)",
                )
            request = build_request(
                prefix=self.cfg.topic_prefix,
                gateway_id=self.gateway_id,
                topic=topic,
                payload=payload,
                content_type=content_type,
                correlation=correlation,
                response_topic=response_topic,
                user_properties=user,
                received_at=now,
                max_bytes=self.tuning.max_request_bytes,
            )
            if self.command_handler is None:
                raise RequestRejected(
                    RejectReason.NO_HANDLER, "this gateway has no command handler"
                )
            if len(self._tasks) >= self.tuning.max_concurrent_commands:
                raise RequestRejected(
                    RejectReason.BUSY, f"{len(self._tasks)} commands already running; retry"
                )
        except RequestRejected as e:
            self._reject(e, topic, response_topic, correlation)
            return
        task = asyncio.create_task(self._serve(request), name=f"command {request.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reject(
        self, e: RequestRejected, topic: str, response_topic: str | None, correlation: bytes | None
    ) -> None:
        key = e.reason.value
        self._commands_rejected[key] = self._commands_rejected.get(key, 0) + 1
        log.warning("uplink: command on %s refused: %s", topic, e)
        if e.reason in (RejectReason.NO_RESPONSE_TOPIC, RejectReason.BAD_RESPONSE_TOPIC):
            return  # nowhere (safe) to answer
        name = topic.rsplit("/", 1)[-1]
        req = CommandRequest(name, b"", None, correlation, response_topic, self._clock.now())
        self.respond(req, error_response(e.reason, e.detail, command=name))

    async def _serve(self, request: CommandRequest) -> None:
        assert self.command_handler is not None
        handler: CommandHandler = self.command_handler
        try:
            pending: Awaitable[CommandResponse | None] = handler(request)
            async with asyncio.timeout(self.tuning.command_timeout_s):
                response = await pending
        except TimeoutError:
            self._count_reject(RejectReason.HANDLER_TIMEOUT)
            response = error_response(
                RejectReason.HANDLER_TIMEOUT,
                f"no answer within {self.tuning.command_timeout_s:g} s",
                command=request.name,
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a handler bug is answered, never fatal
            log.exception("uplink: command %s failed", request.name)
            self._count_reject(RejectReason.HANDLER_FAILED)
            response = error_response(
                RejectReason.HANDLER_FAILED, f"{type(e).__name__}: {e}", command=request.name
            )
        if response is not None:
            self.respond(request, response)

    def _count_reject(self, reason: RejectReason) -> None:
        self._commands_rejected[reason.value] = self._commands_rejected.get(reason.value, 0) + 1

    def _record_error(self, err: UplinkError, session: _Session | None = None) -> None:
        if session is not None:
            session.error = err
        self._last_error = str(err)
        self._last_error_kind = err.kind
        log.warning("uplink: %s", err)
