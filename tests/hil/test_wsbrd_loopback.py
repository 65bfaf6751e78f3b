"""Meters read over IPv6 UDP through the wsbrd backend: the emulated wsbrd's RoutingGraph gives
each node's address, the meters listen on those addresses on loopback inside a network
namespace of the test's own (``unshare -n``), and the backend's links reach them with OS
sockets, as they would reach real meters through wsbrd's TUN interface."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from firmware_agent.mesh import ipv6
from hil.netns import run_in_netns
from tests.firmware_agent.test_config_loader import BASE, write

DRIVER = (sys.executable, "-m", "hil.wsbrd.loopback")
REPO = Path(__file__).resolve().parents[2]
PREFIX = bytes.fromhex("fd00007a00010000")
ROOT, M1, M2, M3 = (bytes.fromhex(f"02000000000000{x}") for x in ("01", "a1", "a2", "a3"))

NODES = f"""\
root: "{ROOT.hex(":")}"
prefix: "fd00:7a:1::/64"
nodes:
  - eui64: "{M1.hex(":")}"
    parents: ["{ROOT.hex(":")}"]
    rssi_dbm: -71
    rsl_dbm: -73
    rsl_adv_dbm: -76
    lqi: 190
  - eui64: "{M2.hex(":")}"
    parents: ["{M1.hex(":")}", "{ROOT.hex(":")}"]
  - eui64: "{M3.hex(":")}"
    parents: ["{M2.hex(":")}"]
"""


def test_meters_are_read_at_their_routing_graph_addresses(tmp_path: Path) -> None:
    config = write(tmp_path, BASE + "mesh:\n  backend: wsbrd\n")
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    addresses = [ipv6.format_address(ipv6.address_in_prefix(PREFIX, n)) for n in (ROOT, M1, M2, M3)]
    done = run_in_netns(
        [*DRIVER, "--config", str(config), "--nodes", str(nodes)],
        addresses,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for index, node in enumerate((M1, M2, M3)):
        read = result["reads"][node.hex()]
        assert "error" not in read, read
        address = ipv6.format_address(ipv6.address_in_prefix(PREFIX, node))
        assert read["address"] == address and read["served_by"] == address
        assert read["meter_id"] == f"MTR-{index + 1:04d}" and read["energy_wh"] > 0
        assert read["readings"] >= 2  # the energy register and profile rows
    # Paths from RoutingGraph: through the parents wsbrd lists, nothing else.
    paths = result["paths"]
    assert paths[M1.hex()] == [ROOT.hex(), M1.hex()]
    assert paths[M2.hex()] == [ROOT.hex(), M1.hex(), M2.hex()]  # wsbrd's choice: M1 first
    assert paths[M3.hex()] == [*paths[M2.hex()], M3.hex()]
    # A node wsbrd does not list is a failed read with the reason, not a crash.
    assert result["stranger"].startswith("NoRouteToMeter: ")
    rows = {row["mac"]: row for row in result["rows"]}
    assert set(rows) == {M1.hex()}  # M2 prefers M1: it does not send to the BR directly
    assert rows[M1.hex()]["rssi_dbm"] == -71 and rows[M1.hex()]["etx"] is None
    assert "etx" in result["unavailable"]
