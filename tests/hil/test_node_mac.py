"""A node's MAC on the simulated medium: Enh-Acks with the RSL IE, duplicates, retries, CSMA,
the send queue and power cycles."""

from __future__ import annotations

import asyncio
import random

import pytest

from firmware_agent.mesh import frames
from hil import vtime
from hil.medium import Medium
from hil.node.mac import BROADCAST, MacConfig, NodeMac, TxResult

PAN = 0xABCD
A = bytes.fromhex("020000000000000a")
B = bytes.fromhex("020000000000000b")
C = bytes.fromhex("020000000000000c")


class Radio:
    """A RadioNode whose MAC records what it delivers and what its frames did."""

    def __init__(self, eui64: bytes, medium: Medium, config: MacConfig | None = None) -> None:
        self.eui64 = eui64
        self.delivered: list[frames.Frame] = []
        self.results: list[tuple[bytes, int, bool]] = []
        self.mac = NodeMac(
            self,
            medium,
            random.Random(eui64),
            self.delivered.append,
            config=config,
            on_frame_result=lambda *r: self.results.append(r),
        )

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        return self.mac.on_air_frame(psdu, rssi_dbm, lqi, channel)


def world(
    loop: asyncio.AbstractEventLoop,
    *spots: tuple[bytes, float],
    sender_config: MacConfig | None = None,
) -> tuple[Medium, list[Radio]]:
    """Radios on a line; the first one (the sender) may get its own MAC config."""
    medium = Medium(random.Random(7), scheduler=loop, shadowing_sigma_db=0.0)
    radios = []
    for eui, x in spots:
        radio = Radio(eui, medium, sender_config if not radios else None)
        medium.attach(radio, (x, 0.0))
        radios.append(radio)
    return medium, radios


def sim(test: object) -> None:
    vtime.run(test())  # type: ignore[operator]


def test_a_unicast_frame_is_acked_with_the_rsl_ie_and_delivered_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        medium, (a, b, c) = world(loop, (A, 0.0), (B, 100.0), (C, 120.0))
        done: list[TxResult] = []
        a.mac.send(B, [b"hello"], done.append)
        await asyncio.sleep(1)
        assert done == [TxResult.DONE]
        assert [f.payload for f in b.delivered] == [b"hello"] and c.delivered == []
        assert b.delivered[0].src == A and b.delivered[0].dst_pan == PAN
        assert a.results == [(B, 1, True)]
        # b told a how it hears a (RSL out); a heard b's ack too (RSL in).
        heard_at_b = b.mac.links.get(A)
        at_a = a.mac.links.get(B)
        assert heard_at_b is not None and at_a is not None
        assert at_a.rsl_out_dbm == pytest.approx(round(heard_at_b.rsl_in_dbm))
        assert abs(at_a.rsl_in_dbm - medium.link_budget(b, a, 0)) < 2.5
        assert at_a.etx == 128 and a.mac.rsl(B) == min(at_a.rsl_in_dbm, at_a.rsl_out_dbm)
        assert b.mac.stats.acks_tx == 1 and a.mac.stats.frames_tx == 1

    sim(main)


def test_a_retried_frame_is_acked_again_but_not_delivered_twice() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        medium, (a, b) = world(loop, (A, 0.0), (B, 100.0))
        psdu = frames.encode(frames.data_frame(9, PAN, B, A, b"once"))
        for _ in range(2):  # the same frame again, as when the first ack was lost
            medium.transmit(a, psdu, 0)
            await asyncio.sleep(1)
        assert [f.payload for f in b.delivered] == [b"once"]
        assert b.mac.stats.rx_duplicates == 1 and b.mac.stats.acks_tx == 2
        ack = frames.decode(b.mac.on_air_frame(psdu, -70, 200, 0) or b"")
        assert ack.frame_type == frames.FrameType.ACK and ack.seq == 9
        assert frames.find_rsl(ack) is not None

    sim(main)


def test_frames_for_others_other_pans_and_channels_are_ignored() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, (_, b) = world(loop, (A, 0.0), (B, 100.0))
        for frame in (
            frames.data_frame(1, PAN, C, A, b"not ours"),
            frames.data_frame(2, 0x1234, B, A, b"other PAN"),
        ):
            assert b.on_air_frame(frames.encode(frame), -70, 200, 0) is None
        assert (
            b.on_air_frame(frames.encode(frames.data_frame(3, PAN, B, A, b"x")), -70, 200, 5)
            is None
        )
        assert b.on_air_frame(b"\x41\x88\x01garbage!!", -70, 200, 0) is None
        assert b.delivered == [] and b.mac.stats.rx_errors == 0

    sim(main)


def test_broadcast_reaches_every_neighbour_without_acks() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, (a, b, c) = world(loop, (A, 0.0), (B, 100.0), (C, -100.0))
        done: list[TxResult] = []
        a.mac.send(BROADCAST, [b"dio"], done.append)
        await asyncio.sleep(1)
        assert done == [TxResult.DONE]
        assert [f.payload for f in b.delivered] == [b"dio"] == [f.payload for f in c.delivered]
        assert b.mac.stats.acks_tx == 0 and a.results == []

    sim(main)


def test_an_unanswered_frame_is_retried_then_reported_lost() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        medium, (a, b) = world(loop, (A, 0.0), (B, 100.0))
        a.mac.send(B, [b"hi"])
        await asyncio.sleep(1)  # a knows b now
        medium.power(b, False)
        done: list[TxResult] = []
        a.mac.send(B, [b"anyone?", b"second fragment"], done.append)
        await asyncio.sleep(1)
        assert done == [TxResult.NO_ACK]
        assert a.results[-1] == (B, 4, False)  # first attempt + 3 retries, then the job ends
        assert a.mac.stats.retries == 3 and a.mac.stats.tx_no_ack == 1
        nb = a.mac.links.get(B)
        assert nb is not None and nb.tx_failures == 1 and nb.etx == round(5 / 1 * 128)

    sim(main)


def test_a_busy_channel_fails_channel_access() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        medium, (a, b) = world(loop, (A, 0.0), (B, 100.0))
        medium.add_interferer((5.0, 0.0), power_dbm=0.0, channels=[0])
        done: list[TxResult] = []
        a.mac.send(B, [b"x"], done.append)
        await asyncio.sleep(5)
        assert done == [TxResult.CHANNEL_BUSY]
        assert a.mac.stats.cca_failures == 4 and a.mac.stats.frames_tx == 0
        assert a.results == [] and b.delivered == []  # nothing went on the air

    sim(main)


def test_fragments_go_in_order_and_a_full_queue_refuses() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, (a, b) = world(loop, (A, 0.0), (B, 100.0), sender_config=MacConfig(queue_limit=2))
        done: list[tuple[str, TxResult]] = []
        a.mac.send(B, [b"1", b"2", b"3"], lambda r: done.append(("first", r)))
        a.mac.send(B, [b"4"], lambda r: done.append(("second", r)))
        a.mac.send(B, [b"5"], lambda r: done.append(("third", r)))
        assert done == [("third", TxResult.QUEUE_FULL)] and a.mac.stats.queue_drops == 1
        await asyncio.sleep(1)
        assert [f.payload for f in b.delivered] == [b"1", b"2", b"3", b"4"]
        assert done[1:] == [("first", TxResult.DONE), ("second", TxResult.DONE)]

    sim(main)


def test_an_urgent_packet_goes_next_even_into_a_full_queue() -> None:
    """A last gasp: behind only the packet already on the air, never refused."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, (a, b) = world(loop, (A, 0.0), (B, 100.0), sender_config=MacConfig(queue_limit=2))
        a.mac.send(B, [b"1", b"2"])
        a.mac.send(B, [b"3"])
        a.mac.send(B, [b"gasp"], urgent=True)
        await asyncio.sleep(1)
        assert [f.payload for f in b.delivered] == [b"1", b"2", b"gasp", b"3"]
        assert a.mac.stats.queue_drops == 0

    sim(main)


def test_reset_forgets_the_queue_and_silences_old_callbacks() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, (a, b) = world(loop, (A, 0.0), (B, 100.0))
        done: list[TxResult] = []
        a.mac.send(B, [b"1", b"2"], done.append)
        a.mac.reset()
        await asyncio.sleep(1)
        assert done == [] and a.mac.queued == 0 and a.mac.links.all() == []
        a.mac.send(B, [b"after"], done.append)
        await asyncio.sleep(1)
        assert done == [TxResult.DONE] and b.delivered[-1].payload == b"after"

    sim(main)
