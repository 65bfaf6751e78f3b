""":class:`~firmware_agent.diag.source.DiagSource` on a running :class:`~firmware_agent.agent.
Agent`: reads its mesh stack, collector, spool and uplink as they are now.

Why an adapter rather than methods on the Agent: the payload shapes belong to the diag API's
contract (docs/diag.md), and the agent stays the wiring. Everything here only reads, except
:meth:`AgentDiagSource.probe_neighbours`, which sends probe frames (one check at a time: two
technicians asking at once queue rather than double the load on the channel).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from firmware_agent.config import DIAG_MAX_PROBES
from firmware_agent.diag.source import Json, NotAvailable, UnknownMeter
from firmware_agent.mesh.backend import NOT_AVAILABLE
from firmware_agent.spool import Priority

if TYPE_CHECKING:
    from firmware_agent.agent import Agent

#: Most probes per neighbour a caller may ask for (each is one frame on a shared channel).
#: How many spooled records are looked through for pending alarms.
ALARM_SCAN = 1000


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _eui64(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class AgentDiagSource:
    """The diag API's view of ``agent`` (build it once; it follows the agent as it runs)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._probe_lock = asyncio.Lock()

    # -- helpers ----------------------------------------------------------------------------------

    def _meter_ids(self) -> dict[bytes, str]:
        return {_eui64(m.address): m.id for m in self.agent.config.meters if m.transport == "mesh"}

    def _name(self, mac: bytes, names: dict[bytes, str]) -> str | None:
        if self.agent.mesh is not None and mac == self.agent.mesh.root:
            return self.agent.config.gateway.id
        return names.get(mac)

    # -- DiagSource ------------------------------------------------------------------------------

    def snapshot(self) -> Json:
        snap = self.agent.snapshot()
        radio = None
        if snap.radio is not None:
            radio = {
                "ncp_version": snap.radio.ncp_version,
                "hwaddr": snap.radio.hwaddr.hex(),
                "protocol_version": list(snap.radio.protocol_version),
                "channel": self.agent.config.radio.channel,
            }
        meters = []
        for mv in snap.meters:
            st = mv.status
            meters.append(
                {
                    "id": mv.config.id,
                    "transport": mv.config.transport,
                    "address": mv.config.address,
                    "state": st.state,
                    "hops": mv.hops,
                    "neighbour": None if mv.neighbour is None else mv.neighbour.mac.hex(),
                    "reads_ok": st.reads_ok,
                    "reads_failed": st.reads_failed,
                    "last_success": st.last_success,
                    "last_error": st.last_error,
                    "last_error_name": st.last_error_name,
                    "mac_fail": st.mac_fail,
                }
            )
        return {
            "gateway_id": snap.gateway_id,
            "time": self.agent.clock.now(),
            "radio": radio,
            "mesh": self.mesh_backend(),
            "uplink": {"connected": snap.uplink_connected, "error": snap.uplink_error or None},
            "published_records": snap.published_records,
            "spool_depth": snap.spool_depth,
            "readings_total": snap.readings_total,
            "noise_floor_dbm": snap.noise_floor_dbm,
            "alarms_total": snap.alarms_total,
            "quarantined": snap.quarantined,
            "link_limits": None if snap.link_limits is None else _jsonable(snap.link_limits),
            "meters": meters,
        }

    def mesh_backend(self) -> Json:
        mesh = self.agent.mesh
        if mesh is None:
            return {"backend": self.agent.config.mesh.backend, "unavailable": {}, "estimated": {}}
        return {
            **mesh.identity(),
            "unavailable": dict(mesh.unavailable),
            "estimated": dict(mesh.estimated),
        }

    def neighbours(self) -> list[Json]:
        mesh = self.agent.mesh
        if mesh is None:
            return []
        names = self._meter_ids()
        rows = mesh.neighbour_rows(self.agent.clock.now())
        for row in rows:
            row["meter_id"] = names.get(bytes.fromhex(str(row["mac"])))
        return rows

    def routes(self) -> Json:
        mesh = self.agent.mesh
        if mesh is None:
            return {"root": None, "routes": []}
        names = self._meter_ids()
        rows = mesh.routes.table(self.agent.clock.monotonic())
        for row in rows:
            row["meter_id"] = names.get(bytes.fromhex(str(row["node"])))
        return {"root": mesh.root.hex(), "backend": mesh.kind, "routes": rows}

    def paths(self, meter_id: str) -> Json:
        meter = next((m for m in self.agent.config.meters if m.id == meter_id), None)
        if meter is None:
            raise UnknownMeter(f"no meter {meter_id!r} in the gateway's configuration")
        out: Json = {"meter_id": meter_id, "transport": meter.transport, "paths": []}
        mesh = self.agent.mesh
        if meter.transport != "mesh" or mesh is None:
            out["node"] = None
            return out
        node = _eui64(meter.address)
        out["node"] = node.hex()
        out["mesh"] = self.mesh_backend()
        now = self.agent.clock.monotonic()
        routes = mesh.routes
        preferred = routes.preferred(node, now)
        names = self._meter_ids()
        paths = []
        for path in routes.paths(node, now):
            hops = [{"mac": h.hex(), "meter_id": self._name(h, names)} for h in path.hops]
            links = []
            for a, b in zip(path.hops, path.hops[1:], strict=False):
                q = routes.link(a, b)
                links.append(
                    {
                        "from": a.hex(),
                        "to": b.hex(),
                        "snr_db": None if q is None or q.snr_db is None else round(q.snr_db, 1),
                        "etx": None if q is None else q.etx,
                        "measured": bool(q is not None and q.measured),
                    }
                )
            paths.append(
                {
                    "hops": hops,
                    "links": links,
                    "cost": round(path.cost, 4),
                    "worst_snr_db": None
                    if path.worst_snr_db is None
                    else round(path.worst_snr_db, 1),
                    "usable": path.usable,
                    "recovering": path.recovering,
                    "reasons": list(path.reasons),
                    "preferred": preferred is not None and path.hops == preferred.hops,
                }
            )
        out["paths"] = paths
        return out

    def spool_health(self) -> Json:
        spool = self.agent.spool
        if spool is None:
            return {"open": False, "depth": self.agent.snapshot().spool_depth}
        return {"open": True, **spool.stats().to_dict()}

    def uplink_health(self) -> Json:
        uplink = self.agent.uplink
        if uplink is None:
            return {"enabled": False}
        return {"enabled": True, **_jsonable(uplink.stats)}

    def recent_alarms(self, limit: int) -> list[Json]:
        """Alarms still in the spool (not yet delivered to the head end), newest first."""
        spool = self.agent.spool
        if spool is None:
            return []
        counts = spool.depth_by_priority()
        urgent = counts.get(Priority.ALARM, 0) + counts.get(Priority.ON_DEMAND, 0)
        if not counts.get(Priority.ALARM):
            return []
        # Asking for exactly the urgent records keeps next_batch off the interval class (and
        # its storm throttle): this is a read, it must not change what the uplink sends next.
        alarms: list[Json] = [
            {
                "record_id": r.record_id,
                "natural_key": r.natural_key,
                "created_at": r.created_at,
                "record": r.data,
            }
            for r in spool.next_batch(min(urgent, ALARM_SCAN), 1 << 30)
            if r.priority == Priority.ALARM
        ]
        alarms.sort(key=lambda a: float(a["created_at"]), reverse=True)
        return alarms[:limit]

    async def probe_neighbours(self, count: int, macs: Sequence[bytes] | None = None) -> list[Json]:
        mesh = self.agent.mesh
        if mesh is not None and mesh.kind != "own":
            raise NotAvailable(
                f"the active SNR check is {NOT_AVAILABLE} ({mesh.kind}): it sends probe frames"
                " through the gateway's own radio; see GET /api/v1/neighbours for the links"
                " the border router reports"
            )
        stack = self.agent.stack
        if stack is None:
            return []
        if not 1 <= count <= DIAG_MAX_PROBES:
            raise ValueError(f"count must be 1..{DIAG_MAX_PROBES}, got {count}")
        names = self._meter_ids()
        async with self._probe_lock:
            targets = list(macs) if macs is not None else [nb.mac for nb in stack.neighbours.all()]
            results = []
            for mac in targets:
                result = await stack.probe(mac, count=count)
                nb = stack.neighbours.get(mac)
                now = self.agent.clock.now()
                results.append(
                    {
                        "mac": mac.hex(),
                        "meter_id": names.get(mac),
                        "sent": result.sent,
                        "acked": result.acked,
                        "rssi_dbm": None
                        if not result.ack_rssi_dbm
                        else round(sum(result.ack_rssi_dbm) / len(result.ack_rssi_dbm), 1),
                        "noise_floor_dbm": result.noise_floor_dbm,
                        "snr_in_db": _round(result.snr_in_db),
                        "snr_out_db": _round(result.snr_out_db),
                        "rsl_in_dbm": None if nb is None else round(nb.rsl_in_dbm, 1),
                        "rsl_out_dbm": _round(
                            sum(result.rsl_out_dbm) / len(result.rsl_out_dbm)
                            if result.rsl_out_dbm
                            else (None if nb is None else nb.rsl_out_dbm)
                        ),
                        "etx": None if nb is None else nb.etx,
                        "colour": None
                        if nb is None
                        else nb.colour(stack.neighbours.limits, now).value,
                    }
                )
            return results


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
