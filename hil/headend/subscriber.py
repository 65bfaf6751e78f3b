"""One head-end worker: subscribes to every gateway's readings and status over mTLS with the head
end's own certificate, and keeps what it receives.

Why shared subscriptions: a real head end scales out by running several workers behind one
subscription; with MQTT v5 ``$share/<group>/<filter>`` the broker hands each message to one worker
of the group. Each worker feeds its in-memory ``ReadingStore`` (tests wait on it) and, when given
one, the shared ``HeadEndDb`` where duplicates are dropped for all workers at once. Status topics
are subscribed without sharing: they are retained, and the broker sends retained messages to
plain subscriptions only (MQTT v5 §4.8.2).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware_agent.uplink import payloads
from hil.headend.db import HeadEndDb
from hil.headend.store import HeadEndError, InvalidMessage, ReadingStore
from hil.pki import CertPair, Pki

log = logging.getLogger("hil.headend")


@dataclass(frozen=True)
class HeadEndTls:
    """The head end's credentials when they do not come from a generated ``Pki``."""

    ca_file: Path
    cert: CertPair

    @classmethod
    def of(cls, pki: Pki | HeadEndTls) -> HeadEndTls:
        return pki if isinstance(pki, HeadEndTls) else cls(pki.ca_cert, pki.headend)


def _client_context(ca_file: str, pair: CertPair) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=ca_file)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


class HeadEnd:
    """``with HeadEnd(host, port, pki) as he: ... he.wait_for_records(n, timeout)``."""

    def __init__(
        self,
        host: str,
        port: int,
        pki: Pki | HeadEndTls,
        *,
        topic_prefix: str = "ami",
        client_id: str = "headend",
        store: ReadingStore | None = None,
        timeout: float = 10.0,
        shared_group: str | None = None,
        db: HeadEndDb | None = None,
        session_expiry_s: int = 0,
    ) -> None:
        if shared_group is not None:
            payloads.check_topic_level("shared_group", shared_group)
        self.host = host
        self.port = port
        self.pki = pki
        self.topic_prefix = topic_prefix
        self.client_id = client_id
        self.store = store or ReadingStore()
        self.timeout = timeout
        self.shared_group = shared_group
        self.db = db
        # > 0: a persistent session (clean_start off), so a broker that persists sessions keeps
        # queuing our messages while we are away or while it restarts, as a real head end needs.
        self.session_expiry_s = session_expiry_s
        self._client: paho.Client | None = None
        self._subscribed = threading.Event()
        self._error = ""
        self.disconnects = 0

    def start(self) -> HeadEnd:
        if self._client is not None:
            raise HeadEndError("head end already started")
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        tls = HeadEndTls.of(self.pki)
        client.tls_set_context(_client_context(str(tls.ca_file), tls.cert))
        # Come back at once after a broker restart (tests restart the broker on purpose): without
        # a persistent session (``session_expiry_s``) on a broker that persists it, what is
        # published before we re-subscribe is lost to us. (paho annotates the delays as int; its
        # wait loop takes fractions.)
        client.reconnect_delay_set(min_delay=0.1, max_delay=0.25)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        try:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.session_expiry_s > 0:
                props.SessionExpiryInterval = self.session_expiry_s
            client.connect(
                self.host,
                self.port,
                keepalive=30,
                clean_start=self.session_expiry_s <= 0,
                properties=props,
            )
        except (OSError, ssl.SSLError) as e:
            raise HeadEndError(f"head end cannot connect to {self.host}:{self.port}: {e}") from e
        self._client = client
        client.loop_start()
        if not self._subscribed.wait(self.timeout):
            self.stop()
            raise HeadEndError(f"head end not subscribed after {self.timeout} s {self._error}")
        return self

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        props = None
        if self.session_expiry_s > 0:  # done for good: the broker need not keep our session
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        client.disconnect(properties=props)
        client.loop_stop()

    def __enter__(self) -> HeadEnd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- paho thread ----------------------------------------------------------------------------
    def _on_connect(
        self, client: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            self._error = f"CONNACK {rc}"
            return
        # Re-subscribe on every (re)connect: the session is clean.
        client.subscribe(
            [
                (self.readings_subscription, 1),
                (payloads.status_filter(self.topic_prefix), 1),
            ]
        )

    @property
    def readings_subscription(self) -> str:
        """The readings filter, inside ``$share/<group>/`` when workers share the load."""
        flt = payloads.readings_filter(self.topic_prefix)
        return flt if self.shared_group is None else f"$share/{self.shared_group}/{flt}"

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._subscribed.clear()
        self.disconnects += 1

    def _on_subscribe(
        self, _c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        failed = [str(rc) for rc in rcs if rc.is_failure]
        if failed:
            self._error = f"SUBACK {failed}"
            return
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            _prefix, gateway_id, kind = payloads.parse_topic(msg.topic)
            if kind == "readings":
                readings = payloads.decode_readings(bytes(msg.payload))
                if readings.gateway_id != gateway_id:
                    raise payloads.PayloadError(
                        "gateway_id", f"{readings.gateway_id!r} published on {msg.topic!r}"
                    )
                if self.db is not None:
                    try:
                        self.db.ingest(readings, self.client_id)
                    except sqlite3.Error as e:  # never kill paho's thread; say what was lost
                        raise payloads.PayloadError("store", f"not stored: {e}") from e
                self.store.add_readings(readings)
            elif kind == "status":
                status = payloads.decode_status(bytes(msg.payload))
                if status.gateway_id != gateway_id:
                    raise payloads.PayloadError(
                        "gateway_id", f"{status.gateway_id!r} published on {msg.topic!r}"
                    )
                self.store.add_status(status)
            else:
                raise payloads.PayloadError("topic", f"unexpected kind {kind!r}")
        except payloads.PayloadError as e:
            log.warning("head end: invalid message on %s: %s", msg.topic, e)
            self.store.add_invalid(InvalidMessage(msg.topic, str(e), bytes(msg.payload)))
            if self.db is not None:
                self.db.count_invalid()

    # -- waiting ----------------------------------------------------------------------------
    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Block until (re)subscribed, e.g. after the broker was restarted."""
        if not self._subscribed.wait(timeout):
            raise HeadEndError(f"head end not subscribed after {timeout} s {self._error}")

    def wait_for_records(self, n: int, timeout: float) -> list[dict[str, Any]]:
        """Block until at least ``n`` distinct records arrived; raise ``HeadEndError`` on time-out.
        From asyncio code use ``await he.wait_for_records_async(...)`` instead."""
        return self.store.wait_for(n, timeout)

    async def wait_for_records_async(self, n: int, timeout: float) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.wait_for, n, timeout)

    def wait_for_status(
        self, gateway_id: str, state: str, timeout: float = 10.0
    ) -> payloads.StatusMessage:
        return self.store.wait_for_status(gateway_id, state, timeout)

    def records(self) -> list[dict[str, Any]]:
        """Distinct records received so far (a copy)."""
        return self.store.snapshot()

    @property
    def duplicates(self) -> int:
        return self.store.duplicates
