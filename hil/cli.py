"""The ``hil`` command: the rig's tools, one subcommand each.

``hil rcp --pty`` serves a virtual RCP on a new pseudo-terminal and prints the PTY path as its
first stdout line; ``spinel+pty://`` radio URLs spawn exactly this (URL query parameters become
options), so the gateway's production driver is what talks to it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from drivers.pty_spawn import WATCH_STDIN_ENV
from firmware_agent.clock import SystemClock
from hil.medium import Medium
from hil.population import asyncio_scheduler, populate, read_mesh_meters
from hil.rcp import VirtualRcp, serve_pty

log = logging.getLogger(__name__)


def _eui64(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.replace(":", "").replace("-", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None
    if len(value) != 8:
        raise argparse.ArgumentTypeError(f"{text!r} is not 8 bytes")
    return value


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
        "--profile-period", type=float, default=900.0, help="meters' load-profile period, s"
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
    return parser


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


def attach_meters(medium: Medium, args: argparse.Namespace, rng: random.Random) -> None:
    """Attach the emulated meters of ``args.meters`` (a gateway-style meters file) to ``medium``.
    Called from inside the running event loop: meters answer on it after a processing delay."""
    if args.meters is None:
        return
    meters = read_mesh_meters(args.meters)
    populate(
        medium,
        meters,
        SystemClock(),
        rng,
        asyncio_scheduler(),
        channel=args.channel,
        profile_period_s=args.profile_period,
    )
    log.info("%d emulated meters on the medium", len(meters))


def build_rcp_world(args: argparse.Namespace) -> tuple[Medium, VirtualRcp]:
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
    attach_meters(medium, args, rng)
    return medium, rcp


async def _serve_rcp(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    _, rcp = build_rcp_world(args)

    def ready(path: str) -> None:
        sys.stdout.write(path + "\n")
        sys.stdout.flush()
        log.info("virtual RCP %s serving on %s", rcp.eui64.hex(), path)

    server = asyncio.create_task(serve_pty(rcp, ready), name="rcp-pty")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.cancel)
    watch_stdin = os.environ.get(WATCH_STDIN_ENV) == "1"
    if watch_stdin:  # spawned by spinel+pty://: stop when the host process goes away
        os.set_blocking(0, False)
        loop.add_reader(0, _stop_on_eof, server)
    try:
        await server
    except asyncio.CancelledError:
        if not server.cancelled():
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if watch_stdin:
            loop.remove_reader(0)
    log.info("virtual RCP stopped: %s", rcp.counters)
    return 0


def _stop_on_eof(server: asyncio.Task[None]) -> None:
    try:
        data = os.read(0, 4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        log.info("host closed our stdin: stopping")
        server.cancel()


def _cmd_rcp(args: argparse.Namespace) -> int:
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
