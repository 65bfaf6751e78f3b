"""The simulated RF medium of the emulated mesh: airtime, collisions and SINR-based packet errors.

Each transmission occupies its channel for its airtime (:mod:`hil.phy`). When it ends, every
attached node on that channel that kept listening the whole time (powered, not retuned, not
transmitting itself: radios are half duplex) gets the frame with probability 1 − PER(SINR, L).
The SINR is the frame's power at that receiver over the noise floor plus the power sum of every
other transmission that overlapped it on the channel and of the interferers that were on, so
collisions and jamming fall out of the same arithmetic. A receiver that answers with an ack
transmits it after a turnaround, as an ordinary frame that can collide or fade too; the sender
learns the outcome through ``on_done``.

Received power = TX power − log-distance path loss + link shadowing (fixed per link, seeded)
− link fade (scripted by scenarios) + a small per-frame jitter. Per-run randomness comes only
from the injected ``random.Random``, so a seed replays the same run on a virtual-time loop.

Time comes from a scheduler with the asyncio loop's interface (``time()``, ``call_at()``): a
real loop, the virtual-time loop of :mod:`hil.vtime`, or, by default, an
:class:`InstantScheduler` on which everything a call sets in motion completes before the call
returns (unit tests and synchronous callers).

Scale: every sender keeps the receivers whose mean power is above noise − 10 dB, strongest
first; a transmission only ever looks at those, so it costs O(neighbours), not O(nodes).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Protocol

from hil import phy


class RadioNode(Protocol):
    eui64: bytes

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        """Called for each frame this node hears; return an ack PSDU if this node acks it."""
        ...


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """The part of the asyncio loop interface the medium runs on."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle: ...


#: Free-space loss at the 1 m reference distance at 915 MHz (the plan's middle): ≈31.7 dB.
REFERENCE_LOSS_DB = phy.free_space_loss_db(phy.REFERENCE_DISTANCE_M, phy.REFERENCE_FREQUENCY_HZ)
#: Default spread of the fixed per-link shadowing and of the per-frame jitter.
SHADOWING_SIGMA_DB = 2.0
JITTER_SIGMA_DB = 0.5
#: Shadowing is a normal variate clipped at this many sigmas, so a link's reach is bounded.
SHADOWING_CLIP_SIGMAS = 3.0
#: A receiver is on a sender's neighbour list when its mean power is above noise − this margin.
NEIGHBOUR_MARGIN_DB = 10.0
#: SINR → LQI: 0 dB maps to 0, this SNR and above to 255.
LQI_FULL_SCALE_SNR_DB = 30.0
#: RX→TX turnaround before an ack goes out (802.15.4 SUN PHYs: 1 ms).
TURNAROUND_S = 1e-3
#: A frame whose PER is at least this is not drawn for: it is below sensitivity.
HOPELESS_PER = 1.0 - 1e-9
#: ... and one whose PER is at most this is not drawn for either: it gets through. Over a
#: simulated day (~10⁸ receiver evaluations at 1,000 meters) this moves < 0.1 frame.
SURE_PER = 1e-9
#: How far back ``channel_energy_dbm(at=...)`` can look.
HISTORY_S = 1.0
LOSS_CAUSES = ("per", "interference", "collision", "half_duplex", "below_sensitivity", "dark")

AirListener = Callable[[float, RadioNode, bytes, int], None]
"""A sniffer: (start time, sender, PSDU, channel) for every transmission, acks included."""


# --- time ----------------------------------------------------------------------------------------


class _Timer:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class InstantScheduler:
    """A scheduler with its own virtual clock on which the whole future happens at once:
    :meth:`run` executes every scheduled callback in time order, moving the clock to each.
    The medium runs it after every call that schedules something, so without an event loop a
    transmission, its ack and its outcome all complete inside the call that started them.
    Periodic work does not belong here: it would never let :meth:`run` return."""

    MAX_EVENTS_PER_RUN = 1_000_000

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._running = False

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> _Timer:
        timer = _Timer(callback, args)
        heapq.heappush(self._heap, (max(when, self._now), next(self._seq), timer))
        return timer

    def run(self) -> None:
        """Run everything scheduled (and everything that schedules) until nothing is left.
        A nested call returns at once: the outer one carries on in time order."""
        if self._running:
            return
        self._running = True
        try:
            for _ in range(self.MAX_EVENTS_PER_RUN):
                if not self._heap:
                    return
                when, _, timer = heapq.heappop(self._heap)
                if timer.cancelled:
                    continue
                self._now = when
                timer.callback(*timer.args)
            raise RuntimeError(
                f"instant scheduler: over {self.MAX_EVENTS_PER_RUN} events in one run "
                "(periodic work needs an event loop)"
            )
        finally:
            self._running = False


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reception:
    """One node hearing one frame."""

    node: RadioNode
    rssi_dbm: int
    lqi: int


@dataclass(frozen=True)
class TxOutcome:
    """What one transmission did: who heard it, and the ack (with its power at the sender)."""

    receptions: tuple[Reception, ...] = ()
    ack_psdu: bytes | None = None
    ack_rssi_dbm: int = 0
    ack_lqi: int = 0
    acked_by: RadioNode | None = field(default=None, compare=False)
    #: False when the sender was dark: nothing went on the air.
    sent: bool = True


@dataclass
class MediumCounters:
    frames: int = 0  # transmissions other than acks
    acks: int = 0  # ack transmissions
    deliveries: int = 0  # frames handed to a receiver's on_air_frame
    acks_received: int = 0  # acks that made it back to their sender
    receivers_evaluated: int = 0  # (transmission, listening neighbour) pairs looked at
    #: (transmission, listening neighbour) pairs skipped because the neighbour's address filter
    #: discards the frame whatever its SINR (a unicast frame for another node).
    filtered: int = 0
    dark_tx: int = 0  # transmit() by a dark node: nothing sent
    deferred: int = 0  # transmit() while the node's radio was busy: started when it was free
    losses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOSS_CAUSES, 0))
    airtime_s: dict[int, float] = field(default_factory=dict)


class Interferer:
    """A foreign transmitter (another system, a jammer) that is on or off; while on, its power
    adds to the noise on its channels wherever it reaches."""

    def __init__(
        self,
        medium: Medium,
        position: tuple[float, float],
        power_dbm: float,
        channels: frozenset[int],
        on: bool,
    ) -> None:
        self.medium = medium
        self.position = position
        self.power_dbm = power_dbm
        self.channels = channels
        self.on = on
        self._switches: list[tuple[float, bool]] = [(medium.time(), on)]

    def switch(self, on: bool, at: float | None = None) -> None:
        """Turn it on or off now, or at time ``at`` on the medium's clock."""
        self.medium._at(at, self._set, on)

    def _set(self, on: bool) -> None:
        if on == self.on:
            return
        self.on = on
        self._switches.append((self.medium.time(), on))
        if on:
            self.medium._interferer_on(self)

    def was_on(self, when: float) -> bool:
        state = self._switches[0][1]
        for t, on in self._switches:
            if t > when:
                break
            state = on
        return state


# --- internals -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Attachment:
    node: RadioNode
    key: int
    position: tuple[float, float]
    tx_power_dbm: float
    channel: int
    powered: bool = True
    listening_since: float = -math.inf  # last retune or power-on
    epoch: int = 0  # bumped at power-off: a frame in flight from a node that went dark is cut
    last_tx_start: float = -math.inf
    last_tx_end: float = -math.inf
    #: The radio is committed until then: its own frame on the air, or an ack it owes.
    busy_until: float = -math.inf
    #: Receiver key → "base" power: TX power − 10·n·log10(d) + shadowing, i.e. the mean received
    #: power before the channel's reference loss and the fade. Only entries ≥ noise − margin.
    link_base: dict[int, float] = field(default_factory=dict)
    #: The same receivers, strongest first (rebuilt, never mutated, so iteration is safe).
    links: list[tuple[_Attachment, float]] = field(default_factory=list)
    #: Receiver key → the base power in mW (10^(base/10)), for summing overlapping frames
    #: without a pow() per (frame, receiver, overlap); rebuilt with ``links``.
    link_mw: dict[int, float] = field(default_factory=dict)
    heard_by: set[int] = field(default_factory=set)
    #: The node's address filter (see :meth:`Medium.attach`), or None: every frame counts.
    frame_filter: Callable[[bytes], bool] | None = None


@dataclass(eq=False)
class _Tx:
    sender: _Attachment
    psdu: bytes
    channel: int
    start: float
    end: float
    epoch: int
    ack_requested: bool
    on_done: Callable[[TxOutcome], None] | None
    ack_for: _Tx | None = None
    overlaps: list[_Tx] = field(default_factory=list)
    interferers: list[Interferer] = field(default_factory=list)
    #: Who heard it, while its ack is still on the way.
    partial: TxOutcome | None = None
    outcome: TxOutcome | None = None


@dataclass
class _Fade:
    """Extra loss ramping linearly from ``db0`` at ``t0`` to ``db1`` at ``t1``."""

    t0: float
    db0: float
    t1: float
    db1: float

    def at(self, t: float) -> float:
        if t >= self.t1 or self.t1 <= self.t0:
            return self.db1
        if t <= self.t0:
            return self.db0
        return self.db0 + (self.db1 - self.db0) * (t - self.t0) / (self.t1 - self.t0)


def _mw(dbm: float) -> float:
    return math.pow(10.0, dbm / 10.0)


def _dbm(mw: float) -> float:
    return 10.0 * math.log10(mw)


_NORMAL = NormalDist()


class Medium:
    """The shared air of one simulated world."""

    def __init__(
        self,
        rng: random.Random,
        *,
        scheduler: Scheduler | None = None,
        phy_config: phy.PhyConfig | None = None,
        noise_floor_dbm: float | None = None,
        path_loss_exponent: float = 3.0,
        shadowing_sigma_db: float = SHADOWING_SIGMA_DB,
        jitter_sigma_db: float = JITTER_SIGMA_DB,
        neighbour_margin_db: float = NEIGHBOUR_MARGIN_DB,
        turnaround_s: float = TURNAROUND_S,
        ack_wait_s: float | None = None,
    ) -> None:
        self.rng = rng
        self.phy = phy_config or phy.PhyConfig()
        self._instant = scheduler is None
        self.scheduler: Scheduler = InstantScheduler() if scheduler is None else scheduler
        self.noise_floor = self.phy.noise_floor_dbm if noise_floor_dbm is None else noise_floor_dbm
        self.path_loss_exponent = path_loss_exponent
        self.shadowing_sigma_db = shadowing_sigma_db
        self.jitter_sigma_db = jitter_sigma_db
        self.neighbour_margin_db = neighbour_margin_db
        self.turnaround_s = turnaround_s
        #: How long a sender waits for an ack that never starts (turnaround + a 40-byte ack).
        self.ack_wait_s = (
            turnaround_s + self.phy.airtime_s(40) if ack_wait_s is None else ack_wait_s
        )
        self.counters = MediumCounters()
        # The per-link shadowing is a hash of the pair under this key: stable whatever order
        # links are looked at in, and drawn from the injected generator.
        self._shadow_key = rng.getrandbits(128).to_bytes(16, "big")
        self._ref_loss = [
            phy.free_space_loss_db(phy.REFERENCE_DISTANCE_M, phy.channel_frequency_hz(c))
            for c in range(phy.CHANNEL_COUNT)
        ]
        self._min_ref_loss = min(self._ref_loss)
        self._nodes: dict[int, _Attachment] = {}
        self._dirty: set[int] = set()
        self._gone: list[_Attachment] = []
        self._ongoing: dict[int, list[_Tx]] = {}
        self._recent: deque[_Tx] = deque()
        self._interferers: list[Interferer] = []
        self._fades: dict[tuple[int, int], _Fade] = {}
        self._sniffers: list[AirListener] = []
        self._hopeless_snr: dict[int, float] = {}
        self._sure_snr: dict[int, float] = {}
        self._noise_mw = _mw(self.noise_floor)
        #: 1 / the reference loss in mW, per channel: a link's power in mW is link_mw × this.
        self._inv_ref_mw = [_mw(-loss) for loss in self._ref_loss]

    # --- time ----------------------------------------------------------------------------------

    def time(self) -> float:
        return self.scheduler.time()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Schedule work on the medium's clock (nodes' MAC timers: backoffs, retries)."""
        handle = self.scheduler.call_at(self.time() + max(0.0, delay), callback, *args)
        self._kick()
        return handle

    def _kick(self) -> None:
        if self._instant:
            assert isinstance(self.scheduler, InstantScheduler)
            self.scheduler.run()

    def _at(self, at: float | None, fn: Callable[..., object], *args: Any) -> None:
        if at is None or at <= self.time():
            fn(*args)
        else:
            self.scheduler.call_at(at, fn, *args)
        self._kick()

    # --- membership ----------------------------------------------------------------------------

    def attach(
        self,
        node: RadioNode,
        position: tuple[float, float],
        tx_power_dbm: float = 14.0,
        channel: int = 0,
        frame_filter: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Put ``node`` on the air at ``position``; attaching it again moves it.

        ``frame_filter(psdu)`` is the node's address filter: False promises that the node's
        ``on_air_frame`` would ignore the frame (a unicast frame for someone else) whatever
        its RSSI, so the medium does not work out whether it would have been decoded there.
        Those receptions had no effect anyway; skipping them is most of the medium's work
        in a large mesh, where a unicast frame reaches ~30 neighbours and concerns one. The
        frame still counts as interference everywhere."""
        phy.channel_frequency_hz(channel)
        key = id(node)
        att = self._nodes.get(key)
        if att is None:
            att = _Attachment(node, key, (float(position[0]), float(position[1])), 0.0, channel)
            self._nodes[key] = att
        att.position = (float(position[0]), float(position[1]))
        att.tx_power_dbm = float(tx_power_dbm)
        att.channel = channel
        att.listening_since = self.time()
        att.frame_filter = frame_filter
        self._dirty.add(key)

    def move(self, node: RadioNode, position: tuple[float, float]) -> None:
        att = self._attachment(node)
        att.position = (float(position[0]), float(position[1]))
        self._dirty.add(att.key)

    def detach(self, node: RadioNode) -> None:
        att = self._nodes.pop(id(node), None)
        if att is not None:
            att.epoch += 1  # a frame it had in flight is cut off
            self._gone.append(att)
            self._dirty.add(att.key)

    def set_channel(self, node: RadioNode, channel: int) -> None:
        """A node retuned: it now hears (and is heard on) ``channel`` only; a frame already in
        flight on the new channel is not heard (it missed the preamble)."""
        phy.channel_frequency_hz(channel)
        att = self._attachment(node)
        if att.channel != channel:
            att.channel = channel
            att.listening_since = self.time()

    def set_tx_power(self, node: RadioNode, tx_power_dbm: float) -> None:
        att = self._attachment(node)
        if att.tx_power_dbm != tx_power_dbm:
            att.tx_power_dbm = float(tx_power_dbm)
            self._dirty.add(att.key)

    def power(self, node: RadioNode, on: bool, at: float | None = None) -> None:
        """Power a node on or off (an outage), now or at ``at``. A dark node neither hears nor
        sends; a frame it was sending is cut off."""
        self._at(at, self._set_power, self._attachment(node), on)

    def _set_power(self, att: _Attachment, on: bool) -> None:
        if on and not att.powered:
            att.powered = True
            att.listening_since = self.time()
        elif not on and att.powered:
            att.powered = False
            att.epoch += 1

    def is_powered(self, node: RadioNode) -> bool:
        return self._attachment(node).powered

    def is_busy(self, node: RadioNode) -> bool:
        """Whether the node's radio is sending (a frame, or an ack it owes) right now."""
        return self._attachment(node).busy_until > self.time()

    def position(self, node: RadioNode) -> tuple[float, float]:
        return self._attachment(node).position

    def channel(self, node: RadioNode) -> int:
        return self._attachment(node).channel

    def nodes(self) -> list[RadioNode]:
        return [a.node for a in self._nodes.values()]

    def _attachment(self, node: RadioNode) -> _Attachment:
        try:
            return self._nodes[id(node)]
        except KeyError:
            raise ValueError(f"node {node.eui64.hex()} is not attached to the medium") from None

    # --- environment ---------------------------------------------------------------------------

    def add_interferer(
        self,
        position: tuple[float, float],
        power_dbm: float,
        channels: Iterable[int],
        on: bool = True,
    ) -> Interferer:
        chans = frozenset(channels)
        for c in chans:
            phy.channel_frequency_hz(c)
        if not chans:
            raise ValueError("an interferer needs at least one channel")
        interferer = Interferer(
            self, (float(position[0]), float(position[1])), power_dbm, chans, on
        )
        self._interferers.append(interferer)
        if on:
            self._interferer_on(interferer)
        return interferer

    def _interferer_on(self, interferer: Interferer) -> None:
        for channel in interferer.channels:
            for tx in self._ongoing.get(channel, ()):
                if interferer not in tx.interferers:
                    tx.interferers.append(interferer)

    def set_link_fade(
        self,
        a: RadioNode,
        b: RadioNode,
        extra_loss_db: float,
        *,
        at: float | None = None,
        over_s: float = 0.0,
    ) -> None:
        """Extra loss on the link a–b (both directions): reached at ``at`` (default now), or
        ramped linearly to it over ``over_s`` from there. 0 dB ends the fade."""
        if extra_loss_db < 0 or over_s < 0:
            raise ValueError(f"a fade is a loss ≥ 0 dB over ≥ 0 s, got {extra_loss_db}, {over_s}")
        pair = self._pair(self._attachment(a), self._attachment(b))
        self._at(at, self._start_fade, pair, extra_loss_db, over_s)

    def _start_fade(self, pair: tuple[int, int], to_db: float, over_s: float) -> None:
        now = self.time()
        current = self._fades[pair].at(now) if pair in self._fades else 0.0
        self._fades[pair] = _Fade(now, current, now + over_s, to_db)

    def link_fade(self, a: RadioNode, b: RadioNode) -> float:
        """The fade on a–b now, dB."""
        return self._fade(self._attachment(a).key, self._attachment(b).key, self.time())

    def _fade(self, ka: int, kb: int, t: float) -> float:
        fade = self._fades.get((ka, kb) if ka < kb else (kb, ka))
        return 0.0 if fade is None else fade.at(t)

    @staticmethod
    def _pair(a: _Attachment, b: _Attachment) -> tuple[int, int]:
        return (a.key, b.key) if a.key < b.key else (b.key, a.key)

    def on_air(self, listener: AirListener) -> Callable[[], None]:
        """Call ``listener`` for every transmission; returns the function that stops it."""
        self._sniffers.append(listener)

        def remove() -> None:
            if listener in self._sniffers:
                self._sniffers.remove(listener)

        return remove

    # --- propagation ---------------------------------------------------------------------------

    def noise_floor_dbm(self, position: tuple[float, float], channel: int) -> float:
        """The thermal noise floor at a place on a channel (the same everywhere)."""
        return self.noise_floor

    def path_loss_db(
        self, a: tuple[float, float], b: tuple[float, float], channel: int | None = None
    ) -> float:
        """Mean path loss between two places (on ``channel``'s frequency; 915 MHz if None)."""
        ref = REFERENCE_LOSS_DB if channel is None else self._ref_loss[channel]
        return ref + 10 * self.path_loss_exponent * math.log10(max(math.dist(a, b), 1.0))

    def shadowing_db(self, a: RadioNode, b: RadioNode) -> float:
        """The fixed shadowing of the link a–b (the same both ways)."""
        return self._shadowing(a.eui64, b.eui64)

    def _shadowing(self, ea: bytes, eb: bytes) -> float:
        if self.shadowing_sigma_db == 0:
            return 0.0
        lo, hi = (ea, eb) if ea <= eb else (eb, ea)
        digest = hashlib.blake2b(lo + b"|" + hi, digest_size=8, key=self._shadow_key).digest()
        u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
        z = max(-SHADOWING_CLIP_SIGMAS, min(SHADOWING_CLIP_SIGMAS, _NORMAL.inv_cdf(u)))
        return z * self.shadowing_sigma_db

    def link_budget(self, a: RadioNode, b: RadioNode, channel: int) -> float:
        """Ground truth: the mean power (dBm) of a's frames at b on ``channel`` now."""
        ta, tb = self._attachment(a), self._attachment(b)
        return (
            ta.tx_power_dbm
            - self.path_loss_db(ta.position, tb.position, channel)
            + self._shadowing(a.eui64, b.eui64)
            - self._fade(ta.key, tb.key, self.time())
        )

    def snr_truth(self, a: RadioNode, b: RadioNode, channel: int) -> float:
        """Ground truth: a's mean power at b over the noise floor at b, dB."""
        return self.link_budget(a, b, channel) - self.noise_floor_dbm(self.position(b), channel)

    def neighbours(self, node: RadioNode) -> list[RadioNode]:
        """The receivers of ``node``'s frames whose mean power is above noise − margin,
        strongest first: all a transmission of it ever looks at."""
        self._refresh()
        return [rx.node for rx, _ in self._attachment(node).links]

    def channel_energy_dbm(
        self, position: tuple[float, float], channel: int, at: float | None = None
    ) -> float:
        """What an energy detector at a place would read: noise + interferers + transmissions
        on the air on ``channel`` (at time ``at``, default now, up to a second back)."""
        when = self._when(at)
        total = _mw(self.noise_floor_dbm(position, channel))
        total += self._interference_mw(position, channel, when)
        for tx in self._on_air(channel, when):
            s = tx.sender
            total += _mw(s.tx_power_dbm - self.path_loss_db(s.position, position, channel))
        return _dbm(total)

    def node_energy_dbm(self, node: RadioNode, channel: int, at: float | None = None) -> float:
        """What ``node``'s own energy detector reads (its CCA and RSSI samples): as
        :meth:`channel_energy_dbm`, with each sender's shadowing and fade to this node, and
        without the node's own transmission."""
        self._refresh()
        att = self._attachment(node)
        when = self._when(at)
        ref = self._ref_loss[channel]
        total = _mw(self.noise_floor_dbm(att.position, channel))
        total += self._interference_mw(att.position, channel, when)
        for tx in self._on_air(channel, when):
            base = tx.sender.link_base.get(att.key)
            if base is not None and tx.sender is not att:
                total += _mw(base - ref - self._fade(tx.sender.key, att.key, when))
        return _dbm(total)

    def _when(self, at: float | None) -> float:
        now = self.time()
        if at is None:
            return now
        if at > now + 1e-9:
            raise ValueError(f"channel energy at {at}: the medium cannot see past now ({now})")
        if at < now - HISTORY_S:
            raise ValueError(f"channel energy at {at}: the medium keeps {HISTORY_S} s of history")
        return at

    def _on_air(self, channel: int, when: float) -> list[_Tx]:
        now = self.time()
        txs = list(self._ongoing.get(channel, ()))
        if when < now:
            txs += [t for t in self._recent if t.channel == channel]
        return [t for t in txs if t.start <= when < t.end]

    def _interference_mw(self, position: tuple[float, float], channel: int, when: float) -> float:
        now = self.time()
        total = 0.0
        for i in self._interferers:
            if channel in i.channels and (i.on if when >= now else i.was_on(when)):
                total += _mw(i.power_dbm - self.path_loss_db(i.position, position, channel))
        return total

    # --- neighbour lists -----------------------------------------------------------------------

    def _link_floor_base(self) -> float:
        """The least "base" power a listed link has (noise − margin at the lowest loss)."""
        return self.noise_floor - self.neighbour_margin_db + self._min_ref_loss

    def _reach_m(self, att: _Attachment) -> float:
        """Beyond this distance no shadowing lifts att's frames onto a neighbour list."""
        headroom = (
            att.tx_power_dbm + SHADOWING_CLIP_SIGMAS * self.shadowing_sigma_db
        ) - self._link_floor_base()
        return float(10 ** (headroom / (10 * self.path_loss_exponent)))

    def _refresh(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        gone, self._gone = self._gone, []
        nodes = list(self._nodes.values())
        reach = {att.key: self._reach_m(att) for att in nodes}
        if len(dirty) * 4 >= len(nodes):
            for att in nodes:
                att.link_base, att.heard_by = {}, set()
            for i, a in enumerate(nodes):
                ra, (ax, ay) = reach[a.key], a.position
                for b in nodes[i + 1 :]:
                    r = max(ra, reach[b.key])
                    bx, by = b.position
                    if (ax - bx) ** 2 + (ay - by) ** 2 < r * r:
                        self._consider(a, b)
            touched = nodes
        else:
            relist: dict[int, _Attachment] = {}
            changed = [self._nodes[k] for k in dirty if k in self._nodes]
            for att in changed + gone:
                for sender_key in att.heard_by:
                    sender = self._nodes.get(sender_key)
                    if sender is not None:
                        sender.link_base.pop(att.key, None)
                        relist[sender_key] = sender
                for rx_key in att.link_base:
                    rx = self._nodes.get(rx_key)
                    if rx is not None:
                        rx.heard_by.discard(att.key)
                att.link_base, att.heard_by = {}, set()
            for a in changed:
                relist[a.key] = a
                for b in nodes:
                    if b is a or (b.key in dirty and b.key < a.key):
                        continue  # the pair of two changed nodes is done once
                    r = max(reach[a.key], reach[b.key])
                    if math.dist(a.position, b.position) < r and self._consider(a, b):
                        relist[b.key] = b
            touched = list(relist.values())
        for att in touched:
            att.links = sorted(
                ((self._nodes[k], base) for k, base in att.link_base.items()),
                key=lambda item: -item[1],
            )
            att.link_mw = {k: _mw(base) for k, base in att.link_base.items()}

    def _consider(self, a: _Attachment, b: _Attachment) -> bool:
        """Put a→b and b→a on the lists if they qualify; True if either did."""
        loss = (
            10 * self.path_loss_exponent * math.log10(max(math.dist(a.position, b.position), 1.0))
        )
        shadow = self._shadowing(a.node.eui64, b.node.eui64)
        floor = self._link_floor_base()
        listed = False
        for tx, rx in ((a, b), (b, a)):
            base = tx.tx_power_dbm - loss + shadow
            if base >= floor:
                tx.link_base[rx.key] = base
                rx.heard_by.add(tx.key)
                listed = True
        return listed

    # --- transmission --------------------------------------------------------------------------

    def transmit(
        self,
        sender: RadioNode,
        psdu: bytes,
        channel: int,
        on_done: Callable[[TxOutcome], None] | None = None,
        *,
        ack_request: bool | None = None,
    ) -> bytes | None:
        """Put ``psdu`` (FCS included) on ``channel`` now, or, if the node's radio is still
        busy (its previous frame, an ack it owes), as soon as it is free: a radio sends one
        frame at a time. ``on_done`` is called once with the outcome: right after the frame
        ends, or, when it requests an ack (the frame control's AR bit unless ``ack_request``
        says otherwise), once the ack arrived or the wait for it ran out. Returns the ack PSDU
        when the outcome is already known on return (always on the default
        :class:`InstantScheduler`), else None."""
        att = self._attachment(sender)
        phy.channel_frequency_hz(channel)
        if not psdu:
            raise ValueError("cannot transmit an empty PSDU")
        if ack_request is None:
            ack_request = len(psdu) >= 2 and bool(psdu[0] & 0x20)
        self._refresh()
        tx = self._begin(att, psdu, channel, ack_request, on_done)
        self._kick()
        return tx.outcome.ack_psdu if tx is not None and tx.outcome is not None else None

    def _begin(
        self,
        att: _Attachment,
        psdu: bytes,
        channel: int,
        ack_request: bool,
        on_done: Callable[[TxOutcome], None] | None,
    ) -> _Tx | None:
        now = self.time()
        if not att.powered:
            self.counters.dark_tx += 1
            dark = _Tx(att, psdu, channel, now, now, att.epoch, False, on_done)
            self.scheduler.call_at(now, self._finish, dark, TxOutcome(sent=False))
            return None
        if att.busy_until > now:
            self.counters.deferred += 1
            self.scheduler.call_at(
                att.busy_until, self._begin, att, psdu, channel, ack_request, on_done
            )
            return None
        return self._start(att, psdu, channel, ack_request, on_done)

    def _start(
        self,
        att: _Attachment,
        psdu: bytes,
        channel: int,
        ack_request: bool,
        on_done: Callable[[TxOutcome], None] | None,
        ack_for: _Tx | None = None,
    ) -> _Tx:
        now = self.time()
        airtime = self.phy.airtime_s(len(psdu))
        tx = _Tx(att, psdu, channel, now, now + airtime, att.epoch, ack_request, on_done, ack_for)
        att.last_tx_start, att.last_tx_end = now, now + airtime
        att.busy_until = max(att.busy_until, now + airtime)
        ongoing = self._ongoing.setdefault(channel, [])
        for other in ongoing:
            other.overlaps.append(tx)
            tx.overlaps.append(other)
        ongoing.append(tx)
        tx.interferers = [i for i in self._interferers if i.on and channel in i.channels]
        if ack_for is None:
            self.counters.frames += 1
        else:
            self.counters.acks += 1
        airtimes = self.counters.airtime_s
        airtimes[channel] = airtimes.get(channel, 0.0) + airtime
        for listener in list(self._sniffers):
            listener(now, att.node, psdu, channel)
        self.scheduler.call_at(tx.end, self._end, tx)
        return tx

    def _end(self, tx: _Tx) -> None:
        self._refresh()  # nobody detached or moved meanwhile is heard on a stale list
        self._ongoing[tx.channel].remove(tx)
        now = self.time()
        self._recent.append(tx)
        while self._recent and self._recent[0].end < now - HISTORY_S:
            self._recent.popleft()
        if tx.ack_for is not None:
            self._end_ack(tx)
            return
        cut = tx.sender.epoch != tx.epoch
        counters = self.counters
        receptions: list[Reception] = []
        acker: tuple[_Attachment, bytes] | None = None
        # Links are sorted strongest first: past this one, no jitter lifts a frame of this
        # length out of hopelessness, so nobody further on is even looked at.
        audible = (
            self.noise_floor
            + self._hopeless(len(tx.psdu))
            - 4 * self.jitter_sigma_db
            + self._ref_loss[tx.channel]
        )
        for rx, base in tx.sender.links:
            if base < audible:
                break
            if rx.channel != tx.channel or rx.listening_since > tx.start:
                continue
            wanted = rx.frame_filter
            if wanted is not None and not wanted(tx.psdu):
                counters.filtered += 1
                continue
            heard = self._receive(tx, rx, base, cut)
            if heard is None:
                continue
            rssi, lqi = heard
            receptions.append(Reception(rx.node, rssi, lqi))
            self.counters.deliveries += 1
            reply = rx.node.on_air_frame(tx.psdu, rssi, lqi, tx.channel)
            if reply is not None and tx.ack_requested and acker is None:
                acker = (rx, reply)
        outcome = TxOutcome(tuple(receptions), sent=not cut)
        if not tx.ack_requested or cut:
            self._finish(tx, outcome)
        elif acker is not None:
            tx.partial = outcome  # the ack's end completes it
            rx, reply = acker
            ack_end = now + self.turnaround_s + self.phy.airtime_s(len(reply))
            rx.busy_until = max(rx.busy_until, ack_end)
            self.scheduler.call_at(now + self.turnaround_s, self._send_ack, tx, rx, reply)
        else:
            self.scheduler.call_at(tx.end + self.ack_wait_s, self._finish, tx, outcome)

    def _send_ack(self, tx: _Tx, acker: _Attachment, ack_psdu: bytes) -> None:
        if not acker.powered or acker.key not in self._nodes:
            self._finish_at(tx, tx.partial or TxOutcome(), tx.end + self.ack_wait_s)
            return
        self._start(acker, ack_psdu, tx.channel, False, None, ack_for=tx)

    def _end_ack(self, ack: _Tx) -> None:
        original = ack.ack_for
        assert original is not None
        provisional = original.partial or TxOutcome()
        sender = original.sender
        base = ack.sender.link_base.get(sender.key)
        heard = None
        if base is not None and sender.key in self._nodes:
            heard = self._receive(ack, sender, base, ack.sender.epoch != ack.epoch)
        if heard is None:
            self._finish_at(original, provisional, original.end + self.ack_wait_s)
            return
        self.counters.acks_received += 1
        rssi, lqi = heard
        outcome = TxOutcome(provisional.receptions, ack.psdu, rssi, lqi, ack.sender.node)
        self._finish(original, outcome)

    def _finish_at(self, tx: _Tx, outcome: TxOutcome, when: float) -> None:
        if when > self.time():
            self.scheduler.call_at(when, self._finish, tx, outcome)
        else:
            self._finish(tx, outcome)

    def _finish(self, tx: _Tx, outcome: TxOutcome) -> None:
        tx.outcome = outcome
        if tx.on_done is not None:
            tx.on_done(outcome)

    def _hopeless(self, psdu_bytes: int) -> float:
        snr = self._hopeless_snr.get(psdu_bytes)
        if snr is None:
            try:
                snr = self.phy.sinr_for_per(HOPELESS_PER, psdu_bytes)
            except ValueError:  # so short that even coin-flip bits leave it a chance
                snr = -math.inf
            self._hopeless_snr[psdu_bytes] = snr
        return snr

    def _sure(self, psdu_bytes: int) -> float:
        snr = self._sure_snr.get(psdu_bytes)
        if snr is None:
            snr = self.phy.sinr_for_per(SURE_PER, psdu_bytes) if psdu_bytes > 0 else -math.inf
            self._sure_snr[psdu_bytes] = snr
        return snr

    def _receive(self, tx: _Tx, rx: _Attachment, base: float, cut: bool) -> tuple[int, int] | None:
        """Whether ``rx`` decodes ``tx`` (RSSI, LQI), counting the cause when it does not."""
        counters = self.counters
        counters.receivers_evaluated += 1
        if not rx.powered or cut:
            counters.losses["dark"] += 1
            return None
        if rx.last_tx_start < tx.end and rx.last_tx_end > tx.start:
            counters.losses["half_duplex"] += 1
            return None
        channel = tx.channel
        power = base - self._ref_loss[channel] + self.rng.gauss(0.0, self.jitter_sigma_db)
        fades = self._fades
        if fades:
            power -= self._fade(tx.sender.key, rx.key, tx.end)
        noise = self.noise_floor
        length = len(tx.psdu)
        snr = power - noise
        hopeless = self._hopeless_snr.get(length)
        if snr < (self._hopeless(length) if hopeless is None else hopeless):
            counters.losses["below_sensitivity"] += 1
            return None
        sure = self._sure_snr.get(length)
        if sure is None:
            sure = self._sure(length)
        if not tx.interferers and not tx.overlaps:  # the common case: noise only
            sinr = snr
            # Far above the cliff the PER is below SURE_PER: no draw, the frame gets through.
            if snr < sure and self.rng.random() < self.phy.per(snr, length):
                counters.losses["per"] += 1
                return None
        else:
            noise_mw = self._noise_mw
            foreign_mw = 0.0
            for i in tx.interferers:
                loss = self.path_loss_db(i.position, rx.position, channel)
                foreign_mw += _mw(i.power_dbm - loss)
            rx_key = rx.key
            overlap_mw = 0.0
            if fades:
                for other in tx.overlaps:
                    other_base = other.sender.link_base.get(rx_key)
                    if other_base is not None:
                        fade = self._fade(other.sender.key, rx_key, tx.end)
                        overlap_mw += _mw(other_base - self._ref_loss[channel] - fade)
            else:
                # link_mw holds 10^(base/10): a lookup and a sum per overlap, no pow().
                for other in tx.overlaps:
                    other_mw = other.sender.link_mw.get(rx_key)
                    if other_mw is not None:
                        overlap_mw += other_mw
                overlap_mw *= self._inv_ref_mw[channel]
            sinr = power - _dbm(noise_mw + foreign_mw + overlap_mw)
            if sinr >= sure:
                pass  # PER below SURE_PER even with the overlaps: no draw
            else:
                draw = self.rng.random()
                if draw < self.phy.per(sinr, length):
                    # One draw, three thresholds: lost anyway, lost to the interferers, or
                    # lost to the frames that overlapped it.
                    if snr < sure and draw < self.phy.per(snr, length):
                        counters.losses["per"] += 1
                    elif foreign_mw and draw < self.phy.per(
                        power - _dbm(noise_mw + foreign_mw), length
                    ):
                        counters.losses["interference"] += 1
                    else:
                        counters.losses["collision"] += 1
                    return None
        rssi = max(-128, min(127, round(power)))
        lqi = max(0, min(255, round(sinr * 255 / LQI_FULL_SCALE_SNR_DB)))
        return rssi, lqi


# --- channel access (the nodes' side) -------------------------------------------------------------


@dataclass(frozen=True)
class CsmaConfig:
    """Unslotted CSMA-CA (802.15.4-2015 §6.2.5.1) with SUN FSK timing."""

    min_be: int = 3
    max_be: int = 5
    max_backoffs: int = 4
    #: aUnitBackoffPeriod = aTurnaroundTime (1 ms for SUN PHYs) + CCA (8 symbols at 50 kHz).
    unit_backoff_s: float = 1.16e-3
    #: Energy at the node above this means the channel is busy. 802.15.4 allows at most
    #: 10 dB above the receiver's sensitivity; with the −105 dBm of :class:`phy.PhyConfig`
    #: that is −95 dBm, which also lets meters a few hundred metres apart hear each other.
    cca_threshold_dbm: float = -95.0


DEFAULT_CSMA = CsmaConfig()


def csma_transmit(
    medium: Medium,
    node: RadioNode,
    psdu: bytes,
    channel: int,
    rng: random.Random,
    on_done: Callable[[TxOutcome | None], None],
    config: CsmaConfig = DEFAULT_CSMA,
) -> None:
    """Send as a node's MAC does: wait a random number of backoff periods, assess the channel
    (the medium's energy at the node), transmit if it is clear, else back off longer; after
    ``max_backoffs`` busy assessments give up with ``on_done(None)`` (a CCA failure)."""

    def backoff(attempts: int, exponent: int) -> None:
        medium.call_later(
            rng.randrange(1 << exponent) * config.unit_backoff_s, assess, attempts, exponent
        )

    def assess(attempts: int, exponent: int) -> None:
        busy = medium.is_busy(node)  # a radio that is sending cannot listen
        if not busy and medium.node_energy_dbm(node, channel) <= config.cca_threshold_dbm:
            medium.transmit(node, psdu, channel, on_done)
        elif attempts >= config.max_backoffs:
            on_done(None)
        else:
            backoff(attempts + 1, min(exponent + 1, config.max_be))

    backoff(0, config.min_be)
