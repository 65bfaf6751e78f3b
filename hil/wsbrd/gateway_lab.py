"""The whole gateway beside an emulated wsbrd: agent, broker, head end, hes-diag, end to end.

Run in a network namespace whose loopback carries the root's and every node's address
(:func:`hil.netns.run_in_netns`; ``tests/hil/test_wsbrd_gateway.py`` does): it starts a private
dbus-daemon with the emulated wsbrd, one emulated DLMS meter per node on its mesh address, a
mosquitto with fresh mTLS certificates and a head-end subscriber, then the unmodified agent with
``mesh.backend: wsbrd``. Once every meter's readings are at the head end it asks the agent, as a
technician would, with ``hes-diag`` (view-mesh, mesh, check-snr, all ``--json``); then it moves
a node to another parent in the emulated wsbrd and asks view-mesh again. It prints one JSON
object with what it saw, for the test to judge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from firmware_agent.agent import Agent
from firmware_agent.clock import SystemClock
from firmware_agent.config import load_config
from firmware_agent.mesh import ipv6
from hil.broker import Mosquitto, free_port
from hil.headend import HeadEnd
from hil.meter.push import PushSource
from hil.pki import Pki, generate_pki

from .bus import PrivateBus
from .loopback import serve_meters
from .model import WsbrdModel
from .nodes_file import model_from_text
from .service import serve_wsbrd

GATEWAY = "gateway-01"
TECHNICIAN = "technician"


def meter_ids(model: WsbrdModel) -> dict[bytes, str]:
    """The meter id each node's emulated meter answers as (the order serve_meters uses)."""
    return {eui: f"MTR-{i + 1:04d}" for i, eui in enumerate(model.nodes)}


def write_config(
    workdir: Path, model: WsbrdModel, bus: str, broker_port: int, diag_port: int, push_port: int
) -> Path:
    pki, diag = workdir / "pki", workdir / "pki" / "diag"
    doc: dict[str, Any] = {
        "gateway": {"id": GATEWAY, "site": "wsbrd-lab"},
        # Not opened with mesh.backend wsbrd: wsbrd drives its own RCP.
        "radio": {"url": "spinel+uart:///dev/null-wsbrd-drives-the-rcp", "channel": 0},
        "uplink": {
            "broker_url": f"mqtts://127.0.0.1:{broker_port}",
            "tls": {
                "ca_file": str(pki / "ca.crt"),
                "cert_file": str(pki / f"{GATEWAY}.crt"),
                "key_file": str(pki / f"{GATEWAY}.key"),
                "version": "1.3",
            },
        },
        "spool": {"path": str(workdir / "spool.sqlite")},
        # Pushes (last gasp) reach the gateway's address through wsbrd's TUN and the kernel.
        "collector": {
            "interval_s": 5,
            "jitter_s": 1,
            "profile_rows": 2,
            "timeout_s": 3,
            "push_bind": "::",
            "push_port": push_port,
        },
        "meters": [
            {"id": mid, "transport": "mesh", "address": eui.hex(":")}
            for eui, mid in meter_ids(model).items()
        ],
        "mesh": {"backend": "wsbrd", "wsbrd": {"bus": bus, "poll_s": 5}},
        "diag": {
            "ca_file": str(diag / "ca.crt"),
            "cert_file": str(diag / "server.crt"),
            "key_file": str(diag / "server.key"),
            "bind": "127.0.0.1",
            "port": diag_port,
        },
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def hes_diag(diag: Pki, port: int, *args: str, as_json: bool = True) -> dict[str, Any]:
    """Run hes-diag as a technician would (its own process) and parse what it prints (the
    table's text under ``"text"`` without ``as_json``)."""
    tech = diag.client(TECHNICIAN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firmware_agent.diag.cli",
        *args,
        *(["--json"] if as_json else []),
        "--url",
        f"https://127.0.0.1:{port}",
        "--ca",
        str(diag.ca_cert),
        "--cert",
        str(tech.cert),
        "--key",
        str(tech.key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60.0):
        out, err = await proc.communicate()
    if not as_json:
        return {
            "text": out.decode(),
            "stderr": err.decode()[-2000:],
            "process_exit": proc.returncode,
        }
    try:
        doc: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    except (IndexError, ValueError):
        doc = {"unparsed": out.decode(), "stderr": err.decode()[-2000:]}
    doc["process_exit"] = proc.returncode
    return doc


async def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return bool(predicate())


async def lab(workdir: Path, model: WsbrdModel, move: tuple[bytes, bytes] | None) -> dict[str, Any]:
    ids = meter_ids(model)
    pki = generate_pki(workdir / "pki", gateway_ids=(GATEWAY,))
    diag = generate_pki(
        workdir / "pki" / "diag",
        gateway_ids=(TECHNICIAN,),
        headend_id="unused",
        server_names=("127.0.0.1",),
    )
    out: dict[str, Any] = {"meters": {mid: eui.hex() for eui, mid in ids.items()}}
    with (
        PrivateBus() as bus,
        Mosquitto(pki, port=free_port(), workdir=workdir / "broker") as broker,
        HeadEnd(broker.host, broker.port, pki) as headend,
    ):
        service = await serve_wsbrd(bus.address, model)
        meters = await serve_meters(model, 4059)
        diag_port, push_port = free_port(), free_port()
        config = load_config(
            write_config(workdir, model, bus.address, broker.port, diag_port, push_port)
        )
        agent = Agent(config, SystemClock())
        run = asyncio.create_task(agent.run())
        try:

            def delivered() -> dict[str, int]:
                counts: dict[str, int] = {}
                for record in headend.records():
                    counts[record["device_id"]] = counts.get(record["device_id"], 0) + 1
                return counts

            await wait_for(lambda: set(delivered()) >= set(ids.values()) or run.done(), 90.0)
            out["delivered"] = delivered()
            out["snapshot"] = {
                mv.config.id: {"hops": mv.hops, "link_row": mv.link_row}
                for mv in agent.snapshot().meters
            }
            mesh = agent.mesh
            assert mesh is not None
            now = agent.clock.monotonic()
            deepest = max(ids, key=lambda eui: len(mesh.routes.source_route(eui, now) or ()))
            out["deepest"] = ids[deepest]
            out["view_mesh"] = await hes_diag(
                diag, diag_port, "view-mesh", "--meter-id", ids[deepest]
            )
            table = await hes_diag(
                diag, diag_port, "view-mesh", "--meter-id", ids[deepest], as_json=False
            )
            out["view_mesh_text"] = table["text"]
            out["mesh"] = await hes_diag(diag, diag_port, "mesh")
            out["check_snr"] = await hes_diag(diag, diag_port, "--check-snr")
            if move is not None:
                node, parent = move
                model.reparent(node, [parent])
                mid = ids[node]
                want = [parent.hex(), node.hex()]

                def moved() -> bool:
                    path = mesh.routes.source_route(node, agent.clock.monotonic())
                    return path is not None and [h.hex() for h in path[-2:]] == want

                out["moved_in_time"] = await wait_for(moved, 30.0)
                out["view_mesh_after_move"] = await hes_diag(
                    diag, diag_port, "view-mesh", "--meter-id", mid
                )
            # A last gasp from the meter at a2, sent from its mesh address to the gateway's.
            gasper = next(eui for eui, mid in ids.items() if mid == "MTR-0002")
            alarms_before = agent.snapshot().alarms_total
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
                sender.bind((ipv6.format_address(model.address_of(gasper)), 0))
                gasp = PushSource("MTR-0002").last_gasp(time.time())
                sender.sendto(gasp, (ipv6.format_address(model.root_address), push_port))
            out["alarm_counted"] = await wait_for(
                lambda: agent.snapshot().alarms_total > alarms_before, 10.0
            )
            listener = agent.push_listener
            out["pushes_from_unknown"] = None if listener is None else listener.unknown
            out["dtsn_before_stop"] = model.dtsn
        finally:
            agent.stop()
            async with asyncio.timeout(60.0):
                out["agent_exit"] = await run
            for svc in meters.values():
                svc.close()
            await service.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.wsbrd.gateway_lab", description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--nodes", type=Path, required=True, help="the network (YAML)")
    parser.add_argument(
        "--move", nargs=2, metavar=("NODE", "PARENT"), help="then reparent NODE under PARENT"
    )
    args = parser.parse_args(argv)
    model = model_from_text(args.nodes.read_text())
    move = None
    if args.move:
        node, parent = (bytes.fromhex(a.replace(":", "")) for a in args.move)
        move = (node, parent)
    result = asyncio.run(lab(args.workdir, model, move))
    json.dump(result, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
