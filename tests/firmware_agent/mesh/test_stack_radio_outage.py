"""The mesh stack rides out a radio outage: real virtual RCPs on real PTYs, the production driver.

The receive loop must neither die nor spin while the radio is gone; a send during the outage
fails at once with an error that says so (the collector counts it as a failed read).
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Awaitable, Callable

import pytest

from drivers import open_radio
from drivers.capture import CapturingTransceiver
from drivers.pcap import PcapWriter
from drivers.reconnect import Backoff, RadioReconnecting, ReconnectingTransceiver
from drivers.transceiver import RadioError, Transceiver
from firmware_agent.clock import ManualClock
from firmware_agent.mesh import frames, ipv6, lowpan
from firmware_agent.mesh.stack import MeshDatagramLink, MeshStack
from hil.medium import Medium
from hil.rcp import PtyBoard, VirtualRcp, default_acker

GW = bytes.fromhex("0257530000000001")
METER = bytes.fromhex("00124b0000000042")
PAN = 0xABCD
CHANNEL = 9
REQUEST_TIMEOUT_S = 3.0
#: How long a condition may take to come true on a loaded machine before the test says which.
DEADLINE_S = 15.0


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 60)

    asyncio.run(bounded())


class Meter:
    def __init__(self) -> None:
        self.eui64 = METER

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        return default_acker(psdu, self.eui64)


class Board:
    """A virtual RCP on a PTY with one meter in range that can send UDP to the gateway."""

    def __init__(self) -> None:
        rng = random.Random(4)
        self.medium = Medium(rng)
        self.rcp = VirtualRcp(self.medium, rng, ManualClock(), eui64=GW, channel=0)
        self.meter = Meter()
        self.medium.attach(self.meter, (20.0, 0.0), channel=CHANNEL)
        self.pty = PtyBoard(self.rcp)
        self.seq = 0

    async def start(self) -> Board:
        await self.pty.plug()
        return self

    async def pull_plug(self) -> None:
        await self.pty.unplug()

    def url(self) -> str:
        # Outages here are seen as the PTY going away, never by timing out: the request timeout
        # is only how long a busy machine may take to answer, so it is generous.
        return f"spinel+uart://{self.pty.path}?timeout={REQUEST_TIMEOUT_S}&retries=1"

    def meter_sends_udp(self, payload: bytes, port: int = 4059) -> None:
        src, dst = ipv6.link_local(METER), ipv6.link_local(GW)
        udp = ipv6.encode_udp(src, dst, ipv6.UdpDatagram(port, port, payload))
        mac_payload = lowpan.compress(ipv6.Ipv6Packet(src, dst, ipv6.UDP, udp), METER, GW)
        self.seq += 1
        psdu = frames.encode(frames.data_frame(self.seq, PAN, GW, METER, mac_payload))
        self.medium.transmit(self.meter, psdu, CHANNEL)


async def set_up(radio: Transceiver) -> MeshStack:
    info = await radio.open()
    await radio.set_channel(CHANNEL)
    await radio.enable_raw_stream()
    return MeshStack(radio, info.hwaddr, ManualClock(), pan_id=PAN, channel=CHANNEL)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after a generous deadline."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"still waiting after {DEADLINE_S:g} s for {what}")
        await asyncio.sleep(0.01)


def test_receive_loop_waits_through_a_reconnect_and_delivers_again() -> None:
    async def go() -> None:
        current = await Board().start()
        radio = ReconnectingTransceiver(
            lambda: open_radio(current.url()),
            backoff=Backoff(min_s=0.05, max_s=0.2),
            rng=random.Random(1),
        )
        # The agent may stack a capture on top: the loop still finds the reconnecting layer.
        sink = PcapWriter(io.BytesIO())
        stack = await set_up(CapturingTransceiver(radio, sink, ManualClock()))
        got: list[bytes] = []
        stack.bind(4059, lambda src, dgram: got.append(dgram.payload))
        loop = asyncio.create_task(stack.run())
        try:
            current.meter_sends_udp(b"before")
            await until(lambda: got == [b"before"], "the first datagram")

            old, current = current, Board()  # the next reopen finds a replugged board
            current.seq = old.seq  # the same meter: its sequence numbers go on (no dedup drop)
            await old.pull_plug()
            await until(lambda: radio.state == "reconnecting", "the loss to be noticed")
            link = MeshDatagramLink(stack, METER)
            with pytest.raises(RadioReconnecting, match="reconnecting"):
                await link.request(b"\x00\x01", timeout=1.0)  # what a meter read sees
            assert stack.stats.tx_radio_errors == 1
            await current.start()
            await asyncio.wait_for(radio.wait_open(), DEADLINE_S)
            assert not loop.done()

            current.meter_sends_udp(b"after")
            await until(lambda: got == [b"before", b"after"], "the datagram after the reopen")
            assert stack.stats.datagrams_rx == 2
            assert current.rcp.channel == CHANNEL and current.rcp.raw_stream
            assert sink.records >= 2  # both boards' frames went into the one capture
        finally:
            loop.cancel()
            await asyncio.wait([loop])
            await radio.close()
            await current.pull_plug()

        # A radio that is closed for good ends the loop with the reason, instead of spinning.
        with pytest.raises(RadioError, match="closed"):
            await asyncio.wait_for(stack.run(), 2)

    run(go)


def test_a_plain_radio_going_away_pauses_the_loop_without_spinning() -> None:
    async def go() -> None:
        board = await Board().start()
        radio = open_radio(board.url())
        stack = await set_up(radio)
        stack.radio_retry_s = 0.05
        loop = asyncio.create_task(stack.run())
        try:
            await asyncio.sleep(0.05)
            await board.pull_plug()
            await until(lambda: stack.stats.radio_outages == 1, "the outage to be counted")
            await asyncio.sleep(0.3)
            assert not loop.done()  # alive: it keeps asking, every radio_retry_s
            assert stack.stats.radio_outages == 1  # one outage, however long
            assert 2 <= stack.stats.rx_radio_errors <= 12  # paced, not a busy loop
        finally:
            loop.cancel()
            await asyncio.wait([loop])
            await radio.close()

    run(go)
