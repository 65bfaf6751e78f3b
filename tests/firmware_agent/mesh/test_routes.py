"""Routing table (RPL non-storing root): sequences, DAOs, paths, costs, hysteresis, expiry."""

from __future__ import annotations

import logging
import math

import pytest

from firmware_agent.mesh.routes import (
    DaoStatus,
    LinkQuality,
    NodeState,
    RouteChange,
    RouteInputError,
    RoutingTable,
    Transit,
    lollipop_compare,
    lollipop_next,
)

ROOT = bytes.fromhex("02124b0000000001")


def n(i: int) -> bytes:
    return bytes.fromhex("02000000000000") + bytes([i])


def tr(parent: bytes, ps: int = 240, lifetime: float | None = None, pref: int = 0) -> Transit:
    return Transit(parent, ps, lifetime, pref)


def parents(*ps: bytes, seq: int = 240, lifetime: float | None = None) -> list[Transit]:
    return [Transit(p, seq, lifetime, i) for i, p in enumerate(ps)]


def hops(path: object) -> tuple[bytes, ...]:
    assert path is not None
    return path.hops  # type: ignore[attr-defined,no-any-return]


# -- RFC 6550 §7.2 lollipop counters ---------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (5, 5, 0),
        (6, 5, 1),
        (5, 6, -1),
        (0, 127, 1),  # circular region wraps 127 -> 0
        (127, 0, -1),
        (3, 120, 1),  # 11 ahead across the wrap
        (250, 240, 1),  # linear region
        (240, 250, -1),
        (0, 250, 1),  # left the linear region: 256 + 0 - 250 = 6 <= 16
        (0, 240, 1),  # exactly SEQUENCE_WINDOW steps after the initial value
        (1, 240, -1),  # 17 > 16: the linear value is taken as a reboot, so newer
        (240, 50, 1),  # a rebooted node (240) is newer than an old circular value
        (50, 240, -1),
        (40, 10, None),  # 30 apart in the circular region: desynchronised
        (130, 200, None),  # 70 apart in the linear region
    ],
)
def test_lollipop_compare(a: int, b: int, expected: int | None) -> None:
    assert lollipop_compare(a, b) == expected


def test_lollipop_next_wraps_both_regions() -> None:
    assert [lollipop_next(v) for v in (240, 254, 255, 5, 126, 127)] == [241, 255, 0, 6, 127, 0]
    seq, seen = 240, []
    for _ in range(20):
        nxt = lollipop_next(seq)
        assert lollipop_compare(nxt, seq) == 1
        seen.append(nxt)
        seq = nxt
    assert seen[15:17] == [0, 1]


@pytest.mark.parametrize("bad", [256, -1, True, 1.0])
def test_lollipop_rejects_non_counters(bad: object) -> None:
    with pytest.raises(RouteInputError, match=r"0\.\.255"):
        lollipop_compare(bad, 0)  # type: ignore[arg-type]


# -- DAO handling ------------------------------------------------------------------------------


def test_dao_duplicate_and_stale_sequences_are_ignored() -> None:
    t = RoutingTable(ROOT)
    assert t.update_dao(n(1), 10, [tr(ROOT)], 0).accepted
    t.update_dao(n(2), 10, [tr(ROOT)], 0)
    dup = t.update_dao(n(1), 10, parents(n(2), seq=241), 1)
    assert dup.status is DaoStatus.DUPLICATE and not dup.accepted
    stale = t.update_dao(n(1), 9, parents(n(2), seq=241), 1)
    assert stale.status is DaoStatus.STALE
    assert t.paths(n(1), 1)[0].hops == (ROOT, n(1))  # neither DAO moved it
    newer = t.update_dao(n(1), 11, parents(n(2), seq=241), 2)
    assert newer.accepted and newer.parents_changed
    assert newer.old_parents == (ROOT,) and newer.new_parents == (n(2),)
    assert t.paths(n(1), 2)[0].hops == (ROOT, n(2), n(1))


def test_dao_sequence_wrap_and_reboot() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 127, [tr(ROOT, 10)], 0)
    assert t.update_dao(n(1), 0, [tr(ROOT, 11)], 1).accepted  # 127 -> 0 is newer
    assert t.update_dao(n(1), 127, [tr(ROOT, 12)], 2).status is DaoStatus.STALE
    # A reboot restarts at 240 (linear region): newer than an old circular value...
    t.update_dao(n(2), 60, [tr(ROOT, 60)], 3)
    out = t.update_dao(n(2), 240, [tr(n(1), 240)], 4)
    assert out.accepted and out.new_parents == (n(1),)
    assert t.entry(n(2), 4).dao_sequence == 240  # type: ignore[union-attr]
    # ...but within SEQUENCE_WINDOW of 240 (0 is 16 steps on) it is an old duplicate.
    assert t.update_dao(n(1), 240, [tr(n(2), 240)], 5).status is DaoStatus.STALE


def test_desynchronised_sequence_is_taken_as_newer_with_a_note() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 10, [tr(ROOT, 10)], 0)
    t.update_dao(n(2), 10, [tr(ROOT, 10)], 0)
    out = t.update_dao(n(1), 50, [tr(n(2), 50)], 1)
    assert out.accepted and out.new_parents == (n(2),)
    assert any("not comparable" in note for note in out.notes)


def test_path_sequence_newer_replaces_equal_merges_older_ignored() -> None:
    t = RoutingTable(ROOT)
    for i in (1, 2, 3, 4):
        t.update_dao(n(i), 240, [tr(ROOT)], 0)
    t.update_dao(n(9), 240, [tr(n(1), 5, pref=0), tr(n(2), 5, pref=1)], 0)
    out = t.update_dao(n(9), 241, [tr(n(3), 6)], 1)
    assert out.new_parents == (n(3),)  # newer path sequence: the set is replaced
    out = t.update_dao(n(9), 242, [tr(n(1), 5)], 2)
    assert out.new_parents == (n(3),) and not out.parents_changed
    assert any("older than 6" in note for note in out.notes)
    out = t.update_dao(n(9), 243, [tr(n(4), 6, pref=1)], 3)
    assert out.new_parents == (n(3), n(4))  # same path sequence: added to the set
    assert t.entry(n(9), 3).path_sequence == 6  # type: ignore[union-attr]


def test_refresh_extends_lifetimes_without_changing_parents() -> None:
    t = RoutingTable(ROOT, default_lifetime_s=100)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    out = t.update_dao(n(1), 241, [tr(ROOT)], 80)
    assert out.accepted and not out.parents_changed
    entry = t.entry(n(1), 150)
    assert entry is not None and entry.transits[0].lifetime_left_s == pytest.approx(30)
    assert t.paths(n(1), 150)  # would have expired at 100 without the refresh


def test_no_path_dao_removes_and_reports_unreachable() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.update_dao(n(2), 240, [tr(ROOT)], 0)
    t.update_dao(n(3), 240, parents(n(1), n(2)), 0)
    t.update_dao(n(4), 240, [tr(n(3))], 0)
    out = t.update_dao(n(3), 241, [tr(n(1), lifetime=0)], 1)
    assert out.new_parents == (n(2),) and not out.removed and out.unreachable == ()
    out = t.update_dao(n(3), 242, [tr(n(2), lifetime=0)], 2)
    assert out.removed and out.new_parents == ()
    assert out.unreachable == (n(3), n(4))  # the node and everything below it
    assert t.entry(n(4), 2).state is NodeState.UNREACHABLE  # type: ignore[union-attr]
    assert n(3) in t.nodes()  # kept, reported, not silently dropped
    back = t.update_dao(n(3), 243, [tr(n(1), 241)], 3)
    assert back.recovered == (n(3), n(4))
    assert t.entry(n(4), 3).state is NodeState.OK  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("node", "seq", "transits", "match"),
    [
        (b"\x01" * 7, 1, [tr(ROOT)], "node: expected an 8-byte EUI-64"),
        (ROOT, 1, [tr(ROOT)], "root does not send itself DAOs"),
        (n(1), 256, [tr(ROOT)], "DAO sequence: expected 0..255"),
        (n(1), 1, [tr(b"\x00" * 4)], r"transits\[0\].parent"),
        (n(1), 1, [tr(ROOT, 300)], r"transits\[0\].path_sequence"),
        (n(1), 1, [tr(ROOT, lifetime=-1)], r"transits\[0\].path_lifetime_s"),
        (n(1), 1, [tr(ROOT, lifetime=math.nan)], r"transits\[0\].path_lifetime_s"),
        (n(1), 1, [tr(ROOT, pref=-1)], r"transits\[0\].preference"),
        (n(1), 1, [tr(ROOT), tr(ROOT, pref=1)], r"transits\[1\].parent: .* listed twice"),
        (n(1), 1, [(ROOT, 1, None, 0)], r"transits\[0\]: expected a Transit"),
    ],
)
def test_bad_dao_raises_a_typed_error_naming_the_field(
    node: bytes, seq: int, transits: list[Transit], match: str
) -> None:
    t = RoutingTable(ROOT)
    with pytest.raises(RouteInputError, match=match):
        t.update_dao(node, seq, transits, 0)
    assert t.nodes() == []


def test_bad_link_input() -> None:
    t = RoutingTable(ROOT)
    with pytest.raises(RouteInputError, match="same node"):
        t.set_link(n(1), n(1), LinkQuality(128, 10), 0)
    with pytest.raises(RouteInputError, match=">= 128"):
        t.set_link(ROOT, n(1), LinkQuality(64, 10), 0)
    with pytest.raises(RouteInputError, match="finite"):
        t.set_link(ROOT, n(1), LinkQuality(128, math.inf), 0)
    with pytest.raises(RouteInputError, match="link end b"):
        t.set_link(ROOT, b"short", LinkQuality(128, 10), 0)


# -- paths and costs ---------------------------------------------------------------------------


def diamond(**kw: object) -> RoutingTable:
    """root -> 1, 2; 3 under 1 (preferred) and 2; 4 under 3; 5 under 4 and 2."""
    t = RoutingTable(ROOT, **kw)  # type: ignore[arg-type]
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.update_dao(n(2), 240, [tr(ROOT)], 0)
    t.update_dao(n(3), 240, parents(n(1), n(2)), 0)
    t.update_dao(n(4), 240, [tr(n(3))], 0)
    t.update_dao(n(5), 240, parents(n(4), n(2)), 0)
    return t


def test_every_path_of_a_multi_parent_node_cheapest_first() -> None:
    t = diamond()
    for a, b, etx in [(ROOT, n(1), 128), (ROOT, n(2), 384), (n(1), n(3), 128), (n(2), n(3), 128)]:
        t.set_link(a, b, LinkQuality(etx, None), 0)
    t.set_link(n(3), n(4), LinkQuality(128, None), 0)
    t.set_link(n(4), n(5), LinkQuality(128, None), 0)
    t.set_link(n(2), n(5), LinkQuality(512, None), 0)
    got = [(p.hops, p.cost) for p in t.paths(n(5), 1)]
    assert got == [
        ((ROOT, n(1), n(3), n(4), n(5)), 4.0),
        ((ROOT, n(2), n(3), n(4), n(5)), 6.0),
        ((ROOT, n(2), n(5)), 7.0),
    ]
    assert t.source_route(n(5), 1) == (n(1), n(3), n(4), n(5))
    assert t.paths(n(99), 1) == [] and t.source_route(n(99), 1) is None
    assert t.paths(ROOT, 1) == []


def test_equal_cost_paths_follow_the_advertised_preference() -> None:
    t = diamond()  # no metrics: every link costs the unknown-ETX default
    assert [p.hops[1] for p in t.paths(n(3), 0)] == [n(1), n(2)]
    assert all(p.cost == 4.0 for p in t.paths(n(3), 0))
    t.update_dao(n(3), 241, parents(n(2), n(1), seq=241), 1)  # preference swapped
    assert [p.hops[1] for p in t.paths(n(3), 1)] == [n(2), n(1)]


def test_max_hops_and_max_paths_bound_the_search() -> None:
    t = RoutingTable(ROOT, max_hops=3)
    prev = ROOT
    for i in range(1, 6):
        t.update_dao(n(i), 240, [tr(prev)], 0)
        prev = n(i)
    assert len(t.paths(n(3), 0)[0].hops) == 4
    assert t.paths(n(4), 0) == []
    assert t.entry(n(4), 0).state is NodeState.UNREACHABLE  # type: ignore[union-attr]
    ladder = RoutingTable(ROOT, max_paths=3)
    ladder.update_dao(n(1), 240, [tr(ROOT)], 0)
    ladder.update_dao(n(2), 240, [tr(ROOT)], 0)
    for i in range(3, 9):  # rungs (1, 2), (3, 4), ...: both nodes of a rung are parents
        rung = (i - 1) // 2
        ladder.update_dao(n(i), 240, parents(n(2 * rung - 1), n(2 * rung)), 0)
    assert len(ladder.paths(n(8), 0)) == 3  # 2**3 paths exist, 3 are kept
    assert len(RoutingTable.restore(ladder.snapshot(0), 0).paths(n(8), 0)) == 8


def test_link_cost_from_etx_and_snr_penalty() -> None:
    t = RoutingTable(ROOT, snr_floor_db=6, penalty_span_db=10, snr_penalty=2, unknown_etx=256)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    assert t.paths(n(1), 0)[0].cost == 2.0  # unknown ETX -> the configured default
    t.set_link(ROOT, n(1), LinkQuality(192, None), 0)
    assert t.paths(n(1), 0)[0].cost == 1.5
    t.set_link(ROOT, n(1), LinkQuality(192, 16.0), 0)  # floor + span: no penalty yet
    assert t.paths(n(1), 0)[0].cost == 1.5
    costs = []
    for snr in (14.0, 11.0, 8.0, 6.5):
        t.set_link(ROOT, n(1), LinkQuality(192, snr), 0)
        path = t.paths(n(1), 0)[0]
        assert path.usable and path.worst_snr_db == snr
        costs.append(path.cost)
    assert costs == sorted(costs) and costs[0] > 1.5 and costs[-1] < 3.5
    assert costs[2] == pytest.approx(1.5 + 2 * (8 / 10) ** 2)
    t.set_link(ROOT, n(1), LinkQuality(192, 3.14), 0)
    path = t.paths(n(1), 0)[0]
    assert not path.usable and path.cost == 3.5
    assert path.reasons == (f"SNR 3.1 dB < floor 6 dB on link {ROOT.hex()}-{n(1).hex()}",)


def test_worst_snr_and_usability_span_the_whole_path() -> None:
    t = diamond()
    t.set_link(ROOT, n(1), LinkQuality(128, 25), 0)
    t.set_link(n(1), n(3), LinkQuality(128, 4), 0)
    t.set_link(n(3), n(4), LinkQuality(128, 12), 0)
    via1 = next(p for p in t.paths(n(4), 0) if p.hops[1] == n(1))
    assert via1.worst_snr_db == 4 and not via1.usable
    via2 = next(p for p in t.paths(n(4), 0) if p.hops[1] == n(2))
    assert via2.worst_snr_db == 12 and via2.usable


def test_measured_metrics_win_over_reported_ones() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.set_link(n(1), ROOT, LinkQuality(128, 20, measured=False), 0)  # undirected
    assert t.paths(n(1), 0)[0].usable
    t.set_link(ROOT, n(1), LinkQuality(384, 4, measured=True), 1)
    t.set_link(ROOT, n(1), LinkQuality(128, 30, measured=False), 2)  # does not override
    assert t.link(n(1), ROOT) == LinkQuality(384, 4, True)
    assert not t.paths(n(1), 2)[0].usable
    t.set_link(ROOT, n(1), LinkQuality(256, None, measured=True), 3)  # no SNR measured
    assert t.link(ROOT, n(1)) == LinkQuality(256, 30, True)  # the reported SNR fills in


# -- preferred path, hysteresis ----------------------------------------------------------------


def two_parent_node() -> RoutingTable:
    """n3 under n1 (preference 0, the cheaper way: 2.0 + SNR penalty) and n2 (4.0)."""
    t = RoutingTable(ROOT, snr_floor_db=6, hysteresis_db=3, switch_margin=0.5)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.update_dao(n(2), 240, [tr(ROOT)], 0)
    t.update_dao(n(3), 240, parents(n(1), n(2)), 0)
    t.set_link(ROOT, n(1), LinkQuality(128, 20), 0)
    t.set_link(ROOT, n(2), LinkQuality(384, 30), 0)
    t.set_link(n(1), n(3), LinkQuality(128, 30), 0)
    t.set_link(n(2), n(3), LinkQuality(128, 30), 0)
    return t


VIA1 = (ROOT, n(1), n(3))
VIA2 = (ROOT, n(2), n(3))


def test_hysteresis_on_snr_hovering_around_the_floor() -> None:
    t = two_parent_node()
    heard: list[RouteChange] = []
    t.add_change_listener(heard.append)
    assert hops(t.preferred(n(3), 0)) == VIA1
    assert t.changes() == []  # a first route is not a switch
    # SNR of root-n1, as the gateway measures it over time (floor 6 dB, hysteresis 3 dB).
    script = [12, 7, 5.5, 6.5, 5.9, 6.2, 8.9, 6.1, 5.0, 8.0, 9.0, 12, 5.9, 6.1, 5.8, 6.3, 8.5]
    route = []
    for step, snr in enumerate(script, start=1):
        t.set_link(ROOT, n(1), LinkQuality(128, snr), step)
        t.reselect(step)
        route.append(1 if t.source_route(n(3), step) == VIA1[1:] else 2)
    # Without hysteresis the route would go back at 8.9 dB (step 7: 3.01 + 0.5 < 4.0) and at
    # 8.0 dB (step 10), and leave again at 5.9 and 5.0.
    assert route == [1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 2, 2, 2, 2, 2]
    link = f"{ROOT.hex()}-{n(1).hex()}"
    assert [(c.at, c.old, c.new, c.reason) for c in t.changes()] == [
        (3, VIA1, VIA2, f"SNR 5.5 dB < floor 6 dB on link {link}"),
        (11, VIA2, VIA1, "cost 2.98 beats 4.00 by more than 0.5"),  # 9 dB: eligible again
        (13, VIA1, VIA2, f"SNR 5.9 dB < floor 6 dB on link {link}"),
    ]
    assert heard == t.changes()


def test_recovering_path_is_not_chosen_even_without_a_current_route() -> None:
    t = two_parent_node()
    t.set_link(ROOT, n(1), LinkQuality(128, 4), 0)
    t.set_link(ROOT, n(1), LinkQuality(128, 25), 0)  # back: tripped cleared at >= 9 dB
    assert hops(t.preferred(n(3), 0)) == VIA1
    t2 = two_parent_node()
    t2.set_link(ROOT, n(1), LinkQuality(128, 4), 0)
    t2.set_link(ROOT, n(1), LinkQuality(128, 8.5), 0)  # above floor, within hysteresis
    best = t2.paths(n(3), 0)[0]
    assert best.hops == VIA1 and best.usable and best.recovering
    assert "recovering" in best.reasons[0]
    assert hops(t2.preferred(n(3), 0)) == VIA2


def test_switch_margin_keeps_a_route_against_small_gains() -> None:
    t = two_parent_node()
    t.set_link(ROOT, n(1), LinkQuality(512, 30), 0)  # via n1: 4 + 1; via n2: 3 + 1
    assert hops(t.preferred(n(3), 0)) == VIA2
    t.set_link(ROOT, n(1), LinkQuality(352, 30), 1)  # via n1 now 3.75: better by 0.25 only
    assert t.reselect(1) == [] and hops(t.preferred(n(3), 1)) == VIA2
    t.set_link(ROOT, n(1), LinkQuality(128, 30), 2)  # 2.0 vs 4.0
    (change,) = t.reselect(2)
    assert change.new == VIA1 and change.reason == "cost 2.00 beats 4.00 by more than 0.5"


def test_weak_only_path_is_kept_and_flagged() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.preferred(n(1), 0)
    t.set_link(ROOT, n(1), LinkQuality(128, 2), 1)
    path = t.preferred(n(1), 1)
    assert path is not None and not path.usable and path.hops == (ROOT, n(1))
    assert t.changes() == []  # nothing better to move to


def test_failing_listener_is_logged_and_does_not_stop_routing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(change: RouteChange) -> None:
        raise RuntimeError("listener bug")

    t = two_parent_node()
    t.add_change_listener(broken)
    t.preferred(n(3), 0)
    with caplog.at_level(logging.ERROR, logger="firmware_agent.mesh.routes"):
        t.set_link(ROOT, n(1), LinkQuality(128, 1), 1)
        assert hops(t.preferred(n(3), 1)) == VIA2
    assert "listener" in caplog.text and len(t.changes()) == 1
    t.remove_change_listener(broken)


def test_change_log_is_bounded() -> None:
    t = RoutingTable(ROOT, change_log_size=4)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.update_dao(n(2), 240, [tr(ROOT)], 0)
    t.update_dao(n(3), 240, parents(n(1), n(2)), 0)
    t.preferred(n(3), 0)
    for step in range(1, 11):  # the current route's first link keeps dropping out
        first = t.source_route(n(3), step)
        assert first is not None
        t.set_link(ROOT, first[0], LinkQuality(128, 1), step)
        t.set_link(ROOT, n(1) if first[0] == n(2) else n(2), LinkQuality(128, 30), step)
        t.reselect(step)
    assert [c.at for c in t.changes()] == [7, 8, 9, 10]


# -- expiry, unreachable -----------------------------------------------------------------------


def test_expired_transits_are_gone_before_and_after_expire() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 240, [tr(ROOT, lifetime=100)], 0)
    t.update_dao(n(2), 240, [tr(n(1), lifetime=1000)], 0)
    assert t.paths(n(2), 99.9)
    assert t.paths(n(2), 100) == []  # lazily exact, even before expire() runs
    early = t.expire(50)
    assert early.expired == () and early.unreachable == ()
    report = t.expire(100)
    assert report.expired == ((n(1), ROOT),)
    assert report.unreachable == (n(1), n(2))
    assert t.expire(101).unreachable == ()  # reported once
    entry = t.entry(n(2), 101)
    assert entry is not None and entry.state is NodeState.UNREACHABLE
    assert entry.transits[0].lifetime_left_s == pytest.approx(899)
    assert t.nodes() == [n(1), n(2)]


def test_route_moves_off_an_expired_transit_and_comes_back() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 240, [tr(ROOT, lifetime=100)], 0)
    t.update_dao(n(2), 240, [tr(ROOT, lifetime=math.inf)], 0)
    t.update_dao(n(3), 240, parents(n(1), n(2), lifetime=300), 0)
    assert hops(t.preferred(n(3), 0)) == (ROOT, n(1), n(3))
    tick = t.tick(100)
    assert tick.expiry.expired == ((n(1), ROOT),) and tick.expiry.unreachable == (n(1),)
    (moved,) = tick.expiry.changes
    assert moved.new == (ROOT, n(2), n(3)) and tick.changes == ()
    assert moved.reason == f"transit {n(1).hex()} -> {ROOT.hex()} expired"
    lost = t.expire(300)
    assert [(c.old, c.new) for c in lost.changes] == [((ROOT, n(2), n(3)), None)]
    assert lost.changes[0].reason == (
        f"transit {n(3).hex()} -> {n(2).hex()} expired; no other path to the root"
    )
    assert lost.unreachable == (n(3),)
    assert t.preferred(n(3), 300) is None
    t.update_dao(n(3), 241, [tr(n(2), 241)], 301)
    assert hops(t.preferred(n(3), 301)) == (ROOT, n(2), n(3))
    assert t.changes()[-1].reason == "reachable again"


def test_long_unreachable_nodes_are_forgotten_when_configured() -> None:
    t = RoutingTable(ROOT, forget_after_s=3600)
    t.update_dao(n(1), 240, [tr(ROOT, lifetime=10)], 0)
    assert t.expire(10).unreachable == (n(1),)
    assert t.expire(3000).forgotten == ()
    assert t.expire(3610).forgotten == (n(1),)
    assert t.nodes() == []


# -- loops -------------------------------------------------------------------------------------


def chain() -> RoutingTable:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.update_dao(n(2), 240, [tr(n(1))], 0)
    t.update_dao(n(3), 240, [tr(n(2))], 0)
    return t


def test_loop_making_dao_is_accepted_reported_and_unreachable() -> None:
    t = chain()
    out = t.update_dao(n(1), 241, [tr(n(3), 241)], 1)
    assert out.accepted and out.loop == (n(1), n(3), n(2), n(1))
    assert out.unreachable == (n(1), n(2), n(3))
    for i in (1, 2, 3):
        entry = t.entry(n(i), 1)
        assert entry is not None and entry.state is NodeState.UNREACHABLE and entry.loop
        assert t.paths(n(i), 1) == []


def test_loop_with_an_exit_keeps_loop_free_paths() -> None:
    t = chain()
    out = t.update_dao(n(1), 241, [tr(ROOT, 241, pref=0), tr(n(3), 241, pref=1)], 1)
    assert out.loop == (n(1), n(3), n(2), n(1)) and out.unreachable == ()
    for i in (1, 2, 3):
        entry = t.entry(n(i), 1)
        assert entry is not None and entry.state is NodeState.LOOPED
        for path in t.paths(n(i), 1):
            assert len(set(path.hops)) == len(path.hops) and path.hops[0] == ROOT
    assert [p.hops for p in t.paths(n(3), 1)] == [(ROOT, n(1), n(2), n(3))]
    assert t.source_route(n(3), 1) == (n(1), n(2), n(3))
    t.update_dao(n(1), 242, [tr(ROOT, 242)], 2)  # the loop is withdrawn
    assert all(t.entry(n(i), 2).state is NodeState.OK for i in (1, 2, 3))  # type: ignore[union-attr]


def test_self_parent_is_a_loop() -> None:
    t = RoutingTable(ROOT)
    out = t.update_dao(n(1), 240, [tr(ROOT), tr(n(1), pref=1)], 0)
    assert out.loop == (n(1), n(1))
    assert [p.hops for p in t.paths(n(1), 0)] == [(ROOT, n(1))]


# -- caching -----------------------------------------------------------------------------------


def test_a_dao_invalidates_only_the_node_and_its_descendants() -> None:
    t = RoutingTable(ROOT)
    t.update_dao(n(1), 240, [tr(ROOT)], 0)
    t.update_dao(n(2), 240, [tr(n(1))], 0)
    t.update_dao(n(3), 240, [tr(ROOT)], 0)
    t.update_dao(n(4), 240, [tr(n(3))], 0)
    t.update_dao(n(5), 240, [tr(n(4))], 0)
    for i in range(1, 6):
        t.paths(n(i), 0)
    t.update_dao(n(4), 241, [tr(ROOT, 241)], 1)
    cached = set(t._cache)  # white-box: which nodes kept their computed paths
    assert {n(1), n(2), n(3)} <= cached
    assert t.paths(n(5), 1)[0].hops == (ROOT, n(4), n(5))  # recomputed, not stale
    t.set_link(n(1), n(2), LinkQuality(128, 20), 2)
    assert n(1) in t._cache and n(3) in t._cache and n(2) not in t._cache
