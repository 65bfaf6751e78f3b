"""The wsbrd backend: Silicon Labs' Linux border router runs the FAN; we read it over D-Bus.

wsbrd owns the radio (its RCP), the join, the keys and RPL. The gateway reads ``Nodes`` and
``RoutingGraph`` once at start, again whenever wsbrd signals them changed (wsbrd sends
PropertiesChanged with the names *invalidated*, not the values, so a signal means "read again"),
and every ``poll_s`` in case a signal was missed. The parent sets go into the one routing table
through :class:`~.backend.ParentSync`; meters are reached by IPv6 through wsbrd's TUN
interface with ordinary UDP sockets (the kernel routes them), the address looked up in the
latest ``RoutingGraph`` at each send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, DBusError

from firmware_agent.clock import Clock
from firmware_agent.collector.link import LinkTimeout, UdpMeterLink
from firmware_agent.config import Config
from firmware_agent.mesh import ipv6
from firmware_agent.mesh.backend import MeshBackendError, MeshEvent, MeshEvents, ParentSync
from firmware_agent.mesh.neighbours import LinkThresholds
from firmware_agent.mesh.routes import RoutingTable
from firmware_agent.mesh.wsbrd_model import (
    BUS_NAME,
    INTERFACE,
    OBJECT_PATH,
    Graph,
    WsbrdNode,
    build_graph,
    estimated_fields,
    neighbour_rows,
    parse_graph,
    parse_nodes,
    unavailable_fields,
)

log = logging.getLogger(__name__)

PROPERTIES = "org.freedesktop.DBus.Properties"
#: How long one D-Bus call may take before the bus counts as unresponsive.
CALL_TIMEOUT_S = 5.0
#: A placeholder root until wsbrd's HwAddress is read at start().
_NO_ROOT = bytes(8)


class NoRouteToMeter(LinkTimeout):
    """wsbrd's RoutingGraph has no address for the meter (not joined, or gone): to the
    collector a failed read, as a meter that does not answer."""


class WsbrdMeterLink:
    """A :class:`~firmware_agent.collector.link.MeterLink` to one node: the node's IPv6 address
    is looked up in wsbrd's latest RoutingGraph at every request (a node that rejoined under
    another prefix is still reached), then the frame goes over an OS UDP socket."""

    def __init__(self, backend: WsbrdBackend, node: bytes, port: int) -> None:
        self.backend = backend
        self.node = node
        self.port = port
        self._udp: UdpMeterLink | None = None

    async def request(self, frame: bytes, timeout: float) -> bytes:
        address = self.backend.address_of(self.node)
        if address is None:
            raise NoRouteToMeter(
                f"meter {self.node.hex(':')}: not in wsbrd's RoutingGraph (not joined?)"
            )
        host = ipv6.format_address(address)
        if self._udp is None or self._udp.host != host:
            await self.close()
            self._udp = UdpMeterLink(host, self.port)
        return await self._udp.request(frame, timeout)

    async def receive(self, timeout: float) -> bytes:
        """The next datagram from the meter without sending (after a stale one)."""
        if self._udp is None:
            raise LinkTimeout(f"meter {self.node.hex(':')}: nothing sent, nothing to wait for")
        return await self._udp.receive(timeout)

    async def close(self) -> None:
        if self._udp is not None:
            await self._udp.close()
        self._udp = None


class WsbrdBackend:
    """:class:`~.backend.MeshBackend` over wsbrd's D-Bus API.

    ``bus_address`` overrides ``config.mesh.wsbrd.bus`` (tests run a private dbus-daemon).
    ``routes`` is replaced at :meth:`start` by a table rooted at wsbrd's HwAddress.
    """

    kind = "wsbrd"

    def __init__(
        self,
        config: Config,
        clock: Clock,
        rng: random.Random,
        *,
        bus_address: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.settings = config.mesh.wsbrd
        bus = bus_address or self.settings.bus
        self._bus_text = bus
        self._bus_type: BusType | None = {"system": BusType.SYSTEM, "session": BusType.SESSION}.get(
            bus
        )
        self._bus_address = None if self._bus_type is not None else bus
        mesh = config.mesh
        self.limits = LinkThresholds(snr_ok_db=mesh.snr_ok_db, snr_floor_db=mesh.snr_floor_db)
        noise = self.settings.noise_floor_dbm
        self.unavailable: Mapping[str, str] = unavailable_fields(noise)
        self.estimated: Mapping[str, str] = estimated_fields(noise)
        self.routes = self._table(_NO_ROOT)
        self._sync = ParentSync(self.routes)
        self.events = MeshEvents(self.routes)
        self._listeners: list[Callable[[MeshEvent], None]] = []
        self._root = _NO_ROOT
        self._identity: dict[str, Any] = {"backend": self.kind}
        self._nodes: list[WsbrdNode] = []
        self._graph = Graph({}, {}, None)
        self._bus: MessageBus | None = None
        self._dirty = asyncio.Event()
        self.problems = 0  # malformed values seen on the bus (each logged)
        self.reads = 0  # completed re-reads of Nodes and RoutingGraph

    def _table(self, root: bytes) -> RoutingTable:
        mesh = self.config.mesh
        return RoutingTable(
            root,
            snr_floor_db=mesh.snr_floor_db,
            hysteresis_db=mesh.snr_hysteresis_db,
            default_lifetime_s=mesh.dao_lifetime_s,
            follow_preference=True,  # the view shows the route wsbrd takes
        )

    # -- the seam -------------------------------------------------------------------------------

    @property
    def root(self) -> bytes:
        return self._root

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def neighbour_rows(self, now: float) -> list[dict[str, Any]]:
        return neighbour_rows(
            self._nodes,
            self._graph,
            self._root,
            noise_floor_dbm=self.settings.noise_floor_dbm,
            limits=self.limits,
        )

    def link(self, node: bytes) -> WsbrdMeterLink:
        return WsbrdMeterLink(self, bytes(node), self.settings.port)

    def address_of(self, node: bytes) -> bytes | None:
        """The node's IPv6 address in wsbrd's latest RoutingGraph, or None."""
        return self._graph.addresses.get(node)

    def on_push(
        self, handler: Callable[[bytes, bytes], None], is_push: Callable[[bytes], bool]
    ) -> None:
        """Meters' pushes reach the gateway's address through wsbrd's TUN and the kernel, so
        the collector's push listener (``collector.push_bind``) takes them, not wsbrd."""

    def add_listener(self, listener: Callable[[MeshEvent], None]) -> None:
        self._listeners.append(listener)
        self.events.add_listener(listener)

    async def start(self) -> None:
        """Connect, check wsbrd is on the bus, read its identity, Nodes and RoutingGraph."""
        where = self._bus_text if self._bus_type is None else f"the {self._bus_text} bus"
        try:
            bus = MessageBus(
                bus_address=self._bus_address, bus_type=self._bus_type or BusType.SYSTEM
            )
            async with asyncio.timeout(CALL_TIMEOUT_S):
                self._bus = await bus.connect()
        except AuthError as exc:
            raise MeshBackendError(f"wsbrd: access denied by D-Bus at {where}: {exc}") from exc
        except (OSError, TimeoutError, ValueError) as exc:
            raise MeshBackendError(f"wsbrd: D-Bus not reachable at {where}: {exc}") from exc
        try:
            owned = await self._call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                [BUS_NAME],
            )
            if not owned[0]:
                raise MeshBackendError(
                    f"wsbrd not on the bus (is wsbrd running?): no {BUS_NAME} on {where}"
                )
            hwaddr = await self._get("HwAddress")
            if hwaddr.signature != "ay" or len(hwaddr.value) != 8:
                raise MeshBackendError(
                    f"wsbrd: HwAddress is {hwaddr.signature!r} {hwaddr.value!r}, not an EUI-64"
                )
            self._set_root(bytes(hwaddr.value))
            await self._read_identity()
            self._bus.add_message_handler(self._on_message)
            await self._call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
                "s",
                [
                    f"type='signal',interface='{PROPERTIES}',member='PropertiesChanged',"
                    f"path='{OBJECT_PATH}',arg0='{INTERFACE}'"
                ],
            )
            await self.refresh()
        except MeshBackendError:
            await self.close()
            raise
        except DBusError as exc:
            await self.close()
            if "AccessDenied" in exc.type:
                raise MeshBackendError(
                    f"wsbrd: access denied to {BUS_NAME} on {where} (the D-Bus policy must "
                    f"allow this user to talk to it): {exc.text}"
                ) from exc
            raise MeshBackendError(f"wsbrd: {exc.type}: {exc.text}") from exc
        except (OSError, TimeoutError, EOFError) as exc:
            await self.close()
            raise MeshBackendError(f"wsbrd: D-Bus connection at {where} failed: {exc}") from exc

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"wsbrd": self.run()}

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.remove_message_handler(self._on_message)
            bus.disconnect()
            with contextlib.suppress(TimeoutError, OSError, EOFError):
                waiting = bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await waiting

    # -- more than the seam ---------------------------------------------------------------------

    async def refresh_routes(self) -> None:
        """Ask wsbrd to make every node send a DAO now (IncrementRplDtsn): downward routes
        refreshed on demand, e.g. before a view-mesh on a meter that just moved."""
        await self._call(BUS_NAME, OBJECT_PATH, INTERFACE, "IncrementRplDtsn", "", [])

    async def run(self) -> None:
        """Re-read on every change signal and every ``poll_s``; a failed read is logged and
        tried again at the next signal or poll (wsbrd restarting is not the agent's end)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_s):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.refresh()
            except (DBusError, OSError, TimeoutError, EOFError, MeshBackendError) as exc:
                log.warning("wsbrd: cannot read Nodes/RoutingGraph: %s", exc)

    async def refresh(self) -> None:
        """Read Nodes and RoutingGraph and bring the routing table and rows up to date."""
        nodes = await self._get("Nodes")
        graph = await self._get("RoutingGraph")
        self._apply(nodes, graph)
        self.reads += 1

    # -- internals ------------------------------------------------------------------------------

    def _set_root(self, root: bytes) -> None:
        if root == self._root:
            return
        self._root = root
        self.routes = self._table(root)
        self._sync = ParentSync(self.routes)
        self.events = MeshEvents(self.routes)
        for listener in self._listeners:
            self.events.add_listener(listener)
        self._identity["hwaddr"] = root.hex()

    def _apply(self, nodes: Variant | None, graph: Variant | None) -> None:
        if nodes is not None:
            parsed_nodes, problems = parse_nodes(nodes)
            self._complain(problems)
            if parsed_nodes is not None:
                self._nodes = parsed_nodes
        if graph is not None:
            entries, problems = parse_graph(graph)
            self._complain(problems)
            if entries is not None:
                self._graph = build_graph(entries, self._root)
                now = self.clock.monotonic()
                self._sync.apply(self._graph.parents, now)
                self.events.poll(now)

    def _complain(self, problems: list[str]) -> None:
        for problem in problems:
            self.problems += 1
            log.warning("wsbrd: malformed value on the bus: %s", problem)

    def _on_message(self, message: Message) -> None:
        if (
            message.message_type is not MessageType.SIGNAL
            or message.member != "PropertiesChanged"
            or message.path != OBJECT_PATH
            or not message.body
            or message.body[0] != INTERFACE
        ):
            return
        try:
            _, changed, invalidated = message.body
            names = set(changed) | set(invalidated)
            if not names & {"Nodes", "RoutingGraph"}:
                return
            if "Nodes" in changed or "RoutingGraph" in changed:
                self._apply(changed.get("Nodes"), changed.get("RoutingGraph"))
            if "Nodes" in invalidated or "RoutingGraph" in invalidated:
                self._dirty.set()
        except (ValueError, TypeError, AttributeError) as exc:
            self.problems += 1
            log.warning("wsbrd: malformed PropertiesChanged signal %r: %s", message.body, exc)

    async def _read_identity(self) -> None:
        for name, key in (
            ("RcpApiVersion", "rcp_api_version"),
            ("WisunNetworkName", "network_name"),
            ("WisunPanId", "pan_id"),
            ("WisunFanVersion", "fan_version"),
            ("WisunDomain", "domain"),
        ):
            try:
                value = (await self._get(name)).value
            except DBusError:
                continue  # older wsbrd: not every property exists
            self._identity[key] = (
                ".".join(map(str, value)) if isinstance(value, list | tuple) else value
            )
        version = self._identity.get("rcp_api_version")
        self._identity["ncp_version"] = f"wsbrd (RCP API {version or '?'})"
        self._identity["channel"] = None  # the FAN hops: no one channel

    async def _get(self, name: str) -> Variant:
        reply = await self._call(BUS_NAME, OBJECT_PATH, PROPERTIES, "Get", "ss", [INTERFACE, name])
        value = reply[0]
        if not isinstance(value, Variant):
            raise MeshBackendError(f"wsbrd: Get({name}) returned {value!r}, not a variant")
        return value

    async def _call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
    ) -> list[Any]:
        bus = self._bus
        if bus is None:
            raise MeshBackendError("wsbrd: not connected to D-Bus")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        async with asyncio.timeout(CALL_TIMEOUT_S):
            reply = await bus.call(message)
        if reply is None:
            raise MeshBackendError(f"wsbrd: no reply to {member}")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text)
        return list(reply.body)
