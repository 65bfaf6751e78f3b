"""Two head-end workers on one MQTT v5 shared subscription, through a real mosquitto with mTLS:
the broker splits the messages, the shared database stores each reading exactly once. And the
same through the ``hil headend`` command."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_agent.uplink import payloads
from hil.broker import Mosquitto
from hil.headend.db import HeadEndDb
from hil.headend.server import HeadEndOptions, start_workers, stop_workers
from hil.headend.subscriber import HeadEndTls
from hil.pki import Pki, generate_pki
from tests.hil.headend.helpers import reading

HIL = Path(sys.executable).with_name("hil")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(pki) as b:
        yield b


def publish_all(pki: Pki, broker: Mosquitto, n_messages: int, per_message: int) -> set[str]:
    """Publish as gateway-01 would (QoS 1, mTLS); returns the natural keys sent."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-pub", protocol=paho.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    pair = pki.client("gateway-01")
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    client.tls_set_context(ctx)
    client.connect(broker.host, broker.port)
    client.loop_start()
    keys: set[str] = set()
    infos = []
    try:
        for m in range(n_messages):
            base = 1_714_557_600 + m * per_message  # 2024-05-01T10:00:00Z onwards
            recs = [
                reading(f"m{k}", payloads.iso_utc(base + k), m * per_message + k)
                for k in range(per_message)
            ]
            keys |= {r.natural_key for r in recs}
            data = payloads.encode_readings(
                "gateway-01", recs, message_id=f"msg-{m}", sent_at=1.7e9
            )
            infos.append(client.publish("ami/gateway-01/readings", data, qos=1))
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return keys


def wait_stats(get: Any, n: int, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        stats = get()
        count = stats["readings"] if isinstance(stats, dict) else stats.readings
        if count >= n or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_two_workers_split_the_load_and_store_each_reading_once(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    options = HeadEndOptions(
        broker.host,
        broker.port,
        HeadEndTls.of(pki),
        db_path=tmp_path / "he.sqlite",
        export_dir=tmp_path / "exports",
        workers=2,
    )
    workers = start_workers(options)
    try:
        assert [w.readings_subscription for w in workers] == ["$share/headend/ami/+/readings"] * 2
        keys = publish_all(pki, broker, n_messages=200, per_message=5)
        with HeadEndDb(options.db_path) as db:
            stats = wait_stats(db.stats, len(keys))
            stored = db.natural_keys()
    finally:
        stop_workers(workers)
    assert stats.readings == len(keys) == 1000
    assert sorted(stored) == sorted(keys)  # each exactly once
    assert stats.duplicate_records == 0 and stats.duplicate_messages == 0
    assert set(stats.by_worker) == {"headend-1", "headend-2"}  # both took a share
    assert sum(stats.by_worker.values()) == len(keys)
    # Each worker saw only its own share: the broker gave every message to one worker.
    shares = [{r["natural_key"] for r in w.records()} for w in workers]
    assert not shares[0] & shares[1]
    assert len(shares[0]) == stats.by_worker["headend-1"]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_hil_headend_command_serves_what_its_workers_store(
    pki: Pki, broker: Mosquitto, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [str(HIL), "headend", "--broker", broker.url, "--pki", str(pki.directory),
         "--listen", "127.0.0.1:0", "--db", str(tmp_path / "he.sqlite"), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        keys = publish_all(pki, broker, n_messages=20, per_message=3)
        stats = wait_stats(lambda: get_json(f"{base}/stats"), len(keys))
        assert stats["readings"] == len(keys) and stats["duplicate_records"] == 0
        page = get_json(f"{base}/readings?start_date=2024-05-01%2010:00:00&page_size=100")
        assert page["results"]["records_total"] == len(keys)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0


def test_hil_headend_refuses_missing_credentials(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(HIL), "headend", "--broker", "mqtts://127.0.0.1:1", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--pki DIR or all of --ca-file" in out.stderr
    out = subprocess.run(
        [str(HIL), "headend", "--broker", "tcp://x:1", "--pki", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "expected mqtts://HOST:PORT" in out.stderr
