"""The RPL root's routing table in non-storing mode (RFC 6550), sans-IO.

Only the root (the gateway) knows the mesh topology: every node reports its parents in a DAO
(Transit Information options, in preference order, with a path sequence and lifetime) and the
root builds source routes by walking parents up to itself. On top of RFC 6550 this table
weighs each path by ETX and SNR, keeps the route that downward traffic uses until a link on it
falls below the SNR floor (or a clearly better path appears), and refuses to come back to a
link until its SNR has climbed ``hysteresis_db`` above the floor, so routes do not flap while
SNR hovers around the floor.

Nothing here reads a clock or does I/O: every call that depends on time takes ``now``
(monotonic seconds). Paths are cached per node and built from the parents' cached paths
(k cheapest per node), so a DAO invalidates only the node and its descendants and costs the
same whatever the mesh size. Persistence is a JSON-safe dict (``snapshot``/``restore``);
the file edge is :mod:`firmware_agent.mesh.route_store`.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

EUI64_LEN = 8
ETX_SCALE = 128
SEQUENCE_WINDOW = 16  # RFC 6550 §7.2
LOLLIPOP_INIT = 256 - SEQUENCE_WINDOW  # 240: where a rebooted node starts its counters
SNAPSHOT_FORMAT = "wisun-gateway/routes"
SNAPSHOT_VERSION = 1


class RouteError(ValueError):
    """Base of this module's errors."""


class RouteInputError(RouteError):
    """A DAO, link or query argument that cannot be right (names the field and the value)."""


class SnapshotError(RouteError):
    """A persisted routing table that is not one this version wrote (names the bad field)."""


# ---------------------------------------------------------------------------------------------
# RFC 6550 §7.2 lollipop sequence counters


def lollipop_compare(a: int, b: int) -> int | None:
    """1 if ``a`` is newer than ``b``, -1 if older, 0 if equal, None if not comparable.

    Values 128..255 are the linear start region (a rebooted node starts at 240), 0..127 the
    circular region (127 wraps to 0). Two values further apart than SEQUENCE_WINDOW in the same
    region are desynchronised and have no order.
    """
    _check_seq(a, "sequence a")
    _check_seq(b, "sequence b")
    if a == b:
        return 0
    a_linear, b_linear = a > 127, b > 127
    if a_linear and not b_linear:
        return -1 if 256 + b - a <= SEQUENCE_WINDOW else 1
    if b_linear and not a_linear:
        return 1 if 256 + a - b <= SEQUENCE_WINDOW else -1
    if a_linear:
        if abs(a - b) > SEQUENCE_WINDOW:
            return None
        return 1 if a > b else -1
    ahead = (a - b) % 128  # serial-number arithmetic (RFC 1982) on 7 bits
    if min(ahead, 128 - ahead) > SEQUENCE_WINDOW:
        return None
    return 1 if ahead < 64 else -1


def lollipop_next(value: int) -> int:
    """The counter after ``value``: 255 goes to 0, 127 wraps to 0."""
    _check_seq(value, "sequence")
    return (value + 1) & 0xFF if value > 127 else (value + 1) & 0x7F


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class Transit:
    """One Transit Information option of a DAO: a parent the node can be reached through."""

    parent: bytes
    path_sequence: int
    path_lifetime_s: float | None  # None: the table's default; 0: no-path; math.inf: forever
    preference: int = 0  # order in the DAO, 0 = most preferred


@dataclass(frozen=True, slots=True)
class LinkQuality:
    """Metrics of one link, as the gateway measured them or as a node reported them."""

    etx: float | None  # ETX × 128 as Wi-SUN counts it (128 = every frame acked first time)
    snr_db: float | None
    measured: bool = True  # measured by the gateway itself (wins) vs reported/estimated

    def as_dict(self) -> dict[str, Any]:
        return {"etx": self.etx, "snr_db": self.snr_db, "measured": self.measured}


@dataclass(frozen=True, slots=True)
class Path:
    """A loop-free path root → node with its cost; ``usable`` is False below the SNR floor."""

    hops: tuple[bytes, ...]  # root … node
    cost: float
    worst_snr_db: float | None
    usable: bool
    reasons: tuple[str, ...] = ()  # why it is not usable / why it is still recovering
    recovering: bool = False  # a link on it dipped below the floor and is not yet back above
    # floor + hysteresis: traffic is not moved onto it

    def as_dict(self) -> dict[str, Any]:
        return {
            "hops": [h.hex() for h in self.hops],
            "cost": round(self.cost, 4),
            "worst_snr_db": _round(self.worst_snr_db),
            "usable": self.usable,
            "recovering": self.recovering,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class RouteChange:
    """The route that downward traffic to ``node`` takes changed (None: none / no route)."""

    at: float
    node: bytes
    old: tuple[bytes, ...] | None
    new: tuple[bytes, ...] | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "node": self.node.hex(),
            "old": None if self.old is None else [h.hex() for h in self.old],
            "new": None if self.new is None else [h.hex() for h in self.new],
            "reason": self.reason,
        }


class DaoStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # same DAO sequence as the last one accepted: ignored
    STALE = "stale"  # older DAO sequence: ignored


@dataclass(frozen=True, slots=True)
class DaoOutcome:
    """What one DAO did to the table (the stack logs it and answers with a DAO-ACK)."""

    node: bytes
    status: DaoStatus
    parents_changed: bool = False
    old_parents: tuple[bytes, ...] = ()
    new_parents: tuple[bytes, ...] = ()
    removed: bool = False  # a no-path DAO withdrew the node's last transit
    loop: tuple[bytes, ...] | None = None  # node → parent → … → node, when the DAO closes one
    unreachable: tuple[bytes, ...] = ()  # nodes that have no path left because of this DAO
    recovered: tuple[bytes, ...] = ()  # nodes that were unreachable and have a path again
    notes: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status is DaoStatus.ACCEPTED


class NodeState(StrEnum):
    OK = "ok"
    UNREACHABLE = "unreachable"  # no valid path to the root
    LOOPED = "looped"  # on a parent loop (its loop-free paths still work)


@dataclass(frozen=True, slots=True)
class TransitInfo:
    parent: bytes
    path_sequence: int
    preference: int
    lifetime_left_s: float | None  # None: infinite
    expired: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent.hex(),
            "path_sequence": self.path_sequence,
            "preference": self.preference,
            "lifetime_left_s": _round(self.lifetime_left_s),
            "expired": self.expired,
        }


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """All the table knows about one node (for the diag layer)."""

    node: bytes
    state: NodeState
    transits: tuple[TransitInfo, ...]
    dao_sequence: int
    path_sequence: int | None
    last_dao_age_s: float
    preferred: Path | None  # the route downward traffic takes now (best path if none chosen)
    paths: int  # valid paths known (up to the table's cap)
    loop: tuple[bytes, ...] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.hex(),
            "state": self.state.value,
            "parents": [t.as_dict() for t in self.transits],
            "dao_sequence": self.dao_sequence,
            "path_sequence": self.path_sequence,
            "last_dao_age_s": round(self.last_dao_age_s, 3),
            "preferred": None if self.preferred is None else self.preferred.as_dict(),
            "paths": self.paths,
            "loop": None if self.loop is None else [h.hex() for h in self.loop],
        }


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    expired: tuple[tuple[bytes, bytes], ...] = ()  # (node, parent) transits removed
    unreachable: tuple[bytes, ...] = ()  # nodes left without a path
    forgotten: tuple[bytes, ...] = ()  # unreachable longer than forget_after_s: dropped
    changes: tuple[RouteChange, ...] = ()  # routes moved off the expired transits


@dataclass(frozen=True, slots=True)
class TickReport:
    expiry: ExpiryReport
    changes: tuple[RouteChange, ...]  # routes moved by DAOs or link metrics since last time


# ---------------------------------------------------------------------------------------------
# Internal state


@dataclass(slots=True)
class _Transit:
    parent: bytes
    path_sequence: int
    preference: int
    expires_at: float  # math.inf: never


@dataclass(slots=True)
class _Node:
    transits: list[_Transit]  # in preference order
    dao_sequence: int
    path_sequence: int | None
    last_dao_at: float
    unreachable_since: float | None = None

    def parents(self) -> tuple[bytes, ...]:
        return tuple(t.parent for t in self.transits)


@dataclass(slots=True)
class _Link:
    measured: LinkQuality | None = None
    reported: LinkQuality | None = None
    tripped: bool = False  # fell below the floor; cleared at floor + hysteresis
    # derived from the above and the table's settings:
    etx: float | None = None
    snr: float | None = None
    cost: float = 0.0
    below: bool = False


@dataclass(slots=True)
class _Cached:
    paths: tuple[Path, ...]
    ranks: tuple[tuple[int, ...], ...]  # per path: parent preference indices, node upward
    valid_until: float


# ---------------------------------------------------------------------------------------------


class RoutingTable:
    """Non-storing-mode routes of one DODAG whose root is ``root`` (the gateway's EUI-64).

    Costs: a link costs ETX/128 (``unknown_etx`` when not known) plus an SNR penalty that
    rises quadratically from 0 at ``snr_floor_db + penalty_span_db`` to ``snr_penalty`` at the
    floor; a link below the floor makes its paths unusable. ``max_paths`` cheapest paths are
    kept per node, none longer than ``max_hops`` links.
    """

    def __init__(
        self,
        root: bytes,
        *,
        snr_floor_db: float = 6.0,
        hysteresis_db: float = 3.0,
        switch_margin: float = 0.5,
        max_hops: int = 32,
        default_lifetime_s: float = 7200.0,
        max_paths: int = 8,
        unknown_etx: float = 2.0 * ETX_SCALE,
        snr_penalty: float = 2.0,
        penalty_span_db: float = 10.0,
        change_log_size: int = 1000,
        forget_after_s: float | None = None,
        on_change: Callable[[RouteChange], None] | None = None,
        follow_preference: bool = False,
    ) -> None:
        _check_eui(root, "root")
        if hysteresis_db < 0 or switch_margin < 0 or penalty_span_db <= 0 or snr_penalty < 0:
            raise RouteInputError(
                "hysteresis_db, switch_margin and snr_penalty must be >= 0, penalty_span_db > 0"
            )
        if max_hops < 1 or max_paths < 1 or change_log_size < 1:
            raise RouteInputError("max_hops, max_paths and change_log_size must be >= 1")
        if not default_lifetime_s > 0:
            raise RouteInputError(f"default_lifetime_s must be > 0, got {default_lifetime_s!r}")
        if unknown_etx < ETX_SCALE:
            raise RouteInputError(f"unknown_etx is ETX x 128, >= 128, got {unknown_etx!r}")
        self.root = bytes(root)
        self.snr_floor_db = float(snr_floor_db)
        self.hysteresis_db = float(hysteresis_db)
        self.switch_margin = float(switch_margin)
        self.max_hops = max_hops
        self.default_lifetime_s = float(default_lifetime_s)
        self.max_paths = max_paths
        self.unknown_etx = float(unknown_etx)
        self.snr_penalty = float(snr_penalty)
        self.penalty_span_db = float(penalty_span_db)
        self.forget_after_s = forget_after_s
        # An external border router (wsbrd, a TI NCP) chooses routes itself: paths are then
        # ordered by its parents' preference (cost only breaks ties) and the preferred path
        # is its choice, so the views show the route it takes, not one we would pick.
        self.follow_preference = follow_preference
        self._max_expansions = 512 * max_paths
        self._nodes: dict[bytes, _Node] = {}
        self._children: dict[bytes, set[bytes]] = {}
        self._links: dict[tuple[bytes, bytes], _Link] = {}
        self._unknown_link = _Link(cost=self.unknown_etx / ETX_SCALE)
        self._cache: dict[bytes, _Cached] = {}
        self._current: dict[bytes, tuple[bytes, ...] | None] = {}  # None: had one, lost it
        self._stale: set[bytes] = set()  # nodes with a route whose paths changed
        self._unreachable: set[bytes] = set()
        self._loops: dict[bytes, tuple[bytes, ...]] = {}  # node → a cycle through it
        self._next_expiry = math.inf
        self._changes: deque[RouteChange] = deque(maxlen=change_log_size)
        self._listeners: list[Callable[[RouteChange], None]] = []
        if on_change is not None:
            self._listeners.append(on_change)

    # -- listeners ------------------------------------------------------------------------------

    def add_change_listener(self, listener: Callable[[RouteChange], None]) -> None:
        self._listeners.append(listener)

    def remove_change_listener(self, listener: Callable[[RouteChange], None]) -> None:
        self._listeners.remove(listener)

    # -- DAO ------------------------------------------------------------------------------------

    def update_dao(
        self, node: bytes, dao_sequence: int, transits: Sequence[Transit], now: float
    ) -> DaoOutcome:
        """Apply one DAO from ``node`` (raises RouteInputError on a malformed one)."""
        _check_eui(node, "node")
        if node == self.root:
            raise RouteInputError(f"node {node.hex()}: the root does not send itself DAOs")
        _check_seq(dao_sequence, "DAO sequence")
        items = self._check_transits(transits)
        rec = self._nodes.get(node)
        notes: list[str] = []
        if rec is not None:
            order = lollipop_compare(dao_sequence, rec.dao_sequence)
            if order == 0:
                return DaoOutcome(node, DaoStatus.DUPLICATE, old_parents=rec.parents())
            if order == -1:
                return DaoOutcome(node, DaoStatus.STALE, old_parents=rec.parents())
            if order is None:
                notes.append(
                    f"DAO sequence {dao_sequence} not comparable with {rec.dao_sequence}"
                    " (desynchronised): taken as newer"
                )
        live = [t for t in items if t.path_lifetime_s != 0]
        withdrawn = [t for t in items if t.path_lifetime_s == 0]
        is_new = rec is None
        if rec is None:
            if not live:
                return DaoOutcome(
                    node, DaoStatus.ACCEPTED, notes=("no-path DAO for a node not in the table",)
                )
            rec = _Node([], dao_sequence, None, now)
            self._nodes[node] = rec
        old_parents = rec.parents()
        had_expired = any(t.expires_at <= now for t in rec.transits)
        old_expiry = {t.parent: t.expires_at for t in rec.transits}
        rec.dao_sequence, rec.last_dao_at = dao_sequence, now
        current = {t.parent: t for t in rec.transits}
        ps_old = rec.path_sequence
        for t in withdrawn:
            if ps_old is not None and lollipop_compare(t.path_sequence, ps_old) == -1:
                notes.append(
                    f"no-path for parent {t.parent.hex()} ignored: path sequence"
                    f" {t.path_sequence} older than {ps_old}"
                )
                continue
            current.pop(t.parent, None)
        if live:
            ps_new = live[0].path_sequence
            for t in live[1:]:
                if lollipop_compare(t.path_sequence, ps_new) == 1:
                    ps_new = t.path_sequence
            fresh = []
            for t in live:
                if t.path_sequence == ps_new:
                    fresh.append(t)
                else:
                    notes.append(
                        f"transit to {t.parent.hex()} ignored: path sequence {t.path_sequence}"
                        f" older than {ps_new} in the same DAO"
                    )
            order = None if ps_old is None else lollipop_compare(ps_new, ps_old)
            if order == -1:
                notes.append(f"transits ignored: path sequence {ps_new} older than {ps_old}")
            elif order == 0:
                for t in fresh:
                    current[t.parent] = self._new_transit(t, now)
            else:
                if order is None and ps_old is not None:
                    notes.append(
                        f"path sequence {ps_new} not comparable with {ps_old}: taken as newer"
                    )
                current = {t.parent: self._new_transit(t, now) for t in fresh}
                rec.path_sequence = ps_new
        rec.transits = sorted(current.values(), key=lambda st: st.preference)
        for st in rec.transits:
            self._next_expiry = min(self._next_expiry, st.expires_at)
        new_parents = rec.parents()
        changed = new_parents != old_parents
        removed = bool(old_parents) and not new_parents
        loop: tuple[bytes, ...] | None = None
        unreachable: list[bytes] = []
        recovered: list[bytes] = []
        # Cached paths stay valid until the earliest expiry they were built with: a lifetime
        # cut short, or a transit that had lapsed and is back, makes them wrong earlier.
        shortened = any(t.expires_at < old_expiry.get(t.parent, math.inf) for t in rec.transits)
        if changed or had_expired or is_new or shortened:
            for gone in set(old_parents) - set(new_parents):
                self._unlink_child(gone, node)
            for added in new_parents:
                self._children.setdefault(added, set()).add(node)
            self._invalidate(node)
            self._recheck_loops()
            for added in new_parents:
                if added in old_parents or added == self.root:
                    continue
                cycle = self._find_cycle(node, added, now)
                if cycle is not None:
                    loop = cycle
                    self._loops[node] = cycle
                    break
            # A node whose transits lapsed without an expire() call was never marked, but
            # children that reported through it meanwhile were: they recover with it.
            unreachable, recovered = self._reachability_after(node, now, is_new or had_expired)
        return DaoOutcome(
            node,
            DaoStatus.ACCEPTED,
            parents_changed=changed,
            old_parents=old_parents,
            new_parents=new_parents,
            removed=removed,
            loop=loop,
            unreachable=tuple(unreachable),
            recovered=tuple(recovered),
            notes=tuple(notes),
        )

    def forget(self, node: bytes, now: float) -> tuple[bytes, ...]:
        """Drop ``node`` (e.g. decommissioned); returns the nodes this leaves unreachable."""
        rec = self._nodes.pop(node, None)
        if rec is None:
            return ()
        for t in rec.transits:
            self._unlink_child(t.parent, node)
        self._invalidate(node)
        self._cache.pop(node, None)
        self._current.pop(node, None)
        self._stale.discard(node)
        self._unreachable.discard(node)
        self._loops.pop(node, None)
        self._recheck_loops()
        return tuple(self._mark_unreachable(self._descendants(node) - {node}, now))

    # -- links ----------------------------------------------------------------------------------

    def set_link(self, a: bytes, b: bytes, quality: LinkQuality, now: float) -> None:
        """Metrics of the (undirected) link a–b; measured ones take precedence over reported."""
        _check_eui(a, "link end a")
        _check_eui(b, "link end b")
        if a == b:
            raise RouteInputError(f"link {a.hex()}-{b.hex()}: both ends are the same node")
        if quality.etx is not None and not (
            quality.etx >= ETX_SCALE and math.isfinite(quality.etx)
        ):
            raise RouteInputError(f"link {a.hex()}-{b.hex()}: ETX x 128 must be >= 128")
        if quality.snr_db is not None and not math.isfinite(quality.snr_db):
            raise RouteInputError(f"link {a.hex()}-{b.hex()}: SNR must be finite")
        key = (a, b) if a < b else (b, a)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = _Link()
        before = (link.cost, link.below, link.tripped, link.snr)
        if quality.measured:
            link.measured = quality
        else:
            link.reported = quality
        self._derive(link)
        if (link.cost, link.below, link.tripped, link.snr) != before:
            for child, parent in ((a, b), (b, a)):
                rec = self._nodes.get(child)
                if rec is not None and any(t.parent == parent for t in rec.transits):
                    self._invalidate(child)

    def link(self, a: bytes, b: bytes) -> LinkQuality | None:
        """The effective metrics of a–b (measured fields first), or None if never set."""
        link = self._links.get((a, b) if a < b else (b, a))
        if link is None:
            return None
        return LinkQuality(link.etx, link.snr, link.measured is not None)

    def _derive(self, link: _Link) -> None:
        m, r = link.measured, link.reported
        link.etx = m.etx if m is not None and m.etx is not None else (r.etx if r else None)
        link.snr = m.snr_db if m is not None and m.snr_db is not None else (r.snr_db if r else None)
        etx = self.unknown_etx if link.etx is None else link.etx
        link.cost = etx / ETX_SCALE + self._penalty(link.snr)
        link.below = link.snr is not None and link.snr < self.snr_floor_db
        if link.below:
            link.tripped = True
        elif link.snr is not None and link.snr >= self.snr_floor_db + self.hysteresis_db:
            link.tripped = False

    def _penalty(self, snr: float | None) -> float:
        if snr is None:
            return 0.0
        above = snr - self.snr_floor_db
        if above >= self.penalty_span_db:
            return 0.0
        if above <= 0:
            return self.snr_penalty
        short = (self.penalty_span_db - above) / self.penalty_span_db
        return self.snr_penalty * short * short

    def _link_state(self, parent: bytes, child: bytes) -> _Link:
        link = self._links.get((parent, child) if parent < child else (child, parent))
        return self._unknown_link if link is None else link

    def _link_reasons(self, link: _Link, parent: bytes, child: bytes) -> tuple[str, ...]:
        if link.snr is None or not (link.below or link.tripped):
            return ()
        name = f"{parent.hex()}-{child.hex()}"
        if link.below:
            return (f"SNR {link.snr:.1f} dB < floor {self.snr_floor_db:g} dB on link {name}",)
        return (
            f"SNR {link.snr:.1f} dB recovering (needs {self.snr_floor_db + self.hysteresis_db:g}"
            f" dB) on link {name}",
        )

    # -- paths ----------------------------------------------------------------------------------

    def paths(self, node: bytes, now: float) -> list[Path]:
        """The cheapest loop-free paths root → node (up to ``max_paths``), cheapest first."""
        if node not in self._nodes:
            return []
        return list(self._ensure(node, now).paths)

    def source_route(self, node: bytes, now: float) -> tuple[bytes, ...] | None:
        """The hops after the root, ending with ``node``, of the preferred path (None: none)."""
        path = self.preferred(node, now)
        return None if path is None else path.hops[1:]

    def _ensure(self, node: bytes, now: float) -> _Cached:
        hit = self._cache.get(node)
        if hit is not None and now < hit.valid_until:
            return hit
        # Post-order over the ancestors that need (re)computing: a node is cached only once
        # all its live parents are, which is what lets _invalidate stop at uncached nodes.
        stack = [node]
        on_stack = {node}
        while stack:
            x = stack[-1]
            rec = self._nodes.get(x)
            pending: bytes | None = None
            if rec is not None:
                for t in rec.transits:
                    p = t.parent
                    if t.expires_at <= now or p == self.root or p == x:
                        continue
                    c = self._cache.get(p)
                    if c is not None and now < c.valid_until:
                        continue
                    if p in on_stack:
                        return self._search(node, now)
                    pending = p
                    break
            if pending is not None:
                stack.append(pending)
                on_stack.add(pending)
                continue
            stack.pop()
            on_stack.discard(x)
            self._cache[x] = self._compose(x, rec, now)
        return self._cache[node]

    def _compose(self, x: bytes, rec: _Node | None, now: float) -> _Cached:
        """x's k cheapest paths from its parents' k cheapest (exact on a DAG: a path's prefix
        to a parent is among that parent's k best under the same (cost, ranks) order). The one
        approximation: near ``max_hops``, a short costly path can be missed when a parent's k
        best are all long; reachability (``_reaches_root``) does not depend on it."""
        if rec is None:
            return _Cached((), (), math.inf)
        root = self.root
        valid_until = math.inf
        # (cost, rank at x, ranks of the parent's path, parent's path, link): hop tuples are
        # built only for the kept few; (rank, ranks) orders as the concatenated ranks would.
        cands: list[tuple[float, int, tuple[int, ...], Path | None, _Link]] = []
        max_len = self.max_hops
        for rank, t in enumerate(rec.transits):
            if t.expires_at <= now:
                continue
            valid_until = min(valid_until, t.expires_at)
            p = t.parent
            link = self._link_state(p, x)
            if p == root:
                cands.append((link.cost, rank, (), None, link))
                continue
            if p == x:
                continue
            c = self._cache[p]
            valid_until = min(valid_until, c.valid_until)
            lc = link.cost
            for path, ranks in zip(c.paths, c.ranks, strict=True):
                if len(path.hops) <= max_len and x not in path.hops:
                    cands.append((path.cost + lc, rank, ranks, path, link))
        cands.sort(key=_preference_order if self.follow_preference else _candidate_order)
        kept = cands[: self.max_paths]
        paths = tuple(
            self._extend(prev, link, (root, x) if prev is None else (*prev.hops, x), cost)
            for cost, _, _, prev, link in kept
        )
        return _Cached(paths, tuple((rank, *ranks) for _, rank, ranks, _, _ in kept), valid_until)

    def _extend(self, prev: Path | None, link: _Link, hops: tuple[bytes, ...], cost: float) -> Path:
        worst = link.snr
        if prev is not None and prev.worst_snr_db is not None:
            worst = prev.worst_snr_db if worst is None else min(worst, prev.worst_snr_db)
        reasons = self._link_reasons(link, hops[-2], hops[-1])
        if prev is None:
            return Path(hops, cost, worst, not link.below, reasons, link.tripped)
        return Path(
            hops,
            cost,
            worst,
            prev.usable and not link.below,
            prev.reasons + reasons if reasons else prev.reasons,
            prev.recovering or link.tripped,
        )

    def _build(self, hops: tuple[bytes, ...]) -> Path:
        """A Path for ``hops`` computed root → node (the same float sums as _compose)."""
        cost = 0.0
        worst: float | None = None
        usable, recovering = True, False
        reasons: tuple[str, ...] = ()
        for i in range(1, len(hops)):
            link = self._link_state(hops[i - 1], hops[i])
            cost = link.cost if i == 1 else cost + link.cost
            if link.snr is not None:
                worst = link.snr if worst is None else min(worst, link.snr)
            if link.below or link.tripped:
                usable = usable and not link.below
                recovering = recovering or link.tripped
                reasons += self._link_reasons(link, hops[i - 1], hops[i])
        return Path(hops, cost, worst, usable, reasons, recovering)

    def _search(self, node: bytes, now: float) -> _Cached:
        """Best-first search over raw transits with per-path loop checks, for parts of the
        graph with a parent loop (where building from the parents' paths would recurse)."""
        root = self.root
        heap: list[tuple[float, int, tuple[bytes, ...], tuple[int, ...]]] = [(0.0, 0, (node,), ())]
        found: list[tuple[tuple[bytes, ...], tuple[int, ...]]] = []
        kth = math.inf
        counter = expansions = 0
        while heap and expansions < self._max_expansions:
            cost, _, rev, ranks = heapq.heappop(heap)
            if len(found) >= self.max_paths and cost > kth + 1e-9:
                break
            x = rev[-1]
            if x == root:
                found.append((rev[::-1], ranks))
                if len(found) == self.max_paths:
                    kth = cost
                continue
            expansions += 1
            rec = self._nodes.get(x)
            if rec is None or len(rev) > self.max_hops:
                continue
            for rank, t in enumerate(rec.transits):
                p = t.parent
                if t.expires_at <= now or p in rev:
                    continue
                counter += 1
                link = self._link_state(p, x)
                heapq.heappush(heap, (cost + link.cost, counter, (*rev, p), (*ranks, rank)))
        if self.follow_preference:
            built = sorted(((self._build(h), r) for h, r in found), key=lambda e: (e[1], e[0].cost))
        else:
            built = sorted(((self._build(h), r) for h, r in found), key=lambda e: (e[0].cost, e[1]))
        kept = built[: self.max_paths]
        return _Cached(tuple(p for p, _ in kept), tuple(r for _, r in kept), -math.inf)

    def _evaluate(self, hops: tuple[bytes, ...], now: float) -> Path | str:
        """Re-check a known path against the current transits: the Path, or why it is gone."""
        if len(hops) - 1 > self.max_hops:
            return f"path longer than {self.max_hops} hops"
        for i in range(1, len(hops)):
            child, parent = hops[i], hops[i - 1]
            rec = self._nodes.get(child)
            t = None if rec is None else next((t for t in rec.transits if t.parent == parent), None)
            if t is None:
                return f"transit {child.hex()} -> {parent.hex()} withdrawn"
            if t.expires_at <= now:
                return f"transit {child.hex()} -> {parent.hex()} expired"
        return self._build(hops)

    # -- preferred path, hysteresis -------------------------------------------------------------

    def preferred(self, node: bytes, now: float) -> Path | None:
        """The path downward traffic to ``node`` takes now, switching only when it must.

        The current path is kept while usable unless an eligible path is cheaper by more than
        ``switch_margin``; it is left when a link on it falls below the SNR floor; a path with
        a link that fell below the floor is eligible again only above floor + hysteresis.
        With no usable alternative the current path is kept (``usable`` False): a weak route
        beats none. Every switch is logged and given to the change listeners.
        """
        return self._choose(node, now)[0]

    def reselect(self, now: float) -> list[RouteChange]:
        """Re-run ``preferred`` for every node whose paths changed since its route was chosen
        (link metrics, DAOs, expiry), so routes move off weak links even with no traffic."""
        changes = []
        for node in sorted(self._stale):
            change = self._choose(node, now)[1]
            if change is not None:
                changes.append(change)
        self._stale.clear()
        return changes

    def _choose(self, node: bytes, now: float) -> tuple[Path | None, RouteChange | None]:
        self._stale.discard(node)
        if node not in self._nodes:
            return None, None
        paths = self._ensure(node, now).paths
        had = node in self._current
        cur_hops = self._current.get(node)
        if self.follow_preference:
            return self._follow(now, node, had, cur_hops, paths)
        eligible = [p for p in paths if p.usable and not p.recovering]
        usable = eligible[0] if eligible else next((p for p in paths if p.usable), None)
        fallback = usable if usable is not None else (paths[0] if paths else None)
        if cur_hops is None:
            if fallback is None:
                return None, None
            self._current[node] = fallback.hops
            if not had:
                return fallback, None  # a first route is not a switch
            return fallback, self._record(now, node, None, fallback.hops, "reachable again")
        cur = next((p for p in paths if p.hops == cur_hops), None) or self._evaluate(cur_hops, now)
        if isinstance(cur, str):
            if fallback is None:
                self._current[node] = None
                reason = f"{cur}; no other path to the root"
                return None, self._record(now, node, cur_hops, None, reason)
            self._current[node] = fallback.hops
            return fallback, self._record(now, node, cur_hops, fallback.hops, cur)
        if not cur.usable:
            if usable is None:
                return cur, None
            self._current[node] = usable.hops
            reason = self._weak_reason(cur_hops)
            return usable, self._record(now, node, cur_hops, usable.hops, reason)
        best = eligible[0] if eligible else None
        if best is None or best.hops == cur.hops or best.cost + self.switch_margin >= cur.cost:
            return cur, None
        self._current[node] = best.hops
        reason = f"cost {best.cost:.2f} beats {cur.cost:.2f} by more than {self.switch_margin:g}"
        if (
            cur.worst_snr_db is not None
            and cur.worst_snr_db < self.snr_floor_db + self.penalty_span_db
        ):
            # The old path paid an SNR penalty: say how close to the floor it was.
            reason += (
                f" (old path's weakest link: SNR {cur.worst_snr_db:.1f} dB,"
                f" floor {self.snr_floor_db:g} dB)"
            )
        return best, self._record(now, node, cur_hops, best.hops, reason)

    def _follow(
        self,
        now: float,
        node: bytes,
        had: bool,
        cur_hops: tuple[bytes, ...] | None,
        paths: tuple[Path, ...],
    ) -> tuple[Path | None, RouteChange | None]:
        """The border router's choice: the path along each node's most preferred parent."""
        if not paths:
            if cur_hops is None:
                return None, None
            self._current[node] = None
            return None, self._record(now, node, cur_hops, None, "no path to the root")
        first = paths[0]
        if first.hops == cur_hops:
            return first, None
        self._current[node] = first.hops
        if not had:
            return first, None  # a first route is not a switch
        reason = (
            "reachable again"
            if cur_hops is None
            else "the border router's parent preference changed"
        )
        return first, self._record(now, node, cur_hops, first.hops, reason)

    def _weak_reason(self, hops: tuple[bytes, ...]) -> str:
        for i in range(1, len(hops)):
            link = self._link_state(hops[i - 1], hops[i])
            if link.below:
                return self._link_reasons(link, hops[i - 1], hops[i])[0]
        return "path unusable"

    def _record(
        self,
        now: float,
        node: bytes,
        old: tuple[bytes, ...] | None,
        new: tuple[bytes, ...] | None,
        reason: str,
    ) -> RouteChange:
        change = RouteChange(now, node, old, new, reason)
        self._changes.append(change)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("route change listener %r failed on %s", listener, change)
        return change

    # -- expiry, reachability, loops ------------------------------------------------------------

    def expire(self, now: float) -> ExpiryReport:
        """Remove transits whose lifetime ran out, move the routes that used them and report
        the nodes left without a path (they stay in the table, unreachable, until
        ``forget_after_s`` if set, or ``forget``)."""
        if now < self._next_expiry:
            return ExpiryReport(forgotten=self._forget_old(now))
        touched = [
            node
            for node, rec in self._nodes.items()
            if any(t.expires_at <= now for t in rec.transits)
        ]
        candidates: set[bytes] = set()
        for node in touched:
            candidates |= self._descendants(node)
        # Routes are re-chosen while the expired transits are still there to be named (paths
        # already leave them out: they are expired at ``now``).
        changes = []
        for node in sorted(candidates & self._current.keys()):
            change = self._choose(node, now)[1]
            if change is not None:
                changes.append(change)
        expired: list[tuple[bytes, bytes]] = []
        nxt = math.inf
        for node, rec in self._nodes.items():
            keep = []
            for t in rec.transits:
                if t.expires_at > now:
                    keep.append(t)
                    nxt = min(nxt, t.expires_at)
                else:
                    expired.append((node, t.parent))
                    self._unlink_child(t.parent, node)
            rec.transits = keep
        self._next_expiry = nxt
        for node in touched:
            self._invalidate(node)
        self._recheck_loops()
        unreachable = self._mark_unreachable(candidates, now)
        return ExpiryReport(
            tuple(expired), tuple(unreachable), self._forget_old(now), tuple(changes)
        )

    def _forget_old(self, now: float) -> tuple[bytes, ...]:
        if self.forget_after_s is None:
            return ()
        old = []
        for node in sorted(self._unreachable):
            rec = self._nodes.get(node)
            since = None if rec is None else rec.unreachable_since
            if since is not None and now - since >= self.forget_after_s:
                old.append(node)
        for node in old:
            self.forget(node, now)
        return tuple(old)

    def tick(self, now: float) -> TickReport:
        """What the stack's timer calls: ``expire`` then ``reselect``."""
        expiry = self.expire(now)
        return TickReport(expiry, tuple(self.reselect(now)))

    def _reachability_after(
        self, node: bytes, now: float, recheck_descendants: bool
    ) -> tuple[list[bytes], list[bytes]]:
        if self._reaches_root(node, now):
            recovered: list[bytes] = []
            if node in self._unreachable or recheck_descendants:
                for d in sorted(self._descendants(node)):
                    if d in self._unreachable and self._reaches_root(d, now):
                        self._unreachable.discard(d)
                        self._nodes[d].unreachable_since = None
                        recovered.append(d)
            return [], recovered
        return self._mark_unreachable(self._descendants(node), now), []

    def _reaches_root(self, node: bytes, now: float) -> bool:
        """Whether live transits lead from ``node`` to the root within ``max_hops``.

        Depth-first along preferred parents, so usually one walk of the node's depth: cheaper
        than building its k cheapest paths, which wait until someone asks for them. A walk
        of length L implies a simple path no longer than L, and a node reached again at no
        smaller depth cannot lead anywhere new, so the answer is exact."""
        best = {node: 0}
        stack = [(node, 0)]
        while stack:
            x, d = stack.pop()
            rec = self._nodes.get(x)
            if rec is None or d >= self.max_hops:
                continue
            for t in reversed(rec.transits):
                if t.expires_at <= now:
                    continue
                p = t.parent
                if p == self.root:
                    return True
                if best.get(p, self.max_hops + 1) > d + 1:
                    best[p] = d + 1
                    stack.append((p, d + 1))
        return False

    def _mark_unreachable(self, candidates: Iterable[bytes], now: float) -> list[bytes]:
        newly = []
        for d in sorted(candidates):
            rec = self._nodes.get(d)
            if rec is None or d in self._unreachable:
                continue
            if not self._reaches_root(d, now):
                self._unreachable.add(d)
                rec.unreachable_since = now
                newly.append(d)
        return newly

    def _descendants(self, node: bytes) -> set[bytes]:
        seen = {node}
        todo = [node]
        while todo:
            for c in self._children.get(todo.pop(), ()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return seen

    def _invalidate(self, start: bytes) -> None:
        """Drop the cached paths of ``start`` and of every descendant that has some; below an
        uncached node nothing is cached (see _ensure), so the walk stops there."""
        self._cache.pop(start, None)
        if start in self._current:
            self._stale.add(start)
        todo = [c for c in self._children.get(start, ()) if c != start]
        while todo:
            x = todo.pop()
            if self._cache.pop(x, None) is None:
                continue
            if x in self._current:
                self._stale.add(x)
            todo.extend(self._children.get(x, ()))

    def _unlink_child(self, parent: bytes, child: bytes) -> None:
        kids = self._children.get(parent)
        if kids is not None:
            kids.discard(child)
            if not kids:
                del self._children[parent]

    def _find_cycle(self, node: bytes, parent: bytes, now: float) -> tuple[bytes, ...] | None:
        """node → parent → … → node along live transits, or None.

        A loop exists when ``node`` is an ancestor of ``parent``: search up from ``parent`` and
        down from ``node`` in turns, so the cost is about the smaller of the two sets (few
        ancestors near the root, few descendants near the leaves)."""
        if parent == node:
            return (node, node)
        up: dict[bytes, bytes | None] = {parent: None}  # ancestor → the node it was reached from
        down: dict[bytes, bytes | None] = {node: None}  # descendant → its parent on the chain
        up_q, down_q = deque([parent]), deque([node])
        meet: bytes | None = None
        while up_q and down_q and meet is None:
            x = up_q.popleft()
            rec = self._nodes.get(x)
            for t in () if rec is None else rec.transits:
                q = t.parent
                if t.expires_at > now and q != self.root and q not in up:
                    up[q] = x
                    up_q.append(q)
                    if q in down:
                        meet = q
                        break
            if meet is not None:
                break
            y = down_q.popleft()
            for c in self._children.get(y, ()):
                if c in down or not self._has_live_parent(c, y, now):
                    continue
                down[c] = y
                down_q.append(c)
                if c in up:
                    meet = c
                    break
        if meet is None:
            return None
        rising = [meet]
        while rising[-1] != parent:
            prev = up[rising[-1]]
            assert prev is not None
            rising.append(prev)
        falling = [meet]
        while falling[-1] != node:
            prev = down[falling[-1]]
            assert prev is not None
            falling.append(prev)
        return (node, *reversed(rising), *falling[1:])

    def _has_live_parent(self, child: bytes, parent: bytes, now: float) -> bool:
        rec = self._nodes.get(child)
        return rec is not None and any(
            t.parent == parent and t.expires_at > now for t in rec.transits
        )

    def _recheck_loops(self) -> None:
        for node, cycle in list(self._loops.items()):
            for i in range(1, len(cycle)):
                rec = self._nodes.get(cycle[i - 1])
                if rec is None or all(t.parent != cycle[i] for t in rec.transits):
                    del self._loops[node]
                    break

    def _loop_through(self, node: bytes) -> tuple[bytes, ...] | None:
        direct = self._loops.get(node)
        if direct is not None:
            return direct
        for cycle in self._loops.values():
            if node in cycle:
                return cycle
        return None

    # -- queries for the diag layer ---------------------------------------------------------------

    def nodes(self) -> list[bytes]:
        """Every node that sent a DAO (reachable or not), sorted."""
        return sorted(self._nodes)

    def entry(self, node: bytes, now: float) -> RouteEntry | None:
        rec = self._nodes.get(node)
        if rec is None:
            return None
        paths = self._ensure(node, now).paths
        cur_hops = self._current.get(node)
        current = None if cur_hops is None else self._evaluate(cur_hops, now)
        preferred = current if isinstance(current, Path) else (paths[0] if paths else None)
        loop = self._loop_through(node)
        if not paths:
            state = NodeState.UNREACHABLE
        elif loop is not None:
            state = NodeState.LOOPED
        else:
            state = NodeState.OK
        transits = tuple(
            TransitInfo(
                t.parent,
                t.path_sequence,
                t.preference,
                None if math.isinf(t.expires_at) else max(0.0, t.expires_at - now),
                t.expires_at <= now,
            )
            for t in rec.transits
        )
        return RouteEntry(
            node,
            state,
            transits,
            rec.dao_sequence,
            rec.path_sequence,
            now - rec.last_dao_at,
            preferred,
            len(paths),
            loop,
        )

    def table(self, now: float) -> list[dict[str, Any]]:
        """One JSON-able row per node (see RouteEntry.as_dict)."""
        rows = []
        for node in self.nodes():
            entry = self.entry(node, now)
            assert entry is not None
            rows.append(entry.as_dict())
        return rows

    def changes(self) -> list[RouteChange]:
        """The route-change log, oldest first (bounded: the oldest fall off)."""
        return list(self._changes)

    # -- persistence ------------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """A JSON-safe, versioned copy: lifetimes as seconds left at ``now``, links, routes."""
        nodes = []
        for node in self.nodes():
            rec = self._nodes[node]
            nodes.append(
                {
                    "node": node.hex(),
                    "dao_sequence": rec.dao_sequence,
                    "path_sequence": rec.path_sequence,
                    "last_dao_age_s": now - rec.last_dao_at,
                    "unreachable": node in self._unreachable,
                    "route": _hexes(self._current.get(node)),
                    "had_route": node in self._current,
                    "transits": [
                        {
                            "parent": t.parent.hex(),
                            "path_sequence": t.path_sequence,
                            "preference": t.preference,
                            "remaining_s": None if math.isinf(t.expires_at) else t.expires_at - now,
                        }
                        for t in rec.transits
                    ],
                }
            )
        links = [
            {
                "a": a.hex(),
                "b": b.hex(),
                "measured": None if link.measured is None else _quality_dict(link.measured),
                "reported": None if link.reported is None else _quality_dict(link.reported),
                "tripped": link.tripped,
            }
            for (a, b), link in sorted(self._links.items())
        ]
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "root": self.root.hex(),
            "nodes": nodes,
            "links": links,
        }

    @classmethod
    def restore(
        cls, data: Any, now: float, *, elapsed_s: float = 0.0, **settings: Any
    ) -> RoutingTable:
        """A table from ``snapshot()`` output; ``elapsed_s`` (time the agent was down, if
        known) is taken off every lifetime. ``settings`` are the constructor's keywords; a
        ``root`` among them must match the snapshot's. Raises SnapshotError on bad input."""
        r = _Reader(data)
        if r.get("format", str, "") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"format: expected {SNAPSHOT_FORMAT!r}")
        version = r.get("version", int, "")
        if version != SNAPSHOT_VERSION:
            raise SnapshotError(
                f"version: {version} is not supported (expected {SNAPSHOT_VERSION})"
            )
        root = r.eui("root", "")
        wanted = settings.pop("root", None)
        if wanted is not None and bytes(wanted) != root:
            raise SnapshotError(f"root: snapshot is for {root.hex()}, not {bytes(wanted).hex()}")
        table = cls(root, **settings)
        for i, raw in enumerate(r.get("nodes", list, "")):
            where = f"nodes[{i}]."
            n = _Reader(raw, where)
            node = n.eui("node", where)
            if node == root or node in table._nodes:
                raise SnapshotError(f"{where}node: {node.hex()} is the root or listed twice")
            dao_seq = n.seq("dao_sequence", where)
            ps_raw = n.get("path_sequence", (int, type(None)), where)
            path_seq = None if ps_raw is None else n.seq("path_sequence", where)
            age = n.number("last_dao_age_s", where)
            transits = []
            for j, traw in enumerate(n.get("transits", list, where)):
                tw = f"{where}transits[{j}]."
                tr = _Reader(traw, tw)
                rem = tr.get("remaining_s", (int, float, type(None)), tw)
                if rem is not None:
                    rem = tr.number("remaining_s", tw)
                pref = tr.get("preference", int, tw)
                if pref < 0:
                    raise SnapshotError(f"{tw}preference: must be >= 0, got {pref}")
                transits.append(
                    _Transit(
                        tr.eui("parent", tw),
                        tr.seq("path_sequence", tw),
                        pref,
                        math.inf if rem is None else now + rem - elapsed_s,
                    )
                )
            if len({t.parent for t in transits}) != len(transits):
                raise SnapshotError(f"{where}transits: a parent is listed twice")
            rec = _Node(sorted(transits, key=lambda t: t.preference), dao_seq, path_seq, now - age)
            table._nodes[node] = rec
            for t in rec.transits:
                table._children.setdefault(t.parent, set()).add(node)
                table._next_expiry = min(table._next_expiry, t.expires_at)
            if n.get("unreachable", bool, where):
                table._unreachable.add(node)
                rec.unreachable_since = now
            route = n.get("route", (list, type(None)), where)
            if route is not None:
                hops = tuple(_eui_from(h, f"{where}route[{k}]") for k, h in enumerate(route))
                if len(hops) < 2 or hops[0] != root or hops[-1] != node:
                    raise SnapshotError(f"{where}route: must run from the root to the node")
                table._current[node] = hops
                table._stale.add(node)
            elif n.get("had_route", bool, where):
                table._current[node] = None
        for i, raw in enumerate(r.get("links", list, "")):
            where = f"links[{i}]."
            lr = _Reader(raw, where)
            a, b = lr.eui("a", where), lr.eui("b", where)
            if a == b:
                raise SnapshotError(f"{where.rstrip('.')}: both ends are {a.hex()}")
            link = _Link(
                measured=lr.quality("measured", True, where),
                reported=lr.quality("reported", False, where),
            )
            table._derive(link)
            tripped = lr.get("tripped", bool, where)
            # As live: a link stays tripped until an SNR at floor + hysteresis is seen.
            link.tripped = link.below or (
                tripped
                and (link.snr is None or link.snr < table.snr_floor_db + table.hysteresis_db)
            )
            table._links[(a, b) if a < b else (b, a)] = link
        for node in table._nodes:
            cycle = None
            for t in table._nodes[node].transits:
                cycle = table._find_cycle(node, t.parent, now)
                if cycle is not None:
                    table._loops[node] = cycle
                    break
        return table

    # -- input checks -----------------------------------------------------------------------------

    def _check_transits(self, transits: Sequence[Transit]) -> list[Transit]:
        seen: set[bytes] = set()
        out = []
        for i, t in enumerate(transits):
            if not isinstance(t, Transit):
                raise RouteInputError(f"transits[{i}]: expected a Transit, got {type(t).__name__}")
            _check_eui(t.parent, f"transits[{i}].parent")
            _check_seq(t.path_sequence, f"transits[{i}].path_sequence")
            lt = t.path_lifetime_s
            if lt is not None and (isinstance(lt, bool) or math.isnan(lt) or lt < 0):
                raise RouteInputError(f"transits[{i}].path_lifetime_s: must be >= 0, got {lt!r}")
            if (
                isinstance(t.preference, bool)
                or not isinstance(t.preference, int)
                or t.preference < 0
            ):
                raise RouteInputError(f"transits[{i}].preference: must be an int >= 0")
            if t.parent in seen:
                raise RouteInputError(f"transits[{i}].parent: {t.parent.hex()} listed twice")
            seen.add(t.parent)
            out.append(t)
        return sorted(out, key=lambda t: t.preference)

    def _new_transit(self, t: Transit, now: float) -> _Transit:
        lifetime = self.default_lifetime_s if t.path_lifetime_s is None else t.path_lifetime_s
        return _Transit(t.parent, t.path_sequence, t.preference, now + lifetime)


# ---------------------------------------------------------------------------------------------
# helpers


def _candidate_order(
    c: tuple[float, int, tuple[int, ...], Path | None, _Link],
) -> tuple[float, int, tuple[int, ...]]:
    return c[0], c[1], c[2]


def _preference_order(
    c: tuple[float, int, tuple[int, ...], Path | None, _Link],
) -> tuple[int, tuple[int, ...], float]:
    return c[1], c[2], c[0]


def _check_eui(value: object, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != EUI64_LEN:
        raise RouteInputError(f"{what}: expected an 8-byte EUI-64, got {value!r}")


def _check_seq(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise RouteInputError(f"{what}: expected 0..255, got {value!r}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _hexes(hops: tuple[bytes, ...] | None) -> list[str] | None:
    return None if hops is None else [h.hex() for h in hops]


def _quality_dict(q: LinkQuality) -> dict[str, Any]:
    return {"etx": q.etx, "snr_db": q.snr_db}


def _eui_from(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * EUI64_LEN:
        raise SnapshotError(f"{where}: expected 16 hex digits, got {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SnapshotError(f"{where}: expected 16 hex digits, got {value!r}") from None


class _Reader:
    """Typed access to one JSON object of a snapshot, with errors that name the field."""

    def __init__(self, data: Any, where: str = "") -> None:
        if not isinstance(data, dict):
            name = where.rstrip(".") or "snapshot"
            raise SnapshotError(f"{name}: expected an object, got {type(data).__name__}")
        self.data: dict[str, Any] = data

    def get(self, key: str, kind: Any, where: str) -> Any:
        if key not in self.data:
            raise SnapshotError(f"{where}{key}: missing")
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise SnapshotError(f"{where}{key}: unexpected {value!r}")
        if not isinstance(value, kinds):
            raise SnapshotError(f"{where}{key}: unexpected {type(value).__name__} {value!r}")
        return value

    def eui(self, key: str, where: str) -> bytes:
        return _eui_from(self.get(key, str, where), f"{where}{key}")

    def seq(self, key: str, where: str) -> int:
        value = self.get(key, int, where)
        if not 0 <= value <= 255:
            raise SnapshotError(f"{where}{key}: expected 0..255, got {value}")
        return int(value)

    def number(self, key: str, where: str) -> float:
        value = float(self.get(key, (int, float), where))
        if not math.isfinite(value):
            raise SnapshotError(f"{where}{key}: not a finite number")
        return value

    def quality(self, key: str, measured: bool, where: str) -> LinkQuality | None:
        raw = self.get(key, (dict, type(None)), where)
        if raw is None:
            return None
        q = _Reader(raw, f"{where}{key}.")
        etx = q.get("etx", (int, float, type(None)), f"{where}{key}.")
        snr = q.get("snr_db", (int, float, type(None)), f"{where}{key}.")
        if etx is not None and not (math.isfinite(etx) and etx >= ETX_SCALE):
            raise SnapshotError(f"{where}{key}.etx: expected >= 128, got {etx!r}")
        if snr is not None and not math.isfinite(snr):
            raise SnapshotError(f"{where}{key}.snr_db: not a finite number")
        return LinkQuality(
            None if etx is None else float(etx), None if snr is None else float(snr), measured
        )
