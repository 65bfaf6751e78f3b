"""A live gateway for the diag tests: the real Agent (production Spinel driver, mesh stack, RPL
root, collector, spool) on an in-process virtual RCP with emulated meters on the RF medium, in
real time on its own event loop in a thread, serving the real diag API on loopback. The test
thread then talks to it as a laptop would: hes-diag's own client over real TLS sockets."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.transceiver import Registry
from firmware_agent.agent import Agent
from firmware_agent.clock import SystemClock
from firmware_agent.config import (
    CollectorConfig,
    Config,
    DiagConfig,
    GatewayConfig,
    MeshConfig,
    MeterConfig,
    RadioConfig,
    SpoolConfig,
    TlsConfig,
    UplinkConfig,
)
from firmware_agent.diag.agent_source import AgentDiagSource
from firmware_agent.diag.server import DiagServer
from hil.loop import register
from hil.medium import Medium
from hil.meter.directory import build_meter
from hil.meter_node import MeterNode, NodeConfig
from hil.node.rpl_node import RplConfig
from hil.pki import Pki, generate_pki
from hil.rcp import VirtualRcp

GW = bytes.fromhex("00124b0000a00001")
#: (meter id, EUI-64, position m): three near the gateway, one behind them (two hops away).
METERS = [
    ("MTR-A", bytes.fromhex("0200000000000001"), (60.0, 0.0)),
    ("MTR-B", bytes.fromhex("0200000000000002"), (0.0, 70.0)),
    ("MTR-C", bytes.fromhex("0200000000000003"), (-50.0, -40.0)),
]
FAST_JOIN = NodeConfig(
    rpl=RplConfig(dis_delay_s=(0.1, 0.4), dao_delay_s=0.4, dao_join_spread_s=0.6,
                  dao_min_interval_s=1.0)
)  # fmt: skip


@dataclass
class DiagPki:
    pki: Pki  # the technicians' CA, the gateway's diag server cert, technician certs

    @property
    def technician(self) -> Any:
        return self.pki.client("tech-alice")


def make_diag_pki(directory: Path) -> DiagPki:
    return DiagPki(
        generate_pki(
            directory,
            gateway_ids=("tech-alice",),
            headend_id="tech-spare",
            server_names=("127.0.0.1", "localhost"),
        )
    )


class ThreadLoop(asyncio.SelectorEventLoop):
    """An event loop for a worker thread: Python delivers signals to the main thread only, so
    the agent's SIGTERM/SIGINT handlers cannot be installed here (the test stops it instead)."""

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        return None

    def remove_signal_handler(self, sig: int) -> bool:
        return False


class LiveGateway:
    def __init__(self, work: Path, diag_pki: DiagPki, *, block_s: float = 600.0) -> None:
        self.work = work
        self.diag_pki = diag_pki
        self.block_s = block_s
        self.loop = ThreadLoop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.agent: Agent | None = None
        self.server: DiagServer | None = None
        self.meters: list[MeterNode] = []
        self._task: asyncio.Task[int] | None = None

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def query(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return self.call(run())

    @property
    def url(self) -> str:
        assert self.server is not None and self.server.address is not None
        return f"https://127.0.0.1:{self.server.address[1]}"

    def start(self) -> LiveGateway:
        self.thread.start()
        self.call(self._start())
        return self

    def config(self) -> Config:
        tls = TlsConfig(self.work / "ca.crt", self.work / "gw.crt", self.work / "gw.key")
        return Config(
            gateway=GatewayConfig(id="gateway-01"),
            radio=RadioConfig(url="spinel+loop://gw", channel=0, noise_sample_interval_s=0.5),
            uplink=UplinkConfig(broker_url="mqtts://127.0.0.1:8883", tls=tls),
            spool=SpoolConfig(path=self.work / "spool.sqlite"),
            meters=tuple(
                MeterConfig(id=mid, transport="mesh", address=eui.hex(":"))
                for mid, eui, _ in METERS
            ),
            collector=CollectorConfig(interval_s=3600.0, jitter_s=1.0, timeout_s=5.0, retries=0),
            mesh=MeshConfig(dio_imin_s=0.5),
        )

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        clock = SystemClock()
        medium = Medium(random.Random(1), scheduler=loop, shadowing_sigma_db=0.0)
        rcp = VirtualRcp(medium, random.Random(2), clock, eui64=GW, channel=0)
        registry = Registry()
        register(registry, "gw", rcp)
        rng = random.Random(3)
        for mid, eui, pos in METERS:
            parts = build_meter(mid, clock, random.Random(rng.getrandbits(32)))
            node = MeterNode(eui, medium, parts.meter, loop, channel=0, config=FAST_JOIN,
                             rng=random.Random(rng.getrandbits(32)))  # fmt: skip
            medium.attach(node, pos, channel=0)
            self.meters.append(node)
        self.agent = Agent(self.config(), clock, random.Random(4), registry, with_uplink=False)
        self._task = asyncio.create_task(self.agent.run())
        while self.agent.stack is None:
            await asyncio.sleep(0.02)
        pki = self.diag_pki.pki
        cfg = DiagConfig(
            ca_file=pki.ca_cert,
            cert_file=pki.server.cert,
            key_file=pki.server.key,
            bind="127.0.0.1",
            port=0,
            block_s=self.block_s,
        )
        self.server = DiagServer(AgentDiagSource(self.agent), cfg, clock)
        await self.server.start()

    def wait_for(self, what: Callable[[Agent], bool], timeout: float, doing: str) -> None:
        async def poll() -> None:
            deadline = loop_time() + timeout
            while not what(self._agent()):
                if loop_time() > deadline:
                    raise AssertionError(f"timed out waiting for {doing}")
                await asyncio.sleep(0.1)

        def loop_time() -> float:
            return asyncio.get_running_loop().time()

        self.call(poll(), timeout + 5)

    def _agent(self) -> Agent:
        assert self.agent is not None
        return self.agent

    def stop(self) -> None:
        async def stop() -> int:
            if self.server is not None:
                await self.server.close()
            assert self.agent is not None and self._task is not None
            self.agent.stop()
            return await self._task

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def all_joined(agent: Agent) -> bool:
    stack = agent.stack
    if stack is None:
        return False
    now = stack.clock.monotonic()
    floor = stack.neighbours.noise_floor(0)
    heard = [nb for nb in stack.neighbours.all() if nb.snr_db is not None]
    routed = [eui for _, eui, _ in METERS if stack.routes.source_route(eui, now) is not None]
    return floor is not None and len(heard) >= len(METERS) and len(routed) == len(METERS)
