"""The head end's store and subscriber: de-duplication, status, invalid messages."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from firmware_agent.spool import Priority, SpoolRecord
from firmware_agent.uplink import payloads
from hil.broker import Mosquitto
from hil.headend import HeadEnd, HeadEndError, ReadingStore
from hil.pki import Pki, generate_pki


def rec(key: str, n: int = 0) -> SpoolRecord:
    return SpoolRecord.from_data(
        f"00000000-0000-4000-8000-{n:012d}",
        key,
        Priority.INTERVAL,
        1_700_000_000.0,
        {"device_id": "m1", "kw": 1.0},
        10,
    )


def message(mid: str, *records: SpoolRecord) -> bytes:
    return payloads.encode_readings("gateway-01", records, message_id=mid, sent_at=1.7e9)


def test_store_drops_duplicates_by_natural_key() -> None:
    store = ReadingStore()
    assert store.add_readings(payloads.decode_readings(message("a", rec("k1", 1), rec("k2", 2))))
    assert store.add_readings(payloads.decode_readings(message("b", rec("k2", 3), rec("k3", 4))))
    assert [r["natural_key"] for r in store.snapshot()] == ["k1", "k2", "k3"]
    assert store.duplicates == 1
    assert store.snapshot()[2]["message_id"] == "b"
    with pytest.raises(HeadEndError, match="3 of 4"):
        store.wait_for(4, 0.05)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


def publish(pki: Pki, port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    pair = pki.client("gateway-01")
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "localhost",
            "-p",
            str(port),
            "--cafile",
            str(pki.ca_cert),
            "--cert",
            str(pair.cert),
            "--key",
            str(pair.key),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            topic,
            "-s",
            *(["-r"] if retain else []),
        ],
        input=payload,
        check=True,
        timeout=10,
    )


def test_subscriber_keeps_valid_and_counts_invalid(pki: Pki, tmp_path: Path) -> None:
    with Mosquitto(pki, workdir=tmp_path / "b") as b, HeadEnd(b.host, b.port, pki) as he:
        publish(pki, b.port, "ami/gateway-01/readings", message("m1", rec("k1", 1)))
        publish(pki, b.port, "ami/gateway-01/readings", message("m2", rec("k1", 2)))
        publish(pki, b.port, "ami/gateway-01/readings", b"{not json")
        publish(pki, b.port, "ami/gateway-02/readings", message("m3", rec("k9", 9)))
        publish(
            pki,
            b.port,
            "ami/gateway-01/status",
            payloads.encode_status("gateway-01", "online", sent_at=1.7e9),
            retain=True,
        )
        he.wait_for_status("gateway-01", "online", 5)
        got = he.wait_for_records(1, 5)
        assert [r["natural_key"] for r in got] == ["k1"]
        assert he.duplicates == 1
        errors = sorted(i.error for i in he.store.invalid)
        assert len(errors) == 2
        assert errors[0].startswith("gateway_id") and "not JSON" in errors[1]
