"""uplink: the durable path to the broker against its bare equivalents, measured in one run.

- uplink-publish: readings/s from the spool to a real mosquitto (mTLS, TLS 1.3, QoS 1, batches of
  ``batch_max_records``, in-flight window ``max_inflight``). The records are committed to a
  template spool file once; each round runs ``Uplink.run()`` on a copy of it. Timed region: from
  the uplink's first spool read (it is connected by then) to the commit of the delete that empties
  the spool (each batch read from SQLite, encoded, published, deleted after its own PUBACK).
  Baseline: a bare paho client publishing the very same messages (the template's pages read in
  spool order and encoded as the uplink encodes them, before the clock starts), same topic size,
  QoS, window and TLS context, timed from its first publish (after CONNACK) to its last PUBACK.
  ``--records`` defaults to 300,000 (6,000 messages) so that connecting, wake-up cadence and the
  last round trip are negligible against the per-message costs. ratio = ours / bare (>= 0.7).
  ``--profile FILE`` writes a cProfile of our side's last round (the asyncio thread only).
- uplink-enqueue: records/s into the spool (``Spool.add`` of 100 records, one transaction each,
  WAL + synchronous=FULL: the collector commits one meter read at a time) against raw sqlite3
  ``executemany`` inserts of the same JSON bodies and keys, one row per record (what a plain
  durable queue stores: unique id and natural key), with the same pragmas and transaction size;
  the raw rows are prepared outside the timed region. The spool stores interval reads in pages
  (spool.py), so this compares designs at equal durability. ratio = ours / raw (target >= 0.7).

Rounds interleave ours and the baseline, nine of each; all publish rounds are printed. Each ratio
judged against its target is the ratio of median rounds; for publishing, the ratio of the best
rounds is printed beside it. The setup's objects (300,000 readings) are frozen out of the garbage
collector before the rounds: a full collection takes ~0.1 s and used to land in every other bare
round, which made the baseline look slower and noisier than it is.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt

# The same readings as the thin-path bench, so the two benches' figures compare.
from bench.thin_path import reading
from firmware_agent.clock import SystemClock
from firmware_agent.config import TlsConfig, UplinkConfig
from firmware_agent.spool import PackedBatch, Priority, Spool, SpoolRecord, encode_body
from firmware_agent.uplink import payloads
from firmware_agent.uplink.mqtt import Uplink
from firmware_agent.uplink.tls import build_ssl_context
from hil.broker import Mosquitto
from hil.pki import generate_pki

GATEWAY = "gateway-01"
MAX_MESSAGE_BYTES = payloads.DEFAULT_MAX_MESSAGE_BYTES
PUBLISH_RECORDS = 300_000  # 6,000 messages: ~0.5-1 s of bare time, fixed costs negligible
ENQUEUE_RECORDS = 20_000
ROUNDS = 9
TARGET = 0.7


def natural_key(i: int, tag: str) -> str:
    return f"MTR-{i % 500:04d}|1.0.99.1.0.255|{tag}|{i}"


# -- publish ----------------------------------------------------------------------------------
def fill_template(path: Path, records: list[dict[str, Any]]) -> None:
    """One spool file holding every record, committed; each round publishes from a copy of it
    (filling it costs seconds, copying it a fraction of that)."""
    with Spool(path, SystemClock(), max_bytes=4 * 1024**3) as spool:
        for first in range(0, len(records), 100):
            spool.add(
                [(records[i], natural_key(i, "pub")) for i in range(first, first + 100)],
                Priority.INTERVAL,
            )


def bare_messages(template: Path, batch: int, max_bytes: int) -> list[bytes]:
    """The very messages the uplink sends: the template's records, read in spool order and
    encoded as the uplink encodes them (message ids and sent_at differ, as between runs)."""
    out = []
    with Spool(template, SystemClock(), max_bytes=4 * 1024**3) as spool:
        overhead = payloads.envelope_overhead(GATEWAY, batch)
        while packed := spool.next_packed(batch, max_bytes - overhead):
            out.append(
                payloads.encode_packed(
                    GATEWAY, packed, message_id=str(uuid.uuid4()), sent_at=time.time()
                )
            )
    return out


def bare_publish(cfg: UplinkConfig, messages: list[bytes]) -> float:
    """Seconds for a bare paho QoS 1 loop to publish ``messages`` and get every PUBACK: from its
    first publish (after CONNACK) to its last PUBACK."""
    done = threading.Event()
    connected = threading.Event()
    acked = 0
    ended = 0.0

    def on_connect(_c: object, _u: object, _f: object, _rc: object, _p: object) -> None:
        connected.set()

    def on_publish(_c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal acked, ended
        acked += 1
        if acked == len(messages):
            ended = time.perf_counter()
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5
    )
    client.tls_set_context(build_ssl_context(cfg.tls))
    client.max_inflight_messages_set(cfg.max_inflight)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(cfg.host, cfg.port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("bare: no CONNACK")
    started = time.perf_counter()
    for m in messages:
        client.publish(f"{cfg.topic_prefix}/bench-bare/readings", m, qos=1)
    if not done.wait(600):
        raise RuntimeError(f"bare: only {acked}/{len(messages)} PUBACKs")
    client.disconnect()
    client.loop_stop()
    return ended - started


class TimedSpool(Spool):
    """The spool, noting when the uplink first reads a batch and when its last delete commits:
    the same region as the bare loop's first publish to last PUBACK (plus our final delete)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SystemClock(), max_bytes=4 * 1024**3)
        self.first_read = 0.0
        self.emptied_at = 0.0
        self.emptied = asyncio.Event()

    def next_batch(self, max_records: int, max_bytes: int) -> list[SpoolRecord]:
        if not self.first_read:
            self.first_read = time.perf_counter()
        return super().next_batch(max_records, max_bytes)

    def next_packed_many(self, batches: int, max_records: int, max_bytes: int) -> list[PackedBatch]:
        if not self.first_read:
            self.first_read = time.perf_counter()
        return super().next_packed_many(batches, max_records, max_bytes)

    def ack(self, ids: Iterable[str] = (), spans: Iterable[tuple[int, int]] = ()) -> int:
        n = super().ack(ids, spans)
        if n and not self.depth():
            self.emptied_at = time.perf_counter()
            self.emptied.set()
        return n


async def uplink_publish(cfg: UplinkConfig, spool_path: Path, profile: Path | None) -> float:
    """Seconds from the uplink's first spool read to an empty spool (records committed before)."""
    spool = TimedSpool(spool_path)
    uplink = Uplink(cfg, GATEWAY, spool, SystemClock())
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    runner = asyncio.create_task(uplink.run())
    await asyncio.wait_for(spool.emptied.wait(), 600)
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    await uplink.stop(flush_timeout=5)
    await runner
    spool.close()
    return spool.emptied_at - spool.first_read


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=PUBLISH_RECORDS, help="readings to publish")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--profile", type=Path, help="cProfile our side's last round into this file")
    args = ap.parse_args()
    n_pub = args.records
    records = [reading(i) for i in range(max(n_pub, ENQUEUE_RECORDS))]
    json.dumps(records[0])  # fail early on a record that is not JSON
    raw_runs: list[float] = []
    spool_runs: list[float] = []
    bare_runs: list[float] = []
    our_runs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki = generate_pki(d / "pki", gateway_ids=(GATEWAY,))
        with Mosquitto(pki, workdir=d / "broker") as broker:
            client = pki.client(GATEWAY)
            cfg = UplinkConfig(
                broker_url=f"mqtts://localhost:{broker.port}",
                tls=TlsConfig(pki.ca_cert, client.cert, client.key),
            )
            template = d / "template.sqlite"
            fill_template(template, records[:n_pub])
            messages = bare_messages(template, cfg.batch_max_records, MAX_MESSAGE_BYTES)
            # The setup's millions of objects (the readings) out of the collector's way: else a
            # full collection (~0.1 s) lands in whichever round crosses its threshold.
            gc.collect()
            gc.freeze()
            for r in range(args.rounds):
                bare_runs.append(bare_publish(cfg, messages))
                copy = d / f"pub{r}.sqlite"
                shutil.copyfile(template, copy)
                last = r == args.rounds - 1
                our_runs.append(
                    asyncio.run(uplink_publish(cfg, copy, args.profile if last else None))
                )
                copy.unlink()
        best_bare, best_ours = min(bare_runs), min(our_runs)
        med_bare, med_ours = statistics.median(bare_runs), statistics.median(our_runs)
        enq = records[:ENQUEUE_RECORDS]
        for r in range(args.rounds):
            raw_runs.append(raw_enqueue(d / f"raw{r}.sqlite", enq))
            spool_runs.append(spool_enqueue(d / f"spool{r}.sqlite", enq))
    bare_rate, our_rate = n_pub / med_bare, n_pub / med_ours
    raw_rate = ENQUEUE_RECORDS / statistics.median(raw_runs)
    spool_rate = ENQUEUE_RECORDS / statistics.median(spool_runs)
    print(
        f"bare paho QoS 1: {bare_rate:,.0f} readings/s, median round "
        f"({len(messages)} messages of <= {cfg.batch_max_records}, window {cfg.max_inflight}; "
        f"rounds {', '.join(f'{t:.2f}' for t in bare_runs)} s)"
    )
    print(
        f"spool -> uplink -> broker: {our_rate:,.0f} readings/s, median round "
        f"(rounds {', '.join(f'{t:.2f}' for t in our_runs)} s)"
    )
    print(
        f"uplink-publish: ratio {our_rate / bare_rate:.2f} of medians (target >= {TARGET}); "
        f"{best_bare / best_ours:.2f} of best rounds"
    )
    print(f"raw sqlite inserts (WAL, synchronous=FULL, 100/tx): {raw_rate:,.0f} records/s")
    print(f"Spool.add (100/tx): {spool_rate:,.0f} records/s")
    print(f"uplink-enqueue: ratio {spool_rate / raw_rate:.2f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
