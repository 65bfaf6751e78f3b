"""What the head end may ask of a running gateway, answered from the agent's parts.

The command dispatcher (uplink/commands.py) and the OMS interface (uplink/outage.py) speak to a
``GatewayOperations``; this is the agent's. It holds no state of its own beyond the power news
meters sent (last gasp, power restored), which the OMS interface needs to tell a dark meter from
one that merely failed to answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_agent.collector.firmware import FirmwareImage, PushResult
from firmware_agent.collector.ping import PingResult, ping_meter
from firmware_agent.collector.records import Alarm
from firmware_agent.collector.scheduler import Collector
from firmware_agent.collector.security_reset import ResetResult
from firmware_agent.config import CommandsConfig as CommandsSection
from firmware_agent.uplink import outage
from firmware_agent.uplink.commands import CommandsConfig, MeshPath, mesh_paths

if TYPE_CHECKING:
    from firmware_agent.agent import Agent

LAST_GASP = "last-gasp"
POWER_RESTORED = "power-restored"


def commands_config(section: CommandsSection) -> CommandsConfig:
    """The dispatcher's settings from the config file's ``uplink.commands`` section."""
    oms = section.oms
    return CommandsConfig(
        timeout_s=section.timeout_s,
        ping_timeout_s=section.ping_timeout_s,
        max_ping_timeout_s=max(section.ping_timeout_s, CommandsConfig.max_ping_timeout_s),
        oms=outage.OutageConfig(
            categories={**outage.DEFAULT_CATEGORIES, **oms.categories},
            default_respond_s=oms.default_respond_s,
            max_respond_s=oms.max_respond_s,
            ping_timeout_s=oms.ping_timeout_s,
            ping_concurrency=oms.ping_concurrency,
        ),
    )


class AgentOperations:
    """``GatewayOperations`` on a running :class:`~firmware_agent.agent.Agent`."""

    def __init__(self, agent: Agent, firmware_dir: Path | None = None) -> None:
        self.agent = agent
        self.firmware_dir = firmware_dir
        self._last_gasp: dict[str, float] = {}
        self._restored: dict[str, float] = {}

    # --- power news from pushes (the PushReceiver's listener) ----------------------------------

    def on_alarm(self, alarm: Alarm) -> None:
        now = self.agent.clock.now()
        if alarm.event == LAST_GASP:
            self._last_gasp[alarm.device_id] = now
        elif alarm.event == POWER_RESTORED:
            self._restored[alarm.device_id] = now

    # --- GatewayOperations ---------------------------------------------------------------------

    def meter_ids(self) -> Sequence[str]:
        return [m.id for m in self.agent.config.meters]

    def meter_status(self, meter_id: str) -> outage.MeterState:
        status = self._collector().status[meter_id]
        power = outage.power_state(
            self._last_gasp.get(meter_id), self._restored.get(meter_id), status.last_success_started
        )
        return outage.MeterState(
            meter_id, status.state, status.last_success, power, status.last_error
        )

    async def ping(self, meter_id: str, timeout_s: float) -> PingResult:
        agent = self.agent
        async with self._collector().exclusive(meter_id) as meter:
            result = await ping_meter(agent.link_for(meter), meter, timeout_s, clock=agent.clock)
        return dataclasses.replace(result, hops=agent.hops(meter))

    async def read_now(self, meter_id: str, what: str) -> list[dict[str, Any]]:
        result = await self._collector().read_now(meter_id, what)
        return [r.to_dict() for r in result.readings]

    def view_mesh(self, meter_id: str) -> list[MeshPath]:
        meter = self.agent.meter(meter_id)
        mesh = self.agent.mesh
        if meter.transport != "mesh" or mesh is None:
            return []  # an IP meter: its paths are not ours to know
        mac = bytes.fromhex(meter.address.replace(":", ""))
        return mesh_paths(mesh.routes, mac, self.agent.clock.monotonic())

    async def push_firmware(
        self, meter_ids: Sequence[str], image: FirmwareImage, bytes_per_s: float | None
    ) -> list[PushResult]:
        return await self.agent.push_firmware(meter_ids, image, bytes_per_s=bytes_per_s)

    async def security_reset(self, meter_id: str) -> ResetResult:
        return await self.agent.security_reset(meter_id)

    def firmware_image(self, name: str) -> bytes:
        if self.firmware_dir is None:
            raise FileNotFoundError(f"{name}: no uplink.commands.firmware_dir is configured")
        return (self.firmware_dir / name).read_bytes()

    def _collector(self) -> Collector:
        collector = self.agent.collector
        if collector is None:
            raise RuntimeError("the collector is not running")
        return collector
