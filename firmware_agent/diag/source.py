"""The seam between the diag API and the agent: what the server asks, as JSON-able dicts.

Why dicts and not the agent's objects: the API's payloads are a documented, versioned contract
(docs/diag.md, docs/schemas/diag-*.json) and must not change shape when an internal dataclass
gains a field. The implementation on a running agent is
:class:`firmware_agent.diag.agent_source.AgentDiagSource`; tests may bring their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Json = dict[str, Any]


class UnknownMeter(LookupError):
    """The meter id is not in the gateway's configuration (the API answers 404)."""


class NotAvailable(LookupError):
    """The mesh backend cannot do this (the API answers 501 with the reason)."""


class DiagSource(Protocol):
    """What the diag server needs from the gateway. All but the probe answer at once."""

    def snapshot(self) -> Json:
        """Gateway id, radio, uplink state, spool depth, meters, link limits, alarm totals."""
        ...

    def mesh_backend(self) -> Json:
        """Which stack runs the mesh, and which neighbour figures it cannot supply
        (``unavailable``: field → why) or only estimates (``estimated``: field → how)."""
        ...

    def neighbours(self) -> list[Json]:
        """One row per neighbour (NeighbourTable.rows plus ``meter_id``)."""
        ...

    def routes(self) -> Json:
        """``{"root": hex, "routes": RoutingTable.table rows (each with meter_id)}``."""
        ...

    def paths(self, meter_id: str) -> Json:
        """Every valid path to the meter, the preferred one marked, per-hop SNR/ETX.
        Raises :class:`UnknownMeter`."""
        ...

    def spool_health(self) -> Json: ...

    def uplink_health(self) -> Json: ...

    def recent_alarms(self, limit: int) -> list[Json]: ...

    async def probe_neighbours(self, count: int, macs: Sequence[bytes] | None = None) -> list[Json]:
        """The active SNR check: ``count`` probes to each neighbour (or only ``macs``), both
        directions measured; one dict per neighbour (see docs/schemas/diag-snr-check.json)."""
        ...
