"""The uplink against a real mosquitto with mutual TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.config import UplinkConfig
from firmware_agent.spool import Priority, Spool
from firmware_agent.uplink.mqtt import (
    Backoff,
    Uplink,
    UplinkErrorKind,
    UplinkTuning,
    classify_connect_error,
)
from firmware_agent.uplink.tls import TlsSetupError, build_ssl_context
from hil.broker import BrokerOptions, Mosquitto
from hil.headend import HeadEnd
from hil.pki import Pki, generate_foreign_client, issue_client
from hil.waiting import eventually

from .support import run_with_uplink

GATEWAY = "gateway-01"
FAST = UplinkTuning(backoff=Backoff(initial_s=0.1, maximum_s=0.4), connect_timeout_s=2.0)


def readings(n: int, start: int = 0, meter: str = "m1") -> list[tuple[dict[str, Any], str]]:
    return [
        (
            {"device_id": meter, "time": start + i, "kw": 0.5 + i, "obis": "1.0.1.8.0.255"},
            f"{meter}/1.0.1.8.0.255/{start + i}",
        )
        for i in range(n)
    ]


def test_records_reach_head_end_and_leave_spool(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    ids = spool.add(readings(120), Priority.INTERVAL)
    alarm = spool.add([({"device_id": "m9", "event": "last gasp"}, "m9/alarm/1")], Priority.ALARM)
    cfg = make_uplink_config(batch_max_records=25)
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), rng=random.Random(1), tuning=FAST)
    with HeadEnd(mqtt_broker.host, mqtt_broker.port, mtls_pki) as he:

        async def body(up: Uplink) -> None:
            got = await he.wait_for_records_async(121, 10)
            await eventually(lambda: spool.depth() == 0, 5, "spool to drain")
            assert {r["record_id"] for r in got} == set(ids + alarm)
            first = he.store.messages[0]
            assert first.records[0]["record_id"] == alarm[0]  # the alarm overtook the backlog
            by_id = {r["record_id"]: r for r in got}
            r = by_id[ids[5]]
            assert r["natural_key"] == "m1/1.0.1.8.0.255/5"
            assert r["device_id"] == "m1" and r["time"] == 5 and r["kw"] == 5.5
            assert r["priority"] == "interval" and r["gateway_id"] == GATEWAY
            assert len(r["message_id"]) == 36
            assert len(he.store.messages) == 5  # 121 records in batches of at most 25
            st = up.stats
            assert st.connected and st.published_records == 121 and st.published_messages == 5
            assert st.inflight == 0 and st.last_error == "" and st.tls_version == "TLSv1.3"
            he.wait_for_status(GATEWAY, "online", 5)

        run_with_uplink(uplink, body)
        offline = he.wait_for_status(GATEWAY, "offline", 5)
        assert offline.reason == "shutdown"
    assert not uplink.stats.connected


def test_status_carries_the_spool_figures_and_online_repeats(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    """A head end sees the backlog in the retained status: per class at connect, again every
    ``status_interval_s`` while online, and what was left at a clean stop."""
    jsonschema = pytest.importorskip("jsonschema")
    schemas = Path(__file__).resolve().parents[3] / "docs" / "schemas"
    status_schema = json.loads((schemas / "status.schema.json").read_text())
    spool.add(readings(30), Priority.INTERVAL)
    spool.add([({"device_id": "m9", "event": "last gasp"}, "m9/alarm/1")], Priority.ALARM)
    tuning = UplinkTuning(
        backoff=FAST.backoff, connect_timeout_s=2.0, status_interval_s=0.4, poll_interval_s=0.1
    )
    uplink = Uplink(make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=tuning)
    # Nothing is published before this test's head end is listening: the uplink starts after.
    with HeadEnd(mqtt_broker.host, mqtt_broker.port, mtls_pki) as he:

        async def body(up: Uplink) -> None:
            await eventually(lambda: len(he.store.status_history) >= 3, 5, "repeated status")
            await he.wait_for_records_async(31, 5)
            await eventually(lambda: spool.depth() == 0, 5, "spool to drain")
            n = len(he.store.status_history)
            await eventually(
                lambda: len(he.store.status_history) >= n + 1, 5, "a status after the drain"
            )

        run_with_uplink(uplink, body)
        he.wait_for_status(GATEWAY, "offline", 5)
        history = list(he.store.status_history)
    first, last = history[0], history[-1]
    assert first.state == "online" and first.spool is not None
    assert first.spool["depth_by_class"] == {"alarm": 1, "on_demand": 0, "interval": 30}
    assert first.spool["depth"] == 31 and first.spool["queue_depth_exceeded"] is None
    assert first.spool["max_bytes"] == spool.max_bytes > first.spool["used_bytes"] > 0
    onlines = [m for m in history if m.state == "online"]
    assert len(onlines) >= 3
    drained = [m for m in onlines if m.spool is not None and m.spool["depth"] == 0]
    assert drained, [m.spool for m in onlines]  # a repeat after the drain shows it
    assert last.state == "offline" and last.reason == "shutdown"
    assert last.spool is not None and last.spool["depth"] == 0
    assert last.spool["acked"] == 31
    for m in history:
        doc = {k: v for k, v in vars(m).items() if v is not None}
        jsonschema.validate({"schema": "status/1", **doc}, status_schema)


def test_records_added_while_running_are_sent(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    uplink = Uplink(make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=FAST)
    with HeadEnd(mqtt_broker.host, mqtt_broker.port, mtls_pki) as he:

        async def body(up: Uplink) -> None:
            await eventually(lambda: up.stats.connected, 5, "connect")
            for k in range(5):
                spool.add(readings(3, start=10 * k), Priority.INTERVAL)
                await asyncio.sleep(0.01)
            await he.wait_for_records_async(15, 5)
            await eventually(lambda: spool.depth() == 0, 5, "spool to drain")

        run_with_uplink(uplink, body)


def _watch_window(
    spool: Spool, seen: list[int], on_the_wire: list[int], records: list[int] | None = None
) -> Callable[[Uplink], Awaitable[None]]:
    """Until the spool is empty, note the readings messages (and records) the uplink has in
    flight and what paho counts as awaiting a PUBACK (the test reaches into the third-party
    client)."""

    async def body(up: Uplink) -> None:
        while spool.depth():
            seen.append(up.stats.inflight)
            if records is not None:
                records.append(up.stats.inflight_records)
            if up._session is not None:
                on_the_wire.append(up._session.client._inflight_messages)
            await asyncio.sleep(0)

    return body


def test_inflight_window_is_capped(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    spool.add(readings(300), Priority.INTERVAL)
    cfg = make_uplink_config(max_inflight=3, batch_max_records=2)
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), tuning=FAST)
    seen: list[int] = []
    on_the_wire: list[int] = []
    records: list[int] = []
    run_with_uplink(uplink, _watch_window(spool, seen, on_the_wire, records))
    # The uplink keeps the window (paho's is off, mqtt.py's docstring), and paho sends what it
    # is handed: the window and at most the status message await a PUBACK.
    assert max(seen) == 3
    assert max(records) == 3 * 2
    assert 3 <= max(on_the_wire) <= 3 + 1
    assert uplink.stats.published_messages == 150


def test_window_stays_within_the_brokers_receive_maximum(
    mtls_pki: Pki,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
    tmp_path: Path,
) -> None:
    # mosquitto announces max_inflight_messages as its Receive Maximum. MQTT v5 lets a broker
    # drop a client that sends more (this mosquitto does not, so the test counts): the uplink
    # keeps readings, replies and the status within it, however large its own window.
    work = tmp_path / "small-receive-maximum"
    work.mkdir()
    ids = spool.add(readings(200), Priority.INTERVAL)
    with Mosquitto(mtls_pki, options=BrokerOptions(max_inflight_messages=3), workdir=work) as b:
        cfg = make_uplink_config(port=b.port, max_inflight=10, batch_max_records=4)
        uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), tuning=FAST)
        seen: list[int] = []
        on_the_wire: list[int] = []
        with HeadEnd(b.host, b.port, mtls_pki, client_id="headend-rm") as he:
            run_with_uplink(uplink, _watch_window(spool, seen, on_the_wire))
            he.wait_for_records(len(ids), 10)
            got = {r["record_id"] for r in he.records()}
    assert got == set(ids)
    assert uplink.stats.connections == 1 and uplink.stats.last_error_kind is None
    assert max(seen) == 3 - 1  # one slot kept for the status message
    assert max(on_the_wire) <= 3


def test_broker_restart_mid_stream_loses_nothing(
    mtls_pki: Pki,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
    tmp_path: Path,
) -> None:
    # The broker persists sessions and the head end's session outlives the restart, as in
    # production: messages the broker acknowledged but had not yet passed on to the head end
    # when it stopped (the uplink outpaces one subscriber) are delivered after the restart.
    work = tmp_path / "persisting-broker"
    work.mkdir()
    options = BrokerOptions(persist_sessions=True)
    ids = spool.add(readings(6000), Priority.INTERVAL)
    with Mosquitto(mtls_pki, options=options, workdir=work) as mqtt_broker:
        cfg = make_uplink_config(port=mqtt_broker.port, max_inflight=5, batch_max_records=10)
        # The uplink comes back well after the head end has reconnected (~1 s).
        tuning = UplinkTuning(backoff=Backoff(initial_s=3.0, maximum_s=3.0))
        uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), rng=random.Random(5), tuning=tuning)
        he = HeadEnd(
            mqtt_broker.host,
            mqtt_broker.port,
            mtls_pki,
            client_id="headend-restart",
            session_expiry_s=3600,
        )
        with he:

            async def body(up: Uplink) -> None:
                await eventually(lambda: up.stats.published_records >= 500, 10, "first records")
                port = mqtt_broker.port
                await asyncio.to_thread(mqtt_broker.stop)
                await eventually(lambda: not up.stats.connected, 5, "disconnect noticed")
                assert up.stats.last_error_kind is UplinkErrorKind.CONNECTION_LOST
                assert spool.in_flight() == 0  # everything unacknowledged is pending again
                assert 0 < spool.depth() < 6000
                await asyncio.to_thread(mqtt_broker.start)
                assert mqtt_broker.port == port
                await asyncio.to_thread(he.wait_subscribed, 5)
                await he.wait_for_records_async(6000, 20)
                await eventually(lambda: spool.depth() == 0, 5, "spool to drain")
                assert up.stats.connections == 2

            run_with_uplink(uplink, body, timeout=40)
            got = he.records()
    assert {r["record_id"] for r in got} == set(ids)
    assert spool.depth() == 0


def test_client_cert_from_other_ca_is_rejected(
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign = generate_foreign_client(tmp_path / "foreign", GATEWAY)
    ids = spool.add(readings(10), Priority.INTERVAL)
    uplink = Uplink(
        make_uplink_config(cert=foreign.client), GATEWAY, spool, SystemClock(), tuning=FAST
    )

    async def body(up: Uplink) -> None:
        await eventually(lambda: up.stats.connect_attempts >= 2, 5, "two attempts")

    with caplog.at_level(logging.WARNING, "firmware_agent.uplink"):
        run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.last_error_kind is UplinkErrorKind.CLIENT_CERT_REJECTED
    assert "connection lost before CONNACK" in st.last_error
    assert "rejected our client certificate" in st.last_error
    # paho's own error line (the TLS alert, or an EOF when the broker hangs up first) reaches the
    # session through paho's logger.
    assert "(failed to receive on socket: " in st.last_error
    assert st.connections == 0 and st.published_records == 0
    assert spool.depth() == 10 and spool.in_flight() == 0
    assert [r.record_id for r in spool.next_batch(100, 1 << 20)] == ids
    assert "rejected our client certificate" in caplog.text
    mqtt_broker.wait_for_log("certificate verify failed")


def test_client_cert_rejected_in_a_tls12_handshake_is_named_too(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    tmp_path: Path,
) -> None:
    # With TLS 1.2 the broker refuses the certificate inside the handshake: classify the real
    # exception that a real handshake raises.
    import socket

    foreign = generate_foreign_client(tmp_path / "foreign", GATEWAY)
    with Mosquitto(
        mtls_pki, options=BrokerOptions(tls_version="1.2"), workdir=tmp_path / "b12"
    ) as b12:
        ctx = ssl.create_default_context(cafile=str(mtls_pki.ca_cert))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(foreign.client.cert), str(foreign.client.key))
        with (
            socket.create_connection((b12.host, b12.port), timeout=5) as raw,
            pytest.raises(ssl.SSLError) as e,
        ):
            ctx.wrap_socket(raw, server_hostname="localhost")
    err = classify_connect_error(e.value, "b12")
    assert err.kind is UplinkErrorKind.CLIENT_CERT_REJECTED, e.value
    assert "during the TLS handshake" in str(err)


def test_untrusted_server_is_a_tls_handshake_failure(
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
    tmp_path: Path,
) -> None:
    foreign = generate_foreign_client(tmp_path / "foreign", GATEWAY)
    spool.add(readings(3), Priority.INTERVAL)
    cfg = make_uplink_config(ca_file=foreign.ca.cert)  # pins a CA that did not sign the broker
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), tuning=FAST)

    async def body(up: Uplink) -> None:
        await eventually(lambda: up.stats.last_error != "", 5, "an error")

    run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.last_error_kind is UplinkErrorKind.TLS_HANDSHAKE_FAILED
    assert "not accepted" in st.last_error and "certificate" in st.last_error
    assert spool.depth() == 3


def test_hostname_not_in_server_cert_is_a_tls_handshake_failure(
    mtls_pki: Pki,
    tmp_path: Path,
    spool: Spool,
    make_uplink_config: Callable[..., UplinkConfig],
) -> None:
    from hil.pki import generate_pki

    other = generate_pki(tmp_path / "pki2", server_names=("broker.example",))
    with Mosquitto(other, workdir=tmp_path / "b") as b:
        cfg = make_uplink_config(
            port=b.port, host="127.0.0.1", ca_file=other.ca_cert, cert=other.client(GATEWAY)
        )
        uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), tuning=FAST)

        async def body(up: Uplink) -> None:
            await eventually(lambda: up.stats.last_error != "", 5, "an error")

        run_with_uplink(uplink, body)
    assert uplink.stats.last_error_kind is UplinkErrorKind.TLS_HANDSHAKE_FAILED
    assert "127.0.0.1" in uplink.stats.last_error


def test_broker_unreachable(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    cfg = make_uplink_config()
    mqtt_broker.stop()
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), tuning=FAST)

    async def body(up: Uplink) -> None:
        await eventually(lambda: up.stats.connect_attempts >= 3, 5, "three attempts")

    run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.last_error_kind is UplinkErrorKind.BROKER_UNREACHABLE
    assert "connection refused" in st.last_error


def test_not_authorised_connack(
    mtls_pki: Pki,
    tmp_path: Path,
    spool: Spool,
    make_uplink_config: Callable[..., UplinkConfig],
) -> None:
    opts = BrokerOptions(extra_config=("clientid_prefixes headend",))
    with Mosquitto(mtls_pki, options=opts, workdir=tmp_path / "b") as b:
        spool.add(readings(2), Priority.INTERVAL)
        uplink = Uplink(make_uplink_config(port=b.port), GATEWAY, spool, SystemClock(), tuning=FAST)

        async def body(up: Uplink) -> None:
            await eventually(lambda: up.stats.last_error != "", 5, "an error")

        run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.last_error_kind is UplinkErrorKind.NOT_AUTHORISED, st.last_error
    assert "0x87" in st.last_error
    assert spool.depth() == 2


def test_tls12_when_configured(
    mtls_pki: Pki,
    tmp_path: Path,
    spool: Spool,
    make_uplink_config: Callable[..., UplinkConfig],
) -> None:
    cfg12 = make_uplink_config(tls_version="1.2")
    assert build_ssl_context(cfg12.tls).minimum_version is ssl.TLSVersion.TLSv1_2
    assert build_ssl_context(make_uplink_config().tls).minimum_version is ssl.TLSVersion.TLSv1_3
    with pytest.raises(TlsSetupError, match=r"1\.1"):
        build_ssl_context(make_uplink_config(tls_version="1.1").tls)
    with Mosquitto(
        mtls_pki, options=BrokerOptions(tls_version="1.2"), workdir=tmp_path / "b12"
    ) as b12:
        spool.add(readings(2), Priority.INTERVAL)
        uplink12 = Uplink(
            make_uplink_config(port=b12.port, tls_version="1.2"),
            GATEWAY,
            spool,
            SystemClock(),
            tuning=FAST,
        )

        async def ok(up: Uplink) -> None:
            await eventually(lambda: spool.depth() == 0, 5, "spool to drain")

        run_with_uplink(uplink12, ok)
        assert uplink12.stats.tls_version in ("TLSv1.2", "TLSv1.3")


def test_broker_accepts_only_tls13_by_default(mtls_pki: Pki, mqtt_broker: Mosquitto) -> None:
    ctx = ssl.create_default_context(cafile=str(mtls_pki.ca_cert))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    pair = mtls_pki.client(GATEWAY)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    import socket

    with (
        socket.create_connection((mqtt_broker.host, mqtt_broker.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_expiring_client_cert_is_warned_about(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = dt.datetime.now(dt.UTC)
    soon = issue_client(
        mtls_pki,
        GATEWAY,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=10),
        stem="gw-soon",
    )
    uplink = Uplink(make_uplink_config(cert=soon), GATEWAY, spool, SystemClock(), tuning=FAST)

    async def body(up: Uplink) -> None:
        await eventually(lambda: up.stats.connected, 5, "connect")

    with caplog.at_level(logging.WARNING, "firmware_agent.uplink"):
        run_with_uplink(uplink, body)
    assert "expires in 9 days" in uplink.stats.cert_warning
    assert "expires in 9 days" in caplog.text


def test_missing_key_file_fails_fast(
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
    tmp_path: Path,
) -> None:
    from hil.pki import CertPair

    cfg = make_uplink_config(cert=CertPair(tmp_path / "nope.crt", tmp_path / "nope.key"))
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock())
    with pytest.raises(TlsSetupError, match=r"nope\.crt"):
        asyncio.run(uplink.run())


def test_stop_before_run_and_bad_arguments(
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    cfg = make_uplink_config()
    with pytest.raises(Exception, match="gateway_id"):
        Uplink(cfg, "gw/1", spool, SystemClock())
    with pytest.raises(ValueError, match="max_inflight"):
        Uplink(make_uplink_config(max_inflight=0), GATEWAY, spool, SystemClock())
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock())

    async def main() -> None:
        await uplink.stop(0)
        await asyncio.wait_for(uplink.run(), 5)  # returns at once: already stopped

    asyncio.run(main())
    assert uplink.stats.connect_attempts == 0


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(initial_s=0.5, maximum_s=8.0)
    rng = random.Random(42)
    delays = [[b.delay(a, rng) for _ in range(200)] for a in range(8)]
    for a, ds in enumerate(delays):
        step = min(8.0, 0.5 * 2**a)
        assert all(step / 2 <= d <= step for d in ds)
        assert max(ds) - min(ds) > step / 4  # really jittered
    assert b.delay(10_000, rng) <= 8.0
    assert Backoff().delay(3, random.Random(1)) == Backoff().delay(3, random.Random(1))


def test_payload_on_the_wire_is_the_documented_one(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schemas = Path(__file__).resolve().parents[3] / "docs" / "schemas"
    readings_schema = json.loads((schemas / "readings.schema.json").read_text())
    status_schema = json.loads((schemas / "status.schema.json").read_text())
    raw: list[tuple[str, bytes]] = []
    spool.add(readings(7), Priority.ON_DEMAND)
    uplink = Uplink(make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=FAST)
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    sniffer = paho.Client(CallbackAPIVersion.VERSION2, client_id="headend", protocol=paho.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(mtls_pki.ca_cert))
    ctx.load_cert_chain(str(mtls_pki.headend.cert), str(mtls_pki.headend.key))
    sniffer.tls_set_context(ctx)
    sniffer.on_message = lambda _c, _u, m: raw.append((m.topic, bytes(m.payload)))
    sniffer.connect("localhost", mqtt_broker.port)
    sniffer.subscribe("ami/#", qos=1)
    sniffer.loop_start()
    try:

        async def body(up: Uplink) -> None:
            await eventually(lambda: sum(t.endswith("/readings") for t, _ in raw) >= 1, 5, "msg")

        run_with_uplink(uplink, body)
        loop_deadline = asyncio.run(asyncio.sleep(0.3))
        del loop_deadline
    finally:
        sniffer.disconnect()
        sniffer.loop_stop()
    kinds = {t.rsplit("/", 1)[1] for t, _ in raw}
    assert kinds == {"readings", "status"}
    for topic, payload in raw:
        doc = json.loads(payload)
        schema = readings_schema if topic == f"ami/{GATEWAY}/readings" else status_schema
        assert topic in (f"ami/{GATEWAY}/readings", f"ami/{GATEWAY}/status")
        jsonschema.validate(doc, schema)


def test_expired_client_cert_is_rejected_and_warned_about(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    from hil.pki import issue_expired_client

    expired = issue_expired_client(mtls_pki, GATEWAY)
    spool.add(readings(4), Priority.INTERVAL)
    uplink = Uplink(make_uplink_config(cert=expired), GATEWAY, spool, SystemClock(), tuning=FAST)

    async def body(up: Uplink) -> None:
        await eventually(lambda: up.stats.last_error != "", 5, "an error")

    run_with_uplink(uplink, body)
    st = uplink.stats
    assert "EXPIRED" in st.cert_warning
    assert st.last_error_kind is UplinkErrorKind.CLIENT_CERT_EXPIRED, st.last_error
    assert "connection lost before CONNACK" in st.last_error
    assert "expired on" in st.last_error and "renew" in st.last_error
    assert spool.depth() == 4


def test_large_batches_respect_the_message_cap(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    big = [({"device_id": "m", "seq": i, "blob": "y" * 3000}, f"m/{i}") for i in range(60)]
    spool.add(big, Priority.INTERVAL)
    tuning = UplinkTuning(max_message_bytes=20_000)
    uplink = Uplink(
        make_uplink_config(batch_max_records=1000), GATEWAY, spool, SystemClock(), tuning=tuning
    )
    with HeadEnd(mqtt_broker.host, mqtt_broker.port, mtls_pki) as he:

        async def body(up: Uplink) -> None:
            await he.wait_for_records_async(60, 10)

        run_with_uplink(uplink, body)
        sizes = [len(m.records) for m in he.store.messages]
    assert max(sizes) <= 6 and sum(sizes) == 60


UPLINK_PROCESS = """
import asyncio, sys
from pathlib import Path
from firmware_agent.clock import SystemClock
from firmware_agent.config import TlsConfig, UplinkConfig
from firmware_agent.spool import Spool
from firmware_agent.uplink.mqtt import Uplink
url, ca, cert, key, db = sys.argv[1:]
cfg = UplinkConfig(url, TlsConfig(Path(ca), Path(cert), Path(key)))
spool = Spool(Path(db), SystemClock())

async def main():
    up = Uplink(cfg, "gateway-01", spool, SystemClock())
    task = asyncio.create_task(up.run())
    while not up.stats.connected:
        await asyncio.sleep(0.01)
    print("CONNECTED", flush=True)
    await task

asyncio.run(main())
"""


def test_killed_gateway_leaves_last_will_and_a_spool_that_resumes(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    tmp_path: Path,
    make_uplink_config: Callable[..., UplinkConfig],
) -> None:
    import os
    import signal
    import subprocess
    import sys

    db = tmp_path / "spool.sqlite"
    pair = mtls_pki.client(GATEWAY)
    with HeadEnd(mqtt_broker.host, mqtt_broker.port, mtls_pki) as he:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                UPLINK_PROCESS,
                f"mqtts://localhost:{mqtt_broker.port}",
                str(mtls_pki.ca_cert),
                str(pair.cert),
                str(pair.key),
                str(db),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[3],
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "CONNECTED"
            he.wait_for_status(GATEWAY, "online", 5)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        will = he.wait_for_status(GATEWAY, "offline", 5)
        assert will.reason == "connection lost"
        # records spooled while the gateway was down go out when it comes back
        spool = Spool(db, SystemClock())
        ids = spool.add(readings(5), Priority.INTERVAL)
        uplink = Uplink(make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=FAST)

        async def body(up: Uplink) -> None:
            got = await he.wait_for_records_async(5, 5)
            assert {r["record_id"] for r in got} == set(ids)
            await eventually(lambda: spool.depth() == 0, 5, "spool to drain")

        run_with_uplink(uplink, body)
        spool.close()
