"""Meters on loopback IPv6 behind an emulated wsbrd, read through the gateway's wsbrd backend.

Run inside a network namespace whose loopback carries the root's and each node's address
(:func:`hil.netns.run_in_netns` makes one): it starts a private dbus-daemon, the emulated
wsbrd and one emulated DLMS meter per node on ``[its address]:mesh.wsbrd.port``, then reads
every node's meter through ``WsbrdBackend.link`` (address from RoutingGraph, OS UDP socket)
and prints one JSON object: what was read, each node's path, and what a read of a node wsbrd
does not list gives. The namespace disappears with the process, addresses and all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

from firmware_agent.clock import SystemClock
from firmware_agent.collector.reader import MeterReadError, read_meter
from firmware_agent.config import Config, MeterConfig, load_config
from firmware_agent.mesh import ipv6
from firmware_agent.mesh.wsbrd import WsbrdBackend
from hil.meter.dlms_server import MeterServer
from hil.meter.model import MeterModel
from hil.meter.udp import UdpMeterService, serve_udp

from .bus import PrivateBus
from .model import WsbrdModel
from .nodes_file import model_from_text
from .service import serve_wsbrd

#: A node the driver asks for that wsbrd does not list.
STRANGER = bytes.fromhex("02000000000000ff")


async def serve_meters(model: WsbrdModel, port: int) -> dict[bytes, UdpMeterService]:
    """One emulated meter per node, on the node's address."""
    clock = SystemClock()
    services = {}
    for index, node in enumerate(model.nodes.values()):
        meter = MeterModel(f"MTR-{index + 1:04d}", random.Random(index))
        services[node.eui64] = await serve_udp(
            {1: MeterServer(meter, clock)}, ipv6.format_address(node.address), port
        )
    return services


def meter_config(node: bytes, index: int) -> MeterConfig:
    return MeterConfig(f"MTR-{index + 1:04d}", "mesh", node.hex(":"))


async def read_all(config: Config, model: WsbrdModel, bus_address: str) -> dict[str, Any]:
    service = await serve_wsbrd(bus_address, model)
    meters = await serve_meters(model, config.mesh.wsbrd.port)
    backend = WsbrdBackend(config, SystemClock(), random.Random(1), bus_address=bus_address)
    out: dict[str, Any] = {"reads": {}, "paths": {}}
    try:
        await backend.start()
        now = backend.clock.monotonic()
        for index, node in enumerate(model.nodes):
            link = backend.link(node)
            try:
                read = await read_meter(link, meter_config(node, index), backend.clock, timeout=3.0)
                out["reads"][node.hex()] = {
                    "meter_id": read.meter_id,
                    "energy_wh": read.energy_wh,
                    "readings": len(read.readings),
                    "address": ipv6.format_address(model.nodes[node].address),
                    "served_by": meters[node].host,
                }
            except MeterReadError as exc:
                out["reads"][node.hex()] = {"error": str(exc)}
            finally:
                await link.close()
            route = backend.routes.preferred(node, now)
            out["paths"][node.hex()] = None if route is None else [h.hex() for h in route.hops]
        link = backend.link(STRANGER)
        try:
            await read_meter(link, meter_config(STRANGER, 999), backend.clock, timeout=1.0)
            out["stranger"] = "read?!"
        except MeterReadError as exc:
            out["stranger"] = f"{type(exc.cause).__name__}: {exc.cause}"
        out["rows"] = backend.neighbour_rows(0.0)
        out["unavailable"] = dict(backend.unavailable)
    finally:
        await backend.close()
        for svc in meters.values():
            svc.close()
        await service.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.wsbrd.loopback", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the gateway's config")
    parser.add_argument("--nodes", type=Path, required=True, help="the network (YAML)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    model = model_from_text(args.nodes.read_text())

    async def bounded(address: str) -> dict[str, Any]:
        async with asyncio.timeout(60.0):
            return await read_all(config, model, address)

    with PrivateBus() as bus:
        result = asyncio.run(bounded(bus.address))
    json.dump(result, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
