"""A meter's RPL node in a non-storing DODAG (RFC 6550, objective function MRHOF, RFC 6719),
sans-IO: messages, link outcomes and the time go in; messages to send come out.

Join: a node that has just powered up sends a multicast DIS after a random delay (again, more
and more slowly, until it hears a DIO) and adopts the DODAG of the first DIO it hears, taking
its address from the DIO's Prefix Information option (prefix + the IID of its EUI-64).

Parents: a neighbour is a candidate when its DIO is in our DODAG and version, its DAGRank is
below ours (RFC 6550 §8.2.1; any finite rank before we join, and after a detach only below our
old rank for a while), and the link is usable (:mod:`hil.node.linkcost`: RSL at or above the
cut-off, ETX at most ``max_link_etx``). A parent we already have stays a candidate when its
rank rises — we move down with it — up to MaxRankIncrease over the lowest rank we had
(§8.2.2.4), and when its link gets dear. Path cost through a candidate = its rank +
MinHopRankIncrease × ETX / 128; our rank = the cost through the preferred parent, the cheapest
candidate — but the current preferred parent is kept unless another is cheaper by more than
``parent_switch_threshold`` (RFC 6719's hysteresis), so ranks do not oscillate. Up to
``max_parents − 1`` alternates follow, cheapest first, each with a DAGRank below ours (the
current ones get the same hysteresis, so the DAO does not churn on noise).

A parent that stops acking (``parent_fail_limit`` frames in a row lost after all MAC retries;
for the last parent, over at least ``last_parent_patience_s``) is dropped until heard again.
A node left without candidates detaches: it poisons its
sub-DODAG with one INFINITE_RANK DIO and asks its best known upstream neighbours for fresh DIOs
(unicast DIS; see :meth:`RplNode._detach`). An upward packet that arrives from one of our own
parents is a loop: that parent is dropped.

DAO: to the root (the DODAG ID), K flag set, target = our address, one Transit Information
option per parent in preference order (Path Control subfields PC1.. as allowed by the DODAG's
Path Control Size, the parent's global address), a path sequence incremented whenever the parent
set changes, the configured path lifetime in the DODAG's lifetime units. Without a DAO-ACK it is
sent again with backoff; once acknowledged it is refreshed well before the lifetime runs out. A
new DTSN from the preferred parent asks for a new DAO (and is passed on to our children). DAOs
are paced — spread after joining, a new preferred parent reported at most every
``dao_min_interval_s``, new alternates alone every ``dao_alternates_interval_s`` — because every
DAO is a multi-hop exchange with its DAO-ACK, and a mesh whose parents churn under load would
otherwise spend its air time reporting that churn.

DIO: Trickle-paced (the DODAG Configuration's Imin, doublings and redundancy), reset when our
rank moves by more than the switch threshold and on a multicast DIS; a unicast DIS gets a
unicast DIO.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_agent.mesh import ipv6, rpl
from firmware_agent.mesh.neighbours import Neighbour
from firmware_agent.mesh.routes import lollipop_compare, lollipop_next
from firmware_agent.mesh.trickle import Trickle, TrickleConfig
from hil.node.linkcost import LinkCostConfig, LinkRecord, link_etx, link_rsl

INFINITE_RANK = rpl.INFINITE_RANK
#: RFC 6550 §7.2: lollipop counters start here after a reboot.
SEQUENCE_START = 240
DAO_ACK_REJECT = 128  # DAO-ACK status values from 128 up reject


class Via(enum.Enum):
    UP = "up"  # through the parents, preferred first
    BROADCAST = "broadcast"


@dataclass(frozen=True)
class RplSend:
    """A message to send: from ``src`` to ``dst``, to a neighbour's MAC or ``Via``."""

    src: bytes
    dst: bytes
    message: rpl.RplMessage
    next_hop: bytes | Via


@dataclass(frozen=True)
class RplConfig:
    max_parents: int = 3  # the preferred parent and up to two alternates
    #: Rank units. RFC 6719's PARENT_SWITCH_THRESHOLD is 192 in ETX × 128 units (ETX 1.5);
    #: a hop here costs MinHopRankIncrease × ETX / 128 = 2 × ETX × 128, so 1.5 ETX is 384.
    parent_switch_threshold: int = 384
    max_link_etx: int = 512  # ETX × 128 (RFC 6719 MAX_LINK_METRIC): worse links are not used
    parent_fail_limit: int = 3  # frames in a row lost after all retries: parent dropped ...
    #: ... but our last parent only when its losses have lasted this long (congestion loses
    #: frames in bursts; a dead parent keeps losing them).
    last_parent_patience_s: float = 60.0
    #: A dropped parent is a candidate again after a fresh DIO, or once it is heard again
    #: (any frame) at least this long after the drop.
    parent_holddown_s: float = 60.0
    #: The first DIS after power-up, uniform: a node listens for DIOs a while before asking
    #: (when a whole mesh powers up, the DIOs of the nodes that joined are on their way).
    dis_delay_s: tuple[float, float] = (1.0, 30.0)
    dis_interval_s: float = 30.0  # then again, doubling while no DIO is heard ...
    dis_interval_max_s: float = 600.0  # ... up to this
    dao_delay_s: float = 4.0  # changes are reported after U(delay/2, delay) (RFC 6550 DelayDAO)
    #: The first DAO after joining goes at U(dao_delay/2, this): a mesh powering up at once
    #: does not send every DAO in the same seconds.
    dao_join_spread_s: float = 120.0
    #: A new preferred parent is reported at most this often ...
    dao_min_interval_s: float = 30.0
    #: ... and a change of alternates alone waits this long after the last DAO.
    dao_alternates_interval_s: float = 300.0
    dao_ack_timeout_s: float = 15.0  # no DAO-ACK: send again, doubling ...
    dao_retry_max_s: float = 300.0  # ... up to this
    path_lifetime_s: float = 7200.0
    refresh_fraction: tuple[float, float] = (0.5, 0.6)  # refresh after this part of the lifetime
    poison_reply_interval_s: float = 10.0  # a detached node tells each sender at most this often
    #: A detached node asks this many of its best known upstream neighbours (unicast DIS) ...
    rejoin_solicit: int = 3
    #: ... and for this long rejoins only below its old rank (none of its descendants is).
    rejoin_strict_s: float = 120.0
    first_sequence: int = SEQUENCE_START  # DAO and path sequence after power-up
    links: LinkCostConfig = field(default_factory=LinkCostConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.max_parents <= 4:
            raise ValueError(f"max_parents must be 1..4 (Path Control has 4 subfields), got {self}")
        if self.parent_fail_limit < 1 or self.path_lifetime_s <= 0:
            raise ValueError(f"bad RPL node settings: {self}")


@dataclass(frozen=True)
class Dodag:
    """The DODAG a node has joined, as its DIOs describe it."""

    instance_id: int
    dodag_id: bytes
    version: int
    mop: int
    grounded: bool
    config: rpl.DodagConfig
    prefixes: tuple[rpl.PrefixInfo, ...]
    prefix: bytes | None  # the /64 (8 bytes) our global address is in


@dataclass
class RplNeighbour:
    """A neighbour whose DIOs we hear."""

    mac: bytes
    rank: int
    version: int
    dtsn: int
    heard_at: float
    link: LinkRecord
    dropped_at: float | None = None  # dropped as a parent (see RplNode._readmitted)


@dataclass(frozen=True)
class ParentChange:
    at: float
    old: bytes | None  # None: joined
    new: bytes | None  # None: detached
    rank: int
    reason: str


@dataclass
class RplStats:
    dis_sent: int = 0
    dis_received: int = 0
    dios_sent: int = 0
    dios_received: int = 0
    poison_sent: int = 0
    daos_sent: int = 0
    dao_retries: int = 0  # DAOs sent because the last one got no DAO-ACK in time
    daos_acked: int = 0
    dao_acks_rejected: int = 0
    joins: int = 0
    parent_changes: int = 0  # the preferred parent changed (joins and detaches not counted)
    parent_drops: int = 0  # parents dropped for lost frames or loops
    loops: int = 0
    detaches: int = 0
    foreign: int = 0  # DIOs of other DODAGs/instances/modes


def path_control(preference: int, path_control_size: int) -> int:
    """The Path Control bits for the parent at ``preference`` (0 = preferred): subfield PC1,
    PC2, ... (two bits each, most significant first), limited to the PCS + 1 leading bits the
    DODAG allows (RFC 6550 §6.7.6, §9.9). With PCS 0 only the preferred parent gets a bit; the
    order of the Transit options still ranks the rest."""
    bits = (0xC0 >> (2 * preference)) & 0xFF
    allowed = (0xFF << (7 - path_control_size)) & 0xFF
    return bits & allowed


def _trickle_config(config: rpl.DodagConfig) -> TrickleConfig:
    return TrickleConfig(
        imin_s=(1 << config.dio_interval_min) / 1000.0,
        doublings=config.dio_interval_doublings,
        k=config.dio_redundancy,
    )


class RplNode:
    """One node's RPL state. Call :meth:`start` at power-up, :meth:`poll` at :meth:`deadline`,
    and hand it every RPL message and unicast outcome; send what the calls return."""

    def __init__(
        self,
        eui64: bytes,
        config: RplConfig,
        rng: random.Random,
        links: Callable[[bytes], Neighbour | None],
    ) -> None:
        self.eui64 = eui64
        self.config = config
        self.rng = rng
        self._links = links  # the MAC's record of a neighbour: RSL in/out, last heard
        self.link_local = ipv6.link_local(eui64)
        self.address: bytes | None = None
        self.dodag: Dodag | None = None
        self.rank = INFINITE_RANK
        self.parents: list[bytes] = []  # MACs, preferred first
        self.neighbours: dict[bytes, RplNeighbour] = {}
        self.trickle: Trickle | None = None
        self.dtsn = config.first_sequence
        self.stats = RplStats()
        self.changes: deque[ParentChange] = deque(maxlen=64)
        self._fresh_after = -math.inf  # only DIOs heard after this make candidates
        self._rejoin_below = INFINITE_RANK  # after a detach: rejoin candidates rank below this
        self._rejoin_strict_until = -math.inf  # ... until then
        self._dis_at: float | None = None
        self._dis_interval = config.dis_interval_s
        self._dao_at: float | None = None
        self._dao_seq = config.first_sequence
        self._path_seq = config.first_sequence
        self._dao_pending: int | None = None  # sequence of the DAO awaiting its ack
        self._dao_backoff = config.dao_ack_timeout_s
        self._dao_sent_at = -math.inf
        #: The first DAO after joining is scheduled (spread) and not sent yet: changes until
        #: then ride on it instead of pulling it forward.
        self._dao_joining = False
        self._changed_at = -math.inf  # the parent set or the DTSN last asked for a DAO
        self._sent_parents: tuple[bytes, ...] | None = None
        self._poison_replies: dict[bytes, float] = {}
        self._lowest_rank = INFINITE_RANK  # since joining (MaxRankIncrease counts from it)

    # --- state ---------------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return bool(self.parents)

    @property
    def preferred_parent(self) -> bytes | None:
        return self.parents[0] if self.parents else None

    @property
    def dao_acked(self) -> bool:
        """The root acknowledged our latest DAO and nothing has changed since."""
        return (
            self.joined
            and self._dao_pending is None
            and self._sent_parents == tuple(self.parents)
            and self._changed_at <= self._dao_sent_at
        )

    def global_of(self, mac: bytes) -> bytes:
        """A neighbour's address in the DODAG's prefix (its link-local one before we have it)."""
        prefix = None if self.dodag is None else self.dodag.prefix
        return ipv6.link_local(mac) if prefix is None else ipv6.address_in_prefix(prefix, mac)

    def _min_hop(self) -> int:
        return (
            rpl.DEFAULT_MIN_HOP_RANK_INCREASE
            if self.dodag is None
            else (self.dodag.config.min_hop_rank_increase or rpl.DEFAULT_MIN_HOP_RANK_INCREASE)
        )

    # --- timers --------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Power-up: solicit DIOs after a random delay."""
        self._dis_interval = self.config.dis_interval_s
        self._dis_at = now + self.rng.uniform(*self.config.dis_delay_s)

    @property
    def dao_due(self) -> float | None:
        """When the next DAO (first, retry, refresh or change) goes; None: none planned."""
        return self._dao_at

    def deadline(self) -> float:
        """When :meth:`poll` must next be called (inf: nothing pending)."""
        at = math.inf
        if self._dis_at is not None:
            at = self._dis_at
        if self.trickle is not None:
            at = min(at, self.trickle.deadline())
        if self._dao_at is not None:
            at = min(at, self._dao_at)
        return at

    def poll(self, now: float) -> list[RplSend]:
        out: list[RplSend] = []
        if self._dis_at is not None and now >= self._dis_at:
            self.stats.dis_sent += 1
            out.append(RplSend(self.link_local, rpl.ALL_RPL_NODES, rpl.Dis(), Via.BROADCAST))
            self._dis_at = now + self._dis_interval
            self._dis_interval = min(2 * self._dis_interval, self.config.dis_interval_max_s)
        if self.trickle is not None and now >= self.trickle.deadline() and self.trickle.poll(now):
            self.stats.dios_sent += 1
            out.append(
                RplSend(self.link_local, rpl.ALL_RPL_NODES, self._dio(self.rank), Via.BROADCAST)
            )
        if self._dao_at is not None and now >= self._dao_at:
            out += self._send_dao(now)
        return out

    # --- messages in ---------------------------------------------------------------------------

    def on_dio(self, src_mac: bytes, dio: rpl.Dio, now: float) -> list[RplSend]:
        self.stats.dios_received += 1
        if dio.mop != rpl.MOP_NON_STORING:
            self.stats.foreign += 1
            return []
        dodag = self.dodag
        if dodag is None:
            if dio.rank >= INFINITE_RANK:
                return []
            self._adopt(dio)
        elif dio.instance_id != dodag.instance_id or dio.dodag_id != dodag.dodag_id:
            self.stats.foreign += 1
            return []
        elif dio.version != dodag.version:
            if lollipop_compare(dio.version, dodag.version) != 1:
                return []  # an older version: that neighbour has not moved on yet
            self._new_version(dio, now)
        nb = self.neighbours.get(src_mac)
        if nb is None:
            nb = RplNeighbour(
                src_mac, dio.rank, dio.version, dio.dtsn, now, LinkRecord(self.config.links.window)
            )
            self.neighbours[src_mac] = nb
        else:
            if src_mac == self.preferred_parent and dio.dtsn != nb.dtsn:
                self._dtsn_changed(now)
            nb.rank, nb.version, nb.dtsn, nb.heard_at = dio.rank, dio.version, dio.dtsn, now
        if self.trickle is not None and dio.rank < INFINITE_RANK:
            self.trickle.consistent()
        return self._select(now, "dio")

    def on_dis(self, src: bytes, src_mac: bytes, multicast: bool, now: float) -> list[RplSend]:
        self.stats.dis_received += 1
        if self.trickle is None:
            return []  # not joined: nothing to announce
        if multicast:
            self.trickle.inconsistent(now)
            return []
        self.stats.dios_sent += 1
        return [RplSend(self.link_local, src, self._dio(self.rank), src_mac)]

    def on_dao_ack(self, ack: rpl.DaoAck, now: float) -> list[RplSend]:
        if (
            self.dodag is None
            or ack.instance_id != self.dodag.instance_id
            or self._dao_pending is None
            or ack.sequence != self._dao_pending
        ):
            return []
        if ack.status >= DAO_ACK_REJECT:
            self.stats.dao_acks_rejected += 1
            return []  # the retry timer stays: we try again later
        self.stats.daos_acked += 1
        self._dao_pending = None
        self._dao_backoff = self.config.dao_ack_timeout_s
        if self._changed_at <= self._dao_sent_at:
            lo, hi = self.config.refresh_fraction
            self._dao_at = now + self._granted_lifetime_s() * self.rng.uniform(lo, hi)
        return []

    # --- link events ---------------------------------------------------------------------------

    def tx_result(self, mac: bytes, attempts: int, acked: bool, now: float) -> list[RplSend]:
        """The outcome of one unicast frame to ``mac`` (after all its MAC retries)."""
        nb = self.neighbours.get(mac)
        if nb is None:
            return []
        link = nb.link
        link.add(attempts, acked, now)
        if acked or mac not in self.parents:
            return []
        if link.consecutive_failures >= self.config.parent_fail_limit and (
            len(self.parents) > 1 or now - link.streak_since >= self.config.last_parent_patience_s
        ):
            return self._drop(nb, now, "parent stopped acking")
        return []  # a dearer link weighs in at the next selection (the next DIO)

    def loop_detected(self, mac: bytes, now: float) -> list[RplSend]:
        """An upward packet came from ``mac``, one of our parents: it routes through us."""
        self.stats.loops += 1
        nb = self.neighbours.get(mac)
        return [] if nb is None else self._drop(nb, now, "loop")

    def upward_without_route(self, src_mac: bytes, now: float) -> list[RplSend]:
        """A child sent us an upward packet while we have no parent: tell it (a unicast poison
        DIO), at most every ``poison_reply_interval_s``."""
        if self.dodag is None or self.parents:
            return []
        if now - self._poison_replies.get(src_mac, -math.inf) < self.config.poison_reply_interval_s:
            return []
        self._poison_replies[src_mac] = now
        self.stats.poison_sent += 1
        dio = self._dio(INFINITE_RANK)
        return [RplSend(self.link_local, ipv6.link_local(src_mac), dio, src_mac)]

    # --- internals -----------------------------------------------------------------------------

    def _adopt(self, dio: rpl.Dio) -> None:
        prefix = None
        for p in dio.prefixes:
            if p.autonomous and p.prefix_length == 64:
                prefix = p.prefix[:8]
                break
        self.dodag = Dodag(
            dio.instance_id,
            dio.dodag_id,
            dio.version,
            dio.mop,
            dio.grounded,
            dio.config or rpl.DodagConfig(),
            dio.prefixes,
            prefix,
        )
        self.address = None if prefix is None else ipv6.address_in_prefix(prefix, self.eui64)

    def _new_version(self, dio: rpl.Dio, now: float) -> None:
        """Global repair: the root started a new DODAG version; parents must be in it."""
        self._adopt(dio)
        if self.parents:
            self.changes.append(ParentChange(now, self.parents[0], None, INFINITE_RANK, "version"))
        self.parents = []
        self.rank = INFINITE_RANK
        self.trickle = None
        self._changed_at = now

    def _dtsn_changed(self, now: float) -> None:
        """The preferred parent asks for DAOs again: send ours, and ask our children."""
        self.dtsn = lollipop_next(self.dtsn)
        self._changed_at = now
        self._schedule_dao(now)
        if self.trickle is not None:
            self.trickle.inconsistent(now)

    def _select(self, now: float, reason: str) -> list[RplSend]:
        dodag = self.dodag
        if dodag is None:
            return []
        cfg = self.config
        min_hop = self._min_hop()
        joined = bool(self.parents)
        # New candidates must rank below us (RFC 6550 §8.2.1: our children rank above us); the
        # parents we have stay candidates when their rank rises (we move down with them), but
        # only up to MaxRankIncrease over the lowest rank we had (§8.2.2.4), which ends the
        # counting up of a loop that stale ranks let form.
        if joined:
            limit = self.rank
        elif now < self._rejoin_strict_until:
            limit = self._rejoin_below
        else:
            limit = INFINITE_RANK
        dag_limit = limit // min_hop  # ranks compare as DAGRanks (§3.5.1)
        rank_ceiling = INFINITE_RANK
        increase = dodag.config.max_rank_increase
        if joined and increase:
            rank_ceiling = min(INFINITE_RANK, self._lowest_rank + increase + 1)
        costs: dict[bytes, int] = {}
        for mac, nb in self.neighbours.items():
            if (
                (nb.rank // min_hop >= dag_limit and mac not in self.parents)
                or nb.version != dodag.version
                or nb.heard_at <= self._fresh_after
                or (nb.dropped_at is not None and not self._readmitted(nb))
            ):
                continue
            link = self._links(mac)
            etx = link_etx(None if link is None else link_rsl(link), nb.link, cfg.links, now)
            # A link dearer than max_link_etx takes no new parent; one we already have only
            # costs more (an alternate may win), since a dear path beats none. Parents go for
            # lost frames in a row, a poison DIO or an RSL below the cut-off.
            if etx is None or (etx > cfg.max_link_etx and mac not in self.parents):
                continue
            cost = nb.rank + (min_hop * etx + 64) // 128
            if cost < rank_ceiling:
                costs[mac] = cost
        if not costs:
            return self._detach(now, reason) if joined else []
        old_pref = self.parents[0] if joined else None
        pref = min(costs, key=lambda m: (costs[m], m))
        if old_pref in costs and costs[pref] + cfg.parent_switch_threshold >= costs[old_pref]:
            pref = old_pref  # hysteresis: not better by enough to switch
        rank = costs[pref]
        dag_rank = rank // min_hop
        old_alternates = self.parents[1:]

        def sticky(m: bytes) -> tuple[int, bytes]:
            bonus = cfg.parent_switch_threshold if m in old_alternates else 0
            return costs[m] - bonus, m

        alternates = sorted(
            (m for m in costs if m != pref and self.neighbours[m].rank // min_hop < dag_rank),
            key=sticky,
        )[: cfg.max_parents - 1]
        parents = [pref, *alternates]
        old_rank = self.rank
        self.rank = rank
        self._lowest_rank = rank if not joined else min(self._lowest_rank, rank)
        if parents != self.parents:
            self.parents = parents
            self._changed_at = now
            self._dao_backoff = cfg.dao_ack_timeout_s
            if not joined:
                self._schedule_dao(now, cfg.dao_join_spread_s)
                self._dao_joining = True
            elif pref != old_pref:
                self._schedule_dao(now, earliest=self._dao_sent_at + cfg.dao_min_interval_s)
            else:
                earliest = self._dao_sent_at + cfg.dao_alternates_interval_s
                self._schedule_dao(now, earliest=earliest)
        if not joined:
            self.stats.joins += 1
            self.changes.append(ParentChange(now, None, pref, rank, reason))
            self._dis_at = None
            self.trickle = Trickle(_trickle_config(dodag.config), self.rng)
            self.trickle.start(now)
        else:
            if pref != old_pref:
                self.stats.parent_changes += 1
                self.changes.append(ParentChange(now, old_pref, pref, rank, reason))
            if rank - old_rank > cfg.parent_switch_threshold:
                # Children must hear soon that we moved down; a new parent at about the same
                # rank, a better rank and the wiggles of ETX under load go at Trickle's pace.
                assert self.trickle is not None
                self.trickle.inconsistent(now)
        return []

    def _readmitted(self, nb: RplNeighbour) -> bool:
        """A dropped parent is back once it sent a fresh DIO, or was heard again (any frame)
        ``parent_holddown_s`` after the drop."""
        dropped = nb.dropped_at
        if dropped is None or nb.heard_at > dropped:
            return True
        link = self._links(nb.mac)
        return link is not None and link.last_heard >= dropped + self.config.parent_holddown_s

    def _drop(self, nb: RplNeighbour, now: float, reason: str) -> list[RplSend]:
        nb.dropped_at = now
        nb.link.clear()
        self.stats.parent_drops += 1
        return self._select(now, reason)

    def _detach(self, now: float, reason: str) -> list[RplSend]:
        """No candidate parent left: poison the sub-DODAG and look for a way back in.

        Our children may still route through us and advertise ranks built on ours, so only
        fresh DIOs count, and for ``rejoin_strict_s`` only from nodes ranked below the lowest
        rank we had (none of our descendants is). We ask the best of those we know with a
        unicast DIS (a multicast one would reset every neighbour's Trickle: a storm when many
        nodes detach at once); with none known, or no answer, a multicast DIS follows."""
        cfg = self.config
        self.stats.detaches += 1
        self.stats.poison_sent += 1
        self.changes.append(ParentChange(now, self.parents[0], None, INFINITE_RANK, reason))
        out = [RplSend(self.link_local, rpl.ALL_RPL_NODES, self._dio(INFINITE_RANK), Via.BROADCAST)]
        below = self._lowest_rank
        self.parents = []
        self.rank = INFINITE_RANK
        self.trickle = None
        self._dao_at = None
        self._dao_joining = False
        self._dao_pending = None
        self._fresh_after = now
        self._rejoin_below = below
        self._rejoin_strict_until = now + cfg.rejoin_strict_s
        upstream = sorted(
            (
                nb
                for nb in self.neighbours.values()
                if nb.rank < below and (nb.dropped_at is None or self._readmitted(nb))
            ),
            key=lambda nb: (nb.rank, nb.mac),
        )[: cfg.rejoin_solicit]
        for nb in upstream:
            self.stats.dis_sent += 1
            out.append(RplSend(self.link_local, ipv6.link_local(nb.mac), rpl.Dis(), nb.mac))
        self._dis_interval = cfg.dis_interval_s
        if upstream:
            self._dis_at = now + cfg.dis_interval_s
        else:
            self._dis_at = now + self.rng.uniform(*cfg.dis_delay_s)
        return out

    def _schedule_dao(self, now: float, spread: float = 0.0, earliest: float = -math.inf) -> None:
        """A DAO at U(DelayDAO/2, max(DelayDAO, spread)) from now, not before ``earliest``.
        While the first DAO after joining waits out its spread, nothing pulls it forward: a
        node changes parents several times in its first seconds (better DIOs keep arriving),
        and each change used to bring that DAO to within DelayDAO, so a mesh powering up
        sent every DAO at once anyway (1,000 meters: 1,029 DAOs in the first 20 s). The
        waiting DAO carries the parents of the moment it goes."""
        if self._dao_joining and self._dao_at is not None:
            return
        delay = self.config.dao_delay_s
        at = max(now + self.rng.uniform(delay / 2, max(delay, spread)), earliest)
        self._dao_at = at if self._dao_at is None else min(self._dao_at, at)

    def _lifetime_units(self) -> tuple[int, int]:
        """(Path Lifetime field, seconds per unit) for the configured lifetime."""
        unit = 60
        if self.dodag is not None and self.dodag.config.lifetime_unit > 0:
            unit = self.dodag.config.lifetime_unit
        return min(0xFE, max(1, round(self.config.path_lifetime_s / unit))), unit

    def _granted_lifetime_s(self) -> float:
        units, unit = self._lifetime_units()
        return float(units * unit)

    def _send_dao(self, now: float) -> list[RplSend]:
        dodag = self.dodag
        if dodag is None or not self.parents or self.address is None:
            self._dao_at = None
            self._dao_joining = False
            return []
        parents = tuple(self.parents)
        if parents != self._sent_parents:
            if self._sent_parents is not None:
                self._path_seq = lollipop_next(self._path_seq)
            self._sent_parents = parents
        if self._dao_pending is not None and self._changed_at <= self._dao_sent_at:
            self.stats.dao_retries += 1
        seq = self._dao_seq
        self._dao_seq = lollipop_next(seq)
        self._dao_pending = seq
        self._dao_sent_at = now
        self._dao_joining = False
        self._dao_at = now + self._dao_backoff
        self._dao_backoff = min(2 * self._dao_backoff, self.config.dao_retry_max_s)
        self.stats.daos_sent += 1
        units, _ = self._lifetime_units()
        pcs = dodag.config.path_control_size
        options: list[rpl.Target | rpl.Transit] = [rpl.Target(self.address)]
        options += [
            rpl.Transit(
                path_sequence=self._path_seq,
                path_lifetime=units,
                parent=self.global_of(p),
                path_control=path_control(i, pcs),
            )
            for i, p in enumerate(parents)
        ]
        dao = rpl.Dao(dodag.instance_id, seq, tuple(options), expect_ack=True)
        return [RplSend(self.address, dodag.dodag_id, dao, Via.UP)]

    def _dio(self, rank: int) -> rpl.Dio:
        dodag = self.dodag
        assert dodag is not None
        return rpl.Dio(
            instance_id=dodag.instance_id,
            version=dodag.version,
            rank=rank,
            dodag_id=dodag.dodag_id,
            grounded=dodag.grounded,
            mop=dodag.mop,
            dtsn=self.dtsn,
            config=dodag.config,
            prefixes=dodag.prefixes,
        )
