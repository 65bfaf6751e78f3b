"""The agent: wires radio → mesh → collector → spool → uplink into one asyncio process.

Shutdown order matters: stop reading meters first, then let the uplink flush what it can,
then close the radio, then the spool. Anything not published stays in the spool for next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import random
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers import default_registry
from drivers.capture import CapturingTransceiver
from drivers.discover import (
    BoardAppeared,
    BoardCandidate,
    BoardMatch,
    BoardWatcher,
    DiscoveryError,
    HotplugEvent,
    list_boards,
    url_with_device,
)
from drivers.pcap import PcapWriter
from drivers.reconnect import RadioEvent, RadioEventKind, ReconnectingTransceiver
from drivers.transceiver import RadioError, RadioInfo, Registry, Transceiver
from firmware_agent.clock import Clock
from firmware_agent.collector import ciphering, push
from firmware_agent.collector.catchup import ProfileMarks
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.firmware import (
    FirmwareImage,
    Progress,
    PushResult,
    ThroughputLimit,
    push_group,
)
from firmware_agent.collector.keys import MeterKeys, load_keys
from firmware_agent.collector.link import MeterLink, TcpMeterLink, UdpMeterLink
from firmware_agent.collector.push_listener import PushListener
from firmware_agent.collector.quarantine import Quarantine
from firmware_agent.collector.records import Alarm
from firmware_agent.collector.scheduler import Collector, MeterStatus, state_path
from firmware_agent.collector.security_reset import ResetResult, security_reset
from firmware_agent.collector.session import SessionFactory, plain_sessions, session_factory
from firmware_agent.config import Config, ConfigError, DiagConfig, MeterConfig
from firmware_agent.diag.agent_source import AgentDiagSource
from firmware_agent.diag.server import DiagServer, DiagSetupError
from firmware_agent.mesh.backend import MeshBackend, MeshBackendError, MeshEvent
from firmware_agent.mesh.external import open_external
from firmware_agent.mesh.ipv6 import eui64_from_address
from firmware_agent.mesh.neighbours import LinkThresholds, Neighbour
from firmware_agent.mesh.own import OwnMeshBackend
from firmware_agent.mesh.route_store import load_table, save_json
from firmware_agent.mesh.routes import RoutingTable, SnapshotError
from firmware_agent.mesh.stack import MeshLinks, MeshStack
from firmware_agent.operations import AgentOperations, commands_config
from firmware_agent.sdnotify import Notifier, WatchdogFeeder, notifier_from_env
from firmware_agent.spool import Priority, Spool, SpoolError
from firmware_agent.uplink import outage
from firmware_agent.uplink.commands import CommandDispatcher
from firmware_agent.uplink.mqtt import Uplink, UplinkTuning

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
#: How often the routing table is written to ``mesh.routes_file`` (and once more at shutdown).
ROUTES_SAVE_S = 60.0


@dataclass(frozen=True)
class MeterView:
    config: MeterConfig
    status: MeterStatus
    neighbour: Neighbour | None  # the gateway's link the meter is reached through (first hop)
    hops: int | None = None  # on the preferred path; None: no route known (not joined)
    # Beside an external border router: its row for the first hop (backend.NEIGHBOUR_FIELDS,
    # None where it has no figure), since there is no Neighbour of our own measuring.
    link_row: dict[str, Any] | None = None


@dataclass(frozen=True)
class Snapshot:
    """What the agent looks like right now: for the live view, the diag API and summaries."""

    gateway_id: str
    radio: RadioInfo | None
    uplink_connected: bool
    uplink_error: str | None
    published_records: int
    spool_depth: int
    readings_total: int
    noise_floor_dbm: float | None
    meters: list[MeterView] = field(default_factory=list)
    link_limits: LinkThresholds | None = None
    alarms_total: int = 0  # alarm records spooled: pushes (last gasp, ...) and the collector's own
    quarantined: int = 0  # payloads nobody could parse ("Malformed Payload")
    # Which stack runs the mesh and what it cannot supply (MeshBackend.identity, unavailable,
    # estimated); empty before the mesh is open.
    mesh: dict[str, Any] = field(default_factory=dict)


def eui64(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


#: APDU tags of frames a meter sends on its own: data-notification, event-notification (plain
#: and glo-ciphered) and general-glo-ciphering, which our client never uses for requests, so
#: over DLMS/UDP it only ever carries a secured push.
PUSH_APDU_TAGS = frozenset(
    {
        push.DATA_NOTIFICATION,
        push.EVENT_NOTIFICATION,
        0xCA,  # glo-event-notification-request
        ciphering.GENERAL_GLO_CIPHERING,
    }
)
WRAPPER_HEADER_BYTES = 8


def is_push_frame(frame: bytes) -> bool:
    """Whether a WRAPPER frame from a meter is a push rather than a reply."""
    return len(frame) > WRAPPER_HEADER_BYTES and frame[WRAPPER_HEADER_BYTES] in PUSH_APDU_TAGS


BoardLister = Callable[[], Sequence[BoardCandidate]]


def matched_radio_factory(
    url: str, match: BoardMatch, registry: Registry, boards: BoardLister = list_boards
) -> Callable[[], Transceiver]:
    """A radio factory that finds the board by its udev properties on every call.

    A replugged board often comes back as another /dev node (the old one was still held open),
    so the node is looked up anew at each (re)open and put into ``url`` in place of its device
    path. No board, or several, raise :class:`~drivers.discover.NoBoardMatched` /
    :class:`~drivers.discover.SeveralBoardsMatched` (RadioErrors naming the match and the boards
    seen). ``boards`` is the udev enumeration; tests hand in their own list.
    """

    def open_matched() -> Transceiver:
        device = match.select(boards()).device_node
        log.info("radio board %s matches %s", device, match)
        return registry.open_url(url_with_device(url, device))

    return open_matched


class HotplugWake:
    """The reconnecting radio's ``sleep``: waits out a backoff delay, but ends it as soon as a
    board that fits the match is plugged in, so a replug is picked up at once instead of after
    up to the backoff's cap (30 s).

    From the first sleep of an outage until the radio is reopened (:meth:`on_radio_event`) or
    the recovery is cancelled, it holds a udev netlink watcher
    (:class:`~drivers.discover.BoardWatcher`), so an arrival during a reopen attempt is not
    missed either. Boards already present when the watch starts do not wake it (the backoff is
    for those). Where udev cannot be watched (no pyudev, no netlink) it is a plain sleep.
    """

    def __init__(self, match: BoardMatch, *, watch_udev: bool = True) -> None:
        self.match = match
        self.watch_udev = watch_udev
        self.wakeups = 0
        self._appeared = asyncio.Event()
        self._seeding = False
        self._watcher: BoardWatcher | None = None

    @property
    def watching(self) -> bool:
        return self._watcher is not None

    def notify(self, event: HotplugEvent) -> None:
        """A hotplug event for this match (the watcher's callback): an arrival ends the sleep."""
        if isinstance(event, BoardAppeared) and not self._seeding:
            self._appeared.set()

    def on_radio_event(self, event: RadioEvent) -> None:
        """The radio's listener: once it is reopened, stop watching udev."""
        if event.kind is RadioEventKind.REOPENED:
            self.stop_watching()

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    async def sleep(self, delay: float) -> None:
        if self.watch_udev and self._watcher is None:
            self._watcher = self._watch()
        try:
            if not self._appeared.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._appeared.wait()
        except asyncio.CancelledError:  # the radio is being closed
            self.stop_watching()
            raise
        if self._appeared.is_set():
            self._appeared.clear()
            self.wakeups += 1
            log.info("radio board matching %s plugged in; reopening now", self.match)

    def _watch(self) -> BoardWatcher | None:
        watcher = BoardWatcher(self.match, self.notify)
        self._seeding = True
        try:
            watcher.start()
        except (DiscoveryError, OSError) as exc:
            log.debug("no hotplug wake-up, backoff only: %s", exc)
            watcher.close()
            return None
        finally:
            self._seeding = False
        return watcher


class Agent:
    """One gateway. ``run()`` until stopped; ``snapshot()`` at any time."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        rng: random.Random | None = None,
        registry: Registry | None = None,
        *,
        with_uplink: bool = True,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        # systemd's notify socket (READY, STATUS, WATCHDOG); silent outside a systemd service.
        self.notifier = notifier or Notifier(None)
        # The simulator runs without an uplink: a broker answers in real time, which a
        # virtual-time loop cannot wait for. Readings then stay in the spool.
        self.with_uplink = with_uplink
        self.clock = clock
        self.rng = rng or random.Random()
        # Which backends radio URLs may name: tests add in-process ones (spinel+loop://).
        self.registry = registry or default_registry()
        self.radio: Transceiver | None = None
        self.capture: PcapWriter | None = None
        self.radio_info: RadioInfo | None = None
        # The mesh as the layers above see it (own stack, wsbrd or a TI NCP); ``stack`` and
        # ``mesh_links`` are set only with our own stack (the probe and the noise floor).
        self.mesh: MeshBackend | None = None
        self.stack: MeshStack | None = None
        self.mesh_links: MeshLinks | None = None
        self.spool: Spool | None = None
        self.uplink: Uplink | None = None
        self.collector: Collector | None = None
        self.pushes: push.PushReceiver | None = None
        self.operations = AgentOperations(self, config.uplink.commands.firmware_dir)
        self.commands: CommandDispatcher | None = None
        self.diag: DiagServer | None = None
        self.push_listener: PushListener | None = None
        self.quarantine: Quarantine | None = None
        self.counters: CounterStore | None = None
        self._keys: dict[str, MeterKeys] = {}
        # Plain meters too: invoke-ids go on per meter across sessions, so a late reply of
        # one session is never taken for the next one's (suite 0 replaces it with keys).
        self._sessions: SessionFactory = plain_sessions()
        self._state_stores: list[Quarantine | ProfileMarks] = []
        self._final_quarantined = 0
        self._links: dict[str, MeterLink] = {}
        self._stop = asyncio.Event()
        self._final_spool_depth = 0
        self._mesh_workers: set[str] = set()
        self._mesh_meters: dict[bytes, MeterConfig] = {}

    def stop(self) -> None:
        self._stop.set()

    def link_for(self, meter: MeterConfig) -> MeterLink:
        link = self._links.get(meter.id)
        if link is None:
            if meter.transport == "mesh":
                assert self.mesh is not None
                link = self.mesh.link(eui64(meter.address))
            elif meter.transport == "udp":
                link = UdpMeterLink(meter.address, meter.port)
            else:
                link = TcpMeterLink(meter.address, meter.port)
            self._links[meter.id] = link
        return link

    async def _open_radio(self) -> tuple[Transceiver, RadioInfo]:
        cfg = self.config.radio
        # A fresh inner radio per (re)open: spinel+pty:// respawns the virtual RCP, a UART
        # reopens its device path. The wrapper re-applies what is set below after each reopen.
        factory: Callable[[], Transceiver] = functools.partial(self.registry.open_url, cfg.url)
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        listener: Callable[[RadioEvent], None] = self._on_radio_event
        if cfg.match is not None:
            # The board is found by udev properties at every (re)open, and a replug ends the
            # backoff wait early. No board or several at first open: a RadioError, exit 1.
            match = BoardMatch(cfg.match)
            factory = matched_radio_factory(cfg.url, match, self.registry)
            wake = HotplugWake(match)
            sleep = wake.sleep

            def listener(event: RadioEvent) -> None:
                wake.on_radio_event(event)
                self._on_radio_event(event)

        radio: Transceiver = ReconnectingTransceiver(
            factory,
            name="radio",
            rng=self.rng,
            sleep=sleep,
            listener=listener,
        )
        if cfg.capture_file is not None:
            # Outermost, so one capture file spans every reopen of the board.
            self.capture = PcapWriter.open(
                cfg.capture_file, cfg.capture_format, max_bytes=cfg.capture_max_bytes
            )
            radio = CapturingTransceiver(radio, self.capture, self.clock)
            log.info("capturing radio frames to %s (%s)", cfg.capture_file, cfg.capture_format)
        info = await radio.open()
        await radio.set_channel(cfg.channel)
        await radio.set_tx_power(cfg.tx_power_dbm)
        await radio.enable_raw_stream(True)
        log.info("radio %s open: %s, EUI-64 %s", cfg.url, info.ncp_version, info.hwaddr.hex(":"))
        return radio, info

    async def _open_mesh(self) -> MeshBackend:
        """Our own stack on the radio board, or the external border router the config names."""
        cfg = self.config
        if cfg.mesh.backend != "own":
            backend = open_external(cfg, self.clock, self.rng)
            await backend.start()
            log.info("mesh through %s: %s", cfg.mesh.backend, backend.identity())
            return backend
        self.radio, self.radio_info = await self._open_radio()
        routes, restored = self._routing_table(self.radio_info.hwaddr)
        self.stack = MeshStack(
            self.radio,
            self.radio_info.hwaddr,
            self.clock,
            mesh=cfg.mesh,
            channel=cfg.radio.channel,
            rng=self.rng,
            routes=routes,
        )
        if not restored:
            # No saved routes: a new DTSN in the first DIOs asks every node for its DAOs now
            # rather than at its next refresh.
            self.stack.root.request_daos(self.clock.monotonic())
        self.mesh_links = MeshLinks(self.stack)
        return OwnMeshBackend(
            self.stack,
            self.mesh_links,
            prefix=cfg.mesh.prefix,
            ncp_version=self.radio_info.ncp_version,
            noise_sample_interval_s=cfg.radio.noise_sample_interval_s,
        )

    def _mesh_meter_at(self, address: str) -> str | None:
        """The mesh meter whose IPv6 address this is (its interface id is its EUI-64): beside
        wsbrd, meters' pushes come through the kernel to the push listener."""
        try:
            packed = ipaddress.IPv6Address(address.split("%", 1)[0]).packed
        except ValueError:
            return None
        meter = self._mesh_meters.get(eui64_from_address(packed))
        return None if meter is None else meter.id

    def _on_mesh_event(self, event: MeshEvent) -> None:
        """Joins, departures and moves of configured meters, one log line each."""
        meter = self._mesh_meters.get(event.node)
        name = meter.id if meter is not None else event.node.hex(":")
        path = "" if event.path is None else " via " + " > ".join(h.hex()[-4:] for h in event.path)
        log.info("mesh: %s %s%s (%s)", name, event.kind.value, path, event.reason)

    def _on_radio_event(self, event: RadioEvent) -> None:
        """The wrapper logs every event itself; the agent keeps its view of the board current."""
        if event.kind is RadioEventKind.REOPENED and event.info is not None:
            self.radio_info = event.info
            if event.hwaddr_changed:
                log.warning(
                    "radio board replaced: EUI-64 now %s; meters must learn the new address",
                    event.info.hwaddr.hex(":"),
                )

    def _open_security(self) -> None:
        """Keys and invocation counters for suite 0 meters (nothing without a security section)."""
        sec = self.config.security
        if sec is None:
            return
        self._keys = load_keys(sec.keys_file)
        missing = [
            m.id
            for m in self.config.meters
            if m.security.level == "suite0" and m.id not in self._keys
        ]
        if missing:
            log.error("suite0 meters missing from %s (never read): %s", sec.keys_file, missing)
        self.counters = CounterStore(sec.counters_file)
        self._sessions = session_factory(
            self._keys, self.counters, bytes.fromhex(sec.client_system_title), self.rng
        )

    def _push_unwrap(self, meter_id: str) -> push.Unwrap | None:
        """Deciphers a suite 0 meter's push and checks its invocation counter (replays out)."""
        keys, counters = self._keys.get(meter_id), self.counters
        if keys is None or counters is None:
            return None
        suite = keys.suite()

        def unwrap(apdu: bytes) -> bytes:
            opened = ciphering.unprotect(suite, apdu, keys.system_title)
            counters.accept(meter_id, opened.invocation_counter)
            return opened.apdu

        return unwrap

    async def _start_diag(self, cfg: DiagConfig) -> None:
        """The maintenance interface. A diag API that cannot start (port taken, bad files) is
        logged and left out: the gateway's job is reading meters, not serving technicians."""
        server = DiagServer(AgentDiagSource(self), cfg, self.clock)
        try:
            host, port = await server.start()
        except (OSError, DiagSetupError) as exc:
            log.error("diag API not started on [%s]:%d: %s", cfg.bind, cfg.port, exc)
            return
        self.diag = server
        log.info("diag API on https://%s:%d (technician certificates from %s)",
                 host, port, cfg.ca_file)  # fmt: skip

    def _status_line(self) -> str:
        """What ``systemctl status`` shows while the agent runs."""
        s = self.snapshot()
        uplink = "up" if s.uplink_connected else "down"
        return (
            f"{s.readings_total} readings, {s.alarms_total} alarms, spool {s.spool_depth}, "
            f"uplink {uplink}"
        )

    def _on_alarm(self, alarm: Alarm) -> None:
        """A push became an alarm (already spooled): outages and restorations also go to the
        OMS as unsolicited CIM REPLYs, through the spool like everything else."""
        self.operations.on_alarm(alarm)
        categories = {**outage.DEFAULT_CATEGORIES, **self.config.uplink.commands.oms.categories}
        entry = outage.outage_record(alarm, now=self.clock.now(), categories=categories)
        if entry is not None and self.spool is not None:
            try:
                self.spool.add([entry], Priority.ALARM)
            except SpoolError as exc:
                log.error("CIM outage message for %s not spooled: %s", alarm.device_id, exc)

    def _on_mesh_push(self, src_mac: bytes, frame: bytes) -> None:
        meter = self._mesh_meters.get(src_mac)
        if meter is None:
            log.warning("push from %s, which is not a configured meter: dropped", src_mac.hex(":"))
            return
        if self.pushes is not None:
            self.pushes.on_push(meter.id, frame)

    async def run(self, duration: float | None = None) -> int:
        """Run until ``stop()``, SIGTERM/SIGINT, or ``duration`` seconds. Returns an exit code."""
        cfg = self.config
        try:
            self._open_security()
        except ConfigError as exc:
            log.error("%s", exc)
            return exc.exit_code
        self._mesh_meters = {eui64(m.address): m for m in cfg.meters if m.transport == "mesh"}
        try:
            self.mesh = await self._open_mesh()
        except (RadioError, OSError, MeshBackendError) as exc:
            if cfg.mesh.backend == "wsbrd":
                log.error("cannot reach wsbrd on the %s bus: %s", cfg.mesh.wsbrd.bus, exc)
            else:
                log.error("cannot open radio %s: %s", cfg.radio.url, exc)
            if self.capture is not None:
                self.capture.close()
            return EXIT_FAILURE
        self.mesh.add_listener(self._on_mesh_event)
        self.mesh.on_push(self._on_mesh_push, is_push_frame)
        self.spool = Spool(
            cfg.spool.path,
            self.clock,
            rng=self.rng,
            max_bytes=cfg.spool.max_bytes,
            page_records=cfg.uplink.batch_max_records,  # a page fills one readings message
        )
        if self.with_uplink:
            self.commands = CommandDispatcher(
                self.operations, self.clock, commands_config(cfg.uplink.commands)
            )
            self.uplink = Uplink(
                cfg.uplink,
                cfg.gateway.id,
                self.spool,
                self.clock,
                rng=self.rng,
                tuning=UplinkTuning(
                    stall_timeout_s=cfg.uplink.stall_timeout_s,
                    clock_skew_limit_s=cfg.uplink.clock_skew_limit_s,
                    cert_warning_days=cfg.uplink.cert_warning_days,
                    status_interval_s=cfg.uplink.status_interval_s,
                    ack_batch_records=cfg.uplink.ack_batch_records,
                    ack_max_delay_s=cfg.uplink.ack_max_delay_s,
                ),
                command_handler=self.commands.handle,
            )
            # MeterStatusData answers too big for one message go out in several; the CIM
            # Header Timestamps feed the uplink's clock-skew check.
            self.commands.respond = self.uplink.respond
            self.commands.on_reference_time = self.uplink.observe_reference_time
        state = state_path(cfg)
        self.quarantine, marks = Quarantine(state, self.clock), ProfileMarks(state)
        self._state_stores = [self.quarantine, marks]
        self.collector = Collector(
            cfg.meters,
            self.link_for,
            self.spool,
            self.clock,
            cfg.collector,
            self.rng,
            quarantine=self.quarantine,
            marks=marks,
            session_factory=self._sessions,
        )
        self.pushes = push.PushReceiver(
            self.spool,
            self.clock,
            quarantine=self.quarantine,
            unwrap_for=self._push_unwrap,
            listener=self._on_alarm,
        )
        if cfg.collector.push_bind is not None:
            self.push_listener = PushListener(
                self.pushes.on_push,
                cfg.meters,
                quarantine=self.quarantine,
                resolve=self._mesh_meter_at,
            )
            try:
                where = await self.push_listener.start(
                    cfg.collector.push_bind, cfg.collector.push_port
                )
            except OSError as exc:
                log.error(
                    "cannot listen for pushes on [%s]:%d: %s",
                    cfg.collector.push_bind, cfg.collector.push_port, exc,
                )  # fmt: skip
                self.push_listener = None
            else:
                log.info("listening for meter pushes on [%s]:%d", *where)
        if cfg.diag is not None:
            await self._start_diag(cfg.diag)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        mesh_workers = self.mesh.workers()
        self._mesh_workers = set(mesh_workers)
        workers = {asyncio.create_task(coro, name=name) for name, coro in mesh_workers.items()}
        workers.add(asyncio.create_task(self.collector.run(), name="collector"))
        if self.uplink is not None:
            workers.add(asyncio.create_task(self.uplink.run(), name="uplink"))
        if cfg.mesh.routes_file is not None and self.stack is not None:
            workers.add(asyncio.create_task(self._save_routes_every(ROUTES_SAVE_S), name="routes"))
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        # The watchdog is petted only while every loop is alive: a dead loop lets systemd
        # restart the service instead of leaving a gateway that looks up but reads nothing.
        feeder = WatchdogFeeder(self.notifier, self.clock, status=self._status_line)
        for worker in workers:
            feeder.watch_task(worker.get_name(), worker)
        watchdog = asyncio.create_task(feeder.run(), name="watchdog")
        ident = self.mesh.identity()
        self.notifier.ready(
            f"{cfg.gateway.id}: {ident['backend']} mesh, {ident.get('ncp_version') or '?'}, "
            f"channel {ident.get('channel', '?')}, {len(cfg.meters)} meters"
        )
        code = EXIT_OK
        try:
            done, _ = await asyncio.wait(
                workers | {stopper}, timeout=duration, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done - {stopper}:
                log.error("%s stopped unexpectedly: %r", task.get_name(), task.exception())
                code = EXIT_FAILURE
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            stopper.cancel()
            self.notifier.stopping("shutting down")
            watchdog.cancel()
            await self._shutdown(workers)
        return code

    async def _shutdown(self, workers: set[asyncio.Task[None]]) -> None:
        log.info("shutting down")
        # Collector first (no new reads), then the mesh's own loops, the packet pump last.
        mesh_loops = sorted(self._mesh_workers - {"mesh"})
        order = ["collector", "routes", *mesh_loops, "mesh"]
        for name in order:
            for task in workers:
                if task.get_name() == name:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        if self.uplink is not None:
            await self.uplink.stop(flush_timeout=5.0)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if self.diag is not None:
            await self.diag.close()
        for link in self._links.values():
            with contextlib.suppress(Exception):
                await link.close()
        if self.push_listener is not None:
            self.push_listener.close()
        for store in self._state_stores:
            store.close()
        if self.counters is not None:
            self.counters.close()
        self._save_routes()
        if self.mesh is not None:
            with contextlib.suppress(Exception):
                await self.mesh.close()
        if self.radio is not None:
            with contextlib.suppress(RadioError):
                await self.radio.close()
        if self.capture is not None:
            self.capture.close()
        if self.spool is not None:
            depth = self._final_spool_depth = self.spool.depth()
            self.spool.close()
            self.spool = None
            log.info("spool closed with %d records kept for the next start", depth)

    def _routing_table(self, hwaddr: bytes) -> tuple[RoutingTable, bool]:
        """The table saved by the last run (if it is ours and readable), else an empty one."""
        mesh = self.config.mesh
        settings = {
            "snr_floor_db": mesh.snr_floor_db,
            "hysteresis_db": mesh.snr_hysteresis_db,
            "default_lifetime_s": mesh.dao_lifetime_s,
        }
        path = mesh.routes_file
        if path is not None:
            try:
                # Lifetimes were saved as time left; the agent was down since the file's mtime.
                elapsed = max(0.0, self.clock.now() - path.stat().st_mtime) if path.exists() else 0
                table = load_table(path, self.clock.monotonic(), elapsed_s=elapsed, **settings)
            except (SnapshotError, OSError) as exc:
                log.error("routes file unusable, starting with an empty table: %s", exc)
                table = None
            if table is not None and table.root != hwaddr:
                log.warning(
                    "routes in %s belong to radio %s, not %s: starting with an empty table",
                    path, table.root.hex(":"), hwaddr.hex(":"),
                )  # fmt: skip
                table = None
            if table is not None:
                log.info("routing table restored from %s: %d nodes", path, len(table.nodes()))
                return table, True
        return (
            RoutingTable(
                hwaddr,
                snr_floor_db=mesh.snr_floor_db,
                hysteresis_db=mesh.snr_hysteresis_db,
                default_lifetime_s=mesh.dao_lifetime_s,
            ),
            False,
        )

    def _save_routes(self) -> None:
        path = self.config.mesh.routes_file
        if path is None or self.stack is None:
            return
        try:
            save_json(path, self.stack.routes, self.clock.monotonic())
        except (OSError, ValueError) as exc:
            log.error("cannot save the routing table to %s: %s", path, exc)

    async def _save_routes_every(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self._save_routes()

    # --- operations (commands from the head end and the diag API call these) --------------------

    def hops(self, meter: MeterConfig) -> int | None:
        """Hops on the meter's preferred mesh path now; None for IP meters and unjoined ones."""
        if self.mesh is None or meter.transport != "mesh":
            return None
        route = self.mesh.routes.source_route(eui64(meter.address), self.clock.monotonic())
        return None if route is None else len(route)

    def meter(self, meter_id: str) -> MeterConfig:
        for m in self.config.meters:
            if m.id == meter_id:
                return m
        raise KeyError(f"no meter {meter_id!r} in the configuration")

    async def security_reset(self, meter_id: str) -> ResetResult:
        """Resynchronise our invocation counter with what ``meter_id`` last accepted (after a
        MAC Fail): read 0.0.43.1.0.255 as the public client, send from its value + 1 on. Runs
        under the meter's collector lock, so no read is interleaved with it."""
        meter = self.meter(meter_id)
        if self.counters is None or self.collector is None:
            raise RuntimeError("security reset needs a running agent with a security section")
        async with self.collector.exclusive(meter.id):
            result = await security_reset(
                self.link_for(meter),
                meter.id,
                self.counters,
                server_address=meter.server_address,
                timeout=self.config.collector.timeout_s,
            )
        log.warning(
            "security reset of meter %s: it accepted up to %d, we now send from %d (was %d)",
            meter.id, result.meter_counter, result.new_next, result.old_next,
        )  # fmt: skip
        return result

    async def push_firmware(
        self,
        meter_ids: Sequence[str],
        image: FirmwareImage,
        *,
        bytes_per_s: float | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> list[PushResult]:
        """Push ``image`` to a group of meters under one shared byte-rate limit."""
        cfg = self.config.collector
        meters = [self.meter(m) for m in meter_ids]
        limit = ThroughputLimit(bytes_per_s or cfg.firmware_bytes_per_s, self.clock, asyncio.sleep)
        kwargs: dict[str, object] = {
            "timeout": cfg.timeout_s,
            "retries": cfg.retries,
            "session_factory": self._sessions,
        }
        # Each meter's push under its collector lock: no interval read interleaves with it.
        exclusive = None if self.collector is None else self.collector.exclusive
        return await push_group(
            [(m, self.link_for(m)) for m in meters],
            image,
            limit,
            exclusive,
            concurrency=cfg.firmware_concurrency,
            progress=progress,
            **kwargs,
        )

    def snapshot(self) -> Snapshot:
        meters: list[MeterView] = []
        mesh = self.mesh
        if self.collector is not None:
            now = self.clock.monotonic()
            rows: dict[str, dict[str, Any]] = {}
            if mesh is not None and self.stack is None:
                rows = {str(r["mac"]): r for r in mesh.neighbour_rows(self.clock.now())}
            for m in self.config.meters:
                nb, row, hops = None, None, self.hops(m)
                if mesh is not None and m.transport == "mesh":
                    mac = eui64(m.address)
                    route = mesh.routes.source_route(mac, now)
                    first = route[0] if route else mac
                    if self.stack is not None:  # our own stack measures the link itself
                        nb = self.stack.neighbours.get(first)
                    else:
                        row = rows.get(first.hex())
                meters.append(MeterView(m, self.collector.status[m.id], nb, hops, row))
        stats = self.uplink.stats if self.uplink is not None else None
        return Snapshot(
            gateway_id=self.config.gateway.id,
            radio=self.radio_info,
            uplink_connected=bool(stats and stats.connected),
            uplink_error=stats.last_error if stats else None,
            published_records=stats.published_records if stats else 0,
            spool_depth=self.spool.depth() if self.spool is not None else self._final_spool_depth,
            readings_total=self.collector.readings_total if self.collector else 0,
            noise_floor_dbm=self.stack.neighbours.noise_floor(self.config.radio.channel)
            if self.stack
            else None,
            meters=meters,
            link_limits=self.stack.neighbours.limits if self.stack else None,
            alarms_total=(self.collector.alarms_total if self.collector else 0)
            + (self.pushes.stats.alarms if self.pushes else 0),
            quarantined=self._quarantined(),
            mesh={}
            if mesh is None
            else {
                **mesh.identity(),
                "unavailable": dict(mesh.unavailable),
                "estimated": dict(mesh.estimated),
            },
        )

    def _quarantined(self) -> int:
        if self.quarantine is None or self.spool is None:  # closed at shutdown, with the spool
            return self._final_quarantined
        self._final_quarantined = self.quarantine.total()
        return self._final_quarantined


async def run_agent(
    config: Config, *, clock: Clock, live: bool = False, duration: float | None = None
) -> int:
    """The ``firmware-agent run`` entry: run one agent, optionally with the live view."""
    with notifier_from_env() as notifier:
        agent = Agent(config, clock, notifier=notifier)
        if not live:
            return await agent.run(duration)
        from firmware_agent.view import LiveView

        async with LiveView(agent, clock):
            return await agent.run(duration)
