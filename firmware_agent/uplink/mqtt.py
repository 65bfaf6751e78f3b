"""The MQTT v5 uplink: spool → broker over mutual TLS, QoS 1, at-least-once.

Why it is built this way:

* The spool, not paho, holds the backlog. paho's outgoing queue lives in memory and is unbounded
  by default; we hand paho at most ``max_inflight`` unacknowledged batches and cap its queue too.
* A record leaves the spool only in the PUBACK handler for the message id (mid) that carried it,
  and only if the reason code is a success. On a disconnect every in-flight record goes back to
  pending and is sent again after reconnecting (the head end drops duplicates by natural key).
* Each connection attempt uses a fresh paho client with ``reconnect_on_failure=False`` and a clean
  session: we own reconnecting (jittered exponential backoff from an injected ``random.Random``)
  and paho never replays messages we have already released.
* paho's network thread only posts events to the asyncio loop (``call_soon_threadsafe``); all
  SQLite access and all state changes happen on the asyncio thread.
* Failures are told apart, because the operator's fix differs: broker unreachable, TLS handshake
  failed (e.g. server certificate not trusted), client certificate rejected (with TLS 1.3 the
  broker checks our certificate after the handshake, so it shows up as "connection lost before
  CONNACK"), not authorised (CONNACK reason code), publish refused (PUBACK reason code).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import random
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware_agent.clock import Clock
from firmware_agent.config import UplinkConfig
from firmware_agent.spool import Spool, SpoolRecord
from firmware_agent.uplink import payloads
from firmware_agent.uplink.tls import build_ssl_context, expiry_warning, read_validity

log = logging.getLogger("firmware_agent.uplink")


# -- errors -----------------------------------------------------------------------------------
class UplinkErrorKind(enum.Enum):
    BROKER_UNREACHABLE = "broker unreachable"
    TLS_HANDSHAKE_FAILED = "TLS handshake failed"
    CLIENT_CERT_REJECTED = "client certificate rejected"
    NOT_AUTHORISED = "not authorised"
    CONNACK_REFUSED = "connection refused by the broker"
    CONNACK_TIMEOUT = "no CONNACK"
    CONNECTION_LOST = "connection lost"
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


def classify_connect_error(exc: BaseException, where: str) -> UplinkError:
    """Turn what ``connect()`` raised into one of our typed errors."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsHandshakeFailed(
            f"server certificate of {where} not accepted: {exc.verify_message or exc}"
        )
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".upper()
        if any(a in text for a in _CLIENT_CERT_ALERTS):
            return ClientCertRejected(f"{where} refused our client certificate during the "
                                      f"TLS handshake ({exc.reason or exc})")
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


def classify_connack(code: ReasonCode, where: str) -> UplinkError:
    name = f"{code} (0x{code.value:02X})"
    if code.value in _NOT_AUTHORISED_CODES:
        return NotAuthorised(f"{where} refused the connection: {name}")
    return ConnackRefused(f"{where}: {name}")


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
    poll_interval_s: float = 1.0  # re-check the spool even without a wake-up


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


@dataclass
class _Batch:
    ids: list[str]
    message_id: str
    n_bytes: int


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
        self._connect_attempts = 0
        self._connections = 0
        self._tls_version = ""
        self._cert_warning = ""

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
            inflight_records=sum(len(b.ids) for b in inflight.values()),
            connect_attempts=self._connect_attempts,
            connections=self._connections,
            tls_version=self._tls_version,
            cert_warning=self._cert_warning,
        )

    def wake(self) -> None:
        """Tell the uplink there may be new records (the spool does this itself on ``add``)."""
        if self._wake is not None:
            self._wake.set()

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
                    await asyncio.wait_for(self._stop_event.wait(), delay)
        finally:
            self._flush_acks()
            self._connected = False
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
        warning = expiry_warning(read_validity(self.cfg.tls.cert_file), self._clock.now())
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
        client.max_inflight_messages_set(self.cfg.max_inflight)
        # +2: the birth and the 'offline' status messages travel outside the window.
        client.max_queued_messages_set(self.cfg.max_inflight + 2)
        client.will_set(
            self.status_topic,
            payloads.encode_status(self.gateway_id, payloads.STATUS_OFFLINE,
                                   sent_at=self._clock.now(), reason="connection lost"),
            qos=1,
            retain=True,
        )
        loop = self._loop
        assert loop is not None
        post = loop.call_soon_threadsafe

        def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, props: Properties | None) -> None:
            post(self._handle_connect, gen, rc, props)

        def on_disconnect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            post(self._handle_disconnect, gen, rc)

        def on_publish(_c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            post(self._handle_publish, gen, mid, rc)

        def on_log(_c: Any, _u: Any, level: int, text: str) -> None:
            if level in (paho.MQTT_LOG_ERR, paho.MQTT_LOG_WARNING):
                post(self._handle_log, gen, text)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_log = on_log
        return client

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
                functools.partial(client.connect, self.cfg.host, self.cfg.port,
                                  keepalive=self.cfg.keepalive_s, clean_start=True),
            )
        except Exception as e:  # whatever connect() raised is classified, never fatal
            session.closed = True
            self._record_error(classify_connect_error(e, self._where))
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()
            return False
        sock = client.socket()
        if isinstance(sock, ssl.SSLSocket):
            self._tls_version = sock.version() or ""
        client.loop_start()
        try:
            try:
                await asyncio.wait_for(session.connack.wait(), self.tuning.connack_timeout_s)
            except TimeoutError:
                self._record_error(ConnackTimeout(
                    f"{self._where} accepted TCP/TLS but sent no CONNACK within "
                    f"{self.tuning.connack_timeout_s:g} s"))
                return False
            if not session.connected:
                return False
            await self._pump(session)
            return session.error is None or session.error.kind is UplinkErrorKind.CONNECTION_LOST
        finally:
            await self._teardown(session)

    async def _teardown(self, session: _Session) -> None:
        assert self._loop is not None
        if not session.closed:
            session.user_disconnect = True
            with contextlib.suppress(Exception):
                session.client.disconnect()
        await self._loop.run_in_executor(None, session.client.loop_stop)
        # loop_stop joined paho's thread: every callback it posted has run by now.
        session.closed = True
        self._release(session)
        self._flush_acks()
        self._connected = False

    def _release(self, session: _Session) -> None:
        ids = [i for b in session.inflight.values() for i in b.ids]
        session.inflight.clear()
        if ids:
            self._spool.release(ids)

    async def _pump(self, session: _Session) -> None:
        """Keep the in-flight window full while connected."""
        assert self._wake is not None
        while not session.closed:
            if self._stopping:
                await self._close_gracefully(session)
                return
            self._wake.clear()
            self._flush_acks()
            self._fill_window(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tuning.poll_interval_s)

    def _flush_acks(self) -> None:
        if self._acked:
            self._spool.ack(self._acked)
            self._acked = []

    def _fill_window(self, session: _Session) -> None:
        window = min(self.cfg.max_inflight, session.receive_maximum)
        n = self.cfg.batch_max_records
        cap = self.tuning.max_message_bytes
        while n > 1 and payloads.envelope_overhead(self.gateway_id, n) > cap // 2:
            n //= 2  # leave at least half of the message for record bodies
        budget = cap - payloads.envelope_overhead(self.gateway_id, n)
        while len(session.inflight) < window and not session.closed:
            batch = self._spool.next_batch(n, max(budget, 1))
            if not batch:
                return
            encoded = self._encode(batch)
            if encoded is None:
                return
            data, message_id, batch = encoded
            ids = [r.record_id for r in batch]
            self._spool.mark_in_flight(ids)
            info = session.client.publish(self.readings_topic, data, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._spool.release(ids)
                log.info("uplink: publish not accepted by paho (%s); waiting",
                         paho.error_string(info.rc))
                return
            session.inflight[info.mid] = _Batch(ids, message_id, len(data))

    def _encode(self, batch: list[SpoolRecord]) -> tuple[bytes, str, list[SpoolRecord]] | None:
        """Encode, halving the batch while it exceeds the message cap."""
        while True:
            message_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            try:
                data = payloads.encode_readings(
                    self.gateway_id, batch, message_id=message_id, sent_at=self._clock.now(),
                    max_bytes=self.tuning.max_message_bytes)
            except payloads.MessageTooLarge as e:
                if len(batch) == 1:
                    # Cannot happen with the spool's record cap below the message cap; keep the
                    # record (it is retried after a restart) rather than block or drop.
                    self._spool.mark_in_flight([batch[0].record_id])
                    self._record_error(PublishRefused(
                        f"record {batch[0].record_id} alone is {e.size} bytes > message cap "
                        f"{e.limit}; held back"))
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
                await asyncio.wait_for(self._wake.wait(), remaining)
        if session.closed:
            return
        info = session.client.publish(
            self.status_topic,
            payloads.encode_status(self.gateway_id, payloads.STATUS_OFFLINE,
                                   sent_at=self._clock.now(), reason="shutdown"),
            qos=1, retain=True)
        session.status_mid = info.mid
        session.status_acked.clear()
        wait = min(1.0, max(0.2, self._flush_deadline - self._loop.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.status_acked.wait(), wait)
        session.user_disconnect = True
        session.client.disconnect()

    # -- events from paho's thread (run on the asyncio thread) ------------------------------
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
            info = s.client.publish(
                self.status_topic,
                payloads.encode_status(self.gateway_id, payloads.STATUS_ONLINE,
                                       sent_at=self._clock.now()),
                qos=1, retain=True)
            s.status_mid = info.mid
            log.info("uplink: connected to %s (%s, client id %s)", self._where,
                     self._tls_version, self.gateway_id)
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
            self._record_error(ClientCertRejected(
                f"{LOST_BEFORE_CONNACK}{detail or f' ({rc})'}"), s)
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
        batch = s.inflight.pop(mid, None)
        if batch is None:
            return
        if rc.is_failure:
            self._spool.release(batch.ids)
            self._record_error(PublishRefused(
                f"{self._where} refused message {batch.message_id} on {self.readings_topic}: "
                f"{rc} (0x{rc.value:02X})"), s)
            s.user_disconnect = True  # back off before trying again
            s.client.disconnect()
        else:
            self._acked.extend(batch.ids)
            self._published_records += len(batch.ids)
            self._published_messages += 1
        if self._wake is not None:
            self._wake.set()

    def _record_error(self, err: UplinkError, session: _Session | None = None) -> None:
        if session is not None:
            session.error = err
        self._last_error = str(err)
        self._last_error_kind = err.kind
        log.warning("uplink: %s", err)
