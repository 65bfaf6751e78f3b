"""The gateway as RPL root of a non-storing DODAG (RFC 6550), sans-IO.

The root announces the DODAG with Trickle-paced DIOs (multicast to all RPL nodes), answers a
DIS, and turns every DAO into routing-table state: in non-storing mode only the root knows
routes, learnt from each node's Transit Information options (its parents, in preference
order). A DAO with the K flag gets a DAO-ACK. Messages in and out are ``rpl`` dataclasses with
IPv6 addresses; the stack does the framing, compression and source routing.

Nodes are named by EUI-64 in the routing table; their addresses are the mesh prefix plus the
IID of the EUI-64, so the two convert without a lookup table.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

from firmware_agent.mesh import ipv6, rpl
from firmware_agent.mesh.routes import DaoOutcome, RouteInputError, RoutingTable, Transit
from firmware_agent.mesh.trickle import Trickle, TrickleConfig

log = logging.getLogger(__name__)

#: DAO-ACK status values (RFC 6550 §6.5.1: 0 accepted; 128 and up: rejected).
DAO_ACK_ACCEPTED = 0
DAO_ACK_REJECTED = 128


@dataclass(frozen=True)
class RootConfig:
    prefix: bytes  # the mesh /64, 8 bytes
    instance_id: int = 1
    dtsn: int = 240  # RFC 6550 lollipop start; raised to ask every node for fresh DAOs
    version: int = 240
    trickle: TrickleConfig = field(default_factory=lambda: TrickleConfig(1.0, 12, 10))
    dao_lifetime_s: float = 7200.0
    lifetime_unit_s: int = 60
    min_hop_rank_increase: int = rpl.DEFAULT_MIN_HOP_RANK_INCREASE


@dataclass(frozen=True)
class Outgoing:
    """An RPL message the root wants sent to ``dst`` (a node's address or all-RPL-nodes)."""

    dst: bytes
    message: rpl.RplMessage


@dataclass
class RootStats:
    dios_sent: int = 0
    dis_received: int = 0
    daos_received: int = 0
    daos_rejected: int = 0
    dao_acks_sent: int = 0
    foreign_messages: int = 0  # for another instance or DODAG


class RplRoot:
    """The DODAG root: call :meth:`start`, then :meth:`poll` at :meth:`deadline`, and hand it
    every RPL message received; send what they return."""

    def __init__(
        self, eui64: bytes, config: RootConfig, routes: RoutingTable, rng: random.Random
    ) -> None:
        if len(config.prefix) != 8:
            raise ValueError(f"the mesh prefix is a /64 (8 bytes), got {len(config.prefix)}")
        self.eui64 = eui64
        self.config = config
        self.routes = routes
        self.address = ipv6.address_in_prefix(config.prefix, eui64)
        self.dtsn = config.dtsn
        self.stats = RootStats()
        self.trickle = Trickle(config.trickle, rng)
        self.last_outcome: DaoOutcome | None = None

    # --- addresses ---------------------------------------------------------------------------

    def address_of(self, eui64: bytes) -> bytes:
        return ipv6.address_in_prefix(self.config.prefix, eui64)

    def eui64_of(self, address: bytes) -> bytes | None:
        """The EUI-64 behind one of the mesh's addresses, or None for another prefix."""
        if address[:8] != self.config.prefix:
            return None
        return ipv6.eui64_from_address(address)

    # --- timers ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.trickle.start(now)

    def deadline(self) -> float:
        return self.trickle.deadline()

    def poll(self, now: float) -> list[Outgoing]:
        if self.trickle.poll(now):
            return [self._dio_to(rpl.ALL_RPL_NODES)]
        return []

    def request_daos(self, now: float) -> None:
        """Ask every node to send its DAOs again (a new DTSN in fast DIOs): after a restart
        without a saved table, or when the operator wants the routes refreshed."""
        self.dtsn = (self.dtsn + 1) & 0xFF
        self.trickle.inconsistent(now)

    # --- messages ----------------------------------------------------------------------------

    def dio(self) -> rpl.Dio:
        unit = self.config.lifetime_unit_s
        return rpl.Dio(
            instance_id=self.config.instance_id,
            version=self.config.version,
            rank=rpl.root_rank(self.config.min_hop_rank_increase),
            dodag_id=self.address,
            grounded=True,
            mop=rpl.MOP_NON_STORING,
            dtsn=self.dtsn,
            config=rpl.DodagConfig(
                dio_interval_doublings=self.config.trickle.doublings,
                dio_interval_min=max(0, round(math.log2(self.config.trickle.imin_s * 1000))),
                dio_redundancy=self.config.trickle.k,
                min_hop_rank_increase=self.config.min_hop_rank_increase,
                default_lifetime=min(0xFE, max(1, round(self.config.dao_lifetime_s / unit))),
                lifetime_unit=unit,
            ),
            prefixes=(
                rpl.PrefixInfo(
                    prefix=self.config.prefix + bytes(8),
                    prefix_length=64,
                    autonomous=True,
                    router_address=False,
                ),
            ),
        )

    def _dio_to(self, dst: bytes) -> Outgoing:
        self.stats.dios_sent += 1
        return Outgoing(dst, self.dio())

    def on_message(self, src: bytes, dst: bytes, msg: rpl.RplMessage, now: float) -> list[Outgoing]:
        if isinstance(msg, rpl.Dis):
            self.stats.dis_received += 1
            if ipv6.is_multicast(dst):
                self.trickle.inconsistent(now)  # a node is looking: announce fast again
                return []
            return [self._dio_to(src)]
        if isinstance(msg, rpl.Dio):
            if msg.dodag_id == self.address and msg.version == self.config.version:
                self.trickle.consistent()
            return []
        if isinstance(msg, rpl.Dao):
            return self._on_dao(src, msg, now)
        return []  # DAO-ACKs are for nodes

    def _on_dao(self, src: bytes, dao: rpl.Dao, now: float) -> list[Outgoing]:
        self.stats.daos_received += 1
        if dao.instance_id != self.config.instance_id or (
            dao.dodag_id is not None and dao.dodag_id != self.address
        ):
            self.stats.foreign_messages += 1
            return []
        status = DAO_ACK_ACCEPTED
        for targets, transits in dao.groups():
            for target in targets:
                node = self.eui64_of(target.prefix) if target.prefix_length == 128 else None
                if node is None:
                    log.warning(
                        "DAO from %s: target %s is not a node of this mesh",
                        ipv6.format_address(src),
                        ipv6.format_address(target.prefix),
                    )
                    status = DAO_ACK_REJECTED
                    continue
                try:
                    self.last_outcome = self.routes.update_dao(
                        node, dao.sequence, self._transits(transits), now
                    )
                except RouteInputError as exc:
                    log.warning("DAO from %s rejected: %s", ipv6.format_address(src), exc)
                    status = DAO_ACK_REJECTED
        if status != DAO_ACK_ACCEPTED:
            self.stats.daos_rejected += 1
        if not dao.expect_ack:
            return []
        self.stats.dao_acks_sent += 1
        ack = rpl.DaoAck(self.config.instance_id, dao.sequence, status, dao.dodag_id)
        return [Outgoing(src, ack)]

    def _transits(self, transits: tuple[rpl.Transit, ...]) -> list[Transit]:
        out: list[Transit] = []
        unit = self.config.lifetime_unit_s
        for preference, t in enumerate(transits):
            if t.parent is None:
                raise RouteInputError("a non-storing DAO transit must name the parent's address")
            parent = self.eui64 if t.parent == self.address else self.eui64_of(t.parent)
            if parent is None:
                raise RouteInputError(
                    f"transit parent {ipv6.format_address(t.parent)} is outside the mesh prefix"
                )
            if t.path_lifetime == rpl.INFINITE_LIFETIME:
                lifetime: float | None = math.inf
            else:
                lifetime = float(t.path_lifetime * unit)
            out.append(Transit(parent, t.path_sequence, lifetime, preference))
        return out
