"""The gateway measures its noise floor itself: idle-RSSI samples and energy scans through the
production driver (spinel+loop to a virtual RCP on the medium), in virtual time."""

from __future__ import annotations

import asyncio
import random

import pytest

from drivers.transceiver import Registry
from firmware_agent.clock import LoopClock
from firmware_agent.mesh.stack import MeshStack
from hil import vtime
from hil.loop import register
from hil.medium import Medium
from hil.rcp import VirtualRcp

GW = bytes.fromhex("00124b0000a00001")


async def _stack() -> tuple[MeshStack, Medium]:
    loop = asyncio.get_running_loop()
    clock = LoopClock(loop, 1_767_225_600.0)
    medium = Medium(random.Random(1), scheduler=loop)
    rcp = VirtualRcp(medium, random.Random(2), clock, eui64=GW, channel=3)
    registry = Registry()
    register(registry, "gw", rcp)
    radio = registry.open_url("spinel+loop://gw")
    info = await radio.open()
    await radio.set_channel(3)
    return MeshStack(radio, info.hwaddr, clock, channel=3, rng=random.Random(3)), medium


def test_energy_scan_feeds_the_noise_floor() -> None:
    async def main() -> tuple[dict[int, int], float | None, float]:
        stack, medium = await _stack()
        results = await stack.scan_noise([3])
        floor = stack.neighbours.noise_floor(3)
        await stack.radio.close()
        return results, floor, medium.noise_floor

    results, floor, truth = vtime.run(main())
    assert set(results) == {3}
    assert floor is not None and floor == pytest.approx(truth, abs=3.0)


def test_sampler_mixes_idle_samples_and_scans_and_an_interferer_shows() -> None:
    async def main() -> tuple[float | None, float | None, float]:
        stack, medium = await _stack()
        sampler = asyncio.create_task(stack.noise_sampler(1.0, scan_every=3))
        await asyncio.sleep(40.0)
        quiet = stack.neighbours.noise_floor(3)
        # A steady interferer near the gateway on our channel: the floor rises with it.
        medium.add_interferer((30.0, 0.0), -20.0, [3])
        expected = medium.node_energy_dbm(stack_rcp(medium), 3)
        await asyncio.sleep(40.0)
        loud = stack.neighbours.noise_floor(3)
        sampler.cancel()
        await stack.radio.close()
        return quiet, loud, expected

    quiet, loud, expected = vtime.run(main())
    assert quiet is not None and loud is not None
    assert quiet == pytest.approx(-115, abs=3)
    assert loud == pytest.approx(expected, abs=3)
    assert loud > quiet + 10


def stack_rcp(medium: Medium) -> VirtualRcp:
    (rcp,) = [n for n in medium.nodes() if isinstance(n, VirtualRcp)]
    return rcp
