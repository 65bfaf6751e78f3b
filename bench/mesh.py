"""mesh: benchmarks of the mesh layer (each part is a function; ``main`` runs them all).

bench_simulation: simulated seconds per wall second of ``hil simulate`` for 200 and 1,000
meters with 15-minute reads, and why: frames on the air per simulated hour, wall µs per frame,
the share of wall time per part (medium, node stacks, meters, gateway radio/mesh/collector,
event loop) and the extrapolated wall time of a 24 h day against the make-test budget.

bench_routes: what the root's routing table (firmware_agent.mesh.routes) costs per DAO at 100,
1,000 and 5,000 nodes, and how that cost grows with the mesh. Meshes are seeded random
geometric graphs: nodes spread uniformly around the gateway at a density of about 12
neighbours in range, hop depth by breadth-first search from the gateway, and each node
advertising 1-3 parents among its neighbours one hop closer (nearest first), as RPL ranks
allow. Link metrics are set for the gateway's own neighbours, as the stack feeds them.

Workloads, each timed per DAO on a fresh table (best of REPEATS):
- first: every node's first DAO, parents before children (the mesh forming);
- refresh: every node again, same parents (the periodic DAO of a settled mesh);
- re-parent: random nodes move to another parent set (newer path sequence), each DAO followed
  by nothing: the table only invalidates, paths are computed when asked;
- re-parent + preferred: the same DAOs, each followed by ``preferred()`` of the node that
  moved (downward traffic to it), so the lazy recomputation is paid inside the timing.

The DAO itself only validates, invalidates what depends on the node and checks reachability
by one walk up: near-constant cost. Paths are built when asked for, so re-parent+preferred
also pays for source routes, whose length is the hop depth: it grows with the mean depth
(printed), not with the node count.

Baseline (same run, same DAOs): a plain ``dict`` insert of the node's transit list, the least
any table must do. ratio = ours µs / baseline µs. growth = µs at 1,000 / µs at 100 and µs at
5,000 / µs at 1,000: near 1 means a DAO costs the same whatever the mesh size.
Last, ``preferred()`` of the deepest node at 5,000 nodes: warm (cached) and cold (after a link
change next to the gateway invalidated every path through that first hop).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from firmware_agent.mesh.routes import LinkQuality, RoutingTable, Transit, lollipop_next
from hil.scenario import Scenario

SIZES = (100, 1_000, 5_000)
SEED = 5
REPEATS = 3
NEIGHBOURS = 12.0  # mean number of nodes within radio range (range = 1.0)
GROWTH_TARGET = 2.0  # µs/DAO at 5x the nodes may at most double

ROOT = bytes.fromhex("02124b00000000ff")

Mesh = dict[bytes, list[bytes]]  # node -> parents in preference order


def eui(i: int) -> bytes:
    return bytes.fromhex("0200") + i.to_bytes(6, "big")


def random_mesh(
    n: int, rng: random.Random
) -> tuple[Mesh, dict[bytes, list[bytes]], dict[bytes, int]]:
    """(parents in BFS order, candidate parents per node, depth per node) of an n-node mesh."""
    side = math.sqrt(n * math.pi / NEIGHBOURS)
    pos = [(side / 2, side / 2)] + [(rng.uniform(0, side), rng.uniform(0, side)) for _ in range(n)]
    grid: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(pos):
        grid.setdefault((int(x), int(y)), []).append(i)

    def near(i: int) -> list[tuple[float, int]]:
        x, y = pos[i]
        out = []
        for gx in range(int(x) - 1, int(x) + 2):
            for gy in range(int(y) - 1, int(y) + 2):
                for j in grid.get((gx, gy), ()):
                    d = math.dist(pos[i], pos[j])
                    if j != i and d <= 1.0:
                        out.append((d, j))
        return sorted(out)

    depth = {0: 0}
    order = deque([0])
    bfs = []
    while order:
        i = order.popleft()
        bfs.append(i)
        for _, j in near(i):
            if j not in depth:
                depth[j] = depth[i] + 1
                order.append(j)
    for i in range(1, n + 1):  # the few out of range: one long hop to the nearest reached node
        if i not in depth:
            j = min(depth, key=lambda k: math.dist(pos[i], pos[k]))
            depth[i] = depth[j] + 1
            bfs.append(i)
    mesh: Mesh = {}
    candidates: dict[bytes, list[bytes]] = {}
    for i in bfs[1:]:
        up = [j for _, j in near(i) if depth.get(j) == depth[i] - 1]
        if not up:
            up = [
                min(
                    (k for k in depth if depth[k] == depth[i] - 1),
                    key=lambda k: math.dist(pos[i], pos[k]),
                )
            ]
        names = [ROOT if j == 0 else eui(j) for j in up]
        candidates[eui(i)] = names
        mesh[eui(i)] = names[: rng.randint(1, 3)]
    return mesh, candidates, {eui(i): d for i, d in depth.items() if i}


def _transits(parents: list[bytes], ps: int) -> list[Transit]:
    return [Transit(p, ps, None, k) for k, p in enumerate(parents)]


def _feed_links(table: RoutingTable, mesh: Mesh, rng: random.Random) -> None:
    for node, parents in mesh.items():
        if ROOT in parents:
            table.set_link(ROOT, node, LinkQuality(rng.uniform(128, 400), rng.uniform(5, 30)), 0.0)


def _best(run: Callable[[], tuple[float, int]]) -> float:
    """µs per operation, best of REPEATS runs of ``run`` -> (seconds, operations)."""
    return min(s / ops for s, ops in (run() for _ in range(REPEATS))) * 1e6


def bench_size(n: int) -> dict[str, float]:
    rng = random.Random(SEED + n)
    mesh, candidates, depth = random_mesh(n, rng)
    moves = []
    for _ in range(min(n, 2_000)):
        node = rng.choice(list(mesh))
        cands = candidates[node]
        moves.append((node, rng.sample(cands, min(len(cands), rng.randint(1, 3)))))

    def built() -> RoutingTable:
        table = RoutingTable(ROOT, max_hops=64)
        _feed_links(table, mesh, random.Random(1))
        for node, parents in mesh.items():
            table.update_dao(node, 240, _transits(parents, 240), 0.0)
        return table

    def first() -> tuple[float, int]:
        table = RoutingTable(ROOT, max_hops=64)
        _feed_links(table, mesh, random.Random(1))
        items = [(node, _transits(parents, 240)) for node, parents in mesh.items()]
        started = time.perf_counter()
        for node, transits in items:
            table.update_dao(node, 240, transits, 0.0)
        return time.perf_counter() - started, len(items)

    def refresh() -> tuple[float, int]:
        table = built()
        items = [(node, _transits(parents, 240)) for node, parents in mesh.items()]
        started = time.perf_counter()
        for node, transits in items:
            table.update_dao(node, 241, transits, 1.0)
        return time.perf_counter() - started, len(items)

    def reparent(then_preferred: bool) -> Callable[[], tuple[float, int]]:
        def run() -> tuple[float, int]:
            table = built()
            for node in mesh:
                table.preferred(node, 0.0)  # every route chosen and cached, as in service
            seq = dict.fromkeys(mesh, 240)
            items = []
            for node, parents in moves:
                seq[node] = lollipop_next(seq[node])
                items.append((node, seq[node], _transits(parents, seq[node])))
            started = time.perf_counter()
            for node, s, transits in items:
                table.update_dao(node, s, transits, 2.0)
                if then_preferred:
                    table.preferred(node, 2.0)
            return time.perf_counter() - started, len(items)

        return run

    def baseline() -> tuple[float, int]:
        store: dict[bytes, list[Transit]] = {}
        items = [(node, _transits(parents, 240)) for node, parents in mesh.items()]
        started = time.perf_counter()
        for node, transits in items:
            store[node] = transits
        return time.perf_counter() - started, len(items)

    baseline_runs = [baseline() for _ in range(REPEATS * 5)]
    return {
        "nodes": len(mesh),
        "depth": max(depth.values()),
        "mean_depth": sum(depth.values()) / len(depth),
        "parents": sum(len(p) for p in mesh.values()) / len(mesh),
        "first": _best(first),
        "refresh": _best(refresh),
        "reparent": _best(reparent(False)),
        "reparent_preferred": _best(reparent(True)),
        "baseline": min(s / ops for s, ops in baseline_runs) * 1e6,
    }


def bench_preferred(n: int) -> dict[str, float]:
    rng = random.Random(SEED + n)
    mesh, _, depth = random_mesh(n, rng)
    table = RoutingTable(ROOT, max_hops=64)
    _feed_links(table, mesh, random.Random(1))
    for node, parents in mesh.items():
        table.update_dao(node, 240, _transits(parents, 240), 0.0)
    deep = max(depth, key=lambda k: depth[k])
    path = table.preferred(deep, 0.0)
    assert path is not None
    first_hop = path.hops[1]
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        table.preferred(deep, 0.0)
    warm = (time.perf_counter() - started) / rounds
    cold_total = 0.0
    for k in range(rounds // 4):
        table.set_link(ROOT, first_hop, LinkQuality(128 + k % 2, 25.0), 0.0)  # invalidates
        started = time.perf_counter()
        table.preferred(deep, 0.0)
        cold_total += time.perf_counter() - started
    return {
        "depth": depth[deep],
        "paths": len(table.paths(deep, 0.0)),
        "warm": warm * 1e6,
        "cold": cold_total / (rounds // 4) * 1e6,
    }


def bench_routes() -> dict[str, object]:
    """Print and return the routing table's costs per DAO and their growth."""
    results = {n: bench_size(n) for n in SIZES}
    for n, r in results.items():
        print(
            f"routes n={n:>5} (depth {r['mean_depth']:.1f} mean, {r['depth']:.0f} max,"
            f" {r['parents']:.1f} parents/node):"
            f" µs/DAO first {r['first']:.1f}, refresh {r['refresh']:.1f},"
            f" re-parent {r['reparent']:.1f}, re-parent+preferred {r['reparent_preferred']:.1f};"
            f" dict baseline {r['baseline']:.2f} µs"
            f" (ratio re-parent {r['reparent'] / r['baseline']:.0f}x)"
        )
    growth: dict[str, tuple[float, float]] = {}
    for key in ("first", "refresh", "reparent", "reparent_preferred"):
        g1 = results[SIZES[1]][key] / results[SIZES[0]][key]
        g2 = results[SIZES[2]][key] / results[SIZES[1]][key]
        growth[key] = (g1, g2)
        print(
            f"routes growth {key:<18} {SIZES[1]}/{SIZES[0]}: {g1:.2f}"
            f"  {SIZES[2]}/{SIZES[1]}: {g2:.2f} (target <= {GROWTH_TARGET})"
        )
    d1 = results[SIZES[1]]["mean_depth"] / results[SIZES[0]]["mean_depth"]
    d2 = results[SIZES[2]]["mean_depth"] / results[SIZES[1]]["mean_depth"]
    print(
        f"routes growth of the mean depth  {SIZES[1]}/{SIZES[0]}: {d1:.2f}  {SIZES[2]}/{SIZES[1]}:"
        f" {d2:.2f} (building a source route is linear in it: re-parent+preferred follows it)"
    )
    pref = bench_preferred(SIZES[-1])
    print(
        f"routes preferred() of the deepest node at n={SIZES[-1]} (depth {pref['depth']:.0f},"
        f" {pref['paths']:.0f} paths kept): warm {pref['warm']:.1f} µs,"
        f" cold {pref['cold']:.0f} µs (after a link change at its first hop)"
    )
    return {"sizes": results, "growth": growth, "preferred": pref}


class _InProcessLink:
    """A MeterLink straight to an emulated meter's DLMS server: no mesh, no radio."""

    def __init__(self, handle: Callable[[bytes], bytes | None]) -> None:
        self._handle = handle

    async def request(self, frame: bytes, timeout: float) -> bytes:
        reply = self._handle(frame)
        if reply is None:
            raise TimeoutError("no reply")
        return reply

    async def close(self) -> None:
        return None


def _bare_reads(scenario: Scenario, reads: int) -> float:
    """Seconds of the baseline: ``reads`` complete meter reads (gurux client against our meter
    server, in process) spread over the scenario's meters, with the same read settings."""
    from firmware_agent.clock import ManualClock
    from firmware_agent.collector.reader import read_meter
    from firmware_agent.config import MeterConfig
    from hil.meter.dlms_server import MeterServer
    from hil.meter.model import MeterModel

    clock = ManualClock(EPOCH_FOR_BASELINE)
    rng = random.Random(scenario.seed)
    servers = [
        MeterServer(MeterModel(n.meter_id, random.Random(rng.getrandbits(64))), clock)
        for n in scenario.nodes[: min(len(scenario.nodes), 50)]
    ]
    configs = [MeterConfig(id=f"B{i}", transport="udp", address="::1") for i in range(len(servers))]

    async def run() -> float:
        started = time.perf_counter()
        for i in range(reads):
            k = i % len(servers)
            await read_meter(_InProcessLink(servers[k].handle), configs[k], clock, profile_rows=4)
        return time.perf_counter() - started

    return asyncio.run(run())


#: Scenario, virtual duration of the timed run, and of the (shorter) profiled run that splits
#: the wall time by part. Short windows: the rate and its make-up are measured, the day is
#: extrapolated. The 1,000-meter window is the mesh forming (join, DAOs), its busiest part.
SIMULATIONS = (("random-200", 1200.0, 400.0), ("random-1000", 120.0, 45.0))
EPOCH_FOR_BASELINE = 1_767_225_600.0
#: The make-test budget for the whole suite.
SUITE_BUDGET_S = 15 * 60.0

#: Parts of a simulation, by source file (first match wins); builtins are charged to callers.
PARTS = (
    ("medium (propagation, SINR/PER, collisions)", ("/hil/medium.py", "/hil/phy.py")),
    ("node stacks (MAC, RPL, forwarding)", ("/hil/node/",)),
    ("emulated meters (node glue + DLMS server)", ("/hil/meter_node.py", "/hil/meter/")),
    ("gateway radio (RCP emulation, Spinel, HDLC)", ("/hil/rcp.py", "/drivers/")),
    # The nodes encode and decode with the same codecs: this is both sides' codec work.
    ("mesh codecs + gateway mesh (frames, 6LoWPAN, RPL, routes)", ("/firmware_agent/mesh/",)),
    ("gateway collector + gurux", ("/firmware_agent/collector/", "gurux")),
    ("gateway other (agent, spool)", ("/firmware_agent/",)),
    ("event loop (asyncio, heap)", ("asyncio", "selectors", "heapq")),
    ("random", ("random.py",)),
)


def _part(filename: str) -> str:
    for name, needles in PARTS:
        if any(n in filename for n in needles):
            return name
    return "other"


def split_by_part(stats: Any) -> dict[str, float]:
    """cProfile stats → own time per part; a C function's time goes to its callers' parts in
    proportion to what each caller spent in it (dict.get in the medium is the medium's)."""
    out: dict[str, float] = {}
    for func, (_cc, _nc, tottime, _ct, callers) in stats.stats.items():
        filename = func[0]
        if filename == "~" or filename.startswith("<"):
            spent = sum(v[2] for v in callers.values())
            if not spent:
                out["other"] = out.get("other", 0.0) + tottime
                continue
            for caller, v in callers.items():
                name = _part(caller[0])
                out[name] = out.get(name, 0.0) + tottime * v[2] / spent
        else:
            name = _part(filename)
            out[name] = out.get(name, 0.0) + tottime
    return out


def _simulate_quietly(name: str, duration: float, profile: bool = False) -> tuple[Any, Any]:
    """(summary, cProfile stats or None) of ``hil simulate`` of ``name`` for ``duration``."""
    import cProfile
    import pstats

    from hil.scenario import load_scenario
    from hil.simulate import simulate

    scenario = load_scenario(name)
    logging.disable(logging.WARNING)  # a failed read's log line is not what is measured
    profiler = cProfile.Profile() if profile else None
    try:
        if profiler is not None:
            profiler.enable()
        _, summary = simulate(scenario, duration)
    finally:
        if profiler is not None:
            profiler.disable()
        logging.disable(logging.NOTSET)
    return summary, None if profiler is None else pstats.Stats(profiler)


def bench_simulation(
    runs: Sequence[tuple[str, float, float]] = SIMULATIONS,
) -> list[dict[str, Any]]:
    """Why a simulated day of 1,000 meters costs what it does, for each scenario size:

    - simulated s per wall s of ``hil simulate`` (the whole agent, the medium and the meters
      on the virtual-time loop, 15-minute reads), and the bare DLMS work of the same reads
      (gurux client to meter server in process) for comparison;
    - frames on the air per simulated hour (acks included) and wall µs per frame: the rate
      is frames/h × µs/frame, so a day costs 24 × frames/h × µs/frame;
    - the share of wall time per part (a shorter profiled run; cProfile slows everything
      about 2x but keeps the proportions);
    - the extrapolated wall time of a 24 h day against the 15-minute make-test budget."""
    from hil.scenario import load_scenario

    out = []
    for name, duration, profiled in runs:
        summary, _ = _simulate_quietly(name, duration)
        wall = summary["wall_s"]
        medium = summary["medium"]
        frames = medium["frames"] + medium["acks"]
        per_hour = frames * 3600.0 / duration
        us_per_frame = wall / max(1, frames) * 1e6
        day_s = 86400.0 / summary["simulated_s_per_wall_s"] if wall else float("nan")
        reads = summary["reads"]["ok"] + summary["reads"]["failed"]
        bare = _bare_reads(load_scenario(name), max(1, summary["reads"]["ok"]))
        print(
            f"simulate {name}: {duration:.0f} s of {summary['meters']} meters in {wall:.1f} s"
            f" wall = {summary['simulated_s_per_wall_s']} simulated s per wall s;"
            f" {summary['joined']} joined, {reads} reads ({summary['reads']['success_rate']} ok)"
        )
        print(
            f"simulate {name}: {frames} frames on the air ({medium['acks']} acks) ="
            f" {per_hour:,.0f} frames per simulated hour, {us_per_frame:.0f} µs wall per frame;"
            f" {medium['receivers_evaluated'] / max(1, medium['frames']):.1f} receivers"
            f" evaluated per frame ({medium.get('filtered', 0) / max(1, medium['frames']):.1f}"
            " skipped by address filters)"
        )
        print(
            f"simulate {name}: a 24 h day at this rate = {day_s / 60:.1f} min wall"
            f" ({day_s / SUITE_BUDGET_S:.1f}x the 15 min make-test budget of the whole suite);"
            f" the same {summary['reads']['ok']} reads without the mesh take {bare:.2f} s"
        )
        _, stats = _simulate_quietly(name, profiled, profile=True)
        parts = split_by_part(stats)
        total = sum(parts.values()) or 1.0
        shares = {k: v / total for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}
        print(
            f"simulate {name}: wall time by part (profiled {profiled:.0f} s): "
            + ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items() if v >= 0.005)
        )
        out.append(
            {
                "scenario": name,
                "summary": summary,
                "bare_reads_s": bare,
                "frames_per_sim_hour": per_hour,
                "us_per_frame": us_per_frame,
                "day_wall_s": day_s,
                "shares": shares,
            }
        )
    return out


def main() -> None:
    bench_routes()
    bench_simulation()


if __name__ == "__main__":
    main()
