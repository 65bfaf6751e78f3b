"""Placing emulated meters: a scenario's layout and radio, power events, the ring of
``hil rcp --meters``."""

from __future__ import annotations

import asyncio
import random

import pytest

from firmware_agent.clock import LoopClock
from hil import vtime
from hil.medium import Medium
from hil.population import (
    asyncio_scheduler,
    medium_scheduler,
    place_scenario,
    populate,
    scenario_medium,
    schedule_power_events,
)
from hil.scenario import parse_scenario

SCENARIO = {
    "name": "tiny",
    "seed": 3,
    "radio": {"channel": 5, "tx_power_dbm": 10, "path_loss_exponent": 3.2, "shadowing_sigma_db": 0},
    "meters": {"layout": "line", "count": 3, "spacing_m": 120},
    "events": [{"at": "10m", "power_off": "MTR-0002"}, {"at": "20m", "power_on": "MTR-0002"}],
}


def test_place_scenario_puts_each_meter_where_the_scenario_says() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        scenario = parse_scenario(SCENARIO)
        medium = scenario_medium(scenario, loop)
        assert medium.path_loss_exponent == 3.2 and medium.shadowing_sigma_db == 0
        meters = place_scenario(medium, scenario, LoopClock(loop, 0.0))
        assert [m.meter_id for m in meters] == ["MTR-0001", "MTR-0002", "MTR-0003"]
        assert [medium.position(m.node) for m in meters] == [(120.0, 0), (240.0, 0), (360.0, 0)]
        assert all(medium.channel(m.node) == 5 and m.node.channel == 5 for m in meters)
        assert [m.node.eui64 for m in meters] == [s.eui64 for s in scenario.nodes]
        far, near = meters[0].node, meters[1].node
        # 10 dBm transmitters: the scenario's power, not the 14 dBm default.
        expected = 10 - medium.path_loss_db((120, 0), (240, 0), 5)
        assert medium.link_budget(far, near, 5) == pytest.approx(expected)
        # The same scenario places the same meters with the same randomness.
        again = place_scenario(
            Medium(random.Random(1), scheduler=loop), scenario, LoopClock(loop, 0.0)
        )
        assert [m.node.rng.random() for m in again] == [m.node.rng.random() for m in meters]

    vtime.run(main())


def test_power_events_switch_the_meters_at_their_times() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        scenario = parse_scenario(SCENARIO)
        medium = scenario_medium(scenario, loop)
        meters = place_scenario(medium, scenario, LoopClock(loop, 0.0))
        start = loop.time()
        assert len(schedule_power_events(meters, scenario, start)) == 2
        node = meters[1].node
        await asyncio.sleep(599)
        assert node.powered
        await asyncio.sleep(2)
        assert not node.powered and not medium.is_powered(node)
        await asyncio.sleep(600)
        assert node.powered and medium.is_powered(node) and node.stats.power_cycles == 1

    vtime.run(main())


def test_populate_keeps_the_ring_of_hil_rcp_meters() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        medium = Medium(random.Random(2), scheduler=loop)
        meters = [
            ("M1", bytes.fromhex("0200000000000011")),
            ("M2", bytes.fromhex("0200000000000012")),
        ]
        placed = populate(
            medium, meters, LoopClock(loop, 0.0), random.Random(4), asyncio_scheduler()
        )
        assert [p.meter_id for p in placed] == ["M1", "M2"]
        for p in placed:
            x, y = p.position
            assert 30.0 <= (x * x + y * y) ** 0.5 <= 150.0
            assert medium.position(p.node) == p.position and p.node.scheduler is loop
        assert medium_scheduler(medium) is loop

    vtime.run(main())


def test_nodes_need_an_event_loop_for_their_timers() -> None:
    medium = Medium(random.Random(2))  # the instant scheduler: no periodic work
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="event loop"):
            populate(medium, [("M1", bytes(8))], LoopClock(loop, 0.0), random.Random(1))
    finally:
        loop.close()
