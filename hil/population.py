"""Emulated meters placed on the RF medium: a model, a DLMS server and a radio node per meter."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from firmware_agent.clock import Clock
from hil.medium import Medium
from hil.meter.dlms_server import MeterServer
from hil.meter.model import MeterModel
from hil.meter_node import MeterNode, Scheduler
from hil.scenario import Scenario


@dataclass(frozen=True)
class EmulatedMeter:
    meter_id: str
    node: MeterNode
    server: MeterServer
    position: tuple[float, float]


def read_mesh_meters(path: Path) -> list[tuple[str, bytes]]:
    """(meter id, EUI-64) of every mesh meter in a meters file (the gateway config's format)."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of meters")
    return [
        (str(m["id"]), bytes.fromhex(str(m["address"]).replace(":", "")))
        for m in data
        if m.get("transport", "mesh") == "mesh"
    ]


def asyncio_scheduler() -> Scheduler:
    """The running asyncio loop as a meter's scheduler."""
    loop = asyncio.get_running_loop()

    def schedule(delay: float, fn: Callable[[], object]) -> object:
        return loop.call_later(delay, fn)

    return schedule


def medium_scheduler(medium: Medium) -> Scheduler:
    """The medium's own clock as a meter's scheduler: meters then live in the same (possibly
    virtual) time as the frames they send."""

    def schedule(delay: float, fn: Callable[[], object]) -> object:
        return medium.call_later(delay, fn)

    return schedule


def populate(
    medium: Medium,
    meters: list[tuple[str, bytes]],
    clock: Clock,
    rng: random.Random,
    schedule: Scheduler | None = None,
    *,
    channel: int = 0,
    profile_period_s: float = 900.0,
    radius_m: tuple[float, float] = (30.0, 150.0),
) -> list[EmulatedMeter]:
    """Attach one emulated meter per entry, in a ring around the gateway at the origin.
    Meters schedule on ``schedule``, or on the medium's clock if None."""
    schedule = schedule or medium_scheduler(medium)
    placed = []
    for meter_id, eui64 in meters:
        model = MeterModel(
            meter_id, random.Random(rng.getrandbits(64)), profile_period_s=profile_period_s
        )
        server = MeterServer(model, clock)
        node = MeterNode(
            eui64,
            medium,
            server.handle,
            schedule,
            channel=channel,
            rng=random.Random(rng.getrandbits(64)),
        )
        distance, angle = rng.uniform(*radius_m), rng.uniform(0, 2 * math.pi)
        position = (distance * math.cos(angle), distance * math.sin(angle))
        medium.attach(node, position, channel=channel)
        placed.append(EmulatedMeter(meter_id, node, server, position))
    return placed


def place_scenario(
    medium: Medium,
    scenario: Scenario,
    clock: Clock,
    rng: random.Random,
    *,
    profile_period_s: float = 900.0,
) -> list[EmulatedMeter]:
    """Attach the scenario's meters where it places them, with its radio settings; they
    schedule on the medium's clock (the simulator's virtual time)."""
    schedule = medium_scheduler(medium)
    radio = scenario.radio
    placed = []
    for spec in scenario.nodes:
        model = MeterModel(
            spec.meter_id, random.Random(rng.getrandbits(64)), profile_period_s=profile_period_s
        )
        server = MeterServer(model, clock)
        node = MeterNode(
            spec.eui64,
            medium,
            server.handle,
            schedule,
            channel=radio.channel,
            rng=random.Random(rng.getrandbits(64)),
        )
        medium.attach(node, spec.position, tx_power_dbm=radio.tx_power_dbm, channel=radio.channel)
        placed.append(EmulatedMeter(spec.meter_id, node, server, spec.position))
    return placed
