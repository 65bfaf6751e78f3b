"""The gateway through a TI Wi-SUN NCP, end to end: the unmodified agent with ``mesh.backend:
ti-ncp`` on a virtual NCP (``spinel+pty://?personality=ncp``: a separate process on a real PTY,
TI's crash emulated) reads every meter over STREAM_NET, publishes through mosquitto with mTLS
to the head end, and its routing view is the NCP's DODAG_ROUTE and CONNECTED_DEVICES."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from firmware_agent.agent import Agent
from firmware_agent.clock import SystemClock
from firmware_agent.config import (
    CollectorConfig,
    Config,
    GatewayConfig,
    MeshConfig,
    MeterConfig,
    RadioConfig,
    SpoolConfig,
    TiNcpConfig,
    TlsConfig,
    UplinkConfig,
)
from firmware_agent.diag.agent_source import AgentDiagSource
from firmware_agent.mesh.backend import NOT_AVAILABLE
from hil.broker import Mosquitto
from hil.headend import HeadEnd
from hil.ncp import build_network
from hil.pki import Pki
from hil.waiting import eventually

SEED, NODES = 3, 4


def test_meters_behind_a_ti_ncp_are_read_and_the_routing_view_is_the_ncps(
    tmp_path: Path, hil_pki: Pki, broker: Mosquitto
) -> None:
    clock = SystemClock()
    # The same seeded network the NCP process builds: its nodes, their parents, their meters.
    network = build_network(random.Random(SEED), clock, nodes=NODES)
    ids = {node: f"MTR-{i + 1}" for i, node in enumerate(network.parents)}
    pair = hil_pki.client("gateway-01")
    config = Config(
        gateway=GatewayConfig(id="gateway-01"),
        radio=RadioConfig(
            url=f"spinel+pty://?personality=ncp&seed={SEED}&nodes={NODES}&guard_gap=0.2",
            channel=0,
        ),
        uplink=UplinkConfig(
            broker_url=f"mqtts://{broker.host}:{broker.port}",
            tls=TlsConfig(hil_pki.ca_cert, pair.cert, pair.key),
        ),
        spool=SpoolConfig(path=tmp_path / "spool.sqlite"),
        meters=tuple(MeterConfig(mid, "mesh", node.hex(":")) for node, mid in ids.items()),
        collector=CollectorConfig(interval_s=5, jitter_s=1, profile_rows=2),
        mesh=MeshConfig(backend="ti-ncp", ti_ncp=TiNcpConfig(poll_s=2, min_gap_s=0.3)),
    )

    async def scenario(headend: HeadEnd) -> None:
        agent = Agent(config, clock, random.Random(1))
        run = asyncio.create_task(agent.run())
        try:
            delivered = lambda: {r["device_id"] for r in headend.records()}  # noqa: E731
            await eventually(lambda: delivered() >= set(ids.values()) or run.done(), 90, "reads")
            assert not run.done(), "the agent stopped"
            assert set(ids.values()) <= delivered()  # the session's head end hears others too
            source = AgentDiagSource(agent)
            mesh = source.mesh_backend()
            assert mesh["backend"] == "ti-ncp"
            assert mesh["ncp_version"].startswith("TIWISUNFAN/")
            # Every node's preferred path is the chain of parents the NCP's network has.
            root = bytes.fromhex(source.routes()["root"])
            for node, mid in ids.items():
                chain, hop = [node], node
                while hop != root:
                    hop = network.parents[hop]
                    chain.append(hop)
                paths = source.paths(mid)["paths"]
                preferred = next(p for p in paths if p["preferred"])
                assert [h["mac"] for h in preferred["hops"]] == [h.hex() for h in chain[::-1]]
                hops = next(mv.hops for mv in agent.snapshot().meters if mv.config.id == mid)
                assert hops == len(chain) - 1
            # No made-up figures: what the NCP does not give is None and said so.
            assert {"etx", "noise_floor_dbm", "snr_db", "lqi"} <= set(mesh["unavailable"])
            assert all(why.startswith(NOT_AVAILABLE) for why in mesh["unavailable"].values())
            for row in source.neighbours():
                assert all(row[field] is None for field in mesh["unavailable"]), row
        finally:
            agent.stop()
            assert await asyncio.wait_for(run, 60) == 0

    with HeadEnd(broker.host, broker.port, hil_pki, client_id="headend-ncp") as headend:
        asyncio.run(asyncio.wait_for(scenario(headend), 150))
