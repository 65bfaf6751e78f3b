"""Emulated meters placed on the medium: where they stand, on which channel, at what power."""

from __future__ import annotations

import asyncio
import random

import pytest

from firmware_agent.clock import LoopClock
from hil import vtime
from hil.medium import Medium
from hil.population import place_scenario
from hil.rcp import default_acker
from hil.scenario import load_scenario

GW = bytes.fromhex("0257530000000001")


class Gateway:
    def __init__(self) -> None:
        self.eui64 = GW

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        return default_acker(psdu, self.eui64)


def test_place_scenario_puts_meters_where_the_scenario_says() -> None:
    scenario = load_scenario("link-fade")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        medium = Medium(
            random.Random(1),
            scheduler=loop,
            path_loss_exponent=scenario.radio.path_loss_exponent,
            shadowing_sigma_db=scenario.radio.shadowing_sigma_db,
        )
        meters = place_scenario(medium, scenario, LoopClock(loop, 0.0), random.Random(2))
        assert [m.meter_id for m in meters] == ["MTR-0001", "MTR-0002"]
        assert [medium.position(m.node) for m in meters] == [(110.0, 60.0), (195.0, 0.0)]
        assert all(medium.channel(m.node) == scenario.radio.channel for m in meters)
        gateway = Gateway()
        medium.attach(gateway, scenario.gateway_position, channel=scenario.radio.channel)
        # The scenario's comment: the direct link MTR-0002–gateway has an SNR of about 17 dB.
        # 14 − (31.554 + 35·log10 195 = 111.73) = −97.7 dBm, 17.3 dB over −115 (σ 0.5 dB).
        assert medium.snr_truth(meters[1].node, gateway, 0) == pytest.approx(17.3, abs=1.6)
        # ... and the hops through MTR-0001 about 24 dB (125 m) and 27 dB (104 m).
        assert medium.snr_truth(meters[0].node, gateway, 0) == pytest.approx(24, abs=2)
        assert medium.snr_truth(meters[1].node, meters[0].node, 0) == pytest.approx(26.8, abs=2)

    vtime.run(asyncio.wait_for(go(), 10))
