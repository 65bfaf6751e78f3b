"""thin_path: readings from the spool to a real mosquitto over mTLS, against raw paho.

Baseline (measured in this run): a bare paho client publishing the very same readings messages
(same batching, QoS 1, same in-flight window, same TLS context) with no spool. Ours: the records
are committed to the SQLite spool first, published by the agent's uplink, and deleted on PUBACK.
ratio = our records/s ÷ raw paho's records/s; the spool's durability is what the gap pays for.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from firmware_agent.clock import SystemClock
from firmware_agent.config import TlsConfig, UplinkConfig
from firmware_agent.spool import Priority, Spool, SpoolRecord
from firmware_agent.uplink import payloads
from firmware_agent.uplink.mqtt import Uplink
from firmware_agent.uplink.tls import build_ssl_context
from hil.broker import Mosquitto
from hil.pki import generate_pki

RECORDS = 20_000
TARGET = 0.5


def reading(i: int) -> dict[str, Any]:
    rng = random.Random(i)
    v, a, pf = rng.uniform(0.21, 0.24), rng.uniform(1, 90), rng.uniform(0.85, 0.99)
    return {
        "time": f"2026-11-24T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:00Z",
        "arrival_time": "2026-11-24T12:00:00.000Z",
        "device_id": f"MTR-{i % 500:04d}",
        "load": rng.randint(0, 100),
        "crrnt": round(a, 2),
        "pf": round(pf, 3),
        "kva": round(v * a, 3),
        "kw": round(v * a * pf, 3),
        "vltg": round(v, 4),
        "values": {"1.0.1.8.0.255": float(i * 1000)},
    }


def natural_key(i: int) -> str:
    return f"MTR-{i % 500:04d}|1.0.99.1.0.255|{i}"


def encode_batches(records: list[dict[str, Any]], batch: int) -> list[bytes]:
    """The readings messages a bare publisher would send: same envelope, same batching."""
    now = time.time()
    return [
        payloads.encode_readings(
            "bench-raw",
            [
                SpoolRecord.from_data(
                    str(uuid.uuid4()), natural_key(i), Priority.INTERVAL, now, records[i], 0
                )
                for i in range(first, min(first + batch, len(records)))
            ],
            message_id=str(uuid.uuid4()),
            sent_at=now,
        )
        for first in range(0, len(records), batch)
    ]


def baseline(cfg: UplinkConfig, records: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds for a bare paho client to encode and publish the records and get every PUBACK."""
    started = time.perf_counter()
    messages = encode_batches(records, cfg.batch_max_records)
    done = threading.Event()
    acked = 0

    def on_publish(
        client: mqtt.Client, userdata: object, mid: int, rc: object, props: object
    ) -> None:
        nonlocal acked
        acked += 1
        if acked == len(messages):
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5
    )
    client.tls_set_context(build_ssl_context(cfg.tls))
    client.max_inflight_messages_set(cfg.max_inflight)
    client.on_publish = on_publish
    client.connect(cfg.host, cfg.port)
    client.loop_start()
    for message in messages:
        client.publish("ami/bench-raw/readings", message, qos=1)
    if not done.wait(120):
        raise RuntimeError(f"baseline: only {acked}/{len(messages)} PUBACKs")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed, len(messages)


async def ours(
    cfg: UplinkConfig, gateway_id: str, spool_path: Path, records: list[dict[str, Any]]
) -> float:
    """Seconds from the first spool commit to an empty spool (every record PUBACKed)."""
    clock = SystemClock()
    spool = Spool(spool_path, clock)
    uplink = Uplink(cfg, gateway_id, spool, clock)
    runner = asyncio.create_task(uplink.run())
    while not uplink.stats.connected:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    for first in range(0, RECORDS, 100):  # the collector commits one meter read at a time
        spool.add(
            [(records[i], natural_key(i)) for i in range(first, first + 100)], Priority.INTERVAL
        )
        await asyncio.sleep(0)
    while uplink.stats.published_records < RECORDS:  # cheap to poll, unlike COUNT(*)
        await asyncio.sleep(0.005)
    while spool.depth():  # every acknowledged record must also be gone from the spool
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    await uplink.stop(flush_timeout=5)
    runner.cancel()
    spool.close()
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = generate_pki(Path(tmp) / "pki", gateway_ids=("gateway-01",))
        with Mosquitto(pki) as broker:
            client = pki.client("gateway-01")
            cfg = UplinkConfig(
                broker_url=f"mqtts://{broker.host}:{broker.port}",
                tls=TlsConfig(pki.ca_cert, client.cert, client.key),
            )
            records = [reading(i) for i in range(RECORDS)]
            raw_s, n_messages = baseline(cfg, records)
            our_s = asyncio.run(ours(cfg, "gateway-01", Path(tmp) / "spool.sqlite", records))
    raw_rate, our_rate = RECORDS / raw_s, RECORDS / our_s
    print(f"raw paho: {raw_rate:,.0f} records/s ({n_messages} messages of {cfg.batch_max_records})")
    print(f"spool + uplink: {our_rate:,.0f} records/s")
    print(f"thin_path: ratio {our_rate / raw_rate:.2f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
