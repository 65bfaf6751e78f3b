"""``hil demo``: the gateway agent on the embedded default, end to end, with a live view.

Fresh mTLS certificates, a local mosquitto, a head-end subscriber, and the agent with its radio
URL from the config (by default a virtual RCP with emulated meters on a PTY). Built from the
same pieces the tests use, so what the demo shows is what the tests check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from firmware_agent.agent import Agent, Snapshot
from firmware_agent.clock import SystemClock
from firmware_agent.config import load_config
from firmware_agent.diag.inventory import write_inventory
from firmware_agent.view import LiveView
from hil.broker import Mosquitto
from hil.headend import HeadEnd
from hil.pki import generate_pki

TECHNICIAN = "technician"


def _pki_dir(config_path: Path) -> tuple[str, Path]:
    """The gateway id and the directory the config expects its certificates in."""
    raw: Any = yaml.safe_load(config_path.read_text())
    gateway_id = str(raw["gateway"]["id"])
    ca_file = Path(str(raw["uplink"]["tls"]["ca_file"]))
    if not ca_file.is_absolute():
        ca_file = config_path.parent / ca_file
    return gateway_id, ca_file.resolve().parent


async def _run_agent(agent: Agent, duration: float | None, console: Console) -> int:
    async with LiveView(agent, SystemClock(), console):
        return await agent.run(duration)


def summary_table(snap: Snapshot, delivered: dict[str, int]) -> Table:
    table = Table(title=f"gateway {snap.gateway_id}: summary")
    for col in (
        "meter",
        "reads ok",
        "reads failed",
        "readings spooled",
        "records at head end",
        "last error",
    ):
        table.add_column(col)
    for mv in snap.meters:
        st = mv.status
        table.add_row(
            mv.config.id,
            str(st.reads_ok),
            str(st.reads_failed),
            str(st.readings),
            str(delivered.get(mv.config.id, 0)),
            st.last_error or "",
        )
    return table


def _settle(headend: HeadEnd, published: int, timeout: float) -> None:
    """Give the head end a moment to receive the last acknowledged messages."""
    deadline = time.monotonic() + timeout
    while len(headend.records()) + headend.duplicates < published and time.monotonic() < deadline:
        time.sleep(0.1)


def run_demo(config_path: Path, duration: float | None, console: Console | None = None) -> int:
    """Run the demo; with a duration, exit 0 only if readings reached the head end."""
    console = console or Console()
    # Warnings and errors print above the live view instead of tearing it; the view shows the rest.
    logging.basicConfig(
        level=logging.WARNING, handlers=[RichHandler(console=console, show_path=False)], force=True
    )
    gateway_id, pki_dir = _pki_dir(config_path)
    pki = generate_pki(pki_dir, gateway_ids=(gateway_id,))
    # The technicians' own CA (not the uplink's): the diag server's certificate and one
    # technician's, so hes-diag works from a second terminal.
    diag_pki = generate_pki(
        pki_dir / "diag",
        gateway_ids=(TECHNICIAN,),
        headend_id="unused",
        server_names=("127.0.0.1", "localhost"),
    )
    config = load_config(config_path)
    console.print(f"certificates: {pki_dir} (fresh CA, broker, {gateway_id}, head end)")
    if config.diag is not None:
        technician = diag_pki.client(TECHNICIAN)
        url = f"https://127.0.0.1:{config.diag.port}"
        inventory = write_inventory(
            gateway_id, url, diag_pki.ca_cert, technician.cert, technician.key
        )
        console.print(
            f"diag API: {url}; hes-diag inventory {inventory}: try "
            f"`.venv/bin/hes-diag --check-snr {gateway_id}` in another terminal"
        )
    with (
        Mosquitto(pki, port=config.uplink.port, workdir=pki_dir.parent / "broker") as broker,
        HeadEnd(broker.host, broker.port, pki) as headend,
    ):
        console.print(
            f"mosquitto: mqtts://{broker.host}:{broker.port} (mTLS, TLS 1.3), log {broker.log_file}"
        )
        agent = Agent(config, SystemClock())
        started = time.monotonic()
        code = asyncio.run(_run_agent(agent, duration, console))
        _settle(headend, agent.snapshot().published_records, timeout=5.0)
        records = headend.records()
        duplicates = headend.duplicates
        delivered: dict[str, int] = {}
        for record in records:
            delivered[record["device_id"]] = delivered.get(record["device_id"], 0) + 1
        snap = agent.snapshot()
    console.print(summary_table(snap, delivered))
    console.print(
        f"ran {time.monotonic() - started:.0f} s: {snap.readings_total} readings collected, "
        f"{snap.published_records} published; the head end kept {len(records)} unique records "
        f"and dropped {duplicates} repeats by natural key; {snap.spool_depth} left in the spool"
    )
    if code != 0:
        return code
    if duration is not None and not records:
        console.print("[red]no readings reached the head end[/red]")
        return 1
    return 0
