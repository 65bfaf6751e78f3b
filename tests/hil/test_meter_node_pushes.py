"""Emulated meters on the mesh with the whole meter behind them (hil.meter.directory): last gasp
before going dark and power restored after rejoining, faults with delays on the node's
scheduler, image transfer objects and suite 0 (keys from the scenario seed) read over the mesh.
The gateway side is ``hil.node.sim_root`` (the gateway's own RPL root) on the medium, in
virtual time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.keys import parse_keys
from firmware_agent.collector.push import parse_push
from firmware_agent.collector.session import DlmsSession, Exchange, Suite0Security
from firmware_agent.mesh import frames
from hil import vtime
from hil.medium import Medium
from hil.meter.directory import EmulatedMeterParts, build_meter, key_file_text, scenario_keys
from hil.meter.faults import Fault, FaultKind
from hil.meter_node import LAST_GASP_SENDS, MeterNode, NodePushes
from hil.node.sim_root import Received, SimRoot

T = TypeVar("T")
ROOT = bytes.fromhex("00124b0000a00001")
NOW = 1_700_000_000.0
LINE = [(160.0 * i, 0.0) for i in range(1, 3)]  # two meters, the far one through the near one
GATEWAY_TITLE = bytes.fromhex("4757000000000001")
SEED = 11


def eui(i: int) -> bytes:
    return bytes.fromhex("020000000000") + i.to_bytes(2, "big")


class Mesh:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, secured: bool = False) -> None:
        self.loop = loop
        self.clock = ManualClock(NOW)
        self.medium = Medium(
            random.Random(1), scheduler=loop, path_loss_exponent=3.5, shadowing_sigma_db=0.0
        )
        self.root = SimRoot(ROOT, self.medium, loop, random.Random(2))
        self.medium.attach(self.root, (0.0, 0.0))
        self.parts: list[EmulatedMeterParts] = []
        self.nodes: list[MeterNode] = []
        for i, position in enumerate(LINE, 1):
            meter_id = f"MTR-{i}"
            keys = scenario_keys(SEED, meter_id) if secured else None
            parts = build_meter(meter_id, self.clock, random.Random(i), keys=keys)
            pushes = NodePushes(parts.pushes, self.meter_time(parts))
            node = MeterNode(
                eui(i), self.medium, parts.meter, loop, rng=random.Random(100 + i), pushes=pushes
            )
            self.medium.attach(node, position)
            self.parts.append(parts)
            self.nodes.append(node)
        self.root.start()

    def meter_time(self, parts: EmulatedMeterParts) -> Callable[[], float]:
        return lambda: parts.model.meter_time(self.clock.now())

    def now(self) -> float:
        return self.loop.time()

    async def settle(self, limit_s: float = 900.0) -> None:
        end = self.now() + limit_s
        while self.now() < end:
            live = [n for n in self.nodes if n.powered]
            if all(
                n.rpl.dao_acked and self.root.routes.source_route(n.eui64, self.now()) for n in live
            ):
                return
            await asyncio.sleep(5.0)
        raise AssertionError("mesh did not settle")

    def pushes(self) -> list[Received]:
        return [r for r in self.root.received if r.datagram.dst_port == 4059]

    async def ask(
        self, node: MeterNode, frame: bytes, limit_s: float = 30.0
    ) -> tuple[bytes, float]:
        """Send one WRAPPER frame to the node's meter; its reply and how long it took."""
        before = len(self.root.received)
        sent_at = self.now()
        assert self.root.send_udp(node.eui64, 4059, 4059, frame) is not None
        end = sent_at + limit_s
        while self.now() < end:
            for got in self.root.received[before:]:
                if got.datagram.src_port == 4059 and got.datagram.dst_port == 4059:
                    return got.datagram.payload, got.at - sent_at
            await asyncio.sleep(0.05)
        raise AssertionError("no reply over the mesh")

    async def drive(self, node: MeterNode, exchange: Exchange[T]) -> T:
        frame: bytes | None = exchange.request
        while frame is not None:
            reply, _ = await self.ask(node, frame)
            frame = exchange.feed(reply)
        return exchange.result


def sim(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    vtime.run(main())


# ---------------------------------------------------------------------- power events


def test_last_gasp_goes_out_in_one_frame_before_the_meter_goes_dark() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop())
        await mesh.settle()
        far = mesh.nodes[1]
        sent: list[bytes] = []

        def sniff(t: float, sender: object, psdu: bytes, channel: int) -> None:
            if sender is far:
                sent.append(psdu)

        mesh.medium.on_air(sniff)
        far.set_power(False)
        assert not far.powered and far.dying and mesh.medium.is_powered(far)
        await asyncio.sleep(5.0)
        assert not far.dying and not mesh.medium.is_powered(far)
        # One frame (MAC retries of it at most): the same 802.15.4 sequence number throughout.
        assert sent and len({frames.decode(p).seq for p in sent}) == 1
        assert far.stats.last_gasps == 1 and far.stats.last_gasps_acked == 1

        (push,) = mesh.pushes()
        assert push.src == mesh.root.root.address_of(far.eui64)  # its global address
        alarm = parse_push("MTR-2", push.datagram.payload, mesh.now())
        assert alarm.code == 1 and alarm.device_id == "MTR-2"
        assert mesh.nodes[0].stats.forwards_up >= 1  # through its parent

        # No DLMS service while dark.
        assert far.on_air_frame(b"\x41\x88\x00", -60, 255, 0) is None

    sim(main)


def test_power_restored_is_pushed_after_the_meter_rejoins() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop())
        await mesh.settle()
        far = mesh.nodes[1]
        far.set_power(False)
        await asyncio.sleep(300.0)
        mesh.clock.advance(300.0)
        assert len(mesh.pushes()) == 1
        far.set_power(True)
        await mesh.settle()
        await asyncio.sleep(5.0)
        gasp, restored = (parse_push("MTR-2", r.datagram.payload, r.at) for r in mesh.pushes())
        assert (gasp.code, restored.code) == (1, 2)
        assert restored.time > gasp.time  # stamped by the meter's clock
        assert far.stats.restored_pushes == 1 and far.stats.push_failures == 0

    sim(main)


def test_last_gasp_is_not_rerouted_and_the_supercap_runs_out() -> None:
    """The parent is dark: the MAC's retries fail, no other parent is tried, the meter is dark
    once they are spent and nothing reached the root."""

    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop())
        await mesh.settle()
        near, far = mesh.nodes
        mesh.medium.power(near, False)  # behind its back: the child does not know yet
        before = len(mesh.root.received)
        sent: list[bytes] = []

        def sniff(t: float, sender: object, psdu: bytes, channel: int) -> None:
            if sender is far:
                sent.append(psdu)

        mesh.medium.on_air(sniff)
        far.set_power(False)
        # LAST_GASP_SENDS sends, each with the MAC's retries and backoffs of up to ~150 ms.
        await asyncio.sleep(5.0)
        assert not far.dying and not mesh.medium.is_powered(far)
        assert far.stats.last_gasps == 1 and far.stats.last_gasps_acked == 0
        assert far.stats.reroutes == 0
        # Sent LAST_GASP_SENDS times (a new 802.15.4 sequence number each), MAC retries aside.
        assert len({frames.decode(p).seq for p in sent}) == LAST_GASP_SENDS
        await asyncio.sleep(5.0)
        assert len(mesh.root.received) == before

    sim(main)


def test_a_meter_that_never_joined_just_goes_dark() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop())
        node = mesh.nodes[1]
        node.set_power(False)  # at once, before any DIO
        assert not node.dying and not mesh.medium.is_powered(node)
        assert node.stats.last_gasps == 0

    sim(main)


# ---------------------------------------------------------------------- the meter behind the node


def test_full_directory_and_a_slow_fault_over_the_mesh() -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop())
        await mesh.settle()
        far, parts = mesh.nodes[1], mesh.parts[1]
        s = DlmsSession()
        await mesh.drive(far, s.associate())
        assert await mesh.drive(far, s.read_attribute(obis.IMAGE_TRANSFER, 18, 2)) == 200
        push_list = await mesh.drive(far, s.read_attribute("0.0.25.9.0.255", 40, 2))
        assert len(push_list) == 4

        ex = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
        _, quick = await mesh.ask(far, ex.request)
        parts.meter.inject(Fault(FaultKind.SLOW, 1, delay_s=4.0))
        ex = s.read_value(obis.ACTIVE_ENERGY_IMPORT)
        reply, slow = await mesh.ask(far, ex.request)
        assert slow >= quick + 4.0 - 0.5 and slow < quick + 4.0 + 2.0
        assert ex.feed(reply) is None and ex.result > 0

        parts.meter.inject(Fault(FaultKind.SILENCE, 1))
        before = far.stats.replies
        assert mesh.root.send_udp(far.eui64, 4059, 4059, s.read_clock().request) is not None
        await asyncio.sleep(5.0)
        assert far.stats.replies == before and parts.meter.counters["silence"] == 1

    sim(main)


def test_suite0_meters_on_the_mesh_with_keys_from_the_scenario_seed(tmp_path: Path) -> None:
    async def main() -> None:
        mesh = Mesh(asyncio.get_running_loop(), secured=True)
        await mesh.settle()
        keys = parse_keys(
            key_file_text([scenario_keys(SEED, "MTR-1"), scenario_keys(SEED, "MTR-2")]),
            tmp_path / "keys.yaml",
        )
        store = CounterStore(tmp_path / "ic.sqlite")
        sec = Suite0Security("MTR-2", keys["MTR-2"], GATEWAY_TITLE, store, random.Random(3))
        s = DlmsSession(1, 1, security=sec)
        await mesh.drive(mesh.nodes[1], s.associate())
        assert await mesh.drive(mesh.nodes[1], s.read_value(obis.ACTIVE_ENERGY_IMPORT)) > 0
        server = mesh.parts[1].server
        assert server.counters["ciphered-requests"] >= 2 and server.counters["associations"] == 1

    sim(main)


def test_scenario_keys_are_a_function_of_seed_and_meter() -> None:
    a, again, other, seed2 = (
        scenario_keys(1, "M1"),
        scenario_keys(1, "M1"),
        scenario_keys(1, "M2"),
        scenario_keys(2, "M1"),
    )
    assert a == again
    assert a.block_cipher_key != other.block_cipher_key != seed2.block_cipher_key
    assert a.system_title != other.system_title and a.system_title.startswith(b"EMU")
