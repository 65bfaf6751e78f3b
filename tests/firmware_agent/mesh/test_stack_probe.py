"""The active link check (the diag API's SNR check): probes to a neighbour measure both
directions at once, the ack's RSSI (how we hear it) and the RSL IE it carries (how it hears us),
through the production driver to a virtual RCP and an emulated meter node, in virtual time."""

from __future__ import annotations

import asyncio
import random

import pytest

from drivers.transceiver import Registry
from firmware_agent.clock import LoopClock
from firmware_agent.mesh.stack import MeshStack, ProbeResult
from hil import vtime
from hil.loop import register
from hil.medium import Medium
from hil.meter_node import MeterNode
from hil.rcp import VirtualRcp

GW = bytes.fromhex("00124b0000a00001")
METER = bytes.fromhex("0200000000000007")
GONE = bytes.fromhex("0200000000000008")


async def _probe(distance_m: float) -> tuple[ProbeResult, ProbeResult, float, float]:
    loop = asyncio.get_running_loop()
    clock = LoopClock(loop, 1_767_225_600.0)
    medium = Medium(random.Random(1), scheduler=loop, shadowing_sigma_db=0.0)
    rcp = VirtualRcp(medium, random.Random(2), clock, eui64=GW, channel=0)
    registry = Registry()
    register(registry, "gw", rcp)
    radio = registry.open_url("spinel+loop://gw")
    info = await radio.open()
    node = MeterNode(METER, medium, lambda frame: None, loop, channel=0)
    medium.attach(node, (distance_m, 0.0), channel=0)
    stack = MeshStack(radio, info.hwaddr, clock, channel=0, rng=random.Random(3))
    for _ in range(8):  # the floor as the agent learns it: idle samples between scans
        await stack.sample_noise()
    await stack.scan_noise([0])
    near = await stack.probe(METER, count=6)
    absent = await stack.probe(GONE, count=3)
    truth_in = medium.snr_truth(node, rcp, 0)
    truth_out = medium.snr_truth(rcp, node, 0)
    await radio.close()
    return near, absent, truth_in, truth_out


def test_probe_measures_both_directions_of_a_link() -> None:
    near, absent, truth_in, truth_out = vtime.run(_probe(400.0))
    assert (near.sent, near.acked) == (6, 6)
    assert len(near.ack_rssi_dbm) == 6 and len(near.rsl_out_dbm) == 6
    assert near.snr_in_db is not None and near.snr_in_db == pytest.approx(truth_in, abs=2.0)
    assert near.snr_out_db is not None and near.snr_out_db == pytest.approx(truth_out, abs=2.0)
    # Nobody there: every probe counted as sent and unanswered, no SNR made up.
    assert (absent.sent, absent.acked, absent.snr_in_db, absent.snr_out_db) == (3, 0, None, None)


def test_probe_refuses_a_count_below_one() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = LoopClock(loop, 0.0)
        medium = Medium(random.Random(1), scheduler=loop)
        rcp = VirtualRcp(medium, random.Random(2), clock, eui64=GW)
        registry = Registry()
        register(registry, "gw", rcp)
        radio = registry.open_url("spinel+loop://gw")
        info = await radio.open()
        stack = MeshStack(radio, info.hwaddr, clock, rng=random.Random(3))
        with pytest.raises(ValueError, match="at least 1"):
            await stack.probe(METER, count=0)
        await radio.close()

    vtime.run(main())
