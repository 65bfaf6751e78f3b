"""``hil simulate``: the whole gateway agent against an emulated mesh, in virtual time.

One process, one virtual-time event loop (:mod:`hil.vtime`): the RF medium, the emulated
meters (node stack + DLMS server), the gateway's virtual RCP behind ``spinel+loop://`` and the
unmodified :class:`~firmware_agent.agent.Agent` (radio driver, mesh stack, RPL root, routing
table, collector, spool). Only the MQTT uplink is left out: a broker answers in real time. The
scenario's seed fixes every random draw, so a run is reproducible.

The summary says what a utility engineer asks of a mesh: how many meters joined and were read,
how deep the tree is, how the links look (SNR, with the medium's ground truth beside it), which
routes changed and why, and how fast the simulation ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.pcap import PcapWriter
from drivers.transceiver import Registry
from firmware_agent.agent import Agent
from firmware_agent.clock import LoopClock
from firmware_agent.config import (
    CollectorConfig,
    Config,
    GatewayConfig,
    MeshConfig,
    MeterConfig,
    RadioConfig,
    SpoolConfig,
    TlsConfig,
    UplinkConfig,
)
from firmware_agent.mesh.routes import RouteChange
from hil import vtime
from hil.loop import register
from hil.medium import Medium
from hil.meter_node import MeterNode
from hil.population import EmulatedMeter, place_scenario
from hil.rcp import VirtualRcp
from hil.scenario import GATEWAY, FadeEvent, InterfererEvent, PowerEvent, Scenario

log = logging.getLogger(__name__)

#: 2026-01-01T00:00:00Z: every simulated run starts on the same wall-clock date.
EPOCH = 1_767_225_600.0
GATEWAY_EUI64 = bytes.fromhex("00124b0000a00001")
RADIO_NAME = "gateway"


@dataclass
class SimulationRun:
    """What a run leaves behind for the summary, the report and tests."""

    scenario: Scenario
    duration_s: float
    agent: Agent
    medium: Medium
    gateway_rcp: VirtualRcp
    meters: list[EmulatedMeter]
    route_changes: list[RouteChange] = field(default_factory=list)
    wall_s: float = 0.0
    exit_code: int = 0


def build_config(scenario: Scenario, work_dir: Path, mesh: MeshConfig | None = None) -> Config:
    """The gateway config of a simulation: in-process radio, every scenario meter, no uplink."""
    unused_tls = TlsConfig(work_dir / "ca.crt", work_dir / "gw.crt", work_dir / "gw.key")
    return Config(
        gateway=GatewayConfig(id="sim-gateway", site=scenario.name),
        radio=RadioConfig(
            url=f"spinel+loop://{RADIO_NAME}",
            channel=scenario.radio.channel,
            tx_power_dbm=round(scenario.radio.tx_power_dbm),
            noise_sample_interval_s=10.0,
        ),
        uplink=UplinkConfig(broker_url="mqtts://127.0.0.1:8883", tls=unused_tls),
        spool=SpoolConfig(path=work_dir / "spool.sqlite"),
        meters=tuple(
            MeterConfig(id=n.meter_id, transport="mesh", address=n.eui64.hex(":"))
            for n in scenario.nodes
        ),
        collector=CollectorConfig(
            interval_s=scenario.read_interval_s,
            jitter_s=min(scenario.read_interval_s / 3, 300.0),
            profile_rows=4,
            timeout_s=10.0,
            retries=2,
        ),
        mesh=mesh or MeshConfig(),
    )


def apply_events(scenario: Scenario, medium: Medium, meters: list[EmulatedMeter],
                 gateway: VirtualRcp, start: float) -> None:  # fmt: skip
    """Schedule the scenario's events on the medium (times relative to ``start``)."""
    nodes: dict[str, Any] = {m.meter_id: m.node for m in meters}
    nodes[GATEWAY] = gateway
    interferers: dict[str, Any] = {}
    for event in scenario.events:
        at = start + event.at_s
        if isinstance(event, PowerEvent):
            node = nodes[event.meter_id]
            if isinstance(node, MeterNode):
                # Through the meter, so it sends its last gasp (and power-restored) as it would.
                node.set_power(event.on, at=at)
            else:
                medium.power(node, event.on, at=at)
        elif isinstance(event, InterfererEvent):
            if event.on:
                handle = medium.add_interferer(
                    event.position, event.power_dbm, event.channels, on=False
                )
                handle.switch(True, at=at)
                interferers[event.name] = handle
            elif event.name in interferers:
                interferers[event.name].switch(False, at=at)
        elif isinstance(event, FadeEvent):
            medium.set_link_fade(
                nodes[event.a], nodes[event.b], event.to_db, at=at, over_s=event.over_s
            )


async def run_scenario(
    scenario: Scenario,
    duration_s: float,
    *,
    work_dir: Path,
    pcap: Path | None = None,
    mesh: MeshConfig | None = None,
    until: Callable[[SimulationRun], bool] | None = None,
) -> SimulationRun:
    """Run ``scenario`` for ``duration_s`` of virtual time (on the running loop: use
    :func:`simulate` for a fresh virtual-time loop)."""
    loop = asyncio.get_running_loop()
    clock = LoopClock(loop, EPOCH)
    seeds = random.Random(scenario.seed)
    medium = Medium(
        random.Random(seeds.getrandbits(64)),
        scheduler=loop,
        path_loss_exponent=scenario.radio.path_loss_exponent,
        shadowing_sigma_db=scenario.radio.shadowing_sigma_db,
    )
    registry = Registry()
    gateway_rcp = VirtualRcp(
        medium,
        random.Random(seeds.getrandbits(64)),
        clock,
        eui64=GATEWAY_EUI64,
        position=scenario.gateway_position,
        channel=scenario.radio.channel,
        tx_power_dbm=round(scenario.radio.tx_power_dbm),
    )
    register(registry, RADIO_NAME, gateway_rcp)
    meters = place_scenario(medium, scenario, clock, random.Random(seeds.getrandbits(64)))
    writer = None
    if pcap is not None:
        writer = PcapWriter.open(pcap, "wpan")

        def sniff(when: float, sender: object, psdu: bytes, channel: int) -> None:
            assert writer is not None
            writer.write(EPOCH + when, psdu, None)

        medium.on_air(sniff)
    apply_events(scenario, medium, meters, gateway_rcp, loop.time())
    agent = Agent(
        build_config(scenario, work_dir, mesh),
        clock,
        rng=random.Random(seeds.getrandbits(64)),
        registry=registry,
        with_uplink=False,
    )
    run = SimulationRun(scenario, duration_s, agent, medium, gateway_rcp, meters)

    async def watch_routes() -> None:
        while agent.stack is None:
            await asyncio.sleep(0.1)
        agent.stack.add_route_listener(run.route_changes.append)

    watcher = asyncio.create_task(watch_routes())
    stopper: asyncio.Task[None] | None = None
    if until is not None:

        async def stop_when() -> None:
            while not until(run):
                await asyncio.sleep(10.0)
            agent.stop()

        stopper = asyncio.create_task(stop_when())
    started = time.perf_counter()
    try:
        run.exit_code = await agent.run(duration_s)
    finally:
        run.wall_s = time.perf_counter() - started
        watcher.cancel()
        if stopper is not None:
            stopper.cancel()
        if writer is not None:
            writer.close()
    return run


def simulate(
    scenario: Scenario,
    duration_s: float,
    *,
    pcap: Path | None = None,
    mesh: MeshConfig | None = None,
    work_dir: Path | None = None,
) -> tuple[SimulationRun, dict[str, Any]]:
    """Run a scenario on a fresh virtual-time loop; returns the run and its summary."""
    with tempfile.TemporaryDirectory(prefix="hil-sim-") as tmp:
        directory = work_dir or Path(tmp)
        run = vtime.run(
            run_scenario(scenario, duration_s, work_dir=directory, pcap=pcap, mesh=mesh)
        )
        return run, summarise(run)


def _hops(run: SimulationRun, node: bytes) -> int | None:
    stack = run.agent.stack
    if stack is None:
        return None
    route = stack.routes.source_route(node, stack.clock.monotonic())
    return None if route is None else len(route)


def summarise(run: SimulationRun) -> dict[str, Any]:
    """The figures of a run, JSON-able (the ``--report`` file)."""
    agent = run.agent
    stack = agent.stack
    snap = agent.snapshot()
    now = stack.clock.monotonic() if stack is not None else 0.0
    statuses = [m.status for m in snap.meters]
    hops = [_hops(run, m.node.eui64) for m in run.meters]
    joined = [h for h in hops if h is not None]
    links = []
    if stack is not None:
        by_mac = {m.node.eui64: m for m in run.meters}
        channel = run.scenario.radio.channel
        wall_now = stack.clock.now()  # neighbours keep wall-clock times, routes monotonic ones
        for row, nb in zip(stack.neighbours.rows(wall_now), stack.neighbours.all(), strict=True):
            meter = by_mac.get(nb.mac)
            if meter is not None and run.medium.is_powered(meter.node):
                row["snr_truth_db"] = round(
                    run.medium.snr_truth(meter.node, run.gateway_rcp, channel), 1
                )
            row["meter_id"] = meter.meter_id if meter else None
            links.append(row)
    ok = sum(s.reads_ok for s in statuses)
    failed = sum(s.reads_failed for s in statuses)
    return {
        "scenario": run.scenario.name,
        "seed": run.scenario.seed,
        "meters": len(run.meters),
        "simulated_s": run.duration_s,
        "wall_s": round(run.wall_s, 2),
        "simulated_s_per_wall_s": round(run.duration_s / run.wall_s, 1) if run.wall_s else None,
        "exit_code": run.exit_code,
        "joined": len(joined),
        "hops": {
            "max": max(joined, default=0),
            "mean": round(statistics.fmean(joined), 2) if joined else None,
            "histogram": {str(h): joined.count(h) for h in sorted(set(joined))},
        },
        "reads": {
            "ok": ok,
            "failed": failed,
            "success_rate": round(ok / (ok + failed), 4) if ok + failed else None,
            "readings": snap.readings_total,
            "meters_never_read": sum(1 for s in statuses if s.reads_ok == 0),
        },
        "spool_depth": snap.spool_depth,
        # Pushes the gateway took in (last gasp, power restored, ...), by event.
        "alarms": dict(agent.pushes.stats.by_event) if agent.pushes is not None else {},
        "neighbours": links,
        "route_changes": [c.as_dict() for c in run.route_changes],
        "routing": stack.routes.table(now) if stack is not None else [],
        "mesh_stats": vars(stack.stats) if stack is not None else {},
        "root_stats": vars(stack.root.stats) if stack is not None else {},
        "medium": vars(run.medium.counters),
    }


def print_summary(summary: dict[str, Any], out: Callable[[str], None] = print) -> None:
    reads = summary["reads"]
    hops = summary["hops"]
    out(
        f"scenario {summary['scenario']} (seed {summary['seed']}): {summary['meters']} meters, "
        f"{summary['simulated_s'] / 3600:.1f} h simulated in {summary['wall_s']:.1f} s wall "
        f"({summary['simulated_s_per_wall_s']} simulated s per wall s)"
    )
    out(
        f"joined {summary['joined']}/{summary['meters']}; hops max {hops['max']}, "
        f"mean {hops['mean']}; histogram {hops['histogram']}"
    )
    rate = reads["success_rate"]
    out(
        f"reads ok {reads['ok']}, failed {reads['failed']}"
        + (f" ({rate:.1%} ok)" if rate is not None else "")
        + f"; {reads['readings']} readings spooled; "
        f"{reads['meters_never_read']} meters never read"
    )
    if summary["alarms"]:
        out("alarms: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["alarms"].items())))
    for row in summary["neighbours"]:
        out(
            f"  neighbour {row['meter_id'] or row['mac']}: SNR {row['snr_db']} dB "
            f"(truth {row.get('snr_truth_db')}), RSL in {row['rsl_in_dbm']}, "
            f"out {row['rsl_out_dbm']}, ETX {row['etx']}, {row['snr_class']}, {row['colour']}"
        )
    out(f"route changes: {len(summary['route_changes'])}")
    for change in summary["route_changes"][:20]:
        out(f"  {change}")


def write_report(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
