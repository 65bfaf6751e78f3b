"""``python -m hil.wsbrd``: the emulated wsbrd as a process a demo or an end-to-end test runs,
and its nodes file's errors."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.config import load_config
from firmware_agent.mesh.wsbrd import WsbrdBackend
from hil.wsbrd.nodes_file import NodesFileError, model_from_text
from tests.firmware_agent.test_config_loader import BASE, write

REPO = Path(__file__).resolve().parents[2]
NODES = """\
root: "02:00:00:00:00:00:00:01"
prefix: "fd00:7a:1::/64"
nodes:
  - {eui64: "02:00:00:00:00:00:00:a1", parents: ["02:00:00:00:00:00:00:01"], rsl_dbm: -80}
  - {eui64: "02:00:00:00:00:00:00:a2", parents: ["02:00:00:00:00:00:00:a1"]}
"""


def test_the_process_serves_the_nodes_file_on_a_private_bus(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    config = load_config(write(tmp_path, BASE + "mesh:\n  backend: wsbrd\n"))
    process = subprocess.Popen(
        [sys.executable, "-m", "hil.wsbrd", "--bus", "private", "--nodes", str(nodes)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert first.startswith("DBUS_ADDRESS=unix:path="), process.stderr
        assert "2 nodes" in process.stdout.readline()

        async def main() -> tuple[bytes, object]:
            backend = WsbrdBackend(
                config, SystemClock(), random.Random(1), bus_address=first.split("=", 1)[1]
            )
            await backend.start()
            try:
                now = backend.clock.monotonic()
                return backend.root, backend.routes.source_route(
                    bytes.fromhex("02000000000000a2"), now
                )
            finally:
                await backend.close()

        root, route = asyncio.run(main())
        assert root == bytes.fromhex("0200000000000001")
        assert route == (bytes.fromhex("02000000000000a1"), bytes.fromhex("02000000000000a2"))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1", "a mapping"),
        ('root: "02:00"\n', "root: '02:00' is not an EUI-64"),
        ('root: "02:00:00:00:00:00:00:01"\nprefix: "fd00::/48"\n', "not a /64"),
        (
            'root: "02:00:00:00:00:00:00:01"\nnodes:\n  - {eui64: "02:00:00:00:00:00:00:a1", '
            'parents: [], rsl_dbm: "loud"}\n',
            "nodes[0].rsl_dbm: 'loud' is not an integer",
        ),
    ],
)
def test_nodes_file_errors_name_where(text: str, message: str) -> None:
    with pytest.raises(NodesFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model_from_text(text)
