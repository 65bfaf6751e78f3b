"""The ``firmware-agent`` command: check a config, run the agent, or list radio boards.

Exit codes (docs/cli.md): 0 ok / clean shutdown, 1 runtime failure, 2 usage or configuration
error, 3 refused to start for security reasons (e.g. a private key readable by others).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from firmware_agent.clock import SystemClock
from firmware_agent.config import EXIT_CONFIG, EXIT_SECURITY, Config, ConfigError, load_config
from firmware_agent.logs import LEVELS, setup_logging

if TYPE_CHECKING:
    from drivers.discover import BoardCandidate

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = EXIT_CONFIG
__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_SECURITY", "EXIT_USAGE", "main"]

_log = logging.getLogger("firmware_agent.cli")


def _version() -> str:
    try:
        return metadata.version("wisun-gateway")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _pcap(text: str) -> Path:
    """An output file whose directory exists (checked here so a typo fails before start-up)."""
    path = Path(os.path.normpath(Path(text).absolute()))
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {path.parent} does not exist")
    return path


def with_pcap(config: Config, pcap: Path | None) -> Config:
    """``config`` with ``radio.capture_file`` replaced by ``--pcap`` (unchanged when not given)."""
    if pcap is None:
        return config
    return dataclasses.replace(config, radio=dataclasses.replace(config.radio, capture_file=pcap))


def _level(text: str) -> str:
    if text.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LEVELS)}, got {text!r}")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed so docs and tests can list the commands)."""
    parser = argparse.ArgumentParser(
        prog="firmware-agent",
        description="Wi-SUN field gateway and DLMS/COSEM meter-data collector.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check-config",
        help="validate a config file and print a summary",
        description=(
            "Load and validate a config file (including the meters file and the TLS files it "
            "names) without starting anything. Exit 0 when valid, 2 when wrong, 3 when refused "
            "for security reasons."
        ),
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the YAML config file")

    commands.add_parser(
        "boards",
        help="list candidate radio boards and the radio.match to paste for each",
        description=(
            "List the USB serial and spidev devices udev knows (candidate radio boards) and, "
            "for each, a radio.match that picks it out, to paste into the config. Exit 0 "
            "(also when there are none), 1 when udev cannot be read (pyudev not installed)."
        ),
    )

    run = commands.add_parser("run", help="run the agent", description="Run the gateway agent.")
    run.add_argument("--config", type=Path, required=True, metavar="FILE", help="YAML config")
    run.add_argument("--log-json", action="store_true", help="log JSON lines instead of plain")
    run.add_argument(
        "--log-level",
        type=_level,
        default="INFO",
        metavar="LEVEL",
        help=f"lowest level logged: {', '.join(LEVELS)} (default INFO)",
    )
    run.add_argument("--live", action="store_true", help="show a live status view on the terminal")
    run.add_argument(
        "--duration",
        type=_duration,
        default=None,
        metavar="SECONDS",
        help="stop cleanly after this many seconds (default: run until stopped)",
    )
    run.add_argument(
        "--pcap",
        type=_pcap,
        default=None,
        metavar="FILE",
        help="write every radio frame to this pcap file (overrides radio.capture_file)",
    )
    return parser


def summary(config: Config) -> str:
    """One line describing a loaded config, for check-config and the start-up log."""
    per_transport = Counter(m.transport for m in config.meters)
    kinds = ", ".join(f"{n} {t}" for t, n in sorted(per_transport.items()))
    meters = f"{len(config.meters)} meter{'s' if len(config.meters) != 1 else ''}"
    if kinds:
        meters += f" ({kinds})"
    radio = config.radio.url
    if config.radio.match is not None:
        pairs = ", ".join(f"{k}={v}" for k, v in config.radio.match.items())
        radio += f" (board matching {{{pairs}}})"
    return (
        f"gateway {config.gateway.id}, radio {radio}, broker {config.uplink.broker_url}, {meters}"
    )


def _config_failure(file: Path, error: ConfigError) -> int:
    print(f"firmware-agent: {file}: {error}", file=sys.stderr)
    return error.exit_code


def _check_config(file: Path) -> int:
    """A validator: 0 when the config is valid, 2 for every problem (the message says which)."""
    try:
        config = load_config(file)
    except ConfigError as error:
        _config_failure(file, error)
        return EXIT_CONFIG
    print(f"ok: {summary(config)}")
    return EXIT_OK


def _match_yaml(board: BoardCandidate, among: list[BoardCandidate]) -> str:
    """The radio section that selects ``board``, as YAML to paste (values quoted as needed)."""
    from drivers.discover import suggest_match

    spi = board.subsystem == "spidev"
    url = "spinel+spi://?speed_hz=1000000" if spi else "spinel+uart://?baudrate=460800"
    section = {"radio": {"url": url, "match": suggest_match(board, among)}}
    return yaml.safe_dump(section, sort_keys=False, default_flow_style=False)


def _boards() -> int:
    """List candidate radio boards with the radio.match for each; 1 when udev is unreadable."""
    from drivers.discover import DiscoveryError, format_boards, list_boards

    try:
        boards = list_boards()
    except DiscoveryError as error:
        print(f"firmware-agent: cannot list radio boards: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not boards:
        print("no radio boards found (no USB serial or spidev device is present)")
        return EXIT_OK
    print(format_boards(boards))
    for board in boards:
        print(f"\n# {board.device_node}: paste into the config (set the URL's options):")
        print(_match_yaml(board, boards), end="")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    setup_logging(json=args.log_json, level=args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        return _config_failure(args.config, error)
    config = with_pcap(config, args.pcap)
    try:
        # Imported here so check-config and config errors never depend on the agent stack.
        from firmware_agent.agent import run_agent
    except ImportError as error:
        _log.error("cannot load the agent: %s", error)
        return EXIT_FAILURE
    _log.info("starting: %s", summary(config))
    try:
        return asyncio.run(
            run_agent(config, clock=SystemClock(), live=args.live, duration=args.duration)
        )
    except KeyboardInterrupt:
        _log.info("interrupted; stopped")
        return EXIT_OK
    except Exception:
        _log.exception("the agent failed")
        return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``firmware-agent`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or EXIT_OK
        return EXIT_USAGE
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "boards":
        return _boards()
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
