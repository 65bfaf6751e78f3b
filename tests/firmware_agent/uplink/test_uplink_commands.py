"""Commands (MQTT v5 request/response), events, supervision and certificate/clock errors,
against a real mosquitto with mutual TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.config import UplinkConfig
from firmware_agent.spool import Priority, Spool
from firmware_agent.uplink import payloads
from firmware_agent.uplink.mqtt import Backoff, Uplink, UplinkErrorKind, UplinkTuning
from firmware_agent.uplink.requests import CommandRequest, CommandResponse
from firmware_agent.uplink.tls import TlsSetupError
from hil.broker import Mosquitto
from hil.headend.requester import CommandRequester
from hil.pki import Pki, generate_pki, issue_client
from hil.waiting import eventually

from .support import run_with_uplink

GATEWAY = "gateway-01"


def readings(n: int, meter: str = "m1") -> list[tuple[dict[str, Any], str]]:
    return [
        ({"device_id": meter, "time": i, "kw": 0.5 + i}, f"{meter}/1.0.1.8.0.255/{i}")
        for i in range(n)
    ]


FAST = UplinkTuning(
    backoff=Backoff(initial_s=0.1, maximum_s=0.4), connect_timeout_s=2.0, poll_interval_s=0.2
)
SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


async def echo(req: CommandRequest) -> CommandResponse:
    body = {"schema": "echo", "name": req.name, "payload": req.payload.decode()}
    return CommandResponse(json.dumps(body).encode(), "application/json", "ok")


async def wait_connected(up: Uplink) -> None:
    await eventually(lambda: up.stats.connected, 5, "connect")
    await asyncio.sleep(0.2)  # the command subscription's SUBACK


def test_command_round_trip_with_correlation(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    uplink = Uplink(
        make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=FAST, command_handler=echo
    )
    with CommandRequester(mtls_pki, mqtt_broker) as he:

        async def body(up: Uplink) -> None:
            await wait_connected(up)
            he.request("ping", b'{"meter_id":"m1"}', correlation=b"\x00corr-1")
            he.request("read", b'{"meter_id":"m2"}', correlation=b"corr-2")
            got = await he.wait_for(2)
            by_corr = {g.prop("CorrelationData"): g for g in got}
            assert set(by_corr) == {b"\x00corr-1", b"corr-2"}
            first = by_corr[b"\x00corr-1"]
            assert json.loads(first.payload) == {
                "schema": "echo",
                "name": "ping",
                "payload": '{"meter_id":"m1"}',
            }
            assert first.prop("ContentType") == "application/json"
            assert first.user() == {"status": "ok", "command": "ping"}
            assert 0 < first.prop("MessageExpiryInterval") <= 300
            await eventually(lambda: up.stats.commands_answered == 2, 5, "2 PUBACKed replies")

        run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.commands_received == 2 and st.commands_rejected == {}
    assert st.responses_pending == 0


def test_transport_garbage_is_answered_or_counted_and_never_fatal(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "cmd-error.schema.json").read_text())
    release = asyncio.Event()

    async def handler(req: CommandRequest) -> CommandResponse | None:
        if req.name == "boom":
            raise RuntimeError("meter table corrupt")
        if req.name == "slow":
            await release.wait()
        if req.name == "sleepy":
            await asyncio.sleep(60)
        return await echo(req)

    tuning = UplinkTuning(
        backoff=FAST.backoff,
        poll_interval_s=0.2,
        max_request_bytes=1000,
        max_concurrent_commands=2,
        # Long enough that the two slow handlers are still waiting when the busy replies are
        # in and they are released, even on a loaded machine; sleepy-2 outlives it.
        command_timeout_s=4.0,
    )
    uplink = Uplink(
        make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=tuning, command_handler=handler
    )
    with CommandRequester(mtls_pki, mqtt_broker) as he:
        # a retained command would replay at every connect: refused when it arrives retained
        he.request("ping", b"{}", correlation=b"ret", retain=True)

        async def body(up: Uplink) -> None:
            await wait_connected(up)
            await he.wait_for(1)
            he.request("ping", b"{}", response_topic=None)  # nowhere to answer: counted
            he.request("ping", b"{}", response_topic="ami/+/replies")  # wildcard: counted
            he.request("read", b"x" * 1001, correlation=b"big")
            he.request("boom", b"{}", correlation=b"boom")
            await he.wait_for(3)
            he.request("slow", b"{}", correlation=b"slow-1")
            he.request("slow", b"{}", correlation=b"slow-2")
            await asyncio.sleep(0.3)
            he.request("slow", b"{}", correlation=b"busy")  # third concurrent one
            he.request("sleepy", b"{}", correlation=b"sleepy")  # also busy
            await he.wait_for(5)
            release.set()
            await he.wait_for(7)
            he.request("sleepy", b"{}", correlation=b"sleepy-2")
            await he.wait_for(8)
            he.request("ping", b"{}", correlation=b"still-alive")
            await he.wait_for(9)

        run_with_uplink(uplink, body)
        # clear the retained command from the broker for later tests
        he.client.publish(f"ami/{GATEWAY}/cmd/ping", b"", qos=1, retain=True).wait_for_publish(5)
        got = {g.prop("CorrelationData"): g for g in he.received()}
    errors = {}
    for corr, g in got.items():
        doc = json.loads(g.payload)
        if g.user()["status"] == "error":
            jsonschema.validate(doc, schema)
            errors[corr] = doc["error"]
    assert errors == {
        b"big": "oversized",
        b"boom": "handler-failed",
        b"ret": "retained",
        b"busy": "busy",
        b"sleepy": "busy",
        b"sleepy-2": "handler-timeout",
    }
    assert "meter table corrupt" in json.loads(got[b"boom"].payload)["detail"]
    assert "1001 bytes > limit 1000" in json.loads(got[b"big"].payload)["detail"]
    assert got[b"slow-1"].user()["status"] == "ok" and got[b"still-alive"].user()["status"] == "ok"
    assert uplink.stats.commands_rejected == {
        "no-response-topic": 1,
        "bad-response-topic": 1,
        "oversized": 1,
        "handler-failed": 1,
        "retained": 1,
        "busy": 2,
        "handler-timeout": 1,
    }
    assert uplink.stats.connections == 1  # nothing above cost the connection


def test_several_replies_and_replies_survive_a_lost_connection(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    gate = asyncio.Event()
    holder: dict[str, Uplink] = {}

    async def handler(req: CommandRequest) -> CommandResponse | None:
        # like a CIM MeterStatusData GET: one REPLY per status category, then done
        await gate.wait()
        for cat in ("3.26.0.47", "3.26.0.216"):
            holder["up"].respond(
                req, CommandResponse(f"<Reply {cat}/>".encode(), "application/xml", "ok")
            )
        return None

    async def main(he: CommandRequester) -> None:
        proxy = Proxy(mqtt_broker.port)
        await proxy.start()
        up = Uplink(
            make_uplink_config(port=proxy.port),
            GATEWAY,
            spool,
            SystemClock(),
            tuning=FAST,
            command_handler=handler,
        )
        holder["up"] = up
        task = asyncio.create_task(up.run())
        try:
            await wait_connected(up)
            he.request("meter-status", b"<GET/>", correlation=b"cim-1")
            await asyncio.sleep(0.3)
            proxy.down = True
            proxy.cut()
            await eventually(lambda: not up.stats.connected, 5, "loss noticed")
            gate.set()  # the handler answers while the gateway is offline
            await eventually(lambda: up.stats.responses_pending == 2, 5, "replies queued")
            await asyncio.sleep(0.3)
            assert he.received() == []
            proxy.down = False
            got = await he.wait_for(2, timeout=10)
            assert sorted(g.payload for g in got) == [
                b"<Reply 3.26.0.216/>",
                b"<Reply 3.26.0.47/>",
            ]
            assert {g.prop("CorrelationData") for g in got} == {b"cim-1"}
            assert {g.prop("ContentType") for g in got} == {"application/xml"}
            await eventually(lambda: up.stats.responses_pending == 0, 5, "replies acked")
            assert up.stats.connections == 2
        finally:
            await up.stop(flush_timeout=1.0)
            await asyncio.wait_for(task, 10)
            await proxy.close()

    with CommandRequester(mtls_pki, mqtt_broker) as he:
        asyncio.run(asyncio.wait_for(main(he), 30))


def test_unsolicited_events_go_through_the_spool(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    xml = "<ns0:EventMessage>outage m7</ns0:EventMessage>"
    spool.add(readings(20), Priority.INTERVAL)
    ev_ids = spool.add(
        [
            (payloads.event_record("cim", xml, "application/xml"), "cim/m7/out"),
            (payloads.event_record("cim", xml + "2", "application/xml"), "cim/m7/back"),
        ],
        Priority.ALARM,
    )
    uplink = Uplink(make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=FAST)
    subs = (payloads.events_filter("ami"), payloads.readings_filter("ami"))
    with CommandRequester(mtls_pki, mqtt_broker, subs) as he:

        async def body(up: Uplink) -> None:
            await eventually(lambda: spool.depth() == 0, 10, "spool drained")
            await eventually(lambda: len(he.got) >= 3, 5, "messages")

        run_with_uplink(uplink, body)
        events = he.received(f"ami/{GATEWAY}/events/cim")
        reads = he.received(f"ami/{GATEWAY}/readings")
    assert [e.payload for e in events] == [xml.encode(), (xml + "2").encode()]
    assert [e.user()["record_id"] for e in events] == ev_ids
    assert events[0].user()["natural_key"] == "cim/m7/out"
    assert events[0].user()["priority"] == "alarm"
    assert events[0].prop("ContentType") == "application/xml"
    n = sum(len(json.loads(r.payload)["records"]) for r in reads)
    assert n == 20  # readings batches carry no event records
    assert uplink.stats.events_published == 2 and uplink.stats.published_records == 20


def test_a_dead_paho_loop_is_noticed_and_nothing_is_lost(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    from hil.headend import HeadEnd

    def boom(*_a: Any) -> None:
        raise RuntimeError("injected: paho's network handling dies")

    uplink = Uplink(make_uplink_config(), GATEWAY, spool, SystemClock(), tuning=FAST)
    with HeadEnd(mqtt_broker.host, mqtt_broker.port, mtls_pki) as headend:

        async def body(up: Uplink) -> None:
            await wait_connected(up)
            session = up._session  # the test reaches into paho's client, a third-party object
            assert session is not None
            session.client.on_publish = boom  # the next PUBACK raises out of loop_read
            ids = spool.add(readings(30), Priority.INTERVAL)
            await eventually(lambda: up.stats.loop_restarts >= 1, 5, "dead loop noticed")
            assert up.stats.last_error_kind is UplinkErrorKind.LOOP_DIED
            await eventually(lambda: spool.depth() == 0, 10, "spool drained after reconnect")
            got = await headend.wait_for_records_async(30, 5)
            assert {r["record_id"] for r in got} >= set(ids)

        run_with_uplink(uplink, body)
    assert uplink.stats.connections >= 2


class Proxy:
    """A TCP relay on loopback we control: ``freeze()`` holds the bytes of the open connections
    (sockets stay open: a wedged path), ``cut()`` closes them, ``down`` refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._frozen: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self._frozen = list(self._writers)

    def cut(self) -> None:
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.down:
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    while dst in self._frozen:
                        await asyncio.sleep(0.05)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        self._tasks += [asyncio.create_task(pipe(r, uw)), asyncio.create_task(pipe(ur, w))]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self._frozen = []
        self.cut()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def test_a_stalled_connection_is_torn_down_and_re_made(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    from hil.headend import HeadEnd

    tuning = UplinkTuning(backoff=FAST.backoff, poll_interval_s=0.2, stall_timeout_s=1.0)

    async def main() -> None:
        proxy = Proxy(mqtt_broker.port)
        await proxy.start()
        up = Uplink(
            make_uplink_config(port=proxy.port), GATEWAY, spool, SystemClock(), tuning=tuning
        )
        task = asyncio.create_task(up.run())
        with HeadEnd(mqtt_broker.host, mqtt_broker.port, mtls_pki) as headend:
            try:
                await wait_connected(up)
                proxy.freeze()
                ids = spool.add(readings(10), Priority.INTERVAL)
                await eventually(lambda: up.stats.loop_restarts >= 1, 5, "stall noticed")
                assert up.stats.last_error_kind is UplinkErrorKind.LOOP_STALLED
                assert "no PUBACK" in up.stats.last_error
                await eventually(lambda: spool.depth() == 0, 10, "drained on a new connection")
                got = await headend.wait_for_records_async(10, 5)
                assert {r["record_id"] for r in got} == set(ids)
            finally:
                await up.stop(flush_timeout=1.0)
                await asyncio.wait_for(task, 10)
                await proxy.close()

    asyncio.run(main())


@dataclass
class OffsetClock:
    """The system clock, off by ``offset`` seconds: a gateway whose NTP failed."""

    offset: float

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


def test_clock_ahead_of_the_head_end_is_reported(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    uplink = Uplink(
        make_uplink_config(), GATEWAY, spool, OffsetClock(600.0), tuning=FAST, command_handler=echo
    )
    with CommandRequester(mtls_pki, mqtt_broker) as he:

        async def body(up: Uplink) -> None:
            await wait_connected(up)
            he.request("ping", b"{}", sent_at=payloads.iso_utc(time.time()))
            await he.wait_for(1)

        run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.last_error_kind is UplinkErrorKind.CLOCK_SKEW
    assert "s ahead of the head end's clock" in st.clock_warning
    assert st.clock_offset_s is not None and 599 < st.clock_offset_s < 605


def test_broker_certificate_not_valid_yet_points_at_the_clock(
    tmp_path: Path, make_uplink_config: Callable[..., UplinkConfig], spool: Spool
) -> None:
    # A PKI issued "tomorrow": from the gateway's point of view its clock is a day behind.
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    pki = generate_pki(tmp_path / "pki-future", now=future)
    with Mosquitto(pki, workdir=tmp_path / "b") as b:
        cfg = make_uplink_config(port=b.port, ca_file=pki.ca_cert, cert=pki.client(GATEWAY))
        uplink = Uplink(cfg, GATEWAY, spool, SystemClock(), tuning=FAST)

        async def body(up: Uplink) -> None:
            await eventually(lambda: up.stats.last_error != "", 5, "an error")

        run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.last_error_kind is UplinkErrorKind.CERT_VALIDATION_FAILED, st.last_error
    assert "not yet valid" in st.last_error and "clock" in st.last_error
    assert "not valid before" in st.cert_warning  # our own certificate says the same


def test_client_certificate_not_yet_valid(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    spool: Spool,
) -> None:
    now = dt.datetime.now(dt.UTC)
    early = issue_client(
        mtls_pki,
        GATEWAY,
        not_before=now + dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=60),
        stem="gw-early",
    )
    uplink = Uplink(make_uplink_config(cert=early), GATEWAY, spool, SystemClock(), tuning=FAST)

    async def body(up: Uplink) -> None:
        await eventually(lambda: up.stats.last_error != "", 5, "an error")

    run_with_uplink(uplink, body)
    st = uplink.stats
    assert st.last_error_kind is UplinkErrorKind.CLIENT_CERT_NOT_YET_VALID, st.last_error
    assert "connection lost before CONNACK" in st.last_error and "clock" in st.last_error


def test_certificate_of_another_gateway_is_refused_at_start(
    mtls_pki: Pki, make_uplink_config: Callable[..., UplinkConfig], spool: Spool
) -> None:
    cfg = make_uplink_config(cert=mtls_pki.client("gateway-02"))
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock())
    with pytest.raises(TlsSetupError, match="CN 'gateway-02'"):
        asyncio.run(uplink.run())
    assert uplink.stats.connect_attempts == 0
