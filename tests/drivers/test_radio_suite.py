"""One driver behaviour suite, run over every way the host reaches a board.

- ``pty``: the production ``spinel+uart://`` driver (real pyserial) on a real PTY, served by an
  in-process virtual RCP (so the test can place nodes on its medium and reboot it);
- ``loop``: ``spinel+loop://gw`` — HDLC-lite on an in-memory pipe;
- ``spi-emulated``: ``spinel+spi://emulated/gw`` — the production SPI transport (SPI framing,
  data-ready line, worker threads) over an emulated spidev.

(``spinel+pty://``, which spawns the RCP as a child process, is covered in test_pty_spawn.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from drivers import default_registry
from drivers.hdlc import hdlc_encode
from drivers.rcp_host import SpinelTransceiver
from drivers.spi import SpiTransport
from drivers.transceiver import RadioError, TxStatus
from firmware_agent.clock import ManualClock
from firmware_agent.mesh import frames
from hil.loop import LoopHub, register
from hil.medium import Medium
from hil.rcp import PtyBoard, VirtualRcp, default_acker

GW = bytes.fromhex("0257530000000001")
METER = bytes.fromhex("00124b0000000042")
PAN = 0xBEEF
KINDS = ["pty", "loop", "spi-emulated"]


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 30)

    asyncio.run(bounded())


class ProbeNode:
    """A node on the medium that records what it hears and acks frames addressed to it."""

    def __init__(self, eui64: bytes) -> None:
        self.eui64 = eui64
        self.heard: list[tuple[bytes, int, int, int]] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append((psdu, rssi_dbm, lqi, channel))
        return default_acker(psdu, self.eui64)


@dataclass
class Bench:
    kind: str
    medium: Medium
    rcp: VirtualRcp
    clock: ManualClock
    radio: SpinelTransceiver
    hub: LoopHub | None


@contextlib.asynccontextmanager
async def bench(kind: str, **radio_kwargs: object) -> AsyncIterator[Bench]:
    rng = random.Random(1)
    clock = ManualClock()
    medium = Medium(rng)
    rcp = VirtualRcp(medium, rng, clock, eui64=GW, channel=0)
    async with contextlib.AsyncExitStack() as stack:
        hub: LoopHub | None = None
        if kind == "pty":
            board = await stack.enter_async_context(PtyBoard(rcp))
            url = f"spinel+uart://{board.path}?timeout=0.5"
            registry = default_registry()
        else:
            registry = default_registry()
            hub = register(registry, "gw", rcp)
            url = (
                "spinel+loop://gw?timeout=0.5"
                if kind == "loop"
                else ("spinel+spi://emulated/gw?timeout=0.5")
            )
        radio = registry.open_url(url)
        assert isinstance(radio, SpinelTransceiver)
        await radio.open()
        stack.push_async_callback(radio.close)
        yield Bench(kind, medium, rcp, clock, radio, hub)


def data_psdu(dst: bytes, *, seq: int = 1, ack_request: bool = True) -> bytes:
    psdu = frames.encode(frames.data_frame(seq, PAN, dst, GW, b"hello", ack_request=ack_request))
    return psdu[:-2] + b"\x00\x00"  # the radio computes the FCS; send zeros to prove it


@pytest.mark.parametrize("kind", KINDS)
def test_open_reports_board_info(kind: str) -> None:
    async def go() -> None:
        async with bench(kind) as b:
            info = b.radio.info
            assert info is not None
            assert info.protocol_version == (4, 3)
            assert info.hwaddr == GW
            assert "virtual-rcp" in info.ncp_version
            assert 513 in info.caps  # MAC_RAW
            assert b.rcp.phy_enabled  # open() enables the PHY for raw transmit
            assert b.rcp.counters.resets == 1  # open() reset the board
            assert b.radio.stats.framing_errors == 0

    run(go)


@pytest.mark.parametrize("kind", KINDS)
def test_set_channel_and_tx_power_reach_the_board(kind: str) -> None:
    async def go() -> None:
        async with bench(kind) as b:
            await b.radio.set_channel(7)
            await b.radio.set_tx_power(-3)
            assert (b.rcp.channel, b.rcp.tx_power_dbm) == (7, -3)
            with pytest.raises(RadioError, match="INVALID_ARGUMENT"):
                await b.radio.set_channel(200)  # not a supported channel
            assert b.rcp.channel == 7

    run(go)


@pytest.mark.parametrize("kind", KINDS)
def test_transmit_acked_no_ack_broadcast_and_cca_failure(kind: str) -> None:
    async def go() -> None:
        async with bench(kind) as b:
            meter = ProbeNode(METER)
            b.medium.attach(meter, (20.0, 0.0), channel=5)
            await b.radio.set_channel(5)

            result = await b.radio.transmit(data_psdu(METER, seq=9))
            assert result.status is TxStatus.ACKED
            assert result.ack_psdu is not None
            ack = frames.decode(result.ack_psdu)
            assert (ack.frame_type, ack.seq) == (frames.FrameType.ACK, 9)
            # The ack's reception is reported too (the gateway measures links on acks).
            assert result.ack_rssi_dbm is not None and result.ack_lqi is not None
            truth = b.medium.link_budget(meter, b.rcp, 5)
            assert abs(result.ack_rssi_dbm - truth) <= 3, (result.ack_rssi_dbm, truth)
            heard, _, _, channel = meter.heard[-1]
            assert channel == 5 and frames.decode(heard).payload == b"hello"

            stranger = bytes.fromhex("00124b00000000ff")
            assert (await b.radio.transmit(data_psdu(stranger))).status is TxStatus.NO_ACK
            broadcast = data_psdu(b"\xff\xff", ack_request=False)
            assert (await b.radio.transmit(broadcast)).status is TxStatus.SENT
            b.rcp.cca_failures_to_inject = 1  # a busy channel
            assert (await b.radio.transmit(broadcast)).status is TxStatus.CCA_FAILURE
            assert (await b.radio.transmit(broadcast)).status is TxStatus.SENT
            assert len(meter.heard) == 4

    run(go)


@pytest.mark.parametrize("kind", KINDS)
def test_received_frame_has_rssi_lqi_channel_timestamp(kind: str) -> None:
    async def go() -> None:
        async with bench(kind) as b:
            meter = ProbeNode(METER)
            b.medium.attach(meter, (30.0, 0.0), tx_power_dbm=14.0, channel=3)
            await b.radio.set_channel(3)
            await b.radio.enable_raw_stream()
            for seq in range(3):
                b.clock.advance(2.5)
                up = frames.encode(frames.data_frame(seq, PAN, GW, METER, b"reading%d" % seq))
                ack = b.medium.transmit(meter, up, 3)
                assert ack is not None and frames.decode(ack).seq == seq  # the board acked it
                rx = await b.radio.receive(timeout=5)
                assert rx is not None
                assert rx.psdu == up and rx.channel == 3
                expected = 14 - b.medium.path_loss_db((0, 0), (30, 0))
                assert abs(rx.rssi_dbm - expected) < 10
                assert 0 < rx.lqi <= 255
                assert rx.timestamp_us == int(b.clock.monotonic() * 1e6)
            assert await b.radio.receive(timeout=0.05) is None

    run(go)


@pytest.mark.parametrize("kind", KINDS)
def test_energy_scan_and_rssi_sampling(kind: str) -> None:
    async def go() -> None:
        async with bench(kind) as b:
            result = await b.radio.energy_scan([0, 11, 128], duration_ms=32)
            assert sorted(result) == [0, 11, 128]
            assert all(-120 <= v <= -108 for v in result.values()), result
            samples = [await b.radio.sample_rssi() for _ in range(5)]
            assert all(-120 <= s <= -110 for s in samples), samples
            assert b.rcp.scan_mask == [0, 11, 128]

    run(go)


@pytest.mark.parametrize("kind", KINDS)
def test_unsolicited_reset_is_detected_and_settings_reapplied(kind: str) -> None:
    async def go() -> None:
        async with bench(kind) as b:
            await b.radio.set_channel(9)
            await b.radio.set_tx_power(5)
            await b.radio.enable_raw_stream()
            b.rcp.reboot()  # e.g. a watchdog on the board
            assert (b.rcp.channel, b.rcp.raw_stream) == (0, False)
            for _ in range(200):
                if b.radio.stats.unexpected_resets:
                    break
                await asyncio.sleep(0.01)
            await b.radio.wait_recovered()
            assert b.radio.stats.unexpected_resets == 1
            rcp = b.rcp
            assert (rcp.phy_enabled, rcp.channel, rcp.tx_power_dbm, rcp.raw_stream) == (
                True,
                9,
                5,
                True,
            )
            if kind == "spi-emulated":
                transport = b.radio.transport
                assert isinstance(transport, SpiTransport)
                assert transport.stats.slave_resets >= 2  # power-on and the reboot: RST bit

    run(go)


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_from_the_board_is_counted_and_survived(kind: str) -> None:
    async def go() -> None:
        async with bench(kind) as b:
            if kind == "spi-emulated":
                assert b.hub is not None
                b.hub.spidev("gw").garbage_transfers = 5  # bad-pattern headers, retried
                b.rcp.inject_to_host(b"\x00garbage")  # one frame that is not Spinel
                assert await b.radio.sample_rssi() < -100
                transport = b.radio.transport
                assert isinstance(transport, SpiTransport)
                assert transport.stats.bad_headers == 5
                assert b.radio.stats.spinel_errors == 1
            else:
                bad = bytearray(hdlc_encode(bytes.fromhex("80060072")))
                bad[-2] ^= 0xFF  # a reset notification with a broken FCS
                b.rcp.inject_to_host(b"\x00garbage\x13" + bytes(bad))
                assert await b.radio.sample_rssi() < -100
                assert b.radio.stats.framing_errors >= 2
                assert b.radio.stats.hdlc_errors == b.radio.stats.framing_errors
            assert b.radio.stats.unexpected_resets == 0
            assert await b.radio.sample_rssi() < -100

    run(go)
