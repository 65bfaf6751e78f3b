"""The emulated wsbrd's network: who has joined, with which address, parents and link figures.

Sans-IO: tests (and ``python -m hil.wsbrd``) change it with :meth:`WsbrdModel.add`,
:meth:`~WsbrdModel.remove`, :meth:`~WsbrdModel.reparent`; the D-Bus service renders it as
wsbrd's ``Nodes`` / ``RoutingGraph`` values (the real daemon's shapes, see wisun-br-linux's
DBUS.md) and signals a change to listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from firmware_agent.mesh import ipv6

#: wsbrd sends rssi as dBm + 174 in one byte.
RSSI_OFFSET_DBM = 174


@dataclass
class EmulatedNode:
    """One joined node. ``parents`` are EUI-64s (the root's included), most preferred first;
    link figures are None when wsbrd would leave them out. ``extra`` entries are added to (or
    replace) the node's ``Nodes`` dict as they are: a test's way to send a malformed one."""

    eui64: bytes
    address: bytes
    parents: list[bytes]
    rssi_dbm: int | None = None
    lqi: int | None = None
    rsl_dbm: int | None = None
    rsl_adv_dbm: int | None = None
    role: int | None = 1  # Wi-SUN's node_role: 1 FFN (FAN 1.1), 2 LFN, None: FAN 1.0 FFN
    authenticated: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class WsbrdModel:
    """The border router and its nodes."""

    def __init__(self, root: bytes, prefix: bytes) -> None:
        if len(root) != 8 or len(prefix) != 8:
            raise ValueError("root is an 8-byte EUI-64 and prefix an 8-byte /64 prefix")
        self.root = root
        self.prefix = prefix
        self.root_address = ipv6.address_in_prefix(prefix, root)
        self.nodes: dict[bytes, EmulatedNode] = {}
        #: Raw RoutingGraph entries appended as they are (malformed-value tests).
        self.raw_graph_entries: list[Any] = []
        self.dtsn = 0  # IncrementRplDtsn calls
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def add(
        self,
        eui64: bytes,
        parents: Sequence[bytes],
        *,
        address: bytes | None = None,
        rssi_dbm: int | None = None,
        lqi: int | None = None,
        rsl_dbm: int | None = None,
        rsl_adv_dbm: int | None = None,
        role: int | None = 1,
    ) -> EmulatedNode:
        """A node joins under ``parents``; its address is the prefix + its EUI-64's IID unless
        given. A node whose first parent is the root is a neighbour of the border router."""
        node = EmulatedNode(
            eui64,
            address if address is not None else ipv6.address_in_prefix(self.prefix, eui64),
            list(parents),
            rssi_dbm,
            lqi,
            rsl_dbm,
            rsl_adv_dbm,
            role,
        )
        self.nodes[eui64] = node
        self.changed()
        return node

    def remove(self, eui64: bytes) -> None:
        del self.nodes[eui64]
        self.changed()

    def reparent(self, eui64: bytes, parents: Sequence[bytes]) -> None:
        self.nodes[eui64].parents = list(parents)
        self.changed()

    def increment_dtsn(self) -> None:
        self.dtsn += 1

    def address_of(self, eui64: bytes) -> bytes:
        return self.root_address if eui64 == self.root else self.nodes[eui64].address

    def is_neighbour(self, node: EmulatedNode) -> bool:
        return bool(node.parents) and node.parents[0] == self.root

    # -- renderings (plain values; the service wraps them in variants) --------------------------

    def graph(self) -> list[list[Any]]:
        """``RoutingGraph``: the border router first with no parents, then every node."""
        entries: list[list[Any]] = [[self.root_address, False, []]]
        for node in self.nodes.values():
            parents = [
                self.address_of(p) for p in node.parents if p == self.root or p in self.nodes
            ]
            entries.append([node.address, node.role == 2, parents])
        return entries + list(self.raw_graph_entries)

    def node_entries(self) -> list[tuple[bytes, dict[str, tuple[str, Any]]]]:
        """``Nodes`` as (EUI-64, key → (signature, value)); the border router first, as
        wsbrd lists itself (a neighbour with no link figures)."""
        out: list[tuple[bytes, dict[str, tuple[str, Any]]]] = [
            (
                self.root,
                {
                    "is_border_router": ("b", True),
                    "node_role": ("y", 0),
                    "is_neighbor": ("b", True),
                },
            )
        ]
        for node in self.nodes.values():
            props: dict[str, tuple[str, Any]] = {"is_authenticated": ("b", node.authenticated)}
            if node.role is not None:
                props["node_role"] = ("y", node.role)
            props["eapol_target"] = ("ay", self.root_address)
            if self.is_neighbour(node):
                props["is_neighbor"] = ("b", True)
                if node.rssi_dbm is not None:
                    props["rssi"] = ("y", max(0, min(255, node.rssi_dbm + RSSI_OFFSET_DBM)))
                if node.rsl_dbm is not None:
                    props["rsl"] = ("i", node.rsl_dbm)
                if node.rsl_adv_dbm is not None:
                    props["rsl_adv"] = ("i", node.rsl_adv_dbm)
                if node.lqi is not None:
                    props["lqi"] = ("y", node.lqi)
            props.update(node.extra)
            out.append((node.eui64, props))
        return out
