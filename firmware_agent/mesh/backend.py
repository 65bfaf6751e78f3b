"""The mesh backend seam: what the layers above the mesh need, whichever stack runs the mesh.

Three stacks can sit under the gateway: our own (a raw RCP driven by :mod:`.stack`), Silicon
Labs' ``wsbrd`` (a certified FAN border router we read over D-Bus) and a TI board running the
whole FAN stack as an NCP (Spinel). The collector, spool, uplink, diag API and hes-diag must work
the same on each, so they talk to a :class:`MeshBackend` and nothing below it.

Two rules hold every backend honest:

- **One routing table.** Every backend fills a :class:`~.routes.RoutingTable` with each node's
  parents in preference order (our RPL root from DAOs; wsbrd from ``RoutingGraph``; the NCP from
  DODAG_ROUTE), so paths, source routes, hop counts and the view-mesh answer come from the same
  code. :class:`ParentSync` turns "the stack says these are the parents now" into table updates.
- **No made-up metrics.** A figure a backend cannot supply is ``None`` in its neighbour rows and
  named in :attr:`MeshBackend.unavailable` with the reason; a figure it derives rather than
  measures (an SNR from RSL and a configured noise floor) is named in
  :attr:`MeshBackend.estimated` with how. The views print those words, never a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from firmware_agent.collector.link import MeterLink
from firmware_agent.mesh.routes import RouteChange, RoutingTable, Transit

#: What a view shows in place of a figure its backend cannot supply.
NOT_AVAILABLE = "not available from this backend"

#: The keys of a neighbour row (``MeshBackend.neighbour_rows``); every backend emits them all,
#: ``None`` where :attr:`MeshBackend.unavailable` says why. ``mac`` is the EUI-64 as hex.
NEIGHBOUR_FIELDS = (
    "mac",
    "ipv6",
    "channel",
    "rssi_dbm",
    "lqi",
    "rsl_in_dbm",
    "rsl_out_dbm",
    "noise_floor_dbm",
    "snr_db",
    "snr_percentiles_db",
    "etx",
    "latency_s",
    "frames_heard",
    "last_heard_s_ago",
    "snr_class",
    "colour",
)

#: Names the ``mesh.backend`` config key accepts.
BACKEND_KINDS = ("own", "wsbrd", "ti-ncp")


class MeshBackendError(Exception):
    """The backend cannot start or lost its stack; the message names the backend and why
    (bus not reachable, service not on the bus, NCP not a Wi-SUN stack, ...)."""


class MeshEventKind(StrEnum):
    JOINED = "joined"  # the node has a route to the root for the first time (or again)
    LEFT = "left"  # the node has no route any more (left, expired, or cut off)
    MOVED = "moved"  # traffic to the node takes another path


@dataclass(frozen=True, slots=True)
class MeshEvent:
    kind: MeshEventKind
    node: bytes
    at: float  # the clock's monotonic time
    path: tuple[bytes, ...] | None  # root … node now (None when it left)
    reason: str


def event_from_change(change: RouteChange) -> MeshEvent:
    """Mesh events come from route changes, so every backend reports them the same way."""
    if change.old is None and change.new is not None:
        kind = MeshEventKind.JOINED
    elif change.new is None:
        kind = MeshEventKind.LEFT
    else:
        kind = MeshEventKind.MOVED
    return MeshEvent(kind, change.node, change.at, change.new, change.reason)


class MeshBackend(Protocol):
    """What the gateway needs from the mesh, whichever stack runs it."""

    #: One of :data:`BACKEND_KINDS`.
    kind: str
    #: Every node's parents in preference order; paths and source routes come from here.
    routes: RoutingTable
    #: Neighbour-row field → why this backend has no such figure (e.g. ``"etx": "wsbrd
    #: reports no ETX"``). Those fields are ``None`` in every row.
    unavailable: Mapping[str, str]
    #: Field → how it is estimated rather than measured (e.g. ``"snr_db": "RSL minus the
    #: configured noise floor of -100 dBm"``).
    estimated: Mapping[str, str]

    @property
    def root(self) -> bytes:
        """The border router's EUI-64 (the root of every path)."""
        ...

    def identity(self) -> dict[str, Any]:
        """What the status views show about the stack: its kind, version, EUI-64, channel."""
        ...

    def neighbour_rows(self, now: float) -> list[dict[str, Any]]:
        """One row per radio neighbour with the :data:`NEIGHBOUR_FIELDS` keys; ``now`` is
        wall-clock time (for ``last_heard_s_ago``)."""
        ...

    def link(self, node: bytes) -> MeterLink:
        """The datagram transport to the meter with EUI-64 ``node`` (DLMS WRAPPER, port
        4059). The link resolves the node's address when it sends, so it may be asked for
        before the node has joined."""
        ...

    def add_listener(self, listener: Callable[[MeshEvent], None]) -> None:
        """Call ``listener`` for every node that joins, leaves or moves."""
        ...

    def on_push(
        self, handler: Callable[[bytes, bytes], None], is_push: Callable[[bytes], bool]
    ) -> None:
        """Hand datagrams a meter sends on its own (last gasp, power restored: ``is_push``
        says which) to ``handler(node_eui64, frame)``. The mesh does not parse DLMS; the
        agent hands in both. (Beside wsbrd they arrive through the kernel instead, at the
        collector's push listener.)"""
        ...

    async def start(self) -> None:
        """Reach the stack (bus, board) and read its state once; raises
        :class:`MeshBackendError` with the reason when it cannot."""
        ...

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The loops the agent runs and supervises while the backend is up, by name."""
        ...

    async def close(self) -> None:
        """Stop sending; release the bus or the board."""
        ...


def empty_row(mac: bytes) -> dict[str, Any]:
    """A neighbour row with every field ``None`` but the EUI-64: backends fill what they have."""
    row: dict[str, Any] = dict.fromkeys(NEIGHBOUR_FIELDS)
    row["mac"] = mac.hex()
    return row


class ParentSync:
    """Keeps a :class:`RoutingTable` equal to a stack's view of who each node's parents are.

    wsbrd and the TI NCP report parent sets, not DAOs: each report of a changed set becomes one
    DAO-like update with the node's next sequence numbers (lifetimes infinite: the stack ages
    its own entries, and a node it no longer lists is forgotten here).
    """

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self._parents: dict[bytes, tuple[bytes, ...]] = {}
        self._sequence: dict[bytes, int] = {}

    def apply(self, graph: Mapping[bytes, Sequence[bytes]], now: float) -> None:
        """Make the table match ``graph`` (node → parents, most preferred first)."""
        for node in set(self._parents) - set(graph):
            self.table.forget(node, now)
            del self._parents[node]
        for node, parents in graph.items():
            if node == self.table.root:
                continue
            wanted = tuple(p for p in dict.fromkeys(parents) if p != node)
            if self._parents.get(node) == wanted:
                continue
            seq = (self._sequence.get(node, -1) + 1) % 128
            self._sequence[node] = seq
            self._parents[node] = wanted
            if not wanted:
                self.table.forget(node, now)
                continue
            transits = [
                Transit(parent, seq, math.inf, preference)
                for preference, parent in enumerate(wanted)
            ]
            self.table.update_dao(node, seq, transits, now)
        self.table.reselect(now)


class MeshEvents:
    """Turns a routing table's state into :class:`MeshEvent` s for listeners.

    Joins and departures are found by comparing which nodes have a route at each
    :meth:`poll` (a first route is not a route *change* in the table's log); moves come from
    the table's own change log as they happen. Every backend uses this, so "joined" means
    the same on each.
    """

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self._listeners: list[Callable[[MeshEvent], None]] = []
        self._reachable: set[bytes] = set()
        table.add_change_listener(self._on_change)

    def add_listener(self, listener: Callable[[MeshEvent], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: MeshEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    def _on_change(self, change: RouteChange) -> None:
        if change.old is not None and change.new is not None:
            self._emit(event_from_change(change))

    def poll(self, now: float) -> list[MeshEvent]:
        """Report the nodes that gained or lost their route since the last poll."""
        reachable = {
            node for node in self.table.nodes() if self.table.source_route(node, now) is not None
        }
        events = [
            MeshEvent(MeshEventKind.JOINED, node, now, self._path(node, now), "route to the root")
            for node in sorted(reachable - self._reachable)
        ] + [
            MeshEvent(MeshEventKind.LEFT, node, now, None, "no route to the root")
            for node in sorted(self._reachable - reachable)
        ]
        self._reachable = reachable
        for event in events:
            self._emit(event)
        return events

    def _path(self, node: bytes, now: float) -> tuple[bytes, ...] | None:
        path = self.table.preferred(node, now)
        return None if path is None else path.hops
