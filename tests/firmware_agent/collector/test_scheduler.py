"""Interval reads: every meter on its own loop; a dead or garbage-speaking meter stalls nobody."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import cast

from firmware_agent.clock import SystemClock
from firmware_agent.collector.link import MeterLink, UdpMeterLink
from firmware_agent.collector.scheduler import Collector
from firmware_agent.config import CollectorConfig, MeterConfig
from firmware_agent.spool import Priority, Spool
from hil.meter.dlms_server import MeterServer
from hil.meter.model import MeterModel
from hil.meter.udp import serve_udp


class GarbageMeter(asyncio.DatagramProtocol):
    """Answers every request with bytes that are not DLMS."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.transport.sendto(b"\x00\x01\x00\x01\x00\x10\x00\x03\xde\xad\xbe", addr)


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(tmp_path: Path) -> tuple[Collector, Spool]:
    clock = SystemClock()
    good = await serve_udp(
        {1: MeterServer(MeterModel("GOOD", random.Random(1), profile_period_s=60), clock)}
    )
    loop = asyncio.get_running_loop()
    garbage_transport, _ = await loop.create_datagram_endpoint(
        GarbageMeter, local_addr=("127.0.0.1", 0)
    )
    garbage_port = int(garbage_transport.get_extra_info("sockname")[1])
    meters = (
        MeterConfig("GOOD", "udp", "127.0.0.1", port=good.port),
        MeterConfig("DEAD", "udp", "127.0.0.1", port=_dead_port()),
        MeterConfig("GARBAGE", "udp", "127.0.0.1", port=garbage_port),
    )
    links: dict[str, MeterLink] = {m.id: UdpMeterLink(m.address, m.port) for m in meters}
    spool = Spool(tmp_path / "spool.sqlite", clock)
    cfg = CollectorConfig(interval_s=0.3, jitter_s=0.05, profile_rows=2, timeout_s=0.3, retries=0)
    collector = Collector(meters, lambda m: links[m.id], spool, clock, cfg, random.Random(3))
    task = asyncio.create_task(collector.run())
    try:
        for _ in range(100):
            st = collector.status
            if (
                st["GOOD"].reads_ok >= 3
                and st["DEAD"].reads_failed >= 2
                and st["GARBAGE"].reads_failed >= 2
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for link in links.values():
            await link.close()
        good.close()
        garbage_transport.close()
    return collector, spool


def test_bad_meters_never_stall_a_good_one(tmp_path: Path) -> None:
    collector, spool = asyncio.run(_run(tmp_path))
    st = collector.status
    assert st["GOOD"].reads_ok >= 3 and st["GOOD"].state == "ok"
    assert st["DEAD"].reads_ok == 0 and st["DEAD"].state == "failing"
    assert "associate" in (st["DEAD"].last_error or "")
    assert st["GARBAGE"].reads_ok == 0 and st["GARBAGE"].state == "failing"
    assert "MalformedReply" in (st["GARBAGE"].last_error or ""), st["GARBAGE"].last_error
    # Everything the good meter returned is committed, keyed by meter, profile and capture time.
    pending = spool.next_batch(1000, 10_000_000)
    assert pending and {r.data["device_id"] for r in pending} == {"GOOD"}
    assert all(r.priority == Priority.INTERVAL for r in pending)
    assert len({r.natural_key for r in pending}) == len(pending)
    assert collector.readings_total >= len(pending)
    spool.close()


class SlowLink:
    """A link whose replies take ``delay`` s, like a deep mesh path (a real UDP meter behind)."""

    def __init__(self, inner: MeterLink, delay: float) -> None:
        self.inner, self.delay = inner, delay

    async def request(self, frame: bytes, timeout: float) -> bytes:
        reply = await self.inner.request(frame, timeout)
        await asyncio.sleep(self.delay)
        return reply

    async def close(self) -> None:
        await self.inner.close()


def test_a_read_that_began_before_a_last_gasp_does_not_say_the_meter_is_on(
    tmp_path: Path,
) -> None:
    """The OMS asks whether a meter is dark: a read that was under way when its last gasp
    arrived proves nothing about after the gasp, even if its last reply came later."""
    from firmware_agent.uplink.outage import POWER_OFF, POWER_ON, power_state

    async def main() -> tuple[float, float, float]:
        clock = SystemClock()
        svc = await serve_udp({1: MeterServer(MeterModel("M", random.Random(1)), clock)})
        meter = MeterConfig("M", "udp", "127.0.0.1", port=svc.port)
        link = SlowLink(UdpMeterLink("127.0.0.1", svc.port), 0.1)
        spool = Spool(tmp_path / "spool.sqlite", clock)
        cfg = CollectorConfig(interval_s=60, jitter_s=0, profile_rows=1, timeout_s=2, retries=0)
        collector = Collector((meter,), lambda m: link, spool, clock, cfg, random.Random(3))
        reading = asyncio.create_task(collector.read_once(meter))
        await asyncio.sleep(0.15)  # mid-read: the meter's last gasp arrives now
        gasp_at = clock.now()
        assert await reading > 0
        await link.close()
        svc.close()
        spool.close()
        st = collector.status["M"]
        assert st.last_success is not None and st.last_success_started is not None
        return gasp_at, st.last_success_started, st.last_success

    gasp_at, started, ended = asyncio.run(main())
    assert started < gasp_at < ended
    assert power_state(gasp_at, None, started) == POWER_OFF
    assert power_state(gasp_at, None, ended) == POWER_ON  # what the end of the read would say
