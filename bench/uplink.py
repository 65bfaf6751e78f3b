"""uplink: the durable path to the broker against its bare equivalents, measured in one run.

- uplink-publish: readings/s from the spool to a real mosquitto (mTLS, TLS 1.3, QoS 1, batches of
  ``batch_max_records``, in-flight window ``max_inflight``): the records are already committed to
  the SQLite spool; the timed region runs from ``Uplink.run()`` being connected to the spool being
  empty (each batch read from SQLite, encoded, published, and its records deleted after its own
  PUBACK). Baseline: a bare paho client publishing the very same readings messages (pre-encoded
  bytes, same topic size, same QoS, window and TLS context) and waiting for every PUBACK.
  ratio = ours / bare (target >= 0.7).
- uplink-enqueue: records/s into the spool (``Spool.add`` of 100 records, one transaction each,
  WAL + synchronous=FULL: the collector commits one meter read at a time) against raw sqlite3
  ``executemany`` inserts of the same JSON bodies and keys into a table of the same shape with the
  same pragmas and the same transaction size; the raw rows are prepared outside the timed region.
  ratio = ours / raw (target >= 0.7).

Rounds interleave ours and the baseline; each figure is the best round.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt

from firmware_agent.clock import SystemClock
from firmware_agent.config import TlsConfig, UplinkConfig
from firmware_agent.spool import Priority, Spool, SpoolRecord, encode_body
from firmware_agent.uplink import payloads
from firmware_agent.uplink.mqtt import Uplink
from firmware_agent.uplink.tls import build_ssl_context
from hil.broker import Mosquitto
from hil.pki import generate_pki

GATEWAY = "gateway-01"
PUBLISH_RECORDS = 20_000
ENQUEUE_RECORDS = 20_000
ROUNDS = 3
TARGET = 0.7


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


def natural_key(i: int, tag: str) -> str:
    return f"MTR-{i % 500:04d}|1.0.99.1.0.255|{tag}|{i}"


# -- publish ----------------------------------------------------------------------------------
def bare_messages(records: list[dict[str, Any]], batch: int) -> list[bytes]:
    now = time.time()
    out = []
    for first in range(0, len(records), batch):
        recs = [
            SpoolRecord.from_data(
                str(uuid.uuid4()), natural_key(i, "bare"), Priority.INTERVAL, now, records[i], 0
            )
            for i in range(first, min(first + batch, len(records)))
        ]
        out.append(
            payloads.encode_readings(GATEWAY, recs, message_id=str(uuid.uuid4()), sent_at=now)
        )
    return out


def bare_publish(cfg: UplinkConfig, messages: list[bytes]) -> float:
    """Seconds for a bare paho QoS 1 loop to publish ``messages`` and get every PUBACK."""
    done = threading.Event()
    acked = 0

    def on_publish(_c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(messages):
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5
    )
    client.tls_set_context(build_ssl_context(cfg.tls))
    client.max_inflight_messages_set(cfg.max_inflight)
    client.on_publish = on_publish
    client.connect(cfg.host, cfg.port)
    client.loop_start()
    started = time.perf_counter()
    for m in messages:
        client.publish(f"{cfg.topic_prefix}/bench-bare/readings", m, qos=1)
    if not done.wait(120):
        raise RuntimeError(f"bare: only {acked}/{len(messages)} PUBACKs")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


async def uplink_publish(
    cfg: UplinkConfig, spool_path: Path, records: list[dict[str, Any]], tag: str
) -> float:
    """Seconds from run() to an empty spool, the records committed beforehand."""
    clock = SystemClock()
    spool = Spool(spool_path, clock)
    for first in range(0, len(records), 100):
        spool.add(
            [(records[i], natural_key(i, tag)) for i in range(first, first + 100)],
            Priority.INTERVAL,
        )
    uplink = Uplink(cfg, GATEWAY, spool, clock)
    # The uplink starts publishing the moment it is connected, so the clock starts before
    # run(): our figure includes the TLS handshake, which the bare loop's does not (a few ms).
    started = time.perf_counter()
    runner = asyncio.create_task(uplink.run())
    while uplink.stats.published_records < len(records):
        await asyncio.sleep(0.002)
    while spool.depth():
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    await uplink.stop(flush_timeout=5)
    await runner
    spool.close()
    return elapsed


# -- enqueue ----------------------------------------------------------------------------------
RAW_SCHEMA = """
CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL UNIQUE,
  natural_key TEXT NOT NULL UNIQUE, priority INTEGER NOT NULL, created_at REAL NOT NULL,
  body TEXT NOT NULL, size INTEGER NOT NULL);
CREATE INDEX records_next ON records (priority, seq);
"""


def raw_enqueue(path: Path, records: list[dict[str, Any]]) -> float:
    """The strictest baseline: rows (ids, JSON bodies, sizes) prepared before the clock starts,
    so only SQLite and fsync are timed; the spool must also encode and check each record."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(RAW_SCHEMA)
    now = time.time()
    rows = []
    for i, rec in enumerate(records):
        body, key = encode_body(rec), natural_key(i, "raw")
        rows.append((str(uuid.uuid4()), key, 2, now, body, len(body) + len(key)))
    started = time.perf_counter()
    for first in range(0, len(rows), 100):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO records (record_id, natural_key, priority, created_at, body, size) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows[first : first + 100],
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def spool_enqueue(path: Path, records: list[dict[str, Any]]) -> float:
    spool = Spool(path, SystemClock())
    started = time.perf_counter()
    for first in range(0, len(records), 100):
        spool.add(
            [(records[i], natural_key(i, "spool")) for i in range(first, first + 100)],
            Priority.INTERVAL,
        )
    elapsed = time.perf_counter() - started
    spool.close()
    return elapsed


def main() -> None:
    records = [reading(i) for i in range(max(PUBLISH_RECORDS, ENQUEUE_RECORDS))]
    json.dumps(records[0])  # fail early on a record that is not JSON
    best_bare = best_ours = best_raw = best_spool = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki = generate_pki(d / "pki", gateway_ids=(GATEWAY,))
        with Mosquitto(pki, workdir=d / "broker") as broker:
            client = pki.client(GATEWAY)
            cfg = UplinkConfig(
                broker_url=f"mqtts://localhost:{broker.port}",
                tls=TlsConfig(pki.ca_cert, client.cert, client.key),
            )
            pub = records[:PUBLISH_RECORDS]
            messages = bare_messages(pub, cfg.batch_max_records)
            for r in range(ROUNDS):
                best_bare = min(best_bare, bare_publish(cfg, messages))
                best_ours = min(
                    best_ours, asyncio.run(uplink_publish(cfg, d / f"pub{r}.sqlite", pub, f"r{r}"))
                )
        enq = records[:ENQUEUE_RECORDS]
        for r in range(ROUNDS):
            best_raw = min(best_raw, raw_enqueue(d / f"raw{r}.sqlite", enq))
            best_spool = min(best_spool, spool_enqueue(d / f"spool{r}.sqlite", enq))
    bare_rate, our_rate = PUBLISH_RECORDS / best_bare, PUBLISH_RECORDS / best_ours
    raw_rate, spool_rate = ENQUEUE_RECORDS / best_raw, ENQUEUE_RECORDS / best_spool
    print(
        f"bare paho QoS 1: {bare_rate:,.0f} readings/s "
        f"({len(messages)} messages of {cfg.batch_max_records}, window {cfg.max_inflight})"
    )
    print(f"spool -> uplink -> broker: {our_rate:,.0f} readings/s")
    print(f"uplink-publish: ratio {our_rate / bare_rate:.2f} (target >= {TARGET})")
    print(f"raw sqlite inserts (WAL, synchronous=FULL, 100/tx): {raw_rate:,.0f} records/s")
    print(f"Spool.add (100/tx): {spool_rate:,.0f} records/s")
    print(f"uplink-enqueue: ratio {spool_rate / raw_rate:.2f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
