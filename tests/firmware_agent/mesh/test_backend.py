"""The backend seam's shared parts: parent sets → routing table, and mesh events."""

from __future__ import annotations

from pathlib import Path

from firmware_agent.config import load_config
from firmware_agent.mesh.backend import (
    NEIGHBOUR_FIELDS,
    MeshEvent,
    MeshEventKind,
    MeshEvents,
    ParentSync,
    empty_row,
)
from firmware_agent.mesh.routes import RoutingTable
from tests.firmware_agent.test_config_loader import BASE, reject, write

ROOT = bytes.fromhex("0200000000000001")
A, B, C = (bytes.fromhex(f"02000000000000a{i}") for i in range(3))


def table() -> RoutingTable:
    return RoutingTable(ROOT, snr_floor_db=12.0)


def test_parent_sets_become_paths_in_preference_order() -> None:
    routes = table()
    sync = ParentSync(routes)
    sync.apply({A: [ROOT], B: [A, ROOT], C: [B]}, now=0.0)
    # Unknown link metrics: every link costs the same, so the fewest hops win.
    assert routes.source_route(C, 0.0) == (B, C)
    assert {p.hops for p in routes.paths(C, 0.0)} == {(ROOT, B, C), (ROOT, A, B, C)}
    entry = routes.entry(B, 0.0)
    assert entry is not None and [t.parent for t in entry.transits] == [A, ROOT]


def test_a_changed_parent_set_moves_the_route_and_a_missing_node_is_forgotten() -> None:
    routes = table()
    events: list[MeshEvent] = []
    watch = MeshEvents(routes)
    watch.add_listener(events.append)
    sync = ParentSync(routes)
    sync.apply({A: [ROOT], C: [A]}, now=0.0)
    watch.poll(0.0)
    assert {(e.kind, e.node) for e in events} == {
        (MeshEventKind.JOINED, A),
        (MeshEventKind.JOINED, C),
    }
    events.clear()
    sync.apply({A: [ROOT], B: [ROOT], C: [B]}, now=1.0)
    watch.poll(1.0)
    assert routes.source_route(C, 1.0) == (B, C)
    assert (MeshEventKind.JOINED, B) in {(e.kind, e.node) for e in events}
    moved = [e for e in events if e.kind is MeshEventKind.MOVED]
    assert [(e.node, e.path) for e in moved] == [(C, (ROOT, B, C))]
    events.clear()
    sync.apply({A: [ROOT]}, now=2.0)
    watch.poll(2.0)
    assert B not in routes.nodes() and C not in routes.nodes()
    assert {(e.kind, e.node) for e in events} == {
        (MeshEventKind.LEFT, B),
        (MeshEventKind.LEFT, C),
    }


def test_the_same_report_twice_changes_nothing() -> None:
    routes = table()
    sync = ParentSync(routes)
    sync.apply({A: [ROOT], B: [A]}, now=0.0)
    before = routes.entry(B, 0.0)
    sync.apply({A: [ROOT], B: [A]}, now=5.0)
    after = routes.entry(B, 5.0)
    assert before is not None and after is not None
    assert after.dao_sequence == before.dao_sequence


def test_an_empty_row_names_every_field() -> None:
    row = empty_row(A)
    assert tuple(row) == NEIGHBOUR_FIELDS
    assert row["mac"] == A.hex() and row["etx"] is None


def test_backend_keys_load_and_bad_ones_are_named(tmp_path: Path) -> None:
    text = BASE + "mesh:\n  backend: wsbrd\n  wsbrd:\n    noise_floor_dbm: -101\n"
    config = load_config(write(tmp_path, text))
    assert config.mesh.backend == "wsbrd"
    assert config.mesh.wsbrd.noise_floor_dbm == -101 and config.mesh.wsbrd.bus == "system"
    assert config.mesh.ti_ncp.min_gap_s == 1.0
    error = reject(tmp_path, BASE + "mesh:\n  backend: openthread\n")
    assert "mesh.backend" in str(error) and "ti-ncp" in str(error)


def test_following_the_border_routers_preference_shows_the_route_it_takes() -> None:
    routes = RoutingTable(ROOT, snr_floor_db=12.0, follow_preference=True)
    events: list[MeshEvent] = []
    watch = MeshEvents(routes)
    watch.add_listener(events.append)
    sync = ParentSync(routes)
    sync.apply({A: [ROOT], B: [A, ROOT], C: [B]}, now=0.0)
    watch.poll(0.0)
    # Fewer hops through the root directly, but B prefers A: the view follows B.
    assert routes.source_route(C, 0.0) == (A, B, C)
    assert [p.hops for p in routes.paths(B, 0.0)] == [(ROOT, A, B), (ROOT, B)]
    sync.apply({A: [ROOT], B: [ROOT, A], C: [B]}, now=1.0)
    assert routes.source_route(C, 1.0) == (B, C)
    moved = sorted((e.node, e.path) for e in events if e.kind is MeshEventKind.MOVED)
    assert moved == [(B, (ROOT, B)), (C, (ROOT, B, C))]
    assert "preference" in routes.changes()[-1].reason
