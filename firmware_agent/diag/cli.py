"""``hes-diag``: the field technician's tool. Runs on a laptop with the base install only.

  hes-diag --check-snr gateway-01            probe every mesh link of the gateway, judge its SNR
  hes-diag --check-snr --device [PORT]       measure with a radio board plugged into this laptop
  hes-diag view-mesh --meter-id MTR-0001     every valid path to a meter, SNR per hop
  hes-diag mesh gateway-01                   the whole routing tree
  hes-diag status gateway-01                 the gateway's health (spool, uplink, alarms)

Gateways are named in ~/.config/hes-diag/gateways.yaml (or give --url --ca --cert --key).
Exit codes of --check-snr: 0 every link at or above --threshold-db, 1 some below (or silent,
or none heard), 2 the gateway (or board) could not be asked; the reason is printed.
Field guide and the --json schema: docs/diag.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from firmware_agent.clock import SystemClock
from firmware_agent.diag import check, render
from firmware_agent.diag.client import DiagClient, DiagClientError, SetupError, Target
from firmware_agent.diag.inventory import InventoryError, default_path, load_inventory, resolve

EXIT_OK = check.EXIT_OK
EXIT_BELOW = check.EXIT_BELOW
EXIT_UNREACHABLE = check.EXIT_UNREACHABLE
API = "/api/v1"


def _version() -> str:
    try:
        return version("wisun-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _target_options(p: argparse.ArgumentParser, *, sub: bool) -> None:
    d: Any = argparse.SUPPRESS if sub else None
    g = p.add_argument_group("gateway (instead of, or on top of, the inventory)")
    g.add_argument("--url", default=d, help="diag API URL, https://HOST:PORT")
    g.add_argument("--ca", type=Path, default=d, help="CA of the gateway's diag certificate")
    g.add_argument("--cert", type=Path, default=d, help="technician certificate")
    g.add_argument("--key", type=Path, default=d, help="technician key")
    g.add_argument("--server-name", default=d, help="name in the gateway's certificate")
    g.add_argument("--inventory", type=Path, default=d, help=f"default {default_path()}")
    g.add_argument("--timeout", type=float, default=argparse.SUPPRESS if sub else 15.0,
                   help="seconds per request (default 15)")  # fmt: skip
    p.add_argument("--json", action="store_true", default=d or False,
                   help="machine-readable output (docs/diag.md)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hes-diag",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hes-diag {_version()}")
    parser.add_argument(
        "--check-snr",
        nargs="?",
        const="",
        metavar="GATEWAY",
        help="check every mesh link's SNR on GATEWAY (with --device: on a local board)",
    )
    parser.add_argument("--threshold-db", type=float, default=check.DEFAULT_THRESHOLD_DB,
                        help="SNR a link must reach, dB (default %(default)g)")  # fmt: skip
    parser.add_argument("--probes", type=int, default=4, help="probe frames per neighbour")
    parser.add_argument(
        "--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
        help="check again every SECONDS (default 5) until Ctrl-C",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="with --watch: stop after N")
    dev = parser.add_argument_group("local radio board (--check-snr --device)")
    dev.add_argument(
        "--device", nargs="?", const="auto", default=None, metavar="PORT",
        help="serial port of the board (or a radio URL); none: find it with udev",
    )  # fmt: skip
    dev.add_argument("--baudrate", type=int, default=460800)
    dev.add_argument("--channel", type=int, default=0, help="channel to listen on")
    dev.add_argument("--channels", default="0-128", help="channels to energy-scan")
    dev.add_argument("--listen-s", type=float, default=10.0, help="seconds to listen")
    _target_options(parser, sub=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    vm = sub.add_parser("view-mesh", help="every valid path to one meter, SNR per hop")
    vm.add_argument("gateway", nargs="?", help="gateway name in the inventory")
    vm.add_argument("--meter-id", required=True)
    _target_options(vm, sub=True)
    mesh = sub.add_parser("mesh", help="the gateway's routing tree")
    mesh.add_argument("gateway", nargs="?")
    _target_options(mesh, sub=True)
    status = sub.add_parser("status", help="the gateway's health: radio, uplink, spool, alarms")
    status.add_argument("gateway", nargs="?")
    _target_options(status, sub=True)
    return parser


# -- target resolution ----------------------------------------------------------------------------


def resolve_target(name: str | None, args: argparse.Namespace) -> Target:
    """From the inventory, from --url/--ca/--cert/--key, or both (flags override the entry)."""
    inv_path = args.inventory or default_path()
    entry: Target | None = None
    if name:
        try:
            entry = resolve(name, inv_path)
        except InventoryError:
            if not args.url:
                raise
    elif not args.url:
        gateways = load_inventory(inv_path)
        if len(gateways) != 1:
            raise InventoryError(
                f"name a gateway (the inventory {inv_path} has "
                f"{', '.join(sorted(gateways)) or 'none'}) or give --url"
            )
        entry = next(iter(gateways.values()))
    url = args.url or (entry.url if entry else None)
    files = {k: getattr(args, k) or (getattr(entry, k) if entry else None)
             for k in ("ca", "cert", "key")}  # fmt: skip
    missing = [f"--{k}" for k, v in files.items() if v is None]
    if url is None or missing:
        raise InventoryError(f"--url needs {', '.join(missing)} too (or an inventory entry)")
    ca, cert, key = (Path(str(files[k])) for k in ("ca", "cert", "key"))
    return Target(
        name or url,
        url,
        ca,
        cert,
        key,
        args.server_name or (entry.server_name if entry else None),
    )


# -- output helpers -------------------------------------------------------------------------------


class Out:
    """stdout for results, stderr for progress and errors (so --json stays parseable)."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.console = Console(soft_wrap=False)
        self.err = Console(stderr=True)

    def emit(self, doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
        sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self, what: str, total: float | None) -> Iterator[Callable[[str, float], None]]:
        """A transient progress bar on stderr (only on a terminal; shown after ~1 s of work)."""
        if not self.err.is_terminal:
            yield lambda text, done: None
            return
        bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        )
        task = bar.add_task(what, total=total)
        with bar:

            def update(text: str, done: float) -> None:
                bar.update(task, description=text, completed=done)

            yield update


def _fail(out: Out, target: str, url: str | None, kind: str, reason: str, schema: str) -> int:
    out.err.print(render.error_line(target, kind, reason))
    if out.json:
        out.emit(check.error_document(target, url, kind, reason, schema=schema))
    return EXIT_UNREACHABLE


# -- check-snr against a gateway ------------------------------------------------------------------


def one_check(
    client: DiagClient, probes: int, threshold: float, update: Callable[[str, float], None]
) -> tuple[list[check.LinkCheck], check.Verdict, dict[str, Any]]:
    """Probe every neighbour through the gateway's own radio; beside an external border
    router (which sends no probes for us), judge the links it reports instead."""
    name = client.target.name
    update(f"{name}: asking for its neighbours", 0.0)
    doc = client.get(f"{API}/neighbours")
    neighbours = doc.get("neighbours") or []
    mesh = doc.get("mesh") or {"backend": "own"}
    if mesh.get("backend", "own") != "own":
        update(f"{name}: done (links as {mesh.get('backend')} reports them)", 1.0)
        checks = [check.evaluate(check.passive_link(row), threshold) for row in neighbours]
        return checks, check.verdict(checks, threshold, name), mesh
    links: list[dict[str, Any]] = []
    for n, row in enumerate(neighbours):
        label = row.get("meter_id") or row.get("mac")
        update(f"{name}: probing {label} ({n + 1}/{len(neighbours)})", n / max(1, len(neighbours)))
        doc = client.post(f"{API}/snr-check", {"neighbours": [row["mac"]], "count": probes})
        links.extend(doc.get("links") or [])
    update(f"{name}: done", 1.0)
    checks = [check.evaluate(link, threshold) for link in links]
    return checks, check.verdict(checks, threshold, name), mesh


def cmd_check_gateway(args: argparse.Namespace, out: Out) -> int:
    name = args.check_snr or None
    try:
        target = resolve_target(name, args)
        client = DiagClient(target, timeout=args.timeout)
    except (InventoryError, DiagClientError) as exc:
        kind = getattr(exc, "kind", "setup")
        return _fail(out, name or "?", args.url, kind, str(exc), check.SCHEMA)
    rounds = 0
    code = EXIT_UNREACHABLE
    live: Live | None = None
    if args.watch is not None and not out.json:
        live = Live(console=out.console, auto_refresh=False)
        live.start()
    try:
        with client:
            while True:
                rounds += 1
                try:
                    with out.progress(f"{target.name}: SNR check", 1.0) as update:
                        checks, result, mesh = one_check(
                            client, args.probes, args.threshold_db, update
                        )
                except DiagClientError as exc:
                    if live is not None:
                        live.stop()
                        live = None
                    return _fail(out, target.name, target.url, exc.kind, exc.reason, check.SCHEMA)
                code = result.exit_code
                title = f"{target.name} ({target.url}): link SNR, {time.strftime('%H:%M:%S')}"
                table = render.snr_table(
                    title, checks, args.threshold_db, notes=check.mesh_notes(mesh)
                )
                if out.json:
                    out.emit(
                        check.check_document(
                            target.name, target.url, args.threshold_db, checks, result,
                            extra={"mesh": mesh},
                        )
                    )  # fmt: skip
                elif live is not None:
                    live.update(Group(table, render.verdict_line(result)), refresh=True)
                else:
                    out.console.print(table)
                    out.console.print(render.verdict_line(result))
                if args.watch is None or (args.rounds is not None and rounds >= args.rounds):
                    return code
                time.sleep(args.watch)
    except KeyboardInterrupt:
        return code
    finally:
        if live is not None:
            live.stop()


# -- check-snr on a local board -------------------------------------------------------------------


def cmd_check_device(args: argparse.Namespace, out: Out) -> int:
    from firmware_agent.diag.device import DeviceError, find_device, measure_device, parse_channels

    device = args.device
    schema = check.DEVICE_SCHEMA
    try:
        scan = parse_channels(args.channels)
        if device == "auto":
            device = find_device()
        with out.progress(f"{device}: measuring", 1.0) as update:
            report = asyncio.run(
                measure_device(
                    device,
                    SystemClock(),
                    baudrate=args.baudrate,
                    channel=args.channel,
                    scan_channels=scan,
                    listen_s=args.listen_s,
                    progress=update,
                    timeout_s=args.listen_s + 60.0,
                )
            )
    except DeviceError as exc:
        return _fail(out, str(device), None, "device", str(exc), schema)
    checks = [check.evaluate(link, args.threshold_db) for link in report.links]
    result = check.verdict(checks, args.threshold_db, f"board on {device}")
    if out.json:
        out.emit(
            check.check_document(
                str(device),
                None,
                args.threshold_db,
                checks,
                result,
                schema=schema,
                extra={
                    "device": {
                        "port": report.device,
                        "ncp_version": report.ncp_version,
                        "hwaddr": report.hwaddr,
                        "channel": report.channel,
                        "listen_s": report.listen_s,
                        "frames_heard": report.frames_heard,
                        "frames_undecodable": report.frames_undecodable,
                    },
                    "noise_floor_dbm": {str(k): v for k, v in report.noise_floor_dbm.items()},
                },
            )
        )
        return result.exit_code
    out.console.print(render.device_noise_table(report.noise_floor_dbm))
    title = (
        f"board {report.hwaddr} on {device}: {report.frames_heard} frames heard on channel "
        f"{report.channel} in {report.listen_s:g} s"
    )
    out.console.print(render.snr_table(title, checks, args.threshold_db))
    out.console.print(render.verdict_line(result))
    return result.exit_code


# -- view-mesh, mesh, status ----------------------------------------------------------------------


def _ask(args: argparse.Namespace, out: Out, path: str, what: str) -> dict[str, Any] | int:
    name = getattr(args, "gateway", None)
    schema = f"hes-diag/{args.command}/1"
    try:
        target = resolve_target(name, args)
        with DiagClient(target, timeout=args.timeout) as client, out.progress(what, None):
            return client.get(path)
    except InventoryError as exc:
        return _fail(out, name or "?", args.url, "setup", str(exc), schema)
    except SetupError as exc:
        return _fail(out, name or "?", args.url, exc.kind, exc.reason, schema)
    except DiagClientError as exc:
        if getattr(exc, "status", None) == 404:
            out.err.print(render.error_line(name or "?", "not found", exc.reason))
            if out.json:
                out.emit({"schema": schema, "error": {"kind": "not_found", "reason": exc.reason},
                          "exit_code": EXIT_BELOW})  # fmt: skip
            return EXIT_BELOW
        return _fail(out, target.name, target.url, exc.kind, exc.reason, schema)


def cmd_view_mesh(args: argparse.Namespace, out: Out) -> int:
    doc = _ask(args, out, f"{API}/meters/{quote(args.meter_id, safe='')}/paths", "paths")
    if isinstance(doc, int):
        return doc
    usable = any(p.get("usable") for p in doc.get("paths") or [])
    code = EXIT_OK if usable else EXIT_BELOW
    if out.json:
        out.emit({**doc, "exit_code": code})
    else:
        out.console.print(render.paths_view(doc))
    return code


def cmd_mesh(args: argparse.Namespace, out: Out) -> int:
    doc = _ask(args, out, f"{API}/routes", "routing table")
    if isinstance(doc, int):
        return doc
    if out.json:
        out.emit({**doc, "exit_code": EXIT_OK})
    else:
        out.console.print(render.mesh_tree(doc, str(doc.get("gateway_id"))))
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    doc = _ask(args, out, f"{API}/status", "status")
    if isinstance(doc, int):
        return doc
    if out.json:
        out.emit({**doc, "exit_code": EXIT_OK})
        return EXIT_OK
    up = doc.get("uplink") or {}
    out.console.print(
        f"[bold]{doc.get('gateway_id')}[/bold]: uplink "
        + (
            "[green]connected[/green]"
            if up.get("connected")
            else f"[red]down[/red] {up.get('error') or ''}"
        )
        + f"; spool {doc.get('spool_depth')} records; {doc.get('readings_total')} readings; "
        f"alarms {doc.get('alarms_total')}; quarantined {doc.get('quarantined')}; "
        f"noise floor {doc.get('noise_floor_dbm')} dBm"
    )
    for m in doc.get("meters") or []:
        out.console.print(
            f"  {m['id']}: {m['state']}, hops {m.get('hops')}, ok {m['reads_ok']}, "
            f"failed {m['reads_failed']}"
            + (f", {m['last_error_name']}" if m.get("last_error_name") else "")
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Out(bool(getattr(args, "json", False)))
    if args.probes < 1 or args.probes > 20:
        parser.error("--probes must be 1..20")
    if args.command == "view-mesh":
        return cmd_view_mesh(args, out)
    if args.command == "mesh":
        return cmd_mesh(args, out)
    if args.command == "status":
        return cmd_status(args, out)
    if args.check_snr is None and args.device is None:
        parser.print_help()
        return EXIT_UNREACHABLE
    if args.device is not None:
        return cmd_check_device(args, out)
    return cmd_check_gateway(args, out)


if __name__ == "__main__":
    sys.exit(main())
