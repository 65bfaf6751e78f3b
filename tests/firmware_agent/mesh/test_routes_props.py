"""Property tests: after any sequence of DAOs, link updates, time steps and expiry, every path
the table gives is loop-free, runs root → node over advertised live transits, and equals the
k cheapest of a brute-force enumeration (so cached paths never go stale)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from firmware_agent.mesh.routes import (
    LinkQuality,
    RoutingTable,
    Transit,
    lollipop_next,
)

ROOT = bytes.fromhex("02124b0000000001")
NODES = 7
FLOOR, HYST, SPAN, PENALTY, UNKNOWN = 6.0, 3.0, 10.0, 2.0, 256.0
LIFETIME = 40.0


def eui(i: int) -> bytes:
    return ROOT if i == 0 else bytes.fromhex("02000000000000") + bytes([i])


@dataclass
class Model:
    """What the table should hold, kept the simplest possible way."""

    now: float = 0.0
    transits: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # pref order
    seq: dict[int, int] = field(default_factory=dict)  # DAO sequence
    ps: dict[int, int] = field(default_factory=dict)  # path sequence: moves with new parents
    measured: dict[frozenset[int], tuple[float | None, float | None]] = field(default_factory=dict)
    reported: dict[frozenset[int], tuple[float | None, float | None]] = field(default_factory=dict)
    tripped: set[frozenset[int]] = field(default_factory=set)

    def link(self, a: int, b: int) -> tuple[float, float | None]:
        key = frozenset((a, b))
        m, r = self.measured.get(key), self.reported.get(key)
        etx = m[0] if m and m[0] is not None else (r[0] if r else None)
        snr = m[1] if m and m[1] is not None else (r[1] if r else None)
        cost = (UNKNOWN if etx is None else etx) / 128
        if snr is not None:
            above = snr - FLOOR
            if above <= 0:
                cost += PENALTY
            elif above < SPAN:
                short = (SPAN - above) / SPAN
                cost += PENALTY * short * short
        return cost, snr

    def set_link(
        self, a: int, b: int, etx: float | None, snr: float | None, measured: bool
    ) -> None:
        key = frozenset((a, b))
        (self.measured if measured else self.reported)[key] = (etx, snr)
        eff = self.link(a, b)[1]
        if eff is not None and eff < FLOOR:
            self.tripped.add(key)
        elif eff is not None and eff >= FLOOR + HYST:
            self.tripped.discard(key)

    def all_paths(self, node: int) -> list[tuple[float, tuple[int, ...], tuple[int, ...]]]:
        """Every simple path root → node: (cost, ranks node-upward, hops root → node)."""
        found = []

        def up(x: int, chain: list[int], ranks: list[int]) -> None:
            for rank, (p, expires) in enumerate(self.transits.get(x, [])):
                if expires <= self.now or p in chain:
                    continue
                if p == 0:
                    hops = tuple(reversed([*chain]))
                    found.append((self.cost((0, *hops)), (*ranks, rank), (0, *hops)))
                elif p != x:
                    up(p, [*chain, p], [*ranks, rank])

        up(node, [node], [])
        return found

    def cost(self, hops: tuple[int, ...]) -> float:
        total = 0.0
        for i in range(1, len(hops)):
            c = self.link(hops[i - 1], hops[i])[0]
            total = c if i == 1 else total + c
        return total


ids = st.integers(1, NODES)
lifetimes = st.sampled_from([None, None, 10.0, 0.0, math.inf])
# Mostly parents with lower ids, as in a DODAG (deep chains whose caches must follow a change
# near the root), sometimes any node (loops, self-parents).
dodag_dao = ids.flatmap(
    lambda i: st.tuples(
        st.just("dao"),
        st.just(i),
        st.lists(st.integers(0, i - 1), min_size=1, max_size=3, unique=True),
        lifetimes,
    )
)
any_dao = st.tuples(
    st.just("dao"),
    ids,
    st.lists(st.integers(0, NODES), min_size=0, max_size=3, unique=True),
    lifetimes,
)
op = st.one_of(
    dodag_dao,
    dodag_dao,
    any_dao,
    st.tuples(
        st.just("link"),
        st.integers(0, NODES),
        st.integers(0, NODES),
        st.sampled_from([None, 128.0, 160.0, 192.0, 384.0]),
        st.sampled_from([None, 3.0, 7.5, 30.0]),
        st.booleans(),
    ),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 5.0, 30.0])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("preferred"), ids),
)


def check(table: RoutingTable, model: Model, max_paths: int) -> None:
    for i in range(1, NODES + 1):
        got = table.paths(eui(i), model.now)
        for p in got:
            assert p.hops[0] == ROOT and p.hops[-1] == eui(i)
            assert len(set(p.hops)) == len(p.hops), "a path with a loop"
        want = sorted(model.all_paths(i))[:max_paths] if i in model.transits else []
        assert [p.hops for p in got] == [tuple(eui(h) for h in w[2]) for w in want]
        assert [p.cost for p in got] == [w[0] for w in want]
        for p, w in zip(got, want, strict=True):
            links = [(w[2][k - 1], w[2][k]) for k in range(1, len(w[2]))]
            snrs = [model.link(a, b)[1] for a, b in links]
            assert p.usable == all(s is None or s >= FLOOR for s in snrs)
            assert p.recovering == any(frozenset(ab) in model.tripped for ab in links)
            known = [s for s in snrs if s is not None]
            assert p.worst_snr_db == (min(known) if known else None)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, min_size=5, max_size=60), st.integers(1, 8))
# A child reports through a parent whose transit lapsed (no expire() call in between), then the
# parent refreshes: the child must be reported recovered, not left unreachable.
@example(
    [
        ("dao", 4, [0], None),
        ("advance", 40.0),
        ("dao", 5, [4], None),
        ("dao", 4, [0], None),
        ("expire",),
    ],
    1,
)
def test_paths_match_brute_force_after_any_history(ops: list[tuple], max_paths: int) -> None:  # type: ignore[type-arg]
    table = RoutingTable(
        ROOT,
        snr_floor_db=FLOOR,
        hysteresis_db=HYST,
        penalty_span_db=SPAN,
        snr_penalty=PENALTY,
        unknown_etx=UNKNOWN,
        default_lifetime_s=LIFETIME,
        max_paths=max_paths,
        max_hops=NODES + 1,
    )
    model = Model()
    reported: set[bytes] = set()
    for o in ops:
        if o[0] == "dao":
            _, node, parents, lifetime = o
            seq = model.seq[node] = lollipop_next(model.seq.get(node, 239))
            live = lifetime != 0.0
            ps = model.ps.get(node, 240)
            if live and parents:
                ps = model.ps[node] = lollipop_next(ps)
            transits = [Transit(eui(p), ps, lifetime, k) for k, p in enumerate(parents)]
            outcome = table.update_dao(eui(node), seq, transits, model.now)
            assert outcome.accepted
            reported |= set(outcome.unreachable)
            reported -= set(outcome.recovered)
            if live and parents:
                span = LIFETIME if lifetime is None else lifetime
                model.transits[node] = [(p, model.now + span) for p in parents]
            elif node in model.transits:
                model.transits[node] = [t for t in model.transits[node] if t[0] not in parents]
        elif o[0] == "link":
            _, a, b, etx, snr, measured = o
            if a != b:
                table.set_link(eui(a), eui(b), LinkQuality(etx, snr, measured), model.now)
                model.set_link(a, b, etx, snr, measured)
        elif o[0] == "advance":
            model.now += o[1]
        elif o[0] == "expire":
            reported |= set(table.expire(model.now).unreachable)
            # Right after expire() the reports add up to the truth: every node with a record
            # and no path was reported once, and none that has a path is left reported.
            truth = {eui(i) for i in model.transits if not model.all_paths(i)}
            assert reported == truth
        else:
            path = table.preferred(eui(o[1]), model.now)
            if path is not None:
                assert path.hops[0] == ROOT and path.hops[-1] == eui(o[1])
                for k in range(1, len(path.hops)):  # every hop is a live advertised transit
                    child = next(i for i in range(1, NODES + 1) if eui(i) == path.hops[k])
                    live_parents = [eui(p) for p, e in model.transits[child] if e > model.now]
                    assert path.hops[k - 1] in live_parents
        check(table, model, max_paths)
    json.dumps(table.table(model.now), allow_nan=False)
    back = RoutingTable.restore(
        json.loads(json.dumps(table.snapshot(model.now))),
        model.now,
        snr_floor_db=FLOOR,
        hysteresis_db=HYST,
        penalty_span_db=SPAN,
        snr_penalty=PENALTY,
        unknown_etx=UNKNOWN,
        default_lifetime_s=LIFETIME,
        max_paths=max_paths,
        max_hops=NODES + 1,
    )
    check(back, model, max_paths)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(ids, st.lists(st.integers(0, NODES), max_size=3, unique=True)),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_paths_never_loop_and_respect_max_hops(
    graph: dict[int, list[int]], max_hops: int, max_paths: int
) -> None:
    table = RoutingTable(ROOT, max_hops=max_hops, max_paths=max_paths)
    for node, parents in graph.items():
        table.update_dao(
            eui(node), 240, [Transit(eui(p), 240, None, k) for k, p in enumerate(parents)], 0
        )
    for node in graph:
        paths = table.paths(eui(node), 0)
        assert len(paths) <= max_paths
        assert [p.cost for p in paths] == sorted(p.cost for p in paths)
        for p in paths:
            assert p.hops[0] == ROOT and p.hops[-1] == eui(node)
            assert len(set(p.hops)) == len(p.hops) and len(p.hops) - 1 <= max_hops
        route = table.source_route(eui(node), 0)
        assert (route is None) == (not paths)
        if route is not None:
            assert route[-1] == eui(node) and ROOT not in route
