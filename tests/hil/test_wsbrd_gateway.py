"""The gateway beside wsbrd, end to end: the unmodified agent with ``mesh.backend: wsbrd`` reads
meters over IPv6 UDP, publishes through mosquitto to the head end, and hes-diag shows the paths
wsbrd's RoutingGraph gives, saying which figures wsbrd does not supply.

Everything runs in a network namespace of the test's own (the meters' mesh addresses exist only
on its loopback); ``hil.wsbrd.gateway_lab`` drives it and prints what it saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.mesh import ipv6
from firmware_agent.mesh.backend import NOT_AVAILABLE
from hil.netns import run_in_netns
from hil.wsbrd.nodes_file import model_from_text

REPO = Path(__file__).resolve().parents[2]
NODES = REPO / "config" / "hil" / "wsbrd-nodes.yaml"
ROOT = "0200000000000001"
A1, A2, A3, A4, A5 = (f"02000000000000a{i}" for i in range(1, 6))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = model_from_text(NODES.read_text())
    addresses = [ipv6.format_address(model.root_address)] + [
        ipv6.format_address(n.address) for n in model.nodes.values()
    ]
    workdir = tmp_path_factory.mktemp("wsbrd-lab")
    done = run_in_netns(
        [
            sys.executable,
            "-m",
            "hil.wsbrd.gateway_lab",
            "--workdir",
            str(workdir),
            "--nodes",
            str(NODES),
            "--move",
            A5,
            A1,
        ],
        addresses,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_every_meter_is_read_over_ipv6_and_reaches_the_head_end(lab: dict[str, Any]) -> None:
    assert set(lab["delivered"]) == set(lab["meters"]), lab["delivered"]
    assert all(count > 0 for count in lab["delivered"].values())
    assert lab["agent_exit"] == 0


def test_view_mesh_shows_the_routing_graphs_paths(lab: dict[str, Any]) -> None:
    doc = lab["view_mesh"]
    assert doc["process_exit"] == 0, doc
    assert lab["deepest"] == "MTR-0003"
    preferred = [p for p in doc["paths"] if p["preferred"]]
    # a3's parents: a2 first (a2's: a1 first): the route wsbrd takes, not the shortest one.
    assert [h["mac"] for h in preferred[0]["hops"]] == [ROOT, A1, A2, A3]
    assert {tuple(h["mac"] for h in p["hops"]) for p in doc["paths"]} == {
        (ROOT, A1, A2, A3),
        (ROOT, A2, A3),
        (ROOT, A1, A3),
    }
    assert doc["mesh"]["backend"] == "wsbrd"


def test_a_reparent_in_wsbrd_moves_the_view(lab: dict[str, Any]) -> None:
    assert lab["moved_in_time"] is True
    doc = lab["view_mesh_after_move"]
    preferred = next(p for p in doc["paths"] if p["preferred"])
    assert [h["mac"] for h in preferred["hops"]] == [ROOT, A1, A5]


def test_no_view_shows_a_figure_wsbrd_does_not_supply(lab: dict[str, Any]) -> None:
    unavailable = lab["check_snr"]["mesh"]["unavailable"]
    assert {"etx", "noise_floor_dbm", "snr_db"} <= set(unavailable)
    assert all(why.startswith(NOT_AVAILABLE) for why in unavailable.values())
    links = {link["neighbour"]: link for link in lab["check_snr"]["links"]}
    # The border router's neighbours (nodes whose preferred parent it is), itself left out.
    assert set(links) == {A1, A4}
    for link in links.values():
        assert link["etx"] is None and link["noise_floor_dbm"] is None and link["snr_db"] is None
        assert link["status"] == "unknown" and link["probes_sent"] is None
    assert links[A1]["rsl_in_dbm"] == -69 and links[A1]["rsl_out_dbm"] == -71
    # The live view's row for a meter behind a1: figures from wsbrd, the rest None.
    row = lab["snapshot"]["MTR-0001"]["link_row"]
    assert row["rssi_dbm"] == -68 and row["etx"] is None and row["snr_db"] is None
    assert lab["snapshot"]["MTR-0003"]["hops"] == 3


def test_the_technicians_table_names_what_wsbrd_does_not_supply(lab: dict[str, Any]) -> None:
    text = lab["view_mesh_text"]
    assert "valid path(s) to meter MTR-0003" in text
    assert "wsbrd backend — etx: not available from this backend" in " ".join(text.split())


def test_a_last_gasp_through_the_kernel_is_the_meters_alarm(lab: dict[str, Any]) -> None:
    """Beside wsbrd a push arrives at the gateway's address from the meter's mesh address;
    the push listener knows the meter by the address's interface id (its EUI-64)."""
    assert lab["alarm_counted"] is True
    assert lab["pushes_from_unknown"] == 0
