"""The ``hil`` command: the rig's tools, one subcommand each.

``hil rcp --pty`` serves a virtual RCP on a new pseudo-terminal and prints the PTY path as its
first stdout line; ``spinel+pty://`` radio URLs spawn exactly this (URL query parameters become
options), so the gateway's production driver is what talks to it.

``hil meter serve --udp 127.0.0.1:PORT`` serves one emulated DLMS meter on loopback (optionally
over TCP too, with suite 0 keys, or misbehaving with ``--fault``) and prints one ``udp HOST:PORT``
/ ``tcp HOST:PORT`` line per address it listens on, until SIGINT/SIGTERM.

``hil headend --broker mqtts://HOST:PORT --pki DIR --listen 127.0.0.1:PORT`` runs the head-end
simulator (shared-subscription MQTT workers, SQLite store, seed 002 API) and prints its base URL
as the first stdout line once the workers are subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from firmware_agent.clock import SystemClock
from firmware_agent.collector.keys import load_keys
from firmware_agent.config import ConfigError
from hil.medium import Medium
from hil.meter.dlms_server import MeterServer, ServerSecurity
from hil.meter.faults import FaultSpecError, FaultyMeter, parse_fault
from hil.meter.image import image_objects
from hil.meter.model import MeterModel
from hil.meter.objects import build_directory
from hil.meter.push import PushSetupObject
from hil.meter.udp import serve_tcp, serve_udp
from hil.meter_node import NodeConfig
from hil.node.rpl_node import RplConfig
from hil.population import EmulatedMeter, asyncio_scheduler, populate, read_mesh_meters
from hil.rcp import VirtualRcp, serve_pty, serve_until_stopped
from hil.run import add_parser_args as add_run_args
from hil.run import cmd_run

if TYPE_CHECKING:
    from hil.headend.server import HeadEndOptions

log = logging.getLogger(__name__)


def _eui64(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.replace(":", "").replace("-", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None
    if len(value) != 8:
        raise argparse.ArgumentTypeError(f"{text!r} is not 8 bytes")
    return value


def _positions(text: str) -> list[tuple[float, float]]:
    """``X,Y;X,Y;...`` in metres: a small bench's fixed layout (a relay, a far meter)."""
    out = []
    for part in text.split(";"):
        try:
            x, y = (float(v) for v in part.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not X,Y (metres)") from None
        out.append((x, y))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hil", description="Wi-SUN gateway HIL rig")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rcp = sub.add_parser("rcp", help="serve a virtual RCP (Spinel over HDLC) on a PTY")
    rcp.add_argument("--pty", action="store_true", required=True, help="serve on a new PTY")
    rcp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    rcp.add_argument("--seed", type=int, default=1, help="seed of the world's randomness")
    rcp.add_argument("--channel", type=int, default=0, help="channel the RCP boots on")
    rcp.add_argument("--tx-power", type=int, default=14, help="boot TX power, dBm")
    rcp.add_argument("--eui64", type=_eui64, default=None, help="the RCP's EUI-64 (hex)")
    rcp.add_argument("--noise-floor", type=float, default=-115.0, help="medium noise floor, dBm")
    rcp.add_argument("--path-loss-exponent", type=float, default=3.0)
    rcp.add_argument("--meters", type=Path, default=None, help="emulated meters file")
    rcp.add_argument(
        "--first-dis",
        type=float,
        default=RplConfig.dis_delay_s[1],
        metavar="S",
        help="a meter asks for the mesh (multicast DIS) at most this many s after power-up",
    )
    rcp.add_argument(
        "--profile-period", type=float, default=900.0, help="meters' load-profile period, s"
    )
    rcp.add_argument(
        "--positions",
        type=_positions,
        default=None,
        metavar="X,Y;X,Y;...",
        help="where the meters stand, m (in the meters file's order; default: a random ring)",
    )
    rcp.add_argument(
        "--dao-spread",
        type=float,
        default=RplConfig.dao_join_spread_s,
        metavar="S",
        help="a meter's first DAO goes at most this many s after it joins",
    )
    rcp.add_argument(
        "--dao-alternates-interval",
        type=float,
        default=RplConfig.dao_alternates_interval_s,
        metavar="S",
        help="a change of alternate parents alone is reported this long after the last DAO",
    )
    rcp.add_argument(
        "--control",
        type=Path,
        default=None,
        help="serve fault hooks (hil.faults) on a UNIX socket here: power, fade, reset, garbage",
    )
    rcp.add_argument(
        "--personality",
        choices=("rcp", "ncp"),
        default="rcp",
        help="ncp: a virtual TI Wi-SUN NCP with a network of meters behind it (hil/ncp.py)",
    )
    rcp.add_argument("--nodes", type=int, default=5, help="ncp: nodes in its network")
    rcp.add_argument(
        "--stack-up-after", type=float, default=0.5, help="ncp: seconds until the stack is up"
    )
    rcp.add_argument(
        "--guard-gap",
        type=float,
        default=1.0,
        help="ncp: CONNECTED_DEVICES reads closer than this crash it, as TI's stack does",
    )
    rcp.set_defaults(func=_cmd_rcp)

    demo = sub.add_parser("demo", help="run the gateway agent end to end with a live view")
    demo.add_argument("--config", type=Path, default=Path("config/demo.yaml"))
    demo.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)"
    )
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser(
        "simulate", help="run the gateway agent against an emulated mesh in virtual time"
    )
    sim.add_argument("--scenario", required=True, help="name in config/scenarios/ or a YAML path")
    sim.add_argument("--duration", default="24h", help="virtual time to run, e.g. 90m, 24h")
    sim.add_argument("--pcap", type=Path, default=None, help="write every frame on the air here")
    sim.add_argument("--report", type=Path, default=None, help="write the summary as JSON here")
    sim.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    sim.set_defaults(func=_cmd_simulate)

    meter = sub.add_parser("meter", help="emulated DLMS meters")
    meter_sub = meter.add_subparsers(dest="meter_command", required=True, metavar="ACTION")
    serve = meter_sub.add_parser(
        "serve", help="serve one emulated meter on loopback until SIGINT/SIGTERM"
    )
    serve.add_argument("--udp", type=_host_port, default=None, help="UDP HOST:PORT (0: any port)")
    serve.add_argument("--tcp", type=_host_port, default=None, help="TCP HOST:PORT (0: any port)")
    serve.add_argument("--meter-id", default="EMU-1", help="device id the meter reports")
    serve.add_argument("--wport", type=int, default=1, help="the meter's server wPort")
    serve.add_argument("--seed", type=int, default=1, help="seed of the meter's physics and faults")
    serve.add_argument("--security", choices=("none", "suite0"), default="none")
    serve.add_argument("--keys", type=Path, default=None, help="key file (0600) for suite0")
    serve.add_argument(
        "--fault",
        action="append",
        default=[],
        help="misbehave: KIND[:COUNT|*][,p=P][,after=N][,delay=S] (repeatable), e.g. garbage:1",
    )
    serve.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_meter_serve)

    he = sub.add_parser(
        "headend", help="run the head-end simulator: MQTT workers + the seed 002 readings API"
    )
    he.add_argument("--broker", required=True, help="mqtts://HOST:PORT of the broker")
    he.add_argument("--pki", type=Path, default=None, help="dir with ca.crt, headend.crt/.key")
    he.add_argument("--ca-file", type=Path, default=None)
    he.add_argument("--cert-file", type=Path, default=None)
    he.add_argument("--key-file", type=Path, default=None)
    he.add_argument(
        "--listen", type=_host_port, default=("127.0.0.1", 8080), help="HTTP HOST:PORT (0: any)"
    )
    he.add_argument("--db", type=Path, default=Path("headend.sqlite"), help="SQLite store")
    he.add_argument("--export-dir", type=Path, default=None, help="bulk files (default: DB dir)")
    he.add_argument("--workers", type=int, default=2, help="MQTT workers sharing the load")
    he.add_argument("--group", default="headend", help="shared subscription group ($share/...)")
    he.add_argument("--topic-prefix", default="ami")
    he.add_argument("--client-id", default="headend", help="workers are CLIENT_ID-1, -2, ...")
    he.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    he.set_defaults(func=_cmd_headend)

    boards = sub.add_parser(
        "boards",
        help="list connected candidate radio boards and print a ready-to-paste environment",
        description=(
            "List the USB serial and spidev devices udev knows, then an environment file (YAML) "
            "naming them by udev properties: the first as the gateway's radio, the others as "
            "injectors. Exit 0 (also with none), 1 when udev cannot be read."
        ),
    )
    boards.add_argument("--baud", type=int, default=460_800, help="UART boards' baud rate")
    boards.set_defaults(func=_cmd_boards)

    run = sub.add_parser(
        "run", help="run the acceptance suite against an environment and write the HTML report"
    )
    add_run_args(run)
    run.set_defaults(func=cmd_run)
    return parser


def _headend_options(args: argparse.Namespace) -> HeadEndOptions:
    """The CLI's arguments as options; ``MeterServeError``-style usage errors as ValueError."""
    from hil.headend.server import HeadEndOptions
    from hil.headend.subscriber import HeadEndTls
    from hil.pki import CertPair

    scheme, sep, rest = args.broker.partition("://")
    if not sep or scheme != "mqtts":
        raise ValueError(f"--broker {args.broker!r}: expected mqtts://HOST:PORT")
    host, port = _host_port(rest)
    if args.pki is not None:
        ca = args.ca_file or args.pki / "ca.crt"
        cert = args.cert_file or args.pki / f"{args.client_id}.crt"
        key = args.key_file or args.pki / f"{args.client_id}.key"
    elif args.ca_file and args.cert_file and args.key_file:
        ca, cert, key = args.ca_file, args.cert_file, args.key_file
    else:
        raise ValueError("give --pki DIR or all of --ca-file, --cert-file, --key-file")
    for what, path in (("CA", ca), ("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{what} file {path} does not exist")
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: at least 1")
    return HeadEndOptions(
        broker_host=host,
        broker_port=port,
        tls=HeadEndTls(Path(ca), CertPair(Path(cert), Path(key))),
        db_path=args.db,
        export_dir=args.export_dir or args.db.resolve().parent / "exports",
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        workers=args.workers,
        shared_group=args.group,
        topic_prefix=args.topic_prefix,
        client_id=args.client_id,
    )


async def _serve_headend(options: HeadEndOptions) -> int:
    from hil.headend.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(url: str) -> None:
        print(url, flush=True)
        log.info("head end serving on %s with %d workers", url, options.workers)

    try:
        await serve(options, ready, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def _cmd_headend(args: argparse.Namespace) -> int:
    from hil.headend.store import HeadEndError

    try:
        options = _headend_options(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"hil headend: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve_headend(options))
    except HeadEndError as exc:
        print(f"hil headend: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hil headend: cannot listen: {exc}", file=sys.stderr)
        return 2


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is outside 0..65535")
    return host.strip("[]"), number


class MeterServeError(Exception):
    """``hil meter serve`` cannot start as asked (bad fault, key file, security)."""


def build_served_meter(args: argparse.Namespace) -> MeterServer | FaultyMeter:
    """One emulated meter with the standard directory plus image transfer, firmware identifier
    and push setup; wrapped in its faults when ``--fault`` asked for any."""
    rng = random.Random(args.seed)
    clock = SystemClock()
    model = MeterModel(args.meter_id, rng)
    objects = build_directory(model)
    for obj in (*image_objects(), PushSetupObject()):
        objects[obj.logical_name] = obj
    security: ServerSecurity | None = None
    if args.security == "suite0":
        if args.keys is None:
            raise MeterServeError("--security suite0 needs --keys FILE")
        try:
            keys = load_keys(args.keys)
        except ConfigError as exc:
            raise MeterServeError(str(exc)) from None
        if args.meter_id not in keys:
            raise MeterServeError(f"key file {args.keys} has no keys for meter {args.meter_id}")
        mine = keys[args.meter_id]
        security = ServerSecurity(mine.suite(), mine.system_title, random.Random(args.seed + 2))
    server = MeterServer(model, clock, server_wport=args.wport, objects=objects, security=security)
    if not args.fault:
        return server
    try:
        faults = [parse_fault(spec) for spec in args.fault]
        return FaultyMeter(server, random.Random(args.seed + 1), faults)
    except FaultSpecError as exc:
        raise MeterServeError(str(exc)) from None


async def _serve_meter(args: argparse.Namespace) -> int:
    meter = build_served_meter(args)
    servers = {args.wport: meter}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    udp = tcp = None
    try:
        if args.udp is not None:
            udp = await serve_udp(servers, *args.udp)
            print(f"udp {udp.host}:{udp.port}", flush=True)
        if args.tcp is not None:
            tcp = await serve_tcp(servers, *args.tcp)
            print(f"tcp {tcp.host}:{tcp.port}", flush=True)
        log.info("meter %s serving (wPort %d)", args.meter_id, args.wport)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if udp is not None:
            udp.close()
        if tcp is not None:
            await tcp.close()
    server = meter.server if isinstance(meter, FaultyMeter) else meter
    counters = dict(server.counters)
    if isinstance(meter, FaultyMeter):
        counters.update({f"fault-{k}": v for k, v in meter.counters.items()})
    log.info("meter %s stopped: %s", args.meter_id, counters)
    return 0


def _cmd_meter_serve(args: argparse.Namespace) -> int:
    if args.udp is None and args.tcp is None:
        args.udp = ("127.0.0.1", 4059)
    try:
        return asyncio.run(_serve_meter(args))
    except MeterServeError as exc:
        print(f"hil meter serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hil meter serve: cannot listen: {exc}", file=sys.stderr)
        return 2


def _cmd_simulate(args: argparse.Namespace) -> int:
    from hil.scenario import ScenarioError, load_scenario, parse_duration
    from hil.simulate import print_summary, simulate, write_report

    try:
        scenario = load_scenario(args.scenario)
        duration = parse_duration(args.duration, "--duration")
    except ScenarioError as exc:
        print(f"hil simulate: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:
        # A failed read of one of a thousand meters over a day is a line in the summary's
        # figures, not a log line each: -v shows them all.
        logging.getLogger().setLevel(logging.ERROR)
    _, summary = simulate(scenario, duration, pcap=args.pcap)
    print_summary(summary)
    if args.report is not None:
        write_report(summary, args.report)
    return 0 if summary["exit_code"] == 0 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from hil.demo import run_demo

    return run_demo(args.config, args.duration or None)


def default_eui64(seed: int) -> bytes:
    """A locally administered EUI-64 that follows from the seed, so runs are reproducible."""
    return bytes([0x02, 0x57, 0x53]) + (seed & 0xFF_FFFF_FFFF).to_bytes(5, "big")


def attach_meters(
    medium: Medium, args: argparse.Namespace, rng: random.Random
) -> list[EmulatedMeter]:
    """Attach the emulated meters of ``args.meters`` (a gateway-style meters file) to ``medium``.
    Called from inside the running event loop: meters answer on it after a processing delay."""
    if args.meters is None:
        return []
    meters = read_mesh_meters(args.meters)
    placed = populate(
        medium,
        meters,
        SystemClock(),
        rng,
        asyncio_scheduler(),
        channel=args.channel,
        profile_period_s=args.profile_period,
        config=NodeConfig(
            rpl=RplConfig(
                dis_delay_s=(min(1.0, args.first_dis), args.first_dis),
                dao_join_spread_s=getattr(args, "dao_spread", RplConfig.dao_join_spread_s),
                dao_alternates_interval_s=getattr(
                    args, "dao_alternates_interval", RplConfig.dao_alternates_interval_s
                ),
            )
        ),
    )
    positions = getattr(args, "positions", None)
    if positions is not None:
        if len(positions) != len(placed):
            raise SystemExit(
                f"hil rcp: --positions gives {len(positions)} places for {len(placed)} meters"
            )
        for meter, position in zip(placed, positions, strict=True):
            medium.move(meter.node, position)
        placed = [
            dataclasses.replace(m, position=p) for m, p in zip(placed, positions, strict=True)
        ]
    log.info("%d emulated meters on the medium", len(meters))
    return placed


def build_rcp_world(
    args: argparse.Namespace,
) -> tuple[Medium, VirtualRcp, list[EmulatedMeter]]:
    """The medium, the RCP at the origin, and (through :func:`attach_meters`) everything else.
    Call it inside the running event loop: attached nodes may schedule work on it."""
    rng = random.Random(args.seed)
    # Frames take their airtime on the event loop's clock, as on a real channel.
    medium = Medium(
        rng,
        scheduler=asyncio.get_running_loop(),
        noise_floor_dbm=args.noise_floor,
        path_loss_exponent=args.path_loss_exponent,
    )
    rcp = VirtualRcp(
        medium,
        rng,
        SystemClock(),
        eui64=args.eui64 or default_eui64(args.seed),
        position=(0.0, 0.0),
        channel=args.channel,
        tx_power_dbm=args.tx_power,
    )
    # Hook: further nodes of the world (emulated meters) are attached here.
    placed = attach_meters(medium, args, rng)
    return medium, rcp, placed


async def _serve_rcp(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    medium, rcp, placed = build_rcp_world(args)
    control = None
    if getattr(args, "control", None) is not None:  # the target's fault hooks (hil.faults)
        from hil.faults import FaultWorld, serve_control

        world = FaultWorld(medium, rcp, {m.meter_id: m for m in placed}, args.seed)
        control = await serve_control(args.control, world)

    def ready(path: str) -> None:
        sys.stdout.write(path + "\n")
        sys.stdout.flush()
        log.info("virtual RCP %s serving on %s", rcp.eui64.hex(), path)

    server = asyncio.create_task(serve_pty(rcp, ready), name="rcp-pty")
    if control is not None:  # fault "unplug": end after the reply is out, the PTY with us

        def unplug() -> None:
            loop.call_later(0.1, server.cancel)

        world.on_unplug = unplug
    try:
        await serve_until_stopped(server)
    finally:
        if control is not None:
            control.close()
            args.control.unlink(missing_ok=True)
    log.info("virtual RCP stopped: %s", rcp.counters)
    return 0


def _cmd_boards(args: argparse.Namespace) -> int:
    from drivers.discover import DiscoveryError, format_boards, list_boards
    from hil.env import env_yaml

    try:
        boards = list_boards()
    except DiscoveryError as exc:
        sys.stderr.write(f"hil boards: cannot list radio boards: {exc}\n")
        return 1
    if not boards:
        sys.stdout.write("no radio boards found (no USB serial or spidev device is present)\n")
        return 0
    sys.stdout.write(format_boards(boards) + "\n\n# an environment for them (hil/env.py):\n")
    sys.stdout.write(env_yaml(boards, args.baud))
    return 0


def _cmd_rcp(args: argparse.Namespace) -> int:
    if args.personality == "ncp":
        from hil.ncp import serve

        return asyncio.run(serve(args))
    return asyncio.run(_serve_rcp(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    result: int = args.func(args)
    return result
