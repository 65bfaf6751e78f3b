"""Power loss at any point: what a power cut leaves of the spool's files is what was fsynced, a
prefix of the WAL. The test takes that image while a writer runs (a read transaction keeps the WAL
from being reset while the files are copied; a torn last frame is what a cut mid-write leaves) and
checks the image opens clean with every record whose add() had returned before it was taken.

Acknowledgements are committed without their own fsync (``Spool.ack``): an image may bring back
records acknowledged before it was taken. That is at-least-once delivery (they are sent again
and the head end drops them by natural key); what must never happen is a committed record that
was not acknowledged missing, or a record appearing that was never committed."""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.spool import Spool

WRITER = """
import random, sys
from pathlib import Path
from firmware_agent.clock import SystemClock
from firmware_agent.spool import Priority, Spool
rng = random.Random(int(sys.argv[2]))
# a tiny WAL checkpoint threshold: images are taken before, during and after checkpoints
spool = Spool(Path(sys.argv[1]), SystemClock(), rng=rng, wal_autocheckpoint_pages=8)
stop = Path(sys.argv[1] + ".stop")
pending = []
i = 0
while not stop.exists():  # checked only after the prints: every commit gets its line
    k = rng.randint(1, 40)
    items = [({"device_id": f"m{(i + j) % 50}", "seq": i + j, "pad": "x" * rng.randint(10, 900)},
              f"m{(i + j) % 50}/{i + j}") for j in range(k)]
    ids = spool.add(items, rng.choice(list(Priority)))
    print("COMMITTED", *ids, flush=True)
    pending.extend(ids)
    i += k
    if rng.random() < 0.3 and pending:
        batch = pending[: rng.randint(1, 60)]
        del pending[: len(batch)]
        spool.mark_in_flight(batch)
        spool.ack(batch)
        print("ACKED", *batch, flush=True)
"""


def power_cut_image(db: Path, dest: Path) -> Path:
    """Copy the database and its WAL (not the shm: RAM-backed state is rebuilt on recovery)."""
    dest.mkdir()
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM records").fetchone()
        shutil.copyfile(db, dest / db.name)
        wal = Path(f"{db}-wal")
        if wal.exists():
            shutil.copyfile(wal, dest / wal.name)
        reader.execute("COMMIT")
    finally:
        reader.close()
    return dest / db.name


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_power_cut_images_hold_every_committed_record(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    db = tmp_path / "spool.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    committed: set[str] = set()
    acked: set[str] = set()
    images: list[tuple[Path, set[str], set[str]]] = []
    try:
        for n in range(6):
            for _ in range(rng.randint(5, 60)):
                line = proc.stdout.readline()
                assert line, f"writer died: exit {proc.poll()}"
                kind, *ids = line.split()
                (committed if kind == "COMMITTED" else acked).update(ids)
            images.append((power_cut_image(db, tmp_path / f"cut{n}"), set(committed), set(acked)))
        Path(f"{db}.stop").touch()  # the writer finishes its turn, prints it, and exits
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    for line in rest.splitlines():
        kind, *ids = line.split()
        (committed if kind == "COMMITTED" else acked).update(ids)

    came_back = 0
    for image, committed_before, acked_before in images:
        spool = Spool(image, SystemClock())
        try:
            assert spool.integrity_check() == "ok"
            present = {r.record_id for r in spool.stored()}
            lost = committed_before - present - acked  # acked later than the line we read
            assert not lost, f"{image}: {len(lost)} committed records lost"
            assert present <= committed  # nothing appears that was never committed
            # Only acknowledged records may be duplicates: everything else present is pending.
            pending_before = committed_before - acked_before
            assert present - acked <= committed - acked_before
            assert pending_before - acked <= present
            came_back += len(acked_before & present)  # allowed: re-sent, deduplicated
            by_class = sum(spool.depth_by_priority().values())
            assert by_class == len(present)
        finally:
            spool.close()
    assert came_back <= len(acked)
