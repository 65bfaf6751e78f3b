"""collector: DLMS decode cost of our collector against bare gurux, and suite 0 against plain.

- collector-decode: one GET-Response carrying 96 load-profile rows (24 h of 15-min rows, 8
  columns: clock + 7 registers), produced by the emulated meter and captured once. Baseline:
  bare gurux on the same bytes, ``GXDLMSClient.getData`` + ``updateValue(pg, 2, ...)`` (what any
  gurux program must do). Ours: ``DlmsSession.read_rows_by_range(...).feed(frame)``, the
  collector's decode path (WRAPPER check, gurux parse, rows with aware UTC datetimes). Building
  the request is outside the timed region in both. ratio = our readings/s / gurux readings/s.
- collector-suite0: complete reads (associate, clock, energy register, capture objects, the last
  4 profile rows, release) by our DlmsSession against the emulated meter over loopback UDP, the
  meter in the same process. Plain: the public client, lowest security. Secured: suite 0 (HLS-GMAC
  association, every APDU AES-GCM ciphered on both sides with ``cryptography``, counters in a
  real SQLite file). ratio = secured reads/s / plain reads/s.

Each figure is the best of several runs (plain and secured interleaved); both baselines are
measured in the same run.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gurux_dlms import GXByteBuffer, GXReplyData
from gurux_dlms.objects import GXDLMSProfileGeneric

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.ciphering import Suite0
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.drive import run_exchange
from firmware_agent.collector.keys import MeterKeys
from firmware_agent.collector.link import UdpMeterLink
from firmware_agent.collector.session import DlmsSession, Exchange, Suite0Security
from hil.meter.dlms_server import MeterServer, ServerSecurity
from hil.meter.model import MeterModel
from hil.meter.rig import DEMO_AK, DEMO_EK, DEMO_GATEWAY_TITLE, DEMO_METER_TITLE, drive
from hil.meter.udp import serve_udp

NOW = 1_700_000_000.0
ROWS = 96
DECODES = 200
READS = 100
ROUNDS = 3
READ_ROUNDS = 6
DECODE_TARGET = 0.8
SUITE0_TARGET = 0.5
EK, AK = DEMO_EK, DEMO_AK
METER_TITLE, GATEWAY_TITLE = DEMO_METER_TITLE, DEMO_GATEWAY_TITLE


def _drive(server: MeterServer, exchange: Exchange[object]) -> bytes:
    """The exchange in-process; returns the last reply frame (the bytes both decoders get)."""
    replies: list[bytes] = []
    drive(server, exchange, replies)
    return replies[-1]


def profile_reply() -> tuple[bytes, datetime, datetime]:
    """The meter's one-frame reply to a 96-row range read."""
    server = MeterServer(MeterModel("MTR-B", random.Random(1)), ManualClock(NOW), max_pdu=0xFFFF)
    s = DlmsSession()
    _drive(server, s.associate())  # type: ignore[arg-type]
    _drive(server, s.read_capture_objects(obis.LOAD_PROFILE))  # type: ignore[arg-type]
    end = datetime.fromtimestamp(NOW - NOW % 900, UTC)
    start = end - timedelta(minutes=15 * (ROWS - 1))
    ex = s.read_rows_by_range(obis.LOAD_PROFILE, start, end)
    frame = _drive(server, ex)  # type: ignore[arg-type]
    assert len(ex.result) == ROWS and ex.frames == 1, (len(ex.result), ex.frames)
    return frame, start, end


def bench_gurux(frame: bytes) -> float:
    """The same gurux client state as ours (associated, capture objects read), used bare."""
    server = MeterServer(MeterModel("MTR-B", random.Random(1)), ManualClock(NOW))
    s = DlmsSession()
    _drive(server, s.associate())  # type: ignore[arg-type]
    _drive(server, s.read_capture_objects(obis.LOAD_PROFILE))  # type: ignore[arg-type]
    client = s.client
    pg = GXDLMSProfileGeneric(obis.LOAD_PROFILE)
    pg.captureObjects = s._profiles[obis.LOAD_PROFILE].captureObjects
    elapsed = 0.0
    for _ in range(DECODES):
        reply = GXReplyData()
        pg.buffer = []
        t = time.perf_counter()
        client.getData(GXByteBuffer(frame), reply, None)
        client.updateValue(pg, 2, reply.value)
        elapsed += time.perf_counter() - t
        assert len(pg.buffer) == ROWS
    return elapsed


def bench_ours(frame: bytes, start: datetime, end: datetime) -> float:
    server = MeterServer(MeterModel("MTR-B", random.Random(1)), ManualClock(NOW))
    s = DlmsSession()
    _drive(server, s.associate())  # type: ignore[arg-type]
    _drive(server, s.read_capture_objects(obis.LOAD_PROFILE))  # type: ignore[arg-type]
    elapsed = 0.0
    for _ in range(DECODES):
        # The recorded reply carries one invoke-id; each request must expect that one (the
        # session rotates them so a late reply is never taken for the current request).
        s.invoke_ids.last = (frame[10] & 0x0F) - 1
        ex = s.read_rows_by_range(obis.LOAD_PROFILE, start, end)
        t = time.perf_counter()
        ex.feed(frame)
        rows = ex.result
        elapsed += time.perf_counter() - t
        assert len(rows) == ROWS
    return elapsed


async def _over(link: UdpMeterLink, exchange: Exchange[object]) -> object:
    return await run_exchange(link, exchange, 5.0)


async def bench_reads(secured: bool, db: Path) -> float:
    clock = ManualClock(NOW)
    model = MeterModel("MTR-B", random.Random(2))
    sec = ServerSecurity(Suite0(EK, AK), METER_TITLE, random.Random(3)) if secured else None
    server = MeterServer(model, clock, security=sec)
    svc = await serve_udp({1: server})
    link = UdpMeterLink("127.0.0.1", svc.port)
    store = CounterStore(db)
    keys = MeterKeys("MTR-B", EK, AK, METER_TITLE)
    rng = random.Random(4)
    end = datetime.fromtimestamp(NOW - NOW % 900, UTC)
    try:
        t = time.perf_counter()
        for _ in range(READS):
            if secured:
                s = DlmsSession(
                    1, 1, security=Suite0Security("MTR-B", keys, GATEWAY_TITLE, store, rng)
                )
            else:
                s = DlmsSession(16, 1)
            await _over(link, s.associate())  # type: ignore[arg-type]
            await _over(link, s.read_clock())  # type: ignore[arg-type]
            await _over(link, s.read_value(obis.ACTIVE_ENERGY_IMPORT))
            await _over(link, s.read_capture_objects(obis.LOAD_PROFILE))  # type: ignore[arg-type]
            rows = await _over(
                link,
                s.read_rows_by_range(  # type: ignore[arg-type]
                    obis.LOAD_PROFILE, end - timedelta(minutes=45), end
                ),
            )
            assert isinstance(rows, list) and len(rows) == 4
            await _over(link, s.release())  # type: ignore[arg-type]
        return time.perf_counter() - t
    finally:
        await link.close()
        svc.close()
        store.close()


def main() -> None:
    frame, start, end = profile_reply()
    gurux_runs: list[float] = []
    our_runs: list[float] = []
    for _ in range(ROUNDS):
        gurux_runs.append(bench_gurux(frame))
        our_runs.append(bench_ours(frame, start, end))
    gurux_s, ours_s = min(gurux_runs), min(our_runs)
    readings = DECODES * ROWS
    print(f"profile reply: {ROWS} rows x 8 columns, {len(frame)} bytes in one WRAPPER frame")
    print(f"bare gurux getData + updateValue: {readings / gurux_s:,.0f} readings/s")
    print(f"our collector decode path: {readings / ours_s:,.0f} readings/s")
    print(f"collector-decode: ratio {gurux_s / ours_s:.2f} (target >= {DECODE_TARGET})")

    plain_runs: list[float] = []
    sec_runs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(READ_ROUNDS):  # interleaved, so load on the machine hits both alike
            plain_runs.append(asyncio.run(bench_reads(False, Path(tmp) / f"p{i}.sqlite")))
            sec_runs.append(asyncio.run(bench_reads(True, Path(tmp) / f"s{i}.sqlite")))
    plain_s, sec_s = min(plain_runs), min(sec_runs)
    print(f"plain reads over loopback UDP: {READS / plain_s:,.1f} reads/s")
    print(f"suite 0 reads over loopback UDP: {READS / sec_s:,.1f} reads/s")
    print(f"collector-suite0: ratio {plain_s / sec_s:.2f} (target >= {SUITE0_TARGET})")


if __name__ == "__main__":
    main()
