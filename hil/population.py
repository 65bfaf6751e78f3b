"""Emulated meters placed on the RF medium: a model, a DLMS server and a node stack per meter.

Two ways in: :func:`populate` puts the meters of a gateway-style meters file in a ring around
the gateway (the ``hil rcp --meters`` world), :func:`place_scenario` puts a scenario's meters
where the scenario says, with its radio settings (the ``hil simulate`` world). Either way every
meter's randomness is drawn from the generator given, so a seed replays the same world.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from firmware_agent.clock import Clock
from hil.medium import Medium
from hil.meter.directory import EmulatedMeterParts, build_meter
from hil.meter.dlms_server import MeterServer
from hil.meter_node import MeterNode, NodeConfig, NodePushes, Scheduler
from hil.scenario import PowerEvent, Scenario


@dataclass(frozen=True)
class EmulatedMeter:
    meter_id: str
    node: MeterNode
    parts: EmulatedMeterParts  # model, DLMS server, faults, pushes, image transfer
    position: tuple[float, float]

    @property
    def server(self) -> MeterServer:
        return self.parts.server


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
    """The running asyncio loop as the meters' scheduler (their timers run on it)."""
    return asyncio.get_running_loop()


def medium_scheduler(medium: Medium) -> Scheduler:
    """The medium's own scheduler: meters then live in the same (possibly virtual) time as
    the frames they send. It must be an event loop (not the medium's instant default)."""
    return medium.scheduler


def _meter(
    medium: Medium,
    meter_id: str,
    eui64: bytes,
    clock: Clock,
    rng: random.Random,
    scheduler: Scheduler | None,
    channel: int,
    profile_period_s: float,
    config: NodeConfig | None,
) -> tuple[MeterNode, EmulatedMeterParts]:
    parts = build_meter(meter_id, clock, rng, profile_period_s=profile_period_s)
    node = MeterNode(
        eui64,
        medium,
        parts.meter,
        scheduler,
        channel=channel,
        config=config,
        rng=random.Random(rng.getrandbits(64)),
        # Last gasp on power loss, power restored after rejoining, on the meter's own clock.
        pushes=NodePushes(parts.pushes, lambda: parts.model.meter_time(clock.now())),
    )
    return node, parts


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
    config: NodeConfig | None = None,
) -> list[EmulatedMeter]:
    """Attach one emulated meter per entry, in a ring around the gateway at the origin.
    Their timers run on ``schedule`` (an event loop), or on the medium's scheduler if None."""
    placed = []
    for meter_id, eui64 in meters:
        node, parts = _meter(
            medium, meter_id, eui64, clock, rng, schedule, channel, profile_period_s, config
        )
        distance, angle = rng.uniform(*radius_m), rng.uniform(0, 2 * math.pi)
        position = (distance * math.cos(angle), distance * math.sin(angle))
        medium.attach(node, position, channel=channel, frame_filter=node.mac.wants_frame)
        placed.append(EmulatedMeter(meter_id, node, parts, position))
    return placed


def scenario_medium(scenario: Scenario, scheduler: Scheduler) -> Medium:
    """A medium with the scenario's propagation settings and seed, on ``scheduler``."""
    return Medium(
        random.Random(scenario.seed),
        scheduler=scheduler,
        path_loss_exponent=scenario.radio.path_loss_exponent,
        shadowing_sigma_db=scenario.radio.shadowing_sigma_db,
    )


def place_scenario(
    medium: Medium,
    scenario: Scenario,
    clock: Clock,
    rng: random.Random | None = None,
    scheduler: Scheduler | None = None,
    *,
    profile_period_s: float = 900.0,
    config: NodeConfig | None = None,
) -> list[EmulatedMeter]:
    """Attach the scenario's meters where it places them, on its channel at its TX power.
    Randomness comes from ``rng`` (default: seeded from the scenario); timers run on
    ``scheduler`` (default: the medium's, which must then be an event loop). Power events are
    not applied here: see :func:`schedule_power_events`."""
    rng = rng if rng is not None else random.Random(f"meters:{scenario.seed}")
    radio = scenario.radio
    placed = []
    for spec in scenario.nodes:
        node, parts = _meter(
            medium,
            spec.meter_id,
            spec.eui64,
            clock,
            rng,
            scheduler,
            radio.channel,
            profile_period_s,
            config,
        )
        medium.attach(
            node,
            spec.position,
            tx_power_dbm=radio.tx_power_dbm,
            channel=radio.channel,
            frame_filter=node.mac.wants_frame,  # the medium skips frames for other meters
        )
        placed.append(EmulatedMeter(spec.meter_id, node, parts, spec.position))
    return placed


def schedule_power_events(
    meters: list[EmulatedMeter], scenario: Scenario, start: float
) -> list[PowerEvent]:
    """Schedule the scenario's power_off/power_on events on the meters' nodes, ``start`` being
    the scenario's time 0 on the nodes' scheduler. Returns the events scheduled."""
    by_id = {m.meter_id: m for m in meters}
    scheduled = []
    for event in scenario.events:
        if isinstance(event, PowerEvent) and event.meter_id in by_id:
            by_id[event.meter_id].node.set_power(event.on, at=start + event.at_s)
            scheduled.append(event)
    return scheduled
