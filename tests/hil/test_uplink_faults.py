"""Uplink fault tests: the agent as a process, a real mosquitto with mTLS, the head-end simulator.

After every fault the same question: did every record the gateway produced reach the head end at
least once, and is the head end's de-duplicated count exactly the number produced?

How "produced" is known soundly, even across ``kill -9``: before the agent first opens its spool,
the test adds an ``AFTER INSERT`` trigger to the spool's SQLite file that copies each stored
record's natural key into a ledger table. The copy commits in the agent's own transaction, so the
ledger holds exactly the records the spool committed (a record the agent read but never committed
was never produced; one committed is in the ledger however the process dies). Nothing in the
agent is changed or mocked: it is the same file, read afterwards.

"Exactly": after the fault, a drain run of the agent whose only meter is silent empties the
spool, so nothing is produced after the snapshot and the head end's distinct natural keys must
equal the ledger.
Each test also pre-fills the spool with a backlog (through the project's Spool class, so it is in
the ledger too) so that batches are in flight when the fault strikes.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from firmware_agent.clock import SystemClock
from firmware_agent.spool import Priority, Spool
from firmware_agent.uplink import payloads
from hil.agent_process import AgentProcess
from hil.broker import BrokerOptions, Mosquitto
from hil.headend import HeadEnd, HeadEndDb, HeadEndStats
from hil.pki import Pki, generate_foreign_client, issue_expired_client

LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS test_ledger (natural_key TEXT PRIMARY KEY, priority INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS test_ledger_insert AFTER INSERT ON records
BEGIN
    INSERT OR IGNORE INTO test_ledger (natural_key, priority)
    VALUES (NEW.natural_key, NEW.priority);
END;
CREATE TRIGGER IF NOT EXISTS test_ledger_pages AFTER INSERT ON pages
BEGIN
    INSERT OR IGNORE INTO test_ledger (natural_key, priority)
    SELECT json_extract(value, '$.natural_key'), 2
    FROM json_each('[' || CAST(NEW.entries AS TEXT) || ']');
END;
"""

# The drain run's meter list: one meter nobody answers for (port 9, discard), so the collector
# runs but produces nothing. (An empty list ends the agent at once: nothing to collect.)
SILENT_METERS = [{"id": "SILENT-1", "transport": "udp", "address": "127.0.0.1", "port": 9}]


# -- the spool file, from outside ------------------------------------------------------------
def arm_ledger(spool_path: Path) -> None:
    Spool(spool_path, SystemClock()).close()  # the spool's own schema first
    con = sqlite3.connect(spool_path)
    try:
        con.executescript(LEDGER_SQL)
    finally:
        con.close()


def _query(spool_path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(spool_path, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def produced(spool_path: Path) -> dict[str, int]:
    """natural key → priority of every record the spool ever committed."""
    return dict(_query(spool_path, "SELECT natural_key, priority FROM test_ledger"))


def spool_depth(spool_path: Path) -> int:
    """Records stored: rows, and interval reads in pages (spool.py's docstring)."""
    sql = "SELECT (SELECT COUNT(*) FROM records) + (SELECT total(count) FROM pages)"
    return int(_query(spool_path, sql)[0][0])


def prefill(
    spool_path: Path, n: int, *, priority: Priority = Priority.INTERVAL, tag: str = "BULK"
) -> None:
    """A backlog of ``n`` readings, stored by the project's Spool (so the ledger has them)."""
    t0 = 1_714_557_600.0
    with Spool(spool_path, SystemClock()) as spool:
        for start in range(0, n, 500):
            items = []
            for i in range(start, min(n, start + 500)):
                when = payloads.iso_utc(t0 + i)
                device = f"{tag}-{i % 10:04d}"
                body = {"device_id": device, "time": when, "arrival_time": when,
                        "source": "1.0.99.1.0.255", "kw": 1.5, "kva": 1.6, "pf": 0.94,
                        "crrnt": 7.0, "vltg": 0.229, "load": 12, "pad": "x" * 120}  # fmt: skip
                items.append((body, f"{device}|1.0.99.1.0.255|{when}"))
            spool.add(items, priority)


# -- the broker, the head end, a cuttable network -------------------------------------------
@pytest.fixture
def faulty_broker(hil_pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    """Our own broker, which we may stop: it persists sessions, as a production broker does, so
    the head end's queued messages survive its restart."""
    work = tmp_path / "broker"
    work.mkdir()
    options = BrokerOptions(persist_sessions=True)
    with Mosquitto(hil_pki, options=options, workdir=work) as broker:
        yield broker


@pytest.fixture
def head_end(faulty_broker: Mosquitto, hil_pki: Pki, tmp_path: Path) -> Iterator[HeadEnd]:
    db = HeadEndDb(tmp_path / "headend.sqlite")
    he = HeadEnd(
        faulty_broker.host,
        faulty_broker.port,
        hil_pki,
        client_id="headend-faults",
        db=db,
        session_expiry_s=3600,
    )
    with he:
        yield he
    db.close()


class CuttableProxy:
    """A TCP relay on loopback that we cut: after ``cut_after`` bytes from the gateway it resets
    every connection and refuses new ones until ``restore()``."""

    def __init__(self, target: tuple[str, int], cut_after: int | None = None) -> None:
        self.target = target
        self.cut_after = cut_after
        self.forwarded = 0
        self.cuts = 0
        self.down = False
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            # l_onoff=1, l_linger=0: close() sends RST, as a cut link looks to the peer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if upward:
                    with self._lock:
                        self.forwarded += len(data)
                        trip = self.cut_after is not None and self.forwarded >= self.cut_after
                    if trip and not self.down:
                        self.cut()
        except OSError:
            pass

    def cut(self) -> None:
        with self._lock:
            self.down = True
            self.cuts += 1
            self.cut_after = None
            conns, self._conns = self._conns, []
        for sock in conns:
            self._reset(sock)

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


# -- running the agent and checking the outcome ------------------------------------------------
def config_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def wait_until(
    what: str, cond: Callable[[], bool], timeout: float, agent: AgentProcess | None
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tail = agent.tail() if agent is not None else ""
            pytest.fail(f"{what}: not within {timeout} s\n{tail}")
        time.sleep(0.1)


def delivered(head_end: HeadEnd) -> set[str]:
    assert head_end.db is not None
    return set(head_end.db.natural_keys())


def drain_and_check(
    doc: dict[str, Any],
    spool_path: Path,
    head_end: HeadEnd,
    start: Callable[..., AgentProcess],
    tmp_path: Path,
    *,
    timeout: float = 60.0,
) -> HeadEndStats:
    """Run the agent once more with a silent meter (nothing new is produced) until its spool is
    empty, then compare the ledger with what the head end stored."""
    drain = dict(doc, meters=SILENT_METERS)
    agent = start(write_config(tmp_path / "drain.yaml", drain))
    wait_until("drain run connected", lambda: "uplink: connected" in agent.output(), 30, agent)
    wait_until("spool drained", lambda: spool_depth(spool_path) == 0, timeout, agent)
    assert agent.terminate() == 0, agent.tail()
    made = produced(spool_path)
    got = delivered(head_end)
    lost = set(made) - got
    assert not lost, f"{len(lost)} of {len(made)} produced records never reached the head end"
    assert got == set(made), f"head end has {len(got - set(made))} records nobody produced"
    assert head_end.db is not None
    stats = head_end.db.stats()
    assert stats.readings == len(made)  # the de-duplicated count is exact
    assert stats.invalid_messages == 0
    assert _query(spool_path, "PRAGMA integrity_check")[0][0] == "ok"
    return stats


def agent_log(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("agent-*.log")))


# -- the faults ------------------------------------------------------------------------------
@pytest.fixture
def setup(
    gateway_config: Callable[..., Path], faulty_broker: Mosquitto, tmp_path: Path
) -> tuple[dict[str, Any], Path]:
    """A config pointing at our broker, and its spool armed with the ledger."""
    doc = config_doc(gateway_config(uplink={"broker_url": faulty_broker.url}))
    spool_path = Path(doc["spool"]["path"])
    arm_ledger(spool_path)
    return doc, spool_path


def test_broker_stopped_for_a_while_then_restarted(
    setup: tuple[dict[str, Any], Path],
    faulty_broker: Mosquitto,
    head_end: HeadEnd,
    gateway_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    doc, spool_path = setup
    prefill(spool_path, 6000)
    agent = gateway_agent(write_config(tmp_path / "gw.yaml", doc))
    wait_until("first records delivered", lambda: len(delivered(head_end)) >= 300, 30, agent)
    faulty_broker.stop()
    time.sleep(3.0)  # the agent keeps collecting into the spool meanwhile
    faulty_broker.start()
    head_end.wait_subscribed(10)
    wait_until("backlog delivered", lambda: spool_depth(spool_path) < 50, 60, agent)
    assert agent.terminate() == 0, agent.tail()
    stats = drain_and_check(doc, spool_path, head_end, gateway_agent, tmp_path)
    assert "broker unreachable" in agent_log(tmp_path) or "connection lost" in agent_log(tmp_path)
    assert stats.readings >= 6000


def test_agent_kill_9_at_random_points(
    setup: tuple[dict[str, Any], Path],
    head_end: HeadEnd,
    gateway_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    doc, spool_path = setup
    prefill(spool_path, 8000)
    rng = random.Random(7007)
    config = write_config(tmp_path / "gw.yaml", doc)
    kills = [rng.uniform(0.3, 3.0) for _ in range(5)]
    for delay in kills:
        agent = gateway_agent(config)
        time.sleep(delay)
        agent.kill()  # SIGKILL: no shutdown path runs
        assert agent.proc.returncode == -9
        assert _query(spool_path, "PRAGMA integrity_check")[0][0] == "ok"
    stats = drain_and_check(doc, spool_path, head_end, gateway_agent, tmp_path)
    assert stats.readings >= 8000
    # At-least-once across kills: a batch on the wire when the agent died is sent again.
    print(f"kill -9 at {[round(k, 2) for k in kills]} s: {stats.duplicate_records} duplicates")


def test_network_cut_mid_batch(
    setup: tuple[dict[str, Any], Path],
    faulty_broker: Mosquitto,
    head_end: HeadEnd,
    gateway_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    doc, spool_path = setup
    prefill(spool_path, 6000)
    # Past the first burst (a window of readings messages and the status): a cut inside it can
    # reset the broker's side before mosquitto has read any of it (an RST discards unread
    # data), and nothing is delivered before the cut. Seen in 1 run of 6 at 300,000 bytes once
    # the status stopped taking a slot of the window; 0 of 10 at 600,000.
    proxy = CuttableProxy((faulty_broker.host, faulty_broker.port), cut_after=600_000)
    try:
        via_proxy = dict(
            doc, uplink=dict(doc["uplink"], broker_url=f"mqtts://127.0.0.1:{proxy.port}")
        )
        agent = gateway_agent(write_config(tmp_path / "gw.yaml", via_proxy))
        wait_until("the cut", lambda: proxy.cuts == 1, 30, agent)
        # The messages that crossed before the cut reach the head end a moment later (the
        # uplink sends a whole window at once, faster than the head end stores them).
        wait_until("deliveries before the cut", lambda: len(delivered(head_end)) > 0, 10, agent)
        assert len(delivered(head_end)) < 6000  # the cut fell in the middle of the backlog
        time.sleep(2.0)
        proxy.restore()
        wait_until("backlog delivered", lambda: spool_depth(spool_path) < 50, 60, agent)
        assert agent.terminate() == 0, agent.tail()
    finally:
        proxy.close()
    drain_and_check(doc, spool_path, head_end, gateway_agent, tmp_path)
    log = agent_log(tmp_path)
    assert "connection lost" in log, log[-3000:]


@pytest.mark.parametrize("cert", ["wrong-ca", "expired"])
def test_rejected_client_certificate_keeps_everything_for_later(
    cert: str,
    setup: tuple[dict[str, Any], Path],
    hil_pki: Pki,
    head_end: HeadEnd,
    gateway_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    doc, spool_path = setup
    prefill(spool_path, 500)
    if cert == "wrong-ca":
        pair = generate_foreign_client(tmp_path / "foreign", "gateway-01").client
        expected = "client certificate rejected"
    else:
        pair = issue_expired_client(hil_pki, "gateway-01")
        expected = "expired"
    bad = dict(doc, uplink=dict(doc["uplink"], tls=dict(doc["uplink"]["tls"],
               cert_file=str(pair.cert), key_file=str(pair.key))))  # fmt: skip
    agent = gateway_agent(write_config(tmp_path / "bad.yaml", bad))
    wait_until("the rejection logged", lambda: expected in agent.output(), 30, agent)
    time.sleep(1.0)
    assert agent.terminate() == 0, agent.tail()
    assert delivered(head_end) == set()
    assert spool_depth(spool_path) >= 500  # all kept
    # The operator installs the right certificate: everything goes out, nothing was lost.
    drain_and_check(doc, spool_path, head_end, gateway_agent, tmp_path)


def test_disk_budget_hit_ages_interval_reads_never_alarms(
    setup: tuple[dict[str, Any], Path],
    head_end: HeadEnd,
    gateway_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    doc, spool_path = setup
    prefill(spool_path, 50, priority=Priority.ALARM, tag="GASP")
    prefill(spool_path, 4000)
    # Broker unreachable and a budget far below the backlog: the spool must age interval reads.
    tight = dict(doc, spool=dict(doc["spool"], max_bytes=1024 * 1024),
                 uplink=dict(doc["uplink"], broker_url="mqtts://127.0.0.1:9"))  # fmt: skip
    agent = gateway_agent(write_config(tmp_path / "tight.yaml", tight))
    wait_until("Queue Depth Exceeded reported", lambda: "Queue Depth Exceeded" in agent.output(),
               20, agent)  # fmt: skip
    assert agent.terminate() == 0, agent.tail()
    log = agent_log(tmp_path)
    # Drain with the broker back (still within the budget).
    drain = dict(doc, spool=dict(doc["spool"], max_bytes=1024 * 1024), meters=SILENT_METERS)
    agent = gateway_agent(write_config(tmp_path / "drain.yaml", drain))
    wait_until("spool drained", lambda: spool_depth(spool_path) == 0, 60, agent)
    assert agent.terminate() == 0, agent.tail()
    made, got = produced(spool_path), delivered(head_end)
    aged = set(made) - got
    assert got <= set(made)
    assert all(made[k] != Priority.ALARM for k in aged), "an alarm was aged out"
    assert {k for k, p in made.items() if p == Priority.ALARM} <= got
    assert aged, "the budget was hit but nothing was aged out"
    # The aging is counted and reported: the agent's figures must match what is missing.
    reported = [int(n) for n in re.findall(r"aged[ _-]?out\D{0,20}?(\d+)", log + agent.output())]
    assert reported and max(reported) == len(aged), (len(aged), reported, log[-2000:])
