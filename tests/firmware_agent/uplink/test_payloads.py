"""Payload codec: round trips, JSON Schema conformance, typed errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.clock import SystemClock
from firmware_agent.spool import Priority, Spool, SpoolRecord
from firmware_agent.uplink import payloads as p

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"
READINGS = json.loads((SCHEMAS / "readings.schema.json").read_text())
STATUS = json.loads((SCHEMAS / "status.schema.json").read_text())
MID = "5f0c8a2e-1b7d-4c3e-9a6f-0d2b4e6f8a1c"


def rec(n: int, prio: Priority = Priority.INTERVAL, **data: Any) -> SpoolRecord:
    return SpoolRecord.from_data(
        f"00000000-0000-4000-8000-{n:012d}",
        f"m1/1.0.1.8.0.255/{n}",
        prio,
        1_700_000_000.25,
        {"device_id": "m1", "kw": 1.5, **data},
        40,
    )


def test_readings_round_trip_and_schema() -> None:
    data = p.encode_readings(
        "gateway-01",
        [rec(1, Priority.ALARM), rec(2, vltg=230.1)],
        message_id=MID,
        sent_at=1_700_000_001.5,
    )
    doc = json.loads(data)
    jsonschema.validate(doc, READINGS)
    assert doc["sent_at"] == "2023-11-14T22:13:21.500Z"
    assert doc["records"][0] == {
        "record_id": "00000000-0000-4000-8000-000000000001",
        "natural_key": "m1/1.0.1.8.0.255/1",
        "priority": "alarm",
        "spooled_at": "2023-11-14T22:13:20.250Z",
        "device_id": "m1",
        "kw": 1.5,
    }
    msg = p.decode_readings(data)
    assert msg.message_id == MID and msg.gateway_id == "gateway-01"
    assert msg.records[1]["vltg"] == 230.1


def test_status_round_trip_and_schema() -> None:
    for state in ("online", "offline"):
        data = p.encode_status("gateway-01", state, sent_at=1_700_000_000, reason="x")
        jsonschema.validate(json.loads(data), STATUS)
        assert p.decode_status(data).state == state
    with pytest.raises(p.PayloadError, match="state"):
        p.encode_status("gateway-01", "sleeping", sent_at=0)


def test_status_with_spool_figures(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", SystemClock()) as spool:
        spool.add([({"kw": 1.0}, "m1|1.0.1.8.0.255|t0")], Priority.INTERVAL)
        figures = spool.stats().to_dict()
    data = p.encode_status("gateway-01", "online", sent_at=1_700_000_000, spool=figures)
    jsonschema.validate(json.loads(data), STATUS)
    got = p.decode_status(data).spool
    assert got is not None and got["depth_by_class"]["interval"] == 1 and got["depth"] == 1
    assert p.decode_status(p.encode_status("gw", "online", sent_at=0)).spool is None
    broken = json.loads(data) | {"spool": [1]}
    with pytest.raises(p.PayloadError, match="spool"):
        p.decode_status(json.dumps(broken).encode())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(data) | {"spool": {"depth": -1}}, STATUS)


def test_size_cap() -> None:
    records = [rec(i, blob="x" * 1000) for i in range(10)]
    with pytest.raises(p.MessageTooLarge) as e:
        p.encode_readings("gw", records, message_id=MID, sent_at=0, max_bytes=5000)
    assert e.value.limit == 5000 and e.value.size > 10_000
    data = p.encode_readings("gw", records[:4], message_id=MID, sent_at=0, max_bytes=5000)
    assert len(data) <= 5000
    with pytest.raises(p.MessageTooLarge):
        p.decode_readings(data, max_bytes=100)


def test_envelope_overhead_is_an_upper_bound() -> None:
    records = [rec(i) for i in range(50)]
    data = p.encode_readings("gateway-01", records, message_id=MID, sent_at=0)
    body = sum(len(json.dumps(r.data, separators=(",", ":"))) + len(r.natural_key) for r in records)
    assert len(data) <= body + p.envelope_overhead("gateway-01", 50)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.pop("message_id"), "message_id"),
        (lambda d: d.update(schema="readings/2"), "schema"),
        (lambda d: d.update(sent_at="yesterday"), "sent_at"),
        (lambda d: d.update(records=[]), "records"),
        (lambda d: d["records"][0].update(priority="urgent"), "records[0].priority"),
        (lambda d: d["records"][0].pop("natural_key"), "records[0].natural_key"),
        (lambda d: d["records"].append(7), "records[1]"),
    ],
)
def test_decode_names_the_bad_field(mutate: Any, where: str) -> None:
    doc = json.loads(p.encode_readings("gw", [rec(1)], message_id=MID, sent_at=0))
    mutate(doc)
    with pytest.raises(p.PayloadError) as e:
        p.decode_readings(json.dumps(doc).encode())
    assert e.value.where == where
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, READINGS)


def test_garbage_is_a_payload_error() -> None:
    for junk in (b"", b"\xff\xfe", b"[1]", b"{"):
        with pytest.raises(p.PayloadError):
            p.decode_readings(junk)
        with pytest.raises(p.PayloadError):
            p.decode_status(junk)


def test_topics() -> None:
    assert p.readings_topic("ami", "gw-1") == "ami/gw-1/readings"
    assert p.status_topic("ami", "gw-1") == "ami/gw-1/status"
    assert p.readings_filter("ami") == "ami/+/readings"
    assert p.parse_topic("site/a/ami/gw-1/readings") == ("site/a/ami", "gw-1", "readings")
    for bad in ("gw/1", "gw+", "#", ""):
        with pytest.raises(p.PayloadError, match="gateway_id"):
            p.readings_topic("ami", bad)
    with pytest.raises(p.PayloadError, match="topic"):
        p.parse_topic("ami/readings")


@given(
    st.dictionaries(
        st.text(min_size=1).filter(lambda k: k not in p.RESERVED_FIELDS),
        st.one_of(
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(),
            st.booleans(),
            st.none(),
        ),
        max_size=8,
    ),
    st.text(min_size=1),
)
def test_any_record_dict_round_trips(data: dict[str, Any], key: str) -> None:
    r = SpoolRecord.from_data(MID, key, Priority.ON_DEMAND, 0.0, data, 1)
    blob = p.encode_readings("gw", [r], message_id=MID, sent_at=0)
    jsonschema.validate(json.loads(blob), READINGS)
    out = p.decode_readings(blob).records[0]
    assert out["natural_key"] == key
    assert {k: out[k] for k in data} == data
