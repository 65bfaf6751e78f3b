"""Our own mesh stack (RPL root on a raw RCP) behind the backend seam.

Everything is measured here, so nothing is unavailable: the rows are the neighbour table's own,
with each node's address in the mesh prefix added.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from firmware_agent.collector.link import MeterLink
from firmware_agent.mesh import ipv6
from firmware_agent.mesh.backend import NEIGHBOUR_FIELDS, MeshEvent, MeshEvents
from firmware_agent.mesh.routes import RoutingTable
from firmware_agent.mesh.stack import MeshLinks, MeshStack, prefix_bytes

#: How often joins and departures are looked for (moves are reported as they happen).
EVENTS_POLL_S = 5.0


class OwnMeshBackend:
    """:class:`~.backend.MeshBackend` over a running :class:`MeshStack` (the agent opens the
    radio and builds the stack; this adds what the seam asks and nothing else)."""

    kind = "own"
    unavailable: Mapping[str, str] = {}
    estimated: Mapping[str, str] = {}

    def __init__(
        self,
        stack: MeshStack,
        links: MeshLinks,
        *,
        prefix: str,
        ncp_version: str,
        noise_sample_interval_s: float,
    ) -> None:
        self.stack = stack
        self.links = links
        self.routes: RoutingTable = stack.routes
        self._prefix = prefix_bytes(prefix)
        self._ncp_version = ncp_version
        self._noise_interval = noise_sample_interval_s
        self.events = MeshEvents(stack.routes)

    @property
    def root(self) -> bytes:
        return self.stack.hwaddr

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "ncp_version": self._ncp_version,
            "hwaddr": self.stack.hwaddr.hex(),
            "channel": self.stack.channel,
        }

    def neighbour_rows(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for row in self.stack.neighbours.rows(now):
            mac = bytes.fromhex(str(row["mac"]))
            row["ipv6"] = ipv6.format_address(ipv6.address_in_prefix(self._prefix, mac))
            rows.append({key: row.get(key) for key in NEIGHBOUR_FIELDS})
        return rows

    def link(self, node: bytes) -> MeterLink:
        return self.links.link(node)

    def add_listener(self, listener: Callable[[MeshEvent], None]) -> None:
        self.events.add_listener(listener)

    def on_push(
        self, handler: Callable[[bytes, bytes], None], is_push: Callable[[bytes], bool]
    ) -> None:
        self.links.set_unsolicited(handler, is_push)

    async def start(self) -> None:
        """The stack is already running on an open radio."""

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {
            "mesh": self.stack.run(),
            "rpl": self.stack.run_root(),
            "noise": self.stack.noise_sampler(self._noise_interval),
            "mesh-events": self._poll_events(),
        }

    async def _poll_events(self) -> None:
        while True:
            self.events.poll(self.stack.clock.monotonic())
            await asyncio.sleep(EVENTS_POLL_S)

    async def close(self) -> None:
        await self.stack.close()
