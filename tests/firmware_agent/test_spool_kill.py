"""The spool survives kill -9: every record whose add() returned is there after reopening."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.spool import Spool

WRITER = """
import sys
from pathlib import Path

import pytest
from firmware_agent.clock import SystemClock
from firmware_agent.spool import Priority, Spool
spool = Spool(Path(sys.argv[1]), SystemClock())
i = 0
while True:
    items = [({"device_id": "m", "seq": i + k, "pad": "x" * 200}, f"m/{i + k}") for k in range(20)]
    ids = spool.add(items, Priority.INTERVAL)
    if i % 60 == 0:
        spool.mark_in_flight(ids[:5])
    if i % 100 == 0 and i:
        spool.ack(ids[:2])
        print("ACKED", *ids[:2])
    print("COMMITTED", *ids[2:] if i % 100 == 0 and i else ids, flush=True)
    i += 20
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_loses_no_committed_record(tmp_path: Path, seed: int) -> None:
    target = random.Random(seed).randint(200, 3000)  # a random point of the writer's life
    db = tmp_path / "spool.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    committed: set[str] = set()
    acked: set[str] = set()
    deadline = time.monotonic() + 30
    while len(committed) < target and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"writer died: exit {proc.poll()}"
        kind, *ids = line.split()
        (committed if kind == "COMMITTED" else acked).update(ids)
    os.kill(proc.pid, signal.SIGKILL)
    # lines written before the kill but not yet read still count: they were printed after commit
    rest, _ = proc.communicate(timeout=10)
    for line in rest.split("\n")[:-1]:  # only complete lines; a torn last line is ignored
        kind, *ids = line.split()
        (committed if kind == "COMMITTED" else acked).update(ids)
    assert proc.returncode == -signal.SIGKILL
    assert len(committed) >= target

    spool = Spool(db, SystemClock())
    try:
        assert spool.integrity_check() == "ok"
        present = {r.record_id for r in spool.stored()}
        assert committed <= present, f"{len(committed - present)} committed records lost"
        assert not (acked & present)
        assert spool.in_flight() == 0  # reopening returns in-flight records to pending
    finally:
        spool.close()
