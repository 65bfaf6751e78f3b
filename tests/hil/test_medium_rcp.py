"""The medium on a clock: the gateway's production Spinel host drives a virtual RCP over
``spinel+loop://`` while frames take their airtime, on the virtual-time loop and on a real one."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from drivers import default_registry
from drivers.hdlc import HdlcDecoder, hdlc_encode
from drivers.rcp_host import SpinelTransceiver
from drivers.spinel import decode_tx_done
from drivers.transceiver import TxStatus
from firmware_agent.clock import LoopClock, ManualClock
from firmware_agent.mesh import frames, ipv6, lowpan
from hil import phy, vtime
from hil.loop import register
from hil.medium import InstantScheduler, Medium, TxOutcome, csma_transmit
from hil.rcp import VirtualRcp, default_acker

GW = bytes.fromhex("0257530000000001")
METER = bytes.fromhex("00124b0000000042")
PAN = 0xBEEF
T = TypeVar("T")


class ProbeNode:
    def __init__(self, eui64: bytes) -> None:
        self.eui64 = eui64
        self.heard: list[bytes] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append(psdu)
        return default_acker(psdu, self.eui64)


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    medium: Medium
    rcp: VirtualRcp
    radio: SpinelTransceiver


@contextlib.asynccontextmanager
async def world(seed: int = 1) -> AsyncIterator[World]:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    medium = Medium(rng, scheduler=loop)
    rcp = VirtualRcp(medium, rng, LoopClock(loop, 1_700_000_000.0), eui64=GW, channel=0)
    registry = default_registry()
    register(registry, "gw", rcp)
    radio = registry.open_url("spinel+loop://gw?timeout=0.5")
    assert isinstance(radio, SpinelTransceiver)
    await radio.open()
    try:
        yield World(loop, medium, rcp, radio)
    finally:
        await radio.close()


def in_virtual_time(test: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(test(), 60)

    return vtime.run(bounded())


def data_psdu(dst: bytes, payload: bytes = b"hello", seq: int = 1, ack: bool = True) -> bytes:
    return frames.encode(frames.data_frame(seq, PAN, dst, GW, payload, ack_request=ack))


def test_tx_done_comes_when_the_ack_has_arrived_in_virtual_time() -> None:
    async def go() -> tuple[float, float]:
        async with world() as w:
            meter = ProbeNode(METER)
            w.medium.attach(meter, (40.0, 0.0))
            psdu = data_psdu(METER)
            started = w.loop.time()
            result = await w.radio.transmit(psdu)
            elapsed = w.loop.time() - started
            assert result.status is TxStatus.ACKED and meter.heard == [psdu]
            broadcast = data_psdu(b"\xff\xff", ack=False)
            started = w.loop.time()
            assert (await w.radio.transmit(broadcast)).status is TxStatus.SENT
            return elapsed, w.loop.time() - started

    acked, broadcast = in_virtual_time(go)
    frame_s = phy.airtime_s(len(data_psdu(METER)))
    ack_s = phy.airtime_s(len(default_acker(data_psdu(METER), METER) or b""))
    csma_max = 7 * 1.16e-3  # the first backoff: up to 2^3 − 1 units
    assert frame_s + 1e-3 + ack_s <= acked <= frame_s + 1e-3 + ack_s + csma_max + 1e-6
    b_s = phy.airtime_s(len(data_psdu(b"\xff\xff", ack=False)))
    assert b_s <= broadcast <= b_s + csma_max + 1e-6


def test_tx_done_waits_for_the_airtime_on_a_real_loop() -> None:
    async def go() -> float:
        async with world() as w:
            w.medium.attach(ProbeNode(METER), (40.0, 0.0))
            big = data_psdu(METER, bytes(100))  # 100 B payload: ~26 ms on the air
            started = time.monotonic()
            assert (await w.radio.transmit(big)).status is TxStatus.ACKED
            return time.monotonic() - started

    elapsed = asyncio.run(asyncio.wait_for(go(), 30))
    assert elapsed >= phy.airtime_s(len(data_psdu(METER, bytes(100)))) + 1e-3


def test_busy_channel_gives_cca_failure_after_backoffs() -> None:
    async def go() -> None:
        async with world() as w:
            w.medium.attach(ProbeNode(METER), (40.0, 0.0))
            jammer = w.medium.add_interferer((5.0, 0.0), power_dbm=0.0, channels=[0])
            started = w.loop.time()
            assert (await w.radio.transmit(data_psdu(METER))).status is TxStatus.CCA_FAILURE
            assert w.loop.time() > started  # it backed off before giving up
            assert w.rcp.counters.cca_failures == 1 and w.medium.counters.frames == 0
            # The host sees the busy channel in its RSSI samples and energy scans too.
            assert await w.radio.sample_rssi() > -70
            scan = await w.radio.energy_scan([0, 1], duration_ms=16)
            assert scan[0] > -70 and scan[1] < -105
            jammer.switch(False)
            assert (await w.radio.transmit(data_psdu(METER))).status is TxStatus.ACKED

    in_virtual_time(go)


def test_concurrent_requests_are_queued_not_refused() -> None:
    async def go() -> None:
        async with world() as w:
            meter = ProbeNode(METER)
            w.medium.attach(meter, (40.0, 0.0))
            results = await asyncio.gather(
                *(w.radio.transmit(data_psdu(METER, seq=s)) for s in range(3))
            )
            assert [r.status for r in results] == [TxStatus.ACKED] * 3
            assert [frames.decode(p).seq for p in meter.heard] == [0, 1, 2]
            assert w.rcp.counters.tx_queued == 2

    in_virtual_time(go)


class Responder:
    """A meter's shape without its stack: acks frames addressed to it and answers each UDP
    datagram 10 ms later with one of its own, sent through CSMA-CA."""

    def __init__(self, eui64: bytes, medium: Medium, answer: Callable[[bytes], bytes]) -> None:
        self.eui64 = eui64
        self.medium = medium
        self.answer = answer
        self.rng = random.Random(3)
        self.outcomes: list[TxOutcome | None] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        ack = default_acker(psdu, self.eui64)
        if ack is not None:
            self.medium.call_later(0.01, self._reply, frames.decode(psdu))
        return ack

    def _reply(self, request: frames.Frame) -> None:
        assert request.src is not None
        datagram = ipv6.decode_udp(lowpan.decompress(request.payload, request.src, self.eui64))
        src, dst = ipv6.link_local(self.eui64), ipv6.link_local(request.src)
        reply = ipv6.UdpDatagram(
            datagram.dst_port, datagram.src_port, self.answer(datagram.payload)
        )
        packet = ipv6.Ipv6Packet(src, dst, ipv6.UDP, ipv6.encode_udp(src, dst, reply))
        payload = lowpan.compress(packet, self.eui64, request.src)
        psdu = frames.encode(frames.data_frame(7, PAN, request.src, self.eui64, payload))
        csma_transmit(self.medium, self, psdu, 0, self.rng, self.outcomes.append)


def test_a_node_answers_over_the_air_and_the_sniffer_sees_it_all() -> None:
    async def go() -> None:
        async with world() as w:
            sniffed: list[tuple[float, bytes, int]] = []
            w.medium.on_air(lambda t, node, psdu, ch: sniffed.append((t, psdu, ch)))
            meter = Responder(METER, w.medium, lambda apdu: b"answer to " + apdu)
            w.medium.attach(meter, (60.0, 0.0))
            await w.radio.enable_raw_stream()
            src, dst = ipv6.link_local(GW), ipv6.link_local(METER)
            request = ipv6.UdpDatagram(40_000, 4059, b"GET 1.0.1.8.0.255")
            packet = ipv6.Ipv6Packet(src, dst, ipv6.UDP, ipv6.encode_udp(src, dst, request))
            payload = lowpan.compress(packet, GW, METER)
            assert (await w.radio.transmit(data_psdu(METER, payload))).status is TxStatus.ACKED
            rx = await w.radio.receive(timeout=1.0)
            assert rx is not None
            reply = frames.decode(rx.psdu)
            assert reply.src == METER and reply.ack_request
            datagram = ipv6.decode_udp(lowpan.decompress(reply.payload, METER, GW))
            assert (datagram.src_port, datagram.dst_port) == (4059, 40_000)
            assert datagram.payload == b"answer to GET 1.0.1.8.0.255"
            await asyncio.sleep(0.05)  # the RCP's ack of the reply
            kinds = [frames.decode(p).frame_type for _, p, _ in sniffed]
            assert kinds == [frames.FrameType.DATA, frames.FrameType.ACK] * 2
            times = [t for t, _, _ in sniffed]
            assert times == sorted(times) and times[2] - times[1] >= 0.009  # the reply delay
            (outcome,) = meter.outcomes
            assert outcome is not None and outcome.ack_psdu is not None  # the RCP acked it
            assert abs(outcome.ack_rssi_dbm - w.medium.link_budget(w.rcp, meter, 0)) < 3

    in_virtual_time(go)


def test_a_reset_during_a_transmission_drops_its_tx_done() -> None:
    sched = InstantScheduler()
    rng = random.Random(5)
    medium = Medium(rng, scheduler=sched)
    rcp = VirtualRcp(medium, rng, ManualClock(), eui64=GW)
    medium.attach(ProbeNode(METER), (30.0, 0.0))
    rcp.feed(hdlc_encode(bytes.fromhex("81 03 20 01")))  # PHY_ENABLED
    rcp.take_output()
    psdu = data_psdu(METER)
    request = bytes([0x82, 0x03, 0x71]) + struct.pack("<H", len(psdu)) + psdu + b"\x00"
    rcp.feed(hdlc_encode(request))
    assert rcp.take_output() == b""  # not on the air yet: the TX-done comes later
    sched.run()
    (done,) = HdlcDecoder().feed(rcp.take_output())
    assert isinstance(done, bytes) and done[:3] == bytes.fromhex("820600")
    assert decode_tx_done(done[3:]).ack is not None
    rcp.feed(hdlc_encode(request))
    rcp.reboot()
    sched.run()
    out = [f for f in HdlcDecoder().feed(rcp.take_output()) if isinstance(f, bytes)]
    assert out == [bytes.fromhex("80060070")]  # the reset notification only


def test_same_seed_same_virtual_run_and_another_seed_differs() -> None:
    def run(seed: int) -> list[tuple[float, str]]:
        async def go() -> list[tuple[float, str]]:
            async with world(seed) as w:
                meters = [ProbeNode(bytes([0, 0x12, 0x4B, 0, 0, 0, 0, i])) for i in range(5)]
                for i, m in enumerate(meters):  # out to 900 m: the far links are lossy
                    w.medium.attach(m, (180.0 * (i + 1), 20.0 * i))
                trace: list[tuple[float, str]] = []
                for round_ in range(6):
                    for m in meters:
                        result = await w.radio.transmit(data_psdu(m.eui64, seq=round_))
                        trace.append((round(w.loop.time(), 9), result.status.value))
                return trace

        return in_virtual_time(go)

    first = run(11)
    assert {status for _, status in first} == {"acked", "no_ack"}
    assert run(11) == first
    assert run(12) != first
