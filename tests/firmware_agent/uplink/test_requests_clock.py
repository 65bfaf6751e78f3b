"""Sans-IO parts of the command transport and the clock-skew check."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.spool import Priority, Spool
from firmware_agent.uplink import payloads
from firmware_agent.uplink.clockcheck import ClockSkewCheck, parse_reference_time
from firmware_agent.uplink.requests import (
    RejectReason,
    RequestRejected,
    build_request,
    command_filter,
    command_name,
    command_topic,
    error_response,
)
from firmware_agent.uplink.tls import TlsSetupError, certificate_cn, check_gateway_identity
from hil.pki import Pki

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def req(**kw: object) -> object:
    args: dict[str, object] = dict(
        prefix="ami",
        gateway_id="gw-1",
        topic="ami/gw-1/cmd/ping",
        payload=b"{}",
        content_type="application/json",
        correlation=b"\x01\x02",
        response_topic="ami/headend/replies",
        user_properties=(("sent-at", "1"),),
        received_at=5.0,
        max_bytes=100,
    )
    args.update(kw)
    return build_request(**args)  # type: ignore[arg-type]


def test_a_good_request_is_built() -> None:
    r = req()
    assert r.name == "ping" and r.correlation == b"\x01\x02"  # type: ignore[attr-defined]
    assert r.response_topic == "ami/headend/replies" and r.received_at == 5.0  # type: ignore[attr-defined]
    assert command_filter("ami", "gw-1") == "ami/gw-1/cmd/+"
    assert command_topic("ami", "gw-1", "read") == "ami/gw-1/cmd/read"


@pytest.mark.parametrize(
    ("kw", "reason", "needle"),
    [
        ({"response_topic": None}, RejectReason.NO_RESPONSE_TOPIC, "no Response Topic"),
        ({"response_topic": ""}, RejectReason.NO_RESPONSE_TOPIC, "no Response Topic"),
        ({"response_topic": "ami/+/x"}, RejectReason.BAD_RESPONSE_TOPIC, "wildcard"),
        ({"response_topic": "$SYS/x"}, RejectReason.BAD_RESPONSE_TOPIC, "broker"),
        ({"topic": "ami/gw-2/cmd/ping"}, RejectReason.BAD_TOPIC, "not under"),
        ({"topic": "ami/gw-1/cmd/"}, RejectReason.BAD_TOPIC, "command name"),
        ({"topic": "ami/gw-1/cmd/a/b"}, RejectReason.BAD_TOPIC, "command name"),
        ({"payload": b"x" * 101}, RejectReason.OVERSIZED, "101 bytes > limit 100"),
        ({"correlation": b"c" * 300}, RejectReason.BAD_CORRELATION, "300 bytes"),
    ],
)
def test_transport_garbage_is_named(
    kw: dict[str, object], reason: RejectReason, needle: str
) -> None:
    with pytest.raises(RequestRejected) as e:
        req(**kw)
    assert e.value.reason is reason
    assert needle in str(e.value)


def test_command_name_parses_only_our_subtree() -> None:
    assert command_name("a/b", "gw", "a/b/gw/cmd/read") == "read"
    with pytest.raises(RequestRejected):
        command_name("a/b", "gw", "a/b/gw/readings")


def test_error_response_matches_its_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "cmd-error.schema.json").read_text())
    r = error_response(RejectReason.OVERSIZED, "too big", command="read")
    assert r.status == "error" and r.content_type == "application/json"
    doc = json.loads(r.payload)
    jsonschema.validate(doc, schema)
    assert doc["error"] == "oversized" and doc["command"] == "read"
    jsonschema.validate(json.loads(error_response("bad-request", "x").payload), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "status": "ok"}, schema)


# -- clock skew ---------------------------------------------------------------------------------
def test_clock_in_step_is_fine_and_reported_once() -> None:
    c = ClockSkewCheck(300)
    v = c.observe(1000.0, 1000.4, "cmd")
    assert v is not None and not v.skewed
    assert c.observe(1010.0, 1010.2, "cmd") is None  # no change: nothing to log
    assert c.offset_s == pytest.approx(0.2)


def test_a_message_from_the_future_proves_our_clock_is_behind() -> None:
    c = ClockSkewCheck(300)
    v = c.observe(10_000.0, 10_000.0 - 301, "cmd sent-at")
    assert v is not None and v.skewed and "301 s behind" in v.message and "NTP" in v.message
    v = c.observe(10_010.0, 10_010.5, "cmd sent-at")  # clock fixed
    assert v is not None and not v.skewed


def test_ahead_needs_every_recent_sample_to_agree() -> None:
    c = ClockSkewCheck(300, window=4)
    assert c.observe(0.0, 400.0, "a") is not None  # first sample: reported
    assert c.skewed
    # one fast message shows the earlier one was merely late in transit... or the clock moved
    v = c.observe(10.0, 12.0, "b")
    assert v is not None and not v.skewed
    # a single slow message among quick ones is transit, not skew
    assert c.observe(20.0, 900.0, "c") is None and not c.skewed
    assert c.offset_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1700000000.5", 1700000000.5),
        ("2023-11-14T22:13:20.000Z", 1700000000.0),
        (b"2023-11-14T23:13:20+01:00", 1700000000.0),
    ],
)
def test_reference_time_formats(text: str | bytes, value: float) -> None:
    assert parse_reference_time(text) == value


@pytest.mark.parametrize("bad", ["yesterday", "2023-11-14T22:13:20"])
def test_bad_reference_time_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="sent-at"):
        parse_reference_time(bad)


# -- identity -----------------------------------------------------------------------------------
def test_certificate_cn_is_the_gateway_id(mtls_pki: Pki) -> None:
    assert certificate_cn(mtls_pki.client("gateway-01").cert) == "gateway-01"
    check_gateway_identity(mtls_pki.client("gateway-01").cert, "gateway-01")
    with pytest.raises(TlsSetupError, match="CN 'gateway-02' is not the gateway id 'gateway-01'"):
        check_gateway_identity(mtls_pki.client("gateway-02").cert, "gateway-01")


# -- events -------------------------------------------------------------------------------------
def test_event_records_round_trip_through_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", ManualClock(1_700_000_000.0), rng=random.Random(1))
    try:
        xml = "<EventMessage><Header><Verb>reply</Verb></Header></EventMessage>"
        spool.add(
            [(payloads.event_record("cim", xml, "application/xml"), "cim/m1/1")], Priority.ALARM
        )
        spool.add([({"device_id": "m1", "uplink_event": "x"}, "m1/k")], Priority.INTERVAL)
        recs = spool.next_batch(10, 1 << 20)
        ev = payloads.as_event(recs[0])
        assert ev is not None and ev.kind == "cim" and ev.payload == xml.encode()
        assert ev.content_type == "application/xml"
        assert payloads.as_event(recs[1]) is None  # a reading that merely uses the field name
    finally:
        spool.close()
    assert payloads.event_topic("ami", "gw", "cim") == "ami/gw/events/cim"
    with pytest.raises(payloads.PayloadError):
        payloads.event_record("a/b", "x", "text/plain")
    with pytest.raises(payloads.PayloadError):
        payloads.event_record("cim", "x", "")
