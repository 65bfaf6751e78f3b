"""Routing table persistence: snapshot/restore round trips and the atomic JSON file edge."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.mesh.route_store import load_json, load_table, save_json
from firmware_agent.mesh.routes import (
    SNAPSHOT_VERSION,
    LinkQuality,
    NodeState,
    RoutingTable,
    SnapshotError,
    Transit,
)

ROOT = bytes.fromhex("02124b0000000001")


def n(i: int) -> bytes:
    return bytes.fromhex("02000000000000") + bytes([i])


def populated(now: float = 100.0) -> RoutingTable:
    """n3 under n1 (preferred) and n2; n4 under n3; n5 lost its only parent; n6 forever."""
    t = RoutingTable(ROOT, default_lifetime_s=600)
    t.update_dao(n(1), 240, [Transit(ROOT, 240, None, 0)], 0)
    t.update_dao(n(2), 240, [Transit(ROOT, 240, 1000, 0)], 0)
    t.update_dao(n(3), 17, [Transit(n(1), 9, None, 0), Transit(n(2), 9, None, 1)], 0)
    t.update_dao(n(4), 240, [Transit(n(3), 240, None, 0)], 0)
    t.update_dao(n(5), 240, [Transit(n(9), 240, None, 0)], 0)
    t.update_dao(n(6), 240, [Transit(ROOT, 240, math.inf, 0)], 0)
    t.set_link(ROOT, n(1), LinkQuality(128, 20), 0)
    t.set_link(ROOT, n(2), LinkQuality(384, 25, measured=False), 0)
    t.preferred(n(4), 0)  # via n1
    t.set_link(ROOT, n(1), LinkQuality(128, 3), 50)
    t.reselect(50)  # via n2 now; root-n1 tripped
    t.set_link(ROOT, n(1), LinkQuality(128, 7.5), 60)  # above floor, still recovering
    return t


def test_round_trip_keeps_everything_the_routes_depend_on() -> None:
    t = populated()
    data = json.loads(json.dumps(t.snapshot(100), allow_nan=False))
    assert data["version"] == SNAPSHOT_VERSION
    back = RoutingTable.restore(data, 100, default_lifetime_s=600)
    assert back.table(100) == t.table(100)
    assert back.snapshot(100) == t.snapshot(100)
    assert back.link(ROOT, n(2)) == LinkQuality(384, 25, False)
    # The chosen route survives: n1 is cheaper but still recovering, so nothing moves.
    assert back.source_route(n(4), 100) == (n(2), n(3), n(4))
    assert back.reselect(100) == []
    entry = back.entry(n(5), 100)
    assert entry is not None and entry.state is NodeState.UNREACHABLE
    # DAO sequences survive, so a replayed DAO is still recognised as one.
    assert back.update_dao(n(3), 17, [Transit(ROOT, 10, None, 0)], 101).status == "duplicate"


def test_lifetimes_are_stored_as_seconds_left() -> None:
    t = populated()
    data = t.snapshot(100)
    later = RoutingTable.restore(data, 5000.0)  # monotonic clocks restart: only "left" counts
    left = {
        e.node: e.transits[0].lifetime_left_s
        for e in (later.entry(x, 5000.0) for x in later.nodes())
        if e is not None
    }
    assert left[n(1)] == pytest.approx(500)
    assert left[n(2)] == pytest.approx(900)
    assert left[n(6)] is None  # infinite
    down = RoutingTable.restore(data, 5000.0, elapsed_s=450)
    assert down.entry(n(1), 5000.0).transits[0].lifetime_left_s == pytest.approx(50)  # type: ignore[union-attr]
    assert down.expire(5050.0).expired[0] == (n(1), ROOT)


def test_save_and_load_through_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    assert load_json(path) is None and load_table(path, 0) is None  # first start
    t = populated()
    save_json(path, t, 100)
    first = path.stat().st_ino
    assert json.loads(path.read_text()) == t.snapshot(100)
    t.update_dao(n(7), 240, [Transit(ROOT, 240, None, 0)], 101)
    save_json(path, t, 101)
    # A new file renamed over the old one (never rewritten in place), and no temp files left.
    assert path.stat().st_ino != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.json"]
    back = load_table(path, 101)
    assert back is not None and n(7) in back.nodes()
    assert back.table(101) == t.table(101)


def test_a_torn_temporary_file_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    save_json(path, populated(), 100)
    (tmp_path / ".routes.json.abc.tmp").write_text('{"format": "wisun-gat')  # a crash mid-save
    assert load_table(path, 100) is not None


def _corrupt(mutate: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(populated().snapshot(100)))
    mutate(data)
    return data  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="something-else"), "format"),
        (lambda d: d.update(version=SNAPSHOT_VERSION + 1), "version: 2 is not supported"),
        (lambda d: d.pop("nodes"), "nodes: missing"),
        (lambda d: d.update(nodes={}), "nodes: unexpected dict"),
        (lambda d: d.update(root="zz" * 8), "root: expected 16 hex digits"),
        (lambda d: d["nodes"].__setitem__(0, []), r"nodes\[0\]: expected an object"),
        (lambda d: d["nodes"][1].update(node="0200"), r"nodes\[1\].node: expected 16 hex"),
        (lambda d: d["nodes"][1].update(dao_sequence=300), r"nodes\[1\].dao_sequence: .*0..255"),
        (lambda d: d["nodes"][1].update(dao_sequence=True), r"nodes\[1\].dao_sequence"),
        (lambda d: d["nodes"][2].update(last_dao_age_s="x"), r"nodes\[2\].last_dao_age_s"),
        (lambda d: d["nodes"].append(d["nodes"][0]), r"nodes\[6\].node: .* listed twice"),
        (
            lambda d: d["nodes"][2]["transits"][1].update(preference=-1),
            r"nodes\[2\].transits\[1\].preference",
        ),
        (
            lambda d: d["nodes"][2]["transits"][0].update(remaining_s="soon"),
            r"nodes\[2\].transits\[0\].remaining_s",
        ),
        (
            lambda d: d["nodes"][2]["transits"][1].update(
                parent=d["nodes"][2]["transits"][0]["parent"]
            ),
            r"nodes\[2\].transits: a parent is listed twice",
        ),
        (lambda d: d["nodes"][3].update(route=[d["root"]]), r"nodes\[3\].route: must run"),
        (
            lambda d: d["links"][0].update(measured={"etx": 5, "snr_db": 1}),
            r"links\[0\].measured.etx",
        ),
        (lambda d: d["links"][0].update(tripped="yes"), r"links\[0\].tripped"),
    ],
)
def test_corrupt_snapshots_raise_a_typed_error_naming_the_field(mutate: Any, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        RoutingTable.restore(_corrupt(mutate), 0)


def test_snapshot_of_another_gateway_is_refused() -> None:
    data = populated().snapshot(100)
    with pytest.raises(SnapshotError, match="snapshot is for 02124b0000000001"):
        RoutingTable.restore(data, 0, root=n(200))
    assert RoutingTable.restore(data, 0, root=ROOT).root == ROOT


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not JSON"),
        (b'{"format": "wisun-gateway/routes", "nodes": [', "not JSON .* line 1"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"format": "wisun-gateway/routes", "version": 1}', "root: missing"),
    ],
)
def test_corrupt_files_raise_a_typed_error_naming_the_file(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "routes.json"
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match=match) as info:
        load_table(path, 0)
    assert str(path) in str(info.value)
