"""SpinelTransceiver against a virtual RCP served on a real PTY, reached as ``spinel+uart://``.

PTY-specific behaviour lives here (host-to-board noise, a vanishing port, scripted boards); the
behaviour every transport shares is in test_radio_suite.py.

The RCP runs in this process (same event loop) so tests can place nodes on its medium, inject
line noise, reboot it, or pull the PTY away; the host side is exactly the production driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drivers import open_radio
from drivers.hdlc import HdlcDecoder, hdlc_encode
from drivers.rcp_host import SpinelTransceiver
from drivers.transceiver import RadioError, RadioTimeout, TxStatus
from drivers.uart import SerialTransport
from firmware_agent.clock import ManualClock
from firmware_agent.mesh import frames
from hil.medium import Medium
from hil.rcp import PtyBoard, VirtualRcp, default_acker
from hil.scripted_pty import raw_pty, read_frames

GW = bytes.fromhex("0257530000000001")
METER = bytes.fromhex("00124b0000000042")
PAN = 0xBEEF


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 30)

    asyncio.run(bounded())


class ProbeNode:
    """A node on the medium that records what it hears and acks frames addressed to it."""

    def __init__(self, eui64: bytes, *, acks: bool = True) -> None:
        self.eui64 = eui64
        self.acks = acks
        self.heard: list[tuple[bytes, int, int, int]] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append((psdu, rssi_dbm, lqi, channel))
        return default_acker(psdu, self.eui64) if self.acks else None


class World:
    def __init__(
        self, medium: Medium, rcp: VirtualRcp, clock: ManualClock, board: PtyBoard
    ) -> None:
        self.medium = medium
        self.rcp = rcp
        self.clock = clock
        self.board = board
        self.path = board.path


@contextlib.asynccontextmanager
async def served_rcp(seed: int = 1) -> AsyncIterator[World]:
    rng = random.Random(seed)
    clock = ManualClock()
    medium = Medium(rng)
    rcp = VirtualRcp(medium, rng, clock, eui64=GW, channel=0)
    async with PtyBoard(rcp) as board:
        yield World(medium, rcp, clock, board)


@contextlib.asynccontextmanager
async def opened(world: World, **kwargs: object) -> AsyncIterator[SpinelTransceiver]:
    radio = open_radio(f"spinel+uart://{world.path}?baudrate=460800&rtscts=0&timeout=0.5")
    assert isinstance(radio, SpinelTransceiver)
    await radio.open()
    try:
        yield radio
    finally:
        await radio.close()


def data_psdu(dst: bytes, *, seq: int = 1, ack_request: bool = True) -> bytes:
    psdu = frames.encode(frames.data_frame(seq, PAN, dst, GW, b"hello", ack_request=ack_request))
    return psdu[:-2] + b"\x00\x00"  # the radio computes the FCS; send zeros to prove it


def test_transmit_acked_no_ack_and_broadcast() -> None:
    async def go() -> None:
        async with served_rcp() as world, opened(world) as radio:
            meter = ProbeNode(METER)
            world.medium.attach(meter, (20.0, 0.0), channel=5)
            await radio.set_channel(5)

            result = await radio.transmit(data_psdu(METER, seq=9))
            assert result.status is TxStatus.ACKED
            assert result.ack_psdu is not None
            ack = frames.decode(result.ack_psdu)
            assert (ack.frame_type, ack.seq) == (frames.FrameType.ACK, 9)
            heard, _, _, channel = meter.heard[-1]
            assert channel == 5
            assert frames.decode(heard).payload == b"hello"  # FCS computed by the RCP

            stranger = bytes.fromhex("00124b00000000ff")
            assert (await radio.transmit(data_psdu(stranger))).status is TxStatus.NO_ACK
            broadcast = data_psdu(b"\xff\xff", ack_request=False)
            assert (await radio.transmit(broadcast)).status is TxStatus.SENT
            assert len(meter.heard) == 3

            await radio.set_channel(6)  # the meter is no longer on our channel
            assert (await radio.transmit(data_psdu(METER))).status is TxStatus.NO_ACK

            world.rcp.cca_failures_to_inject = 1  # a busy channel
            assert (await radio.transmit(broadcast)).status is TxStatus.CCA_FAILURE
            assert (await radio.transmit(broadcast)).status is TxStatus.SENT

            world.rcp.phy_enabled = False  # the board refuses (INVALID_STATE): FAILED
            assert (await radio.transmit(broadcast)).status is TxStatus.FAILED
            with pytest.raises(RadioError, match="PSDU of 2 bytes"):
                await radio.transmit(b"\x00\x00")

    run(go)


def test_received_frame_has_rssi_lqi_channel_and_is_acked() -> None:
    async def go() -> None:
        async with served_rcp() as world, opened(world) as radio:
            meter = ProbeNode(METER)
            world.medium.attach(meter, (30.0, 0.0), tx_power_dbm=14.0, channel=3)
            await radio.set_channel(3)

            # Raw stream off: the board still acks, but the host hears nothing.
            up = frames.encode(frames.data_frame(1, PAN, GW, METER, b"reading"))
            assert world.medium.transmit(meter, up, 3) is not None
            assert await radio.receive(timeout=0.2) is None

            await radio.enable_raw_stream()
            world.clock.advance(2.5)
            ack = world.medium.transmit(meter, up, 3)
            assert ack is not None and frames.decode(ack).seq == 1
            rx = await radio.receive(timeout=2)
            assert rx is not None
            assert rx.psdu == up
            assert rx.channel == 3
            expected = 14 - world.medium.path_loss_db((0, 0), (30, 0))
            assert abs(rx.rssi_dbm - expected) < 10
            assert 0 < rx.lqi <= 255
            assert rx.timestamp_us == int(world.clock.monotonic() * 1e6)
            assert rx.noise_floor_dbm == -115

    run(go)


def test_line_noise_both_ways_is_counted_and_survived() -> None:
    async def go() -> None:
        async with served_rcp() as world, opened(world) as radio:
            # Board → host: garbage, then a frame with a broken FCS.
            bad = bytearray(hdlc_encode(bytes.fromhex("80060072")))
            bad[-2] ^= 0xFF
            world.rcp.inject_to_host(b"\x00garbage\x13" + bytes(bad))
            assert await radio.sample_rssi() < -100
            assert radio.stats.hdlc_errors >= 2
            assert radio.stats.unexpected_resets == 0  # the corrupt reset frame was not believed

            # Host → board: someone else writes junk into the same port.
            fd = os.open(world.path, os.O_WRONLY | os.O_NOCTTY)
            try:
                os.write(fd, b"\x7e\x81\x02\x01\x00\x00\x7e" + b"noise" + b"\x7e\x80\x7e")
            finally:
                os.close(fd)
            assert await radio.sample_rssi() < -100
            assert world.rcp.counters.hdlc_errors >= 2

    run(go)


def test_unsolicited_reset_is_detected_and_settings_reapplied() -> None:
    async def go() -> None:
        async with served_rcp() as world:
            resets: asyncio.Queue[int] = asyncio.Queue()
            radio = SpinelTransceiver(
                SerialTransport(world.path), request_timeout=0.5, on_reset=resets.put_nowait
            )
            await radio.open()
            try:
                await radio.set_channel(9)
                await radio.set_tx_power(5)
                await radio.enable_raw_stream()
                world.rcp.reboot()  # e.g. a watchdog on the board
                assert (world.rcp.channel, world.rcp.raw_stream) == (0, False)
                assert await asyncio.wait_for(resets.get(), 5) == 112  # RESET_POWER_ON
                await radio.wait_recovered()
                assert radio.stats.unexpected_resets == 1
                rcp = world.rcp
                assert (rcp.phy_enabled, rcp.channel, rcp.tx_power_dbm, rcp.raw_stream) == (
                    True,
                    9,
                    5,
                    True,
                )
            finally:
                await radio.close()

    run(go)


def test_port_vanishing_gives_clear_radio_error() -> None:
    async def go() -> None:
        async with served_rcp() as world, opened(world) as radio:
            waiter = asyncio.create_task(radio.receive())
            await asyncio.sleep(0.05)
            await world.board.unplug()  # the board's end of the line goes away
            with pytest.raises(RadioError, match="vanished"):
                await asyncio.wait_for(waiter, 5)
            with pytest.raises(RadioError, match="vanished"):
                await radio.sample_rssi()

    run(go)


def test_unknown_url_option_and_missing_port() -> None:
    with pytest.raises(RadioError, match="unknown option 'speed'"):
        open_radio("spinel+uart:///dev/ttyACM0?speed=9600")
    with pytest.raises(RadioError, match="not a number"):
        open_radio("spinel+uart:///dev/ttyACM0?baudrate=fast")

    async def go() -> None:
        radio = open_radio("spinel+uart:///dev/does-not-exist-42")
        with pytest.raises(RadioError, match="cannot open serial port /dev/does-not-exist-42"):
            await radio.open()

    run(go)


def test_silent_board_times_out_with_named_reason() -> None:
    async def go() -> None:
        async with raw_pty() as (_, path):
            radio = SpinelTransceiver(SerialTransport(path), reset_timeout=0.1, retries=1)
            with pytest.raises(RadioTimeout, match="did not announce a reset"):
                await radio.open()
            assert radio.stats.timeouts == 2

    run(go)


def test_request_retry_new_tid_and_unmatched_reply() -> None:
    """A scripted board: answers what open() asks, drops the first GET PHY_RSSI, and before
    answering the retry sends a stray reply with a TID nobody asked for."""
    from drivers.spinel import Prop, decode_frame, pack

    answers = {
        Prop.PROTOCOL_VERSION: pack("ii", 4, 3),
        Prop.NCP_VERSION: pack("U", "scripted/1"),
        Prop.HWADDR: GW,
        Prop.CAPS: pack("A(i)", [513]),
        Prop.PHY_CHAN: b"\x00",
        Prop.PHY_ENABLED: b"\x01",
    }
    rssi_tids: list[int] = []

    async def board(master: int) -> None:
        decoder = HdlcDecoder()
        while True:
            for raw in await read_frames(master, decoder):
                frame = decode_frame(raw)
                if frame.command == 1:  # RESET
                    os.write(master, hdlc_encode(b"\x80\x06\x00\x72"))
                    continue
                assert frame.prop is not None
                if frame.prop == Prop.PHY_RSSI:
                    rssi_tids.append(frame.tid)
                    if len(rssi_tids) == 1:
                        continue  # lost
                    os.write(master, hdlc_encode(bytes([0x8E, 0x06, 0x26, 0x90])))  # TID 14
                    value = struct.pack("b", -101)
                else:
                    value = answers[Prop(frame.prop)]
                os.write(master, hdlc_encode(bytes([raw[0], 0x06, frame.prop]) + value))

    async def go() -> None:
        async with raw_pty() as (master, path):
            script = asyncio.create_task(board(master))
            radio = SpinelTransceiver(SerialTransport(path), request_timeout=0.3, retries=2)
            try:
                info = await radio.open()
                assert info.ncp_version == "scripted/1"
                assert await radio.sample_rssi() == -101
                assert len(rssi_tids) == 2 and rssi_tids[0] != rssi_tids[1] and 0 not in rssi_tids
                assert 14 not in rssi_tids
                assert radio.stats.retries == 1
                assert radio.stats.unmatched_replies == 1
            finally:
                await radio.close()
                script.cancel()
                await asyncio.wait([script])

    run(go)
