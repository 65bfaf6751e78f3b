"""wsbrd's D-Bus properties as records (sans-IO: values in, records and complaints out).

Silicon Labs' ``wsbrd`` exports two properties the mesh views need (see wisun-br-linux's
DBUS.md): ``Nodes`` (``a(aya{sv})``: each node's EUI-64 and a dict of what wsbrd knows of it)
and ``RoutingGraph`` (``a(aybaay)``: each node's IPv6 address, whether it is an LFN, and its
parents' addresses in preference order; the border router is the entry with no parents).

The bus is a border: a value of the wrong type is reported (node, key, the signature seen and
the one expected) and left out, never raised, so one odd entry cannot stop the views. Values are
anything with ``.signature`` and ``.value`` (dbus-fast's ``Variant``), so this module needs no
D-Bus library.

What wsbrd does not report is named here once (:func:`unavailable_fields`), so every view says
"not available from this backend" for the same fields with the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from firmware_agent.mesh import ipv6
from firmware_agent.mesh.backend import NOT_AVAILABLE, empty_row
from firmware_agent.mesh.neighbours import LinkThresholds

BUS_NAME = "com.silabs.Wisun.BorderRouter"
OBJECT_PATH = "/com/silabs/Wisun/BorderRouter"
INTERFACE = "com.silabs.Wisun.BorderRouter"
NODES_SIGNATURE = "a(aya{sv})"
GRAPH_SIGNATURE = "a(aybaay)"

#: wsbrd sends ``rssi`` as one unsigned byte, dBm + 174 (802.15.4's RSSI scale).
RSSI_OFFSET_DBM = 174
#: ``node_role`` values (Wi-SUN's): 0 border router, 1 FFN (FAN 1.1), 2 LFN; absent: FAN 1.0 FFN.
ROLE_BORDER_ROUTER = 0

#: The ``Nodes`` dict keys this module reads, with the signature wsbrd gives each.
NODE_KEYS: Mapping[str, str] = {
    "is_border_router": "b",
    "node_role": "y",
    "is_authenticated": "b",
    "is_neighbor": "b",
    "rssi": "y",
    "lqi": "y",
    "rsl": "i",
    "rsl_adv": "i",
}


class VariantLike(Protocol):
    """A D-Bus variant: its signature and its value."""

    @property
    def signature(self) -> str: ...

    @property
    def value(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class WsbrdNode:
    """One entry of ``Nodes``; a figure wsbrd left out (non-neighbours have no RSL) is None."""

    eui64: bytes
    role: int | None = None
    is_border_router: bool = False
    is_authenticated: bool = False
    is_neighbor: bool = False
    rssi_dbm: int | None = None
    lqi: int | None = None
    rsl_dbm: int | None = None  # EWMA of how well the border router hears the node
    rsl_adv_dbm: int | None = None  # EWMA the node advertises of how well it hears us


@dataclass(frozen=True, slots=True)
class GraphEntry:
    """One entry of ``RoutingGraph``: a node's IPv6 address and its parents' (most preferred
    first)."""

    ipv6: bytes
    is_lfn: bool
    parents: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Graph:
    """``RoutingGraph`` in the gateway's terms: nodes by EUI-64 (from their addresses' IIDs;
    the border router's address maps to its own EUI-64, whatever its IID)."""

    parents: dict[bytes, list[bytes]]  # node → parents, most preferred first
    addresses: dict[bytes, bytes]  # node → its IPv6 address
    root_address: bytes | None


def _bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value)
    return None


def parse_nodes(variant: VariantLike) -> tuple[list[WsbrdNode] | None, list[str]]:
    """``Nodes`` → records; ``None`` (keep what you had) when the property itself is malformed."""
    if variant.signature != NODES_SIGNATURE:
        return None, [
            f"Nodes has signature {variant.signature!r}, expected {NODES_SIGNATURE!r}; ignored"
        ]
    nodes: list[WsbrdNode] = []
    problems: list[str] = []
    for index, item in enumerate(variant.value):
        eui = _bytes(item[0]) if isinstance(item, list | tuple) and len(item) == 2 else None
        if eui is None or len(eui) != 8 or not isinstance(item[1], dict):
            problems.append(f"Nodes[{index}]: not an 8-byte EUI-64 with properties; skipped")
            continue
        fields: dict[str, Any] = {}
        for key, expected in NODE_KEYS.items():
            got = item[1].get(key)
            if got is None:
                continue
            signature = getattr(got, "signature", None)
            if signature != expected:
                problems.append(
                    f"node {eui.hex()}: {key!r} has signature {signature!r}, expected "
                    f"{expected!r}; skipped"
                )
                continue
            fields[key] = got.value
        rssi = fields.get("rssi")
        nodes.append(
            WsbrdNode(
                eui64=eui,
                role=fields.get("node_role"),
                is_border_router=bool(fields.get("is_border_router", False)),
                is_authenticated=bool(fields.get("is_authenticated", False)),
                is_neighbor=bool(fields.get("is_neighbor", False)),
                rssi_dbm=None if rssi is None else int(rssi) - RSSI_OFFSET_DBM,
                lqi=fields.get("lqi"),
                rsl_dbm=fields.get("rsl"),
                rsl_adv_dbm=fields.get("rsl_adv"),
            )
        )
    return nodes, problems


def parse_graph(variant: VariantLike) -> tuple[list[GraphEntry] | None, list[str]]:
    """``RoutingGraph`` → records; ``None`` (keep what you had) when the property itself is
    malformed. An entry whose address is not 16 bytes is skipped, as is such a parent."""
    if variant.signature != GRAPH_SIGNATURE:
        return None, [
            f"RoutingGraph has signature {variant.signature!r}, expected {GRAPH_SIGNATURE!r}; "
            "ignored"
        ]
    entries: list[GraphEntry] = []
    problems: list[str] = []
    for index, item in enumerate(variant.value):
        address = _bytes(item[0]) if isinstance(item, list | tuple) and len(item) == 3 else None
        if address is None or len(address) != 16:
            problems.append(f"RoutingGraph[{index}]: not a 16-byte IPv6 address; skipped")
            continue
        parents: list[bytes] = []
        for parent in item[2] if isinstance(item[2], list) else []:
            got = _bytes(parent)
            if got is None or len(got) != 16:
                problems.append(
                    f"RoutingGraph {ipv6.format_address(address)}: a parent address of "
                    f"{len(got) if got is not None else '?'} bytes; skipped"
                )
                continue
            parents.append(got)
        entries.append(GraphEntry(address, bool(item[1]), tuple(parents)))
    return entries, problems


def build_graph(entries: Sequence[GraphEntry], root: bytes) -> Graph:
    """Node → parents by EUI-64. The border router is the entry whose IID is ``root``'s, or
    else the first entry with no parents (wsbrd lists its own address first, parentless)."""
    root_address = next(
        (e.ipv6 for e in entries if ipv6.eui64_from_address(e.ipv6) == root), None
    ) or next((e.ipv6 for e in entries if not e.parents), None)

    def node_of(address: bytes) -> bytes:
        return root if address == root_address else ipv6.eui64_from_address(address)

    parents: dict[bytes, list[bytes]] = {}
    addresses: dict[bytes, bytes] = {}
    for entry in entries:
        node = node_of(entry.ipv6)
        addresses[node] = entry.ipv6
        if node == root:
            continue
        parents[node] = [node_of(p) for p in entry.parents]
    return Graph(parents, addresses, root_address)


def unavailable_fields(noise_floor_dbm: float | None) -> dict[str, str]:
    """The neighbour-row fields wsbrd cannot supply, with why (wsbrd's ``Nodes`` carries
    rssi, lqi, rsl and rsl_adv per neighbour, and nothing else about the link)."""
    missing = {
        "channel": "wsbrd reports no per-neighbour channel (the FAN hops channels)",
        "noise_floor_dbm": "wsbrd reports no noise floor",
        "snr_percentiles_db": "wsbrd reports no per-frame SNR",
        "etx": "wsbrd reports no ETX",
        "latency_s": "wsbrd reports no round-trip times",
        "frames_heard": "wsbrd reports no frame counts",
        "last_heard_s_ago": "wsbrd reports no last-heard time",
        "colour": "needs last-heard time, ETX and latency, which wsbrd does not report",
    }
    if noise_floor_dbm is None:
        why = "wsbrd reports no noise floor (set mesh.wsbrd.noise_floor_dbm for an estimate)"
        missing["snr_db"] = why
        missing["snr_class"] = why
    return {field: f"{NOT_AVAILABLE}: {why}" for field, why in missing.items()}


def estimated_fields(noise_floor_dbm: float | None) -> dict[str, str]:
    """The fields derived rather than measured: SNR (and its class) from RSL and the
    configured noise-floor calibration."""
    if noise_floor_dbm is None:
        return {}
    how = f"estimate: RSL minus the configured noise floor of {noise_floor_dbm:g} dBm"
    return {"snr_db": how, "snr_class": how}


def _snr_class(snr_db: float, limits: LinkThresholds) -> str:
    if snr_db < limits.snr_floor_db:
        return "low"
    if snr_db < limits.snr_ok_db:
        return "marginal"
    return "ok"


def neighbour_rows(
    nodes: Sequence[WsbrdNode],
    graph: Graph,
    root: bytes,
    *,
    noise_floor_dbm: float | None,
    limits: LinkThresholds,
) -> list[dict[str, Any]]:
    """One row per node wsbrd talks to directly (``is_neighbor``), the border router itself
    left out; a figure wsbrd left out for that node is None."""
    rows = []
    for node in nodes:
        if not node.is_neighbor or node.eui64 == root or node.role == ROLE_BORDER_ROUTER:
            continue
        if node.is_border_router:
            continue
        row = empty_row(node.eui64)
        address = graph.addresses.get(node.eui64)
        row["ipv6"] = None if address is None else ipv6.format_address(address)
        row["rssi_dbm"] = node.rssi_dbm
        row["lqi"] = node.lqi
        row["rsl_in_dbm"] = node.rsl_dbm
        row["rsl_out_dbm"] = node.rsl_adv_dbm
        if noise_floor_dbm is not None and node.rsl_dbm is not None:
            snr = float(node.rsl_dbm) - noise_floor_dbm
            row["snr_db"] = snr
            row["snr_class"] = _snr_class(snr, limits)
        rows.append(row)
    return rows
