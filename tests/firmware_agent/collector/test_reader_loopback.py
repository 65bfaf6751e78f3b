"""read_meter end to end: our collector (gurux's client inside) against emulated meters over real
loopback UDP and TCP sockets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.link import (
    LinkError,
    LinkTimeout,
    MeterLink,
    TcpMeterLink,
    UdpMeterLink,
)
from firmware_agent.collector.reader import MeterCache, MeterReadError, read_meter
from firmware_agent.collector.session import DataAccessError, DlmsSession, MalformedReply
from firmware_agent.collector.wrapper import build_frame
from firmware_agent.config import MeterConfig, MeterSecurity
from hil.meter.dlms_server import MeterServer
from hil.meter.model import MeterModel
from hil.meter.udp import serve_tcp, serve_udp

T = TypeVar("T")
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


def meter_server(
    clock: ManualClock, *, seed: int = 5, offset: float = 0.0, max_pdu: int = 1024
) -> MeterServer:
    model = MeterModel("MTR-5", random.Random(seed), clock_offset_s=offset)
    return MeterServer(model, clock, max_pdu=max_pdu)


@asynccontextmanager
async def udp_meter(server: MeterServer) -> AsyncIterator[tuple[UdpMeterLink, int]]:
    svc = await serve_udp({1: server})
    link = UdpMeterLink("127.0.0.1", svc.port)
    try:
        yield link, svc.port
    finally:
        await link.close()
        svc.close()


@asynccontextmanager
async def tcp_meter(server: MeterServer) -> AsyncIterator[tuple[TcpMeterLink, int]]:
    svc = await serve_tcp({1: server})
    link = TcpMeterLink("127.0.0.1", svc.port)
    try:
        yield link, svc.port
    finally:
        await link.close()
        await svc.close()


def cfg(port: int, transport: str = "udp", **kw: object) -> MeterConfig:
    return MeterConfig("MTR-5", transport, "127.0.0.1", port, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_read_meter_end_to_end(transport: str) -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock, offset=-42.0)

    async def go() -> None:
        ctx = udp_meter(server) if transport == "udp" else tcp_meter(server)
        async with ctx as (link, port):
            result = await read_meter(link, cfg(port, transport), clock, profile_rows=4)
        energy, *rows = result.readings
        assert result.meter_id == "MTR-5"
        assert result.clock_drift_s == pytest.approx(-42.0, abs=0.011)
        # energy register: scaler applied, stamped with the meter's clock
        meter_now = NOW - 42.0
        assert energy.source == obis.ACTIVE_ENERGY_IMPORT
        assert energy.values[obis.ACTIVE_ENERGY_IMPORT] == server.model.instant(meter_now).energy_wh
        assert energy.time == "2023-11-14T22:12:38Z"
        assert result.energy_wh == energy.values[obis.ACTIVE_ENERGY_IMPORT]
        # the last four whole periods before the meter's now: 21:15 .. 22:00
        assert [r.time for r in rows] == [
            f"2023-11-14T{t}:00Z" for t in ("21:15", "21:30", "21:45", "22:00")
        ]
        for r in rows:
            k = server.model.interval_index(datetime.fromisoformat(r.time).timestamp())
            s = server.model.interval(k)
            assert (r.vltg, r.crrnt, r.pf, r.kw, r.kva, r.load) == (
                s.vltg_kv,
                s.crrnt_a,
                s.pf,
                s.kw,
                s.kva,
                s.load,
            )
            assert r.kva == pytest.approx(r.vltg * r.crrnt, abs=2e-3)
            assert r.kw == pytest.approx(r.kva * r.pf, abs=1e-3)
            assert r.values[obis.ACTIVE_ENERGY_IMPORT] == s.energy_wh
            assert r.values[obis.VOLTAGE_L1] == pytest.approx(s.vltg_kv * 1000)
            assert r.device_id == "MTR-5" and r.arrival_time == "2023-11-14T22:13:20Z"
            assert r.natural_key == f"MTR-5|{obis.LOAD_PROFILE}|{r.time}"
            d = r.to_dict()
            assert set(d) >= {
                "time",
                "arrival_time",
                "device_id",
                "load",
                "crrnt",
                "pf",
                "kva",
                "kw",
                "vltg",
                "values",
            }
        assert set(result.timings_s) == {
            "associate",
            "clock",
            "energy",
            "profile",
            "release",
            "total",
        }
        assert server.counters["associations"] == server.counters["released"] == 1
        assert not server.associated(16)

    run(go())


def test_block_transfer_over_udp_with_small_pdu_and_cache() -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock, max_pdu=64)

    async def go() -> None:
        cache = MeterCache()
        async with udp_meter(server) as (link, port):
            first = await read_meter(link, cfg(port), clock, profile_rows=48, cache=cache)
            clock.advance(900)
            second = await read_meter(link, cfg(port), clock, profile_rows=48, cache=cache)
        assert len(first.readings) == len(second.readings) == 49
        assert server.counters["block-transfers"] >= 2
        assert server.counters["blocks-completed"] == server.counters["block-transfers"]
        assert second.round_trips < first.round_trips  # scalers and period came from the cache
        # the overlapping 47 intervals agree between the two reads
        assert first.readings[2:] == tuple(
            r.__class__(**{**r.__dict__, "arrival_time": first.readings[1].arrival_time})
            for r in second.readings[1:-1]
        )

    run(go())


def test_range_read_returns_exactly_rows_in_range_over_tcp() -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock)

    async def go() -> None:
        async with tcp_meter(server) as (link, _):
            s = DlmsSession()
            for ex in (s.associate(), s.read_capture_objects(obis.LOAD_PROFILE)):
                frame = ex.request
                while (frame := ex.feed(await link.request(frame, 2.0))) is not None:
                    pass
            start = datetime(2023, 11, 14, 3, 7, tzinfo=UTC)
            end = datetime(2023, 11, 14, 5, 0, tzinfo=UTC)
            ex2 = s.read_rows_by_range(obis.LOAD_PROFILE, start, end)
            frame2: bytes | None = ex2.request
            while frame2 is not None:
                frame2 = ex2.feed(await link.request(frame2, 2.0))
            times = [row[0] for row in ex2.result]
        expect = [datetime(2023, 11, 14, 3, 15, tzinfo=UTC).timestamp() + 900 * i for i in range(8)]
        assert [t.timestamp() for t in times] == expect

    run(go())


def test_unknown_obis_is_a_named_data_access_error_over_udp() -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock)

    async def go() -> None:
        async with udp_meter(server) as (link, _):
            s = DlmsSession()
            ex = s.associate()
            assert ex.feed(await link.request(ex.request, 2.0)) is None
            bad = s.read_value("1.0.2.8.0.255")
            with pytest.raises(DataAccessError) as err:
                bad.feed(await link.request(bad.request, 2.0))
            assert err.value.result == "object-undefined" and err.value.code == 4
            ok = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
            assert ok.feed(await link.request(ok.request, 2.0)) is None
            assert ok.result > 0

    run(go())


def test_wrong_wport_times_out_then_meter_keeps_serving() -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock)

    async def go() -> None:
        async with udp_meter(server) as (link, port):
            with pytest.raises(MeterReadError) as err:
                await read_meter(link, cfg(port, server_address=9), clock, timeout=0.2, retries=1)
            assert err.value.stage == "associate"
            assert isinstance(err.value.cause, LinkTimeout)
            assert server.counters["wrong-wport"] == 2  # first try + one retry
            # garbage datagrams from another socket: one is dropped, one answered, then a good read
            raw = UdpMeterLink("127.0.0.1", port)
            with pytest.raises(LinkTimeout):
                await raw.request(b"\xde\xad", 0.2)
            answer = await raw.request(build_frame(16, 1, b"\x60\x10garbage-garbage!"), 2.0)
            assert answer == build_frame(1, 16, bytes([0xD8, 1, 3]))  # exception-response
            await raw.close()
            result = await read_meter(link, cfg(port), clock)
            assert len(result.readings) == 5
        assert server.counters["short-header"] == 1 and server.counters["malformed-apdu"] == 1

    run(go())


class FlakyLink:
    """A real link that loses the first ``drops`` requests (as radio loss would)."""

    def __init__(self, inner: MeterLink, drops: int) -> None:
        self.inner = inner
        self.drops = drops
        self.sent = 0

    async def request(self, frame: bytes, timeout: float) -> bytes:
        self.sent += 1
        if self.drops > 0:
            self.drops -= 1
            raise LinkTimeout("dropped")
        return await self.inner.request(frame, timeout)

    async def close(self) -> None:
        await self.inner.close()


def test_timeouts_are_retried() -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock)

    async def go() -> None:
        async with udp_meter(server) as (link, port):
            flaky = FlakyLink(link, drops=2)
            result = await read_meter(flaky, cfg(port), clock, retries=2)
            assert len(result.readings) == 5 and result.round_trips == flaky.sent
            flaky.drops = 3
            with pytest.raises(MeterReadError) as err:
                await read_meter(flaky, cfg(port), clock, retries=2)
            assert isinstance(err.value.cause, LinkTimeout)

    run(go())


async def garbage_udp_server(reply: Callable[[bytes], bytes]) -> tuple[asyncio.BaseTransport, int]:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
            self.transport.sendto(reply(data), addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (lambda _: b"\x00\x01\x00\x01\x00\x10\x00\x09\x61\x03", "truncated"),
        (lambda _: b"\x00\x07\x00\x01\x00\x10\x00\x01\x61", "bad-version"),
        (lambda _: build_frame(1, 16, b"\x61\x03\xff\xff\xff"), "ValueError: position"),
        (lambda _: build_frame(1, 16, b"\xee\x01\x02"), "Invalid Command"),
    ],
)
def test_bad_replies_raise_malformed_reply_with_hex(
    reply: Callable[[bytes], bytes], reason: str
) -> None:
    clock = ManualClock(NOW)

    async def go() -> None:
        transport, port = await garbage_udp_server(reply)
        link = UdpMeterLink("127.0.0.1", port)
        try:
            with pytest.raises(MeterReadError) as err:
                await read_meter(link, cfg(port), clock, timeout=1.0)
        finally:
            await link.close()
            transport.close()
        cause = err.value.cause
        assert isinstance(cause, MalformedReply), cause
        assert reason in cause.reason
        assert cause.frame_hex == reply(b"").hex()
        assert err.value.stage == "associate" and "MTR-5" in str(err.value)

    run(go())


def test_tcp_link_reassembles_frames_split_and_coalesced() -> None:
    frames = [build_frame(1, 16, bytes([0xC4, 1, 0xC1, 0, 6, 0, 0, 0, i])) for i in range(3)]

    async def go() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(9)
            blob = b"".join(frames)
            for i in range(0, len(blob), 5):  # dribble all three replies in 5-byte pieces
                writer.write(blob[i : i + 5])
                await writer.drain()
                await asyncio.sleep(0.001)
            await reader.read()  # hold until the client hangs up
            writer.close()

        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        link = TcpMeterLink("127.0.0.1", port)
        got = [await link.request(b"x" * 9, 2.0)]
        # the other two arrived in the same stream: each request returns the next frame
        reader = link._reader
        assert reader is not None
        from firmware_agent.collector.link import read_wrapper_frame

        got += [await read_wrapper_frame(reader) for _ in range(2)]
        await link.close()
        srv.close()
        await srv.wait_closed()
        assert got == frames

    run(go())


def test_tcp_bad_header_closes_stream_and_link_reports_it() -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock)

    async def go() -> None:
        async with tcp_meter(server) as (link, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            await writer.drain()
            assert await reader.read() == b""  # the meter hung up on a non-WRAPPER stream
            writer.close()
            result = await read_meter(link, cfg(port, "tcp"), clock)
            assert len(result.readings) == 5

        async def refusing() -> None:
            dead = TcpMeterLink("127.0.0.1", port)
            with pytest.raises(LinkError):
                await dead.request(build_frame(16, 1, b"\x62\x00"), 1.0)

        await refusing()

    run(go())


def test_security_other_than_none_is_refused_up_front() -> None:
    clock = ManualClock(NOW)

    async def go() -> None:
        link = UdpMeterLink("127.0.0.1", 9)
        with pytest.raises(MeterReadError) as err:
            await read_meter(link, cfg(9, security=MeterSecurity("hls-gmac")), clock)
        assert "hls-gmac" in str(err.value)
        await link.close()

    run(go())


def test_failed_stage_is_named_and_association_is_released() -> None:
    clock = ManualClock(NOW)
    server = meter_server(clock)

    async def go() -> None:
        async with udp_meter(server) as (link, port):
            with pytest.raises(MeterReadError) as err:
                await read_meter(link, cfg(port), clock, profile="1.0.99.2.0.255")
        assert err.value.stage == "profile"
        assert isinstance(err.value.cause, DataAccessError)
        assert err.value.cause.result == "object-undefined"
        assert "1.0.99.2.0.255" in str(err.value)
        assert server.counters["released"] == 1 and not server.associated(16)

    run(go())
