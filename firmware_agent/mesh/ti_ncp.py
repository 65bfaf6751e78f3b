"""The TI Wi-SUN NCP backend: a TI board runs the whole FAN stack; we read its view over Spinel.

The I/O edge around :mod:`.ti_spinel`: a small Spinel property host (TID-matched GET/SET, IPv6
packets on STREAM_NET) and :class:`TiNcpBackend`, which checks the board is a TI Wi-SUN NCP
(not an RCP meant for our own stack), brings its stack up, and every ``poll_s`` turns
NUM_CONNECTED_DEVICES, CONNECTED_DEVICES and DODAG_ROUTE into parent sets for the one routing
table. Meters are reached with IPv6/UDP packets over STREAM_NET (DLMS WRAPPER, port 4059).

TI's own host daemon crashes when the device list is read back to back or before the stack is
up, and the board's firmware keeps the listing's paging state itself; so every topology access
here goes through one pacer (at least ``min_gap_s`` apart, under one lock) and none is made
while the stack is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from drivers.framing import (
    ByteTransport,
    FrameTransport,
    HdlcFrameTransport,
    as_frame_transport,
)
from drivers.host_link import LinkStats, SpinelHost
from drivers.pty_spawn import SpawnedRcpTransport, rcp_command
from drivers.spi import SpiTransport, parse_spi_url
from drivers.spinel import (
    Cmd,
    Prop,
    SpinelError,
    SpinelFrame,
    Status,
    is_reset_status,
    pack,
    status_name,
    unpack,
    unpack_uint,
)
from drivers.transceiver import RadioError, RadioTimeout
from drivers.uart import SerialTransport, parse_uart_url
from firmware_agent.clock import Clock
from firmware_agent.collector.link import LinkError, LinkTimeout, MeterLink
from firmware_agent.config import Config
from firmware_agent.mesh import ipv6
from firmware_agent.mesh import ti_spinel as ti
from firmware_agent.mesh.backend import (
    NOT_AVAILABLE,
    MeshBackendError,
    MeshEvent,
    MeshEvents,
    ParentSync,
    empty_row,
)
from firmware_agent.mesh.ipv6 import eui64_from_address
from firmware_agent.mesh.routes import RoutingTable
from firmware_agent.mesh.stack import prefix_bytes

log = logging.getLogger(__name__)

#: Stands in for the border router's EUI-64 until ``start()`` reads HWADDR.
UNKNOWN_ROOT = bytes(8)
#: How often NET_STACK_UP is asked while waiting for the stack.
STACK_POLL_S = 0.2

_WHY = "the TI NCP's Spinel interface"


def unavailable_fields(*, rsl: bool, noise_floor_dbm: float | None) -> dict[str, str]:
    """The neighbour-row fields this NCP cannot supply, with why. ``rsl``: the firmware
    answers PHY_NBR_METRICS (RSL in and out per neighbour); older images do not."""
    missing = {
        "channel": "the NCP hops channels itself and reports none per neighbour",
        "rssi_dbm": f"{_WHY} reports no per-frame RSSI",
        "lqi": f"{_WHY} reports no LQI",
        "noise_floor_dbm": f"{_WHY} reports no noise floor",
        "snr_percentiles_db": f"{_WHY} reports no per-frame SNR",
        "etx": f"{_WHY} reports no ETX",
        "latency_s": "the NCP does not time its links",
        "frames_heard": "the NCP counts no frames per neighbour",
        "last_heard_s_ago": "the NCP reports no last-heard time",
        "colour": "needs last-heard time, ETX and latency, which the NCP does not report",
    }
    if not rsl:
        why = "this NCP image does not answer PHY_NBR_METRICS"
        missing["rsl_in_dbm"] = missing["rsl_out_dbm"] = why
        missing["snr_db"] = missing["snr_class"] = f"no RSL to estimate it from ({why})"
    elif noise_floor_dbm is None:
        why = f"{_WHY} reports no noise floor (set mesh.ti_ncp.noise_floor_dbm for an estimate)"
        missing["snr_db"] = missing["snr_class"] = why
    return {field: f"{NOT_AVAILABLE}: {why}" for field, why in missing.items()}


def estimated_fields(*, rsl: bool, noise_floor_dbm: float | None) -> dict[str, str]:
    """SNR (and its class) derived from RSL in and the configured noise-floor calibration."""
    if not rsl or noise_floor_dbm is None:
        return {}
    how = f"estimate: RSL minus the configured noise floor of {noise_floor_dbm:g} dBm"
    return {"snr_db": how, "snr_class": how}


def _snr_class(snr_db: float, floor_db: float, ok_db: float) -> str:
    if snr_db < floor_db:
        return "low"
    return "marginal" if snr_db < ok_db else "ok"


class NcpError(Exception):
    """A request the NCP refused or did not answer; the message names the property."""


class NcpRefused(NcpError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NcpTimeout(NcpError):
    pass


@dataclass
class NcpHostStats(LinkStats):
    resets: int = 0


class SpinelPropertyHost:
    """Property GET/SET on the NCP (values as raw bytes; a LAST_STATUS other than OK is
    ``NcpRefused``) over the shared Spinel request/reply host; unsolicited STREAM_NET values
    and board resets go to callbacks. No board reset at open: resetting a border router would
    drop the whole network."""

    def __init__(
        self,
        link: FrameTransport,
        *,
        name: str = "ti-ncp",
        request_timeout: float = 2.0,
        on_stream_net: Callable[[bytes], None] | None = None,
        on_reset: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.stats = NcpHostStats()
        self._timeout = request_timeout
        self._on_stream_net = on_stream_net
        self._on_reset = on_reset
        self._spinel = SpinelHost(
            link,
            name=name,
            stats=self.stats,
            on_unsolicited=self._on_unsolicited,
            describe=ti_prop_name,
        )

    @property
    def failure(self) -> RadioError | None:
        return self._spinel.failure

    async def open(self) -> None:
        await self._spinel.open()

    async def close(self) -> None:
        await self._spinel.close()

    async def get(self, prop: int) -> bytes:
        return await self._request(Cmd.PROP_VALUE_GET, prop, b"")

    async def set(self, prop: int, value: bytes) -> bytes:
        return await self._request(Cmd.PROP_VALUE_SET, prop, value)

    async def _request(self, command: int, prop: int, payload: bytes) -> bytes:
        try:
            reply = await self._spinel.request(command, prop, payload, timeout=self._timeout)
        except RadioTimeout as exc:
            raise NcpTimeout(str(exc)) from None
        if reply.prop == Prop.LAST_STATUS and prop != Prop.LAST_STATUS:
            status = _status_of(reply.payload)
            if status != Status.OK:
                what = f"{Cmd(command).name} {ti_prop_name(prop)}"
                raise NcpRefused(f"{self.name}: NCP refused {what}: {status_name(status)}", status)
        return reply.payload

    def _on_unsolicited(self, frame: SpinelFrame) -> None:
        if frame.command != Cmd.PROP_VALUE_IS:
            return
        if frame.prop == ti.PROP_STREAM_NET and self._on_stream_net is not None:
            self._on_stream_net(frame.payload)
        elif frame.prop == Prop.LAST_STATUS:
            status = _status_of(frame.payload)
            if is_reset_status(status):
                self.stats.resets += 1
                # A board that reset answers nothing it was asked before.
                self._spinel.abandon(
                    lambda prop: NcpError(
                        f"{self.name}: the NCP reset ({status_name(status)}) before "
                        f"answering {ti_prop_name(prop)}"
                    )
                )
                if self._on_reset is not None:
                    self._on_reset(status)


def _status_of(payload: bytes) -> int:
    try:
        return unpack_uint(payload, 0)[0]
    except SpinelError:
        return int(Status.PARSE_ERROR)


def ti_prop_name(prop: int) -> str:
    names = {
        ti.PROP_NET_IF_UP: "NET_IF_UP",
        ti.PROP_NET_STACK_UP: "NET_STACK_UP",
        ti.PROP_DODAG_ROUTE_DEST: "DODAG_ROUTE_DEST",
        ti.PROP_DODAG_ROUTE: "DODAG_ROUTE",
        ti.PROP_NUM_CONNECTED_DEVICES: "NUM_CONNECTED_DEVICES",
        ti.PROP_CONNECTED_DEVICES: "CONNECTED_DEVICES",
        ti.PROP_STREAM_NET: "STREAM_NET",
        ti.PROP_PHY_NUM_NBRS: "PHY_NUM_NBRS",
        ti.PROP_PHY_NBR_METRICS: "PHY_NBR_METRICS",
    }
    if prop in names:
        return names[prop]
    try:
        return Prop(prop).name
    except ValueError:
        return f"PROP_{prop}"


def open_ncp_link(url: str) -> tuple[FrameTransport, float]:
    """The frame link a ``radio.url`` names, and its request timeout (URL ``timeout=``).
    ``spinel+pty://`` spawns ``hil rcp`` with the URL's options (``personality=ncp`` for the
    virtual NCP)."""
    scheme = urlsplit(url).scheme
    try:
        if scheme == "spinel+uart":
            opts = parse_uart_url(url)
            serial = SerialTransport(opts.port, baudrate=opts.baudrate, rtscts=opts.rtscts)
            return HdlcFrameTransport(serial), opts.timeout or 2.0
        if scheme == "spinel+spi":
            spi = parse_spi_url(url)
            return SpiTransport(spi), spi.timeout or 2.0
        if scheme == "spinel+pty":
            return HdlcFrameTransport(SpawnedRcpTransport(rcp_command(url))), 2.0
    except RadioError as exc:
        raise MeshBackendError(f"ti-ncp: {exc}") from exc
    raise MeshBackendError(
        f"ti-ncp: radio.url {url!r}: a TI NCP is reached by spinel+uart://, spinel+spi:// or "
        "spinel+pty://"
    )


@dataclass
class TiNcpStats:
    syncs: int = 0
    sync_failures: int = 0
    topology_reads: int = 0
    stack_downs: int = 0
    bad_values: int = 0
    packets_in: int = 0
    packets_bad: int = 0
    packets_unmatched: int = 0


class TiNcpBackend:
    """:class:`~.backend.MeshBackend` for a TI Wi-SUN FAN border router running as an NCP."""

    kind = "ti-ncp"

    def __init__(
        self,
        config: Config,
        clock: Clock,
        rng: random.Random,
        *,
        url: str | None = None,
        transport: FrameTransport | ByteTransport | None = None,
        stack_timeout_s: float = 120.0,
        request_timeout_s: float | None = None,
    ) -> None:
        self.config = config
        self.settings = config.mesh.ti_ncp
        self.clock = clock
        self.rng = rng
        self.url = url or config.radio.url
        self.stats = TiNcpStats()
        self.stack_timeout_s = stack_timeout_s
        self._transport = transport
        self._request_timeout = request_timeout_s
        self._config_prefix = prefix_bytes(config.mesh.prefix)
        self._listeners: list[Callable[[MeshEvent], None]] = []
        self.routes = self._new_table(UNKNOWN_ROOT)
        self._sync = ParentSync(self.routes)
        self._events = MeshEvents(self.routes)
        self._host: SpinelPropertyHost | None = None
        self._root = UNKNOWN_ROOT
        self._identity: dict[str, Any] = {"backend": self.kind}
        self._stack_up = False
        self._pace_lock = asyncio.Lock()
        self._last_topology: float | None = None
        self._br_address: bytes | None = None
        self._addresses: dict[bytes, bytes] = {}
        self._neighbours: set[bytes] = set()
        # PHY_NBR_METRICS: None until asked, False when the image refuses it.
        self._nbr_supported: bool | None = None
        self._metrics: dict[bytes, ti.NeighbourMetrics] = {}
        self._set_fields()
        self._replies: dict[tuple[bytes, int], asyncio.Queue[bytes]] = {}
        self._push_handler: Callable[[bytes, bytes], None] | None = None
        self._is_push: Callable[[bytes], bool] = lambda frame: False
        self.last_error: str | None = None

    def _set_fields(self) -> None:
        rsl = bool(self._nbr_supported)
        noise = self.settings.noise_floor_dbm
        self.unavailable: Mapping[str, str] = unavailable_fields(rsl=rsl, noise_floor_dbm=noise)
        self.estimated: Mapping[str, str] = estimated_fields(rsl=rsl, noise_floor_dbm=noise)

    def _new_table(self, root: bytes) -> RoutingTable:
        mesh = self.config.mesh
        return RoutingTable(
            root, snr_floor_db=mesh.snr_floor_db, hysteresis_db=mesh.snr_hysteresis_db
        )

    # --- MeshBackend ----------------------------------------------------------------------------

    @property
    def root(self) -> bytes:
        return self._root

    def identity(self) -> dict[str, Any]:
        return {
            **self._identity,
            "stack_up": self._stack_up,
            "connected_devices": len(self._addresses),
        }

    def neighbour_rows(self, now: float) -> list[dict[str, Any]]:
        """The border router's radio neighbours with their RSLs (PHY_NBR_METRICS), or, on an
        image without it, its one-hop nodes from DODAG_ROUTE with no figures at all."""
        if not self._nbr_supported:
            rows = []
            for node in sorted(self._neighbours):
                row = empty_row(node)
                row["ipv6"] = ipv6.format_address(self.address_of(node))
                rows.append(row)
            return rows
        mesh = self.config.mesh
        noise = self.settings.noise_floor_dbm
        rows = []
        for node, metrics in sorted(self._metrics.items()):
            row = empty_row(node)
            row["ipv6"] = ipv6.format_address(self.address_of(node))
            row["rsl_in_dbm"] = metrics.rsl_in_dbm
            row["rsl_out_dbm"] = metrics.rsl_out_dbm
            if noise is not None and metrics.rsl_in_dbm is not None:
                snr = metrics.rsl_in_dbm - noise
                row["snr_db"] = snr
                row["snr_class"] = _snr_class(snr, mesh.snr_floor_db, mesh.snr_ok_db)
            rows.append(row)
        return rows

    def link(self, node: bytes) -> MeterLink:
        return TiNcpLink(self, node)

    def add_listener(self, listener: Callable[[MeshEvent], None]) -> None:
        self._listeners.append(listener)

    def on_push(
        self, handler: Callable[[bytes, bytes], None], is_push: Callable[[bytes], bool]
    ) -> None:
        self._push_handler, self._is_push = handler, is_push

    async def start(self) -> None:
        link, timeout = (
            (as_frame_transport(self._transport), 2.0)
            if self._transport is not None
            else open_ncp_link(self.url)
        )
        host = SpinelPropertyHost(
            link,
            request_timeout=self._request_timeout or timeout,
            on_stream_net=self._on_stream_net,
            on_reset=self._on_reset,
        )
        try:
            await host.open()
        except RadioError as exc:
            raise MeshBackendError(f"ti-ncp: cannot open {self.url}: {exc}") from exc
        self._host = host
        try:
            await self._check_identity(host)
            await self._bring_stack_up(self.stack_timeout_s)
            await self._first_sync(host)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, MeshBackendError):
                raise
            if isinstance(exc, NcpError | RadioError | SpinelError):
                text = str(exc)
                reason = text if text.startswith("ti-ncp") else f"ti-ncp: {text}"
                raise MeshBackendError(reason) from exc
            raise

    async def _first_sync(self, host: SpinelPropertyHost) -> None:
        """A board whose stack is up may still refuse topology reads while its network forms
        (TI's firmware answers INVALID_STATE until then): that is not a failure to start."""
        try:
            await self.sync_once()
        except (NcpError, SpinelError) as exc:
            if host.failure is not None:
                raise
            self.stats.sync_failures += 1
            self.last_error = str(exc)
            log.warning("ti-ncp: first topology read failed, polling goes on: %s", exc)

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"ti-ncp-poll": self.run_poll()}

    async def close(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            await host.close()

    # --- start ----------------------------------------------------------------------------------

    async def _check_identity(self, host: SpinelPropertyHost) -> None:
        version = _text(await host.get(Prop.NCP_VERSION), "NCP_VERSION")
        itype = unpack_uint(await host.get(Prop.INTERFACE_TYPE), 0)[0]
        identity = ti.NcpIdentity(version, itype)
        if identity.kind is not ti.NcpKind.TI_WISUN_NCP:
            with contextlib.suppress(NcpError, SpinelError):
                (caps,) = unpack("A(i)", await host.get(Prop.CAPS))
                if isinstance(caps, list):
                    numbers = tuple(c for c in caps if isinstance(c, int))
                    identity = ti.NcpIdentity(version, itype, numbers)
        kind = identity.kind
        if kind is ti.NcpKind.RCP:
            raise MeshBackendError(
                f"radio.url is an RCP, not a TI Wi-SUN NCP: use mesh.backend own ({version!r})"
            )
        if kind is not ti.NcpKind.TI_WISUN_NCP:
            raise MeshBackendError(
                f"radio.url answers as {version!r} (interface type {itype}), not a TI Wi-SUN "
                f"NCP ({ti.TI_STACK_NAME}/…, interface type {ti.INTERFACE_TYPE_WISUN})"
            )
        protocol = ti.describe_protocol_version(await host.get(Prop.PROTOCOL_VERSION))
        (hwaddr,) = unpack("E", await host.get(Prop.HWADDR))
        assert isinstance(hwaddr, bytes)
        self._root = hwaddr
        self.routes = self._new_table(hwaddr)
        self._sync = ParentSync(self.routes)
        self._events = MeshEvents(self.routes)
        self._events.add_listener(self._emit)
        self._identity = {
            "backend": self.kind,
            "ncp_version": version,
            "protocol_version": protocol,
            "interface_type": itype,
            "hwaddr": hwaddr.hex(),
            "channel": None,
        }
        log.info("ti-ncp: %s (%s), EUI-64 %s", version, protocol, hwaddr.hex())

    def _emit(self, event: MeshEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    async def _bring_stack_up(self, timeout: float) -> None:
        """Ask for the interface and the stack, then wait until NET_STACK_UP reads true."""
        host = self._require_host()
        if await self._get_bool(host, ti.PROP_NET_STACK_UP):
            self._stack_up = True
            return
        await host.set(ti.PROP_NET_IF_UP, pack("b", True))
        await host.set(ti.PROP_NET_STACK_UP, pack("b", True))
        deadline = self.clock.monotonic() + timeout
        while not await self._get_bool(host, ti.PROP_NET_STACK_UP):
            if self.clock.monotonic() > deadline:
                raise MeshBackendError(f"ti-ncp: the NCP's stack did not come up in {timeout:g} s")
            await asyncio.sleep(STACK_POLL_S)
        self._stack_up = True
        log.info("ti-ncp: stack up")

    async def _get_bool(self, host: SpinelPropertyHost, prop: int) -> bool:
        (value,) = unpack("b", await host.get(prop))
        return bool(value)

    def _require_host(self) -> SpinelPropertyHost:
        if self._host is None:
            raise MeshBackendError("ti-ncp: not started")
        if self._host.failure is not None:
            raise MeshBackendError(f"ti-ncp: lost the NCP: {self._host.failure}")
        return self._host

    def _on_reset(self, status: int) -> None:
        log.warning("ti-ncp: the NCP reset (%s): its stack is down", status_name(status))
        self._stack_up = False
        self.stats.stack_downs += 1

    # --- topology -------------------------------------------------------------------------------

    async def _topology(self, command: int, prop: int, value: bytes = b"") -> bytes:
        """One topology access, at least ``min_gap_s`` after the previous one, never while the
        stack is down (both crash TI's daemon; the pacer is the only way to these properties)."""
        host = self._require_host()
        async with self._pace_lock:
            if self._last_topology is not None:
                wait = self._last_topology + self.settings.min_gap_s - self.clock.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if not self._stack_up:
                raise NcpError(f"ti-ncp: stack is down; not reading {ti_prop_name(prop)}")
            try:
                if command == Cmd.PROP_VALUE_SET:
                    return await host.set(prop, value)
                return await host.get(prop)
            finally:
                self._last_topology = self.clock.monotonic()
                self.stats.topology_reads += 1

    async def sync_once(self) -> None:
        """Read the device list and each device's route; make the routing table match."""
        if not self._stack_up:
            raise NcpError("ti-ncp: stack is down; topology not read")
        try:
            count = ti.decode_num_connected(
                await self._topology(Cmd.PROP_VALUE_GET, ti.PROP_NUM_CONNECTED_DEVICES)
            )
            addresses = await self._read_devices()
            if count != len(addresses):
                log.info("ti-ncp: %d connected by count, %d listed", count, len(addresses))
            routes = []
            for address in addresses:
                await self._topology(
                    Cmd.PROP_VALUE_SET, ti.PROP_DODAG_ROUTE_DEST, ti.encode_route_dest(address)
                )
                route = ti.decode_dodag_route(
                    await self._topology(Cmd.PROP_VALUE_GET, ti.PROP_DODAG_ROUTE)
                )
                if route.target != address:
                    raise ti.TiValueError(
                        f"DODAG_ROUTE answered for {ipv6.format_address(route.target)}, "
                        f"asked for {ipv6.format_address(address)}"
                    )
                routes.append(route)
            graph = ti.parents_from_routes(routes, self._root)
            metrics = await self._read_neighbours()
        except ti.TiValueError:
            self.stats.bad_values += 1
            raise
        now = self.clock.monotonic()
        self._addresses = dict(ti.addresses_by_node(addresses))
        for route in routes:
            if route.has_route:
                self._br_address = route.addresses[0]
                break
        self._neighbours = {node for node, parents in graph.items() if parents == [self._root]}
        if metrics is not None:
            self._metrics = {m.eui64: m for m in metrics}
        self._sync.apply(graph, now)
        self._events.poll(now)
        self.stats.syncs += 1

    async def _read_neighbours(self) -> list[ti.NeighbourMetrics] | None:
        """PHY_NUM_NBRS then one PHY_NBR_METRICS per neighbour; None on an image without them
        (asked once: a refusal is remembered)."""
        if self._nbr_supported is False:
            return None
        try:
            count = ti.decode_num_nbrs(
                await self._topology(Cmd.PROP_VALUE_GET, ti.PROP_PHY_NUM_NBRS)
            )
        except NcpRefused as exc:
            if exc.status not in (Status.PROP_NOT_FOUND, Status.UNIMPLEMENTED):
                raise
            log.info("ti-ncp: no neighbour metrics from this image (%s)", exc)
            self._nbr_supported = False
            self._set_fields()
            return None
        metrics = [
            ti.decode_nbr_metrics(await self._topology(Cmd.PROP_VALUE_GET, ti.PROP_PHY_NBR_METRICS))
            for _ in range(count)
        ]
        if not self._nbr_supported:
            self._nbr_supported = True
            self._set_fields()
        return metrics

    async def _read_devices(self) -> tuple[bytes, ...]:
        """Pages until the last; a listing the board had begun before us is drained first."""
        pager = ti.DevicePager()
        restarted = False
        for _ in range(2 * ti.LAST_BLOCK):
            block = ti.decode_devices_block(
                await self._topology(Cmd.PROP_VALUE_GET, ti.PROP_CONNECTED_DEVICES)
            )
            if pager.pages_read == 0 and block.index != 0 and not restarted:
                if block.last:
                    restarted = True  # the stale listing ended; the next page starts ours
                continue
            done = pager.feed(block)
            if done is not None:
                return done
        raise ti.TiValueError("CONNECTED_DEVICES: no last block")

    async def run_poll(self) -> None:
        """Sync every ``poll_s``; bring the stack back up after a board reset. Bad values and
        refusals are logged and counted; only a lost link ends the loop."""
        while True:
            await asyncio.sleep(self.settings.poll_s)
            try:
                if not self._stack_up:
                    await self._bring_stack_up(self.stack_timeout_s)
                await self.sync_once()
                self.last_error = None
            except (NcpError, SpinelError, MeshBackendError, RadioError) as exc:
                host = self._host
                if host is None or host.failure is not None:
                    raise MeshBackendError(f"ti-ncp: lost the NCP: {exc}") from exc
                self.stats.sync_failures += 1
                self.last_error = str(exc)
                log.warning("ti-ncp: topology not read: %s", exc)

    # --- datagrams ------------------------------------------------------------------------------

    def address_of(self, node: bytes) -> bytes:
        """The node's address as the NCP listed it, or the network's prefix plus its IID."""
        known = self._addresses.get(node)
        if known is not None:
            return known
        prefix = self._br_address[:8] if self._br_address else self._config_prefix
        return ipv6.address_in_prefix(prefix, node)

    def host_address(self) -> bytes:
        """Our source address: the border router's, as wfantund's TUN interface uses."""
        if self._br_address is not None:
            return self._br_address
        return ipv6.address_in_prefix(self._config_prefix, self._root)

    def _on_stream_net(self, value: bytes) -> None:
        self.stats.packets_in += 1
        try:
            packet = ipv6.decode_ipv6(ti.decode_stream_net(value))
            datagram = ipv6.decode_udp(packet)
        except (ti.TiValueError, ipv6.PacketError) as exc:
            self.stats.packets_bad += 1
            log.warning("ti-ncp: bad STREAM_NET packet %s: %s", value[:64].hex(), exc)
            return
        if (
            self._push_handler is not None
            and datagram.dst_port == self.settings.port
            and self._is_push(datagram.payload)
        ):
            self._push_handler(eui64_from_address(packet.src), datagram.payload)
            return
        queue = self._replies.get((packet.src, datagram.src_port))
        if queue is None or datagram.dst_port != self.settings.port:
            self.stats.packets_unmatched += 1
            log.debug(
                "ti-ncp: datagram from %s matches no request", ipv6.format_address(packet.src)
            )
            return
        queue.put_nowait(datagram.payload)

    async def send_datagram(self, dst: bytes, payload: bytes) -> None:
        src = self.host_address()
        port = self.settings.port
        udp = ipv6.encode_udp(src, dst, ipv6.UdpDatagram(port, port, payload))
        packet = ipv6.encode_ipv6(ipv6.Ipv6Packet(src, dst, ipv6.UDP, udp))
        await self._require_host().set(ti.PROP_STREAM_NET, ti.encode_stream_net(packet))

    def _register(self, dst: bytes) -> asyncio.Queue[bytes]:
        key = (dst, self.settings.port)
        queue = self._replies.get(key)
        if queue is None:
            queue = self._replies[key] = asyncio.Queue()
        return queue


class TiNcpLink:
    """DLMS WRAPPER frames to one meter as UDP datagrams over STREAM_NET (one request at a
    time); replies are picked out by the meter's address and port."""

    def __init__(self, backend: TiNcpBackend, node: bytes) -> None:
        self.backend = backend
        self.node = node
        self._lock = asyncio.Lock()

    async def request(self, frame: bytes, timeout: float) -> bytes:
        async with self._lock:
            dst = self.backend.address_of(self.node)
            queue = self.backend._register(dst)
            while not queue.empty():  # a late answer to an earlier, timed-out request
                queue.get_nowait()
            try:
                await self.backend.send_datagram(dst, frame)
            except (NcpError, RadioError, MeshBackendError, ti.TiValueError) as exc:
                raise LinkError(f"meter {self.node.hex(':')}: {exc}") from exc
            try:
                async with asyncio.timeout(timeout):
                    return await queue.get()
            except TimeoutError:
                raise LinkTimeout(
                    f"meter {self.node.hex(':')} ({ipv6.format_address(dst)}): no reply over "
                    f"the NCP in {timeout:g} s"
                ) from None

    async def receive(self, timeout: float) -> bytes:
        """The next datagram from the meter without sending (after a stale one)."""
        async with self._lock:
            dst = self.backend.address_of(self.node)
            try:
                async with asyncio.timeout(timeout):
                    return await self.backend._register(dst).get()
            except TimeoutError:
                raise LinkTimeout(
                    f"meter {self.node.hex(':')}: no reply over the NCP in {timeout:g} s"
                ) from None

    async def close(self) -> None:
        return None


def _text(value: bytes, what: str) -> str:
    try:
        (text,) = unpack("U", value)
    except SpinelError as exc:
        raise ti.TiValueError(f"{what}: {exc}") from None
    assert isinstance(text, str)
    return text
