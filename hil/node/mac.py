"""A node's 802.15.4 MAC on the simulated medium: acks, duplicate detection, CSMA and retries.

Receiving: a data frame for our EUI-64 (or broadcast 0xffff) in our PAN is handed up; one that
asks for an ack gets an Enh-Ack carrying the Wi-SUN RSL IE — our EWMA (1/8) of how strongly we
hear that peer, which it records as its "RSL out". A retry of a frame we already took (same
source, same sequence number) is acked again but not handed up twice. Everything else on the
air is dropped after a look at the first 15 bytes: most frames a node hears are for someone
else, and a 1,000-node day is mostly that.

Sending: one job (the frames of one packet, fragments included) at a time, in order. Each frame
goes out with CSMA-CA on the medium, then up to ``max_frame_retries`` retries (each backing off
longer) while no ack comes back. A failed frame ends its job. Per neighbour,
:class:`NeighbourTable` (the gateway's own module: RSL in EWMA, RSL out, ETX = attempts / acks
× 128) keeps the link metrics; every unicast frame's outcome is also reported to
``on_frame_result`` for the routing layer.

Power: :meth:`NodeMac.reset` (power off) forgets everything, and any callback from before it is
ignored.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from firmware_agent.mesh import frames
from firmware_agent.mesh.neighbours import Neighbour, NeighbourTable
from hil.medium import CsmaConfig, Medium, RadioNode, TxOutcome, csma_transmit
from hil.node.linkcost import link_rsl

log = logging.getLogger(__name__)

BROADCAST = b"\xff\xff"
BROADCAST_PAN = 0xFFFF


class TxResult(enum.Enum):
    DONE = "done"  # every frame acked (broadcast: sent)
    NO_ACK = "no_ack"  # a frame went unacknowledged after all retries
    CHANNEL_BUSY = "channel_busy"  # a frame never found the channel clear
    QUEUE_FULL = "queue_full"  # not accepted: too many packets waiting
    REFUSED = "refused"  # could not be framed (too large, bad addresses)
    DARK = "dark"  # the radio was off


#: Nodes assess the channel at −100 dBm, 5 dB over the PHY's sensitivity: a CCA that does not
#: hear a neighbour's frame (mesh links run at −90 to −103 dBm) leaves CSMA blind. macMaxBE 7
#: (802.15.4 allows up to 8) lets retries back off up to ~150 ms: a loaded mesh on one channel
#: lost a third fewer frames in a measured hour of random-200 than with 5.
NODE_CSMA = CsmaConfig(cca_threshold_dbm=-100.0, max_be=7)


@dataclass(frozen=True)
class MacConfig:
    pan_id: int = 0xABCD
    max_frame_retries: int = 3
    #: Packets that may wait for the radio; more are refused (TxResult.QUEUE_FULL).
    queue_limit: int = 16
    csma: CsmaConfig = NODE_CSMA


@dataclass
class MacStats:
    frames_rx: int = 0  # data frames for us (or broadcast) taken
    frames_tx: int = 0  # transmissions (first attempts and retries), acks not counted
    retries: int = 0  # transmissions that were retries
    acks_tx: int = 0
    tx_no_ack: int = 0  # frames given up after all retries
    cca_failures: int = 0  # channel assessments that found it busy to the end
    rx_duplicates: int = 0
    rx_errors: int = 0  # PSDUs addressed to us that did not decode
    queue_drops: int = 0


FrameResult = Callable[[bytes, int, bool], None]
"""(neighbour, transmissions, acked) after each unicast frame that went on the air."""
Deliver = Callable[[frames.Frame], None]


@dataclass(eq=False)
class _Job:
    dst: bytes
    payloads: list[bytes]
    on_done: Callable[[TxResult], None] | None
    index: int = 0


@dataclass
class _Attempt:
    job: _Job
    psdu: bytes
    broadcast: bool
    retries_left: int
    sent: int = 0  # transmissions so far
    generation: int = 0


@dataclass
class _State:
    """Everything a power cycle forgets."""

    queue: deque[_Job] = field(default_factory=deque)
    busy: bool = False
    quiet_until: float = 0.0
    last_seq: dict[bytes, int] = field(default_factory=dict)


class NodeMac:
    """The MAC of ``node`` (the RadioNode the medium knows) on ``channel``."""

    def __init__(
        self,
        node: RadioNode,
        medium: Medium,
        rng: random.Random,
        deliver: Deliver,
        *,
        channel: int = 0,
        config: MacConfig | None = None,
        on_frame_result: FrameResult | None = None,
    ) -> None:
        self.node = node
        self.eui64 = node.eui64
        self.medium = medium
        self.rng = rng
        self.deliver = deliver
        self.channel = channel
        self.config = config or MacConfig()
        self.on_frame_result = on_frame_result
        self.stats = MacStats()
        self.links = NeighbourTable()
        self._reversed = self.eui64[::-1]  # as the address sits in a PSDU
        self._seq = rng.getrandbits(8)
        self._generation = 0
        self._state = _State()
        # A retry backs off longer (the first exponent grows by one per transmission, up to
        # macMaxBE): the ack that did not come was most often lost to a hidden node's frame,
        # and a neighbour's multi-fragment burst outlasts the first backoff window.
        csma = self.config.csma
        self._retry_csma = [
            replace(csma, min_be=min(csma.min_be + n, csma.max_be))
            for n in range(csma.max_be - csma.min_be + 1)
        ]

    def reset(self) -> None:
        """Power off: queue, link metrics and duplicate state are gone; pending callbacks die."""
        self._generation += 1
        self._state = _State()
        self.links = NeighbourTable()

    @property
    def queued(self) -> int:
        return len(self._state.queue)

    # --- receive -------------------------------------------------------------------------------

    def wants_frame(self, psdu: bytes) -> bool:
        """The address filter: False when this MAC ignores ``psdu`` whatever its RSSI (not a
        data frame, or for another address). The medium takes it as the node's frame filter
        (``Medium.attach(frame_filter=...)``) and skips receptions that could change nothing."""
        if len(psdu) < 5:
            return False
        fc = psdu[0] | psdu[1] << 8
        if fc & 7 != frames.FrameType.DATA:
            return False
        dst_mode = (fc >> 10) & 3
        # Where a destination address can sit: after frame control, sequence number, PAN id.
        if dst_mode == 3:
            return self._reversed in psdu[2:15]
        return dst_mode == 2 and BROADCAST in psdu[2:7]

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        """A frame heard on the air: the ack to send back, if any. Frames for us are handed to
        ``deliver`` (before this returns; anything sent in reply waits until the ack is out)."""
        if channel != self.channel or not self.wants_frame(psdu):
            return None
        try:
            frame = frames.decode(psdu)
        except frames.FrameError as exc:
            self.stats.rx_errors += 1
            log.debug("node %s: undecodable frame: %s", self.eui64.hex(), exc)
            return None
        src = frame.src
        if (
            frame.dst not in (self.eui64, BROADCAST)
            or src is None
            or len(src) != 8
            or frame.dst_pan not in (None, self.config.pan_id, BROADCAST_PAN)
        ):
            return None
        now = self.medium.time()
        state = self._state
        nb = self.links.heard(src, rssi_dbm, lqi, channel, now)
        if frame.header_ies:
            rsl = frames.find_rsl(frame)
            if rsl is not None:
                self.links.reported_rsl(src, rsl, now)
        ack: bytes | None = None
        if frame.ack_request and frame.dst == self.eui64:
            ack = frames.encode(frames.ack_for(frame, rsl_dbm=nb.rsl_in_dbm))
            self.stats.acks_tx += 1
            state.quiet_until = now + self.medium.turnaround_s + self.medium.phy.airtime_s(len(ack))
            if frame.seq is not None:
                if state.last_seq.get(src) == frame.seq:
                    self.stats.rx_duplicates += 1
                    return ack
                state.last_seq[src] = frame.seq
        self.stats.frames_rx += 1
        self.deliver(frame)
        return ack

    # --- send ----------------------------------------------------------------------------------

    def send(
        self,
        dst: bytes,
        payloads: list[bytes],
        on_done: Callable[[TxResult], None] | None = None,
        *,
        urgent: bool = False,
    ) -> None:
        """Queue the MAC payloads of one packet for ``dst`` (an EUI-64, or BROADCAST);
        ``urgent`` (a last gasp) goes next, behind only the packet already on the air."""
        state = self._state
        if len(state.queue) >= self.config.queue_limit and not urgent:
            self.stats.queue_drops += 1
            if on_done is not None:
                on_done(TxResult.QUEUE_FULL)
            return
        job = _Job(dst, payloads, on_done)
        if urgent:
            state.queue.insert(1 if state.busy and state.queue else 0, job)
        else:
            state.queue.append(job)
        if not state.busy:
            state.busy = True
            self._after_quiet(self._next_frame)

    def _after_quiet(self, fn: Callable[[int], None]) -> None:
        """Run ``fn`` once our own ack (if one is going out) has left the air."""
        delay = self._state.quiet_until - self.medium.time()
        self.medium.call_later(max(0.0, delay), fn, self._generation)

    def _next_frame(self, generation: int) -> None:
        if generation != self._generation:
            return
        state = self._state
        if not state.queue:
            state.busy = False
            return
        job = state.queue[0]
        if job.index >= len(job.payloads):  # an empty packet: nothing to send
            self._finish(job, TxResult.DONE)
            return
        broadcast = job.dst == BROADCAST
        self._seq = (self._seq + 1) & 0xFF
        psdu = frames.encode(
            frames.data_frame(
                self._seq,
                self.config.pan_id,
                job.dst,
                self.eui64,
                job.payloads[job.index],
                ack_request=not broadcast,
            )
        )
        retries = 0 if broadcast else self.config.max_frame_retries
        self._transmit(_Attempt(job, psdu, broadcast, retries, generation=generation))

    def _transmit(self, attempt: _Attempt) -> None:
        csma_transmit(
            self.medium,
            self.node,
            attempt.psdu,
            self.channel,
            self.rng,
            lambda outcome: self._attempt_done(attempt, outcome),
            self._retry_csma[min(attempt.sent, len(self._retry_csma) - 1)],
        )

    def _attempt_done(self, attempt: _Attempt, outcome: TxOutcome | None) -> None:
        if attempt.generation != self._generation:
            return
        job = attempt.job
        if outcome is None:  # channel access failure: no transmission
            self.stats.cca_failures += 1
            if attempt.retries_left > 0:
                attempt.retries_left -= 1
                self._transmit(attempt)
                return
            self._frame_failed(attempt, TxResult.CHANNEL_BUSY)
            return
        if not outcome.sent:
            self._frame_failed(attempt, TxResult.DARK)
            return
        self.stats.frames_tx += 1
        if attempt.sent:
            self.stats.retries += 1
        attempt.sent += 1
        if attempt.broadcast:
            self._frame_sent(job)
            return
        if outcome.ack_psdu is not None:
            self._on_ack(job.dst, outcome)
            self._report(job.dst, attempt.sent, True)
            self._frame_sent(job)
            return
        if attempt.retries_left > 0:
            attempt.retries_left -= 1
            self._transmit(attempt)
            return
        self.stats.tx_no_ack += 1
        self._frame_failed(attempt, TxResult.NO_ACK)

    def _on_ack(self, peer: bytes, outcome: TxOutcome) -> None:
        now = self.medium.time()
        self.links.heard(peer, outcome.ack_rssi_dbm, outcome.ack_lqi, self.channel, now)
        assert outcome.ack_psdu is not None
        try:
            rsl = frames.find_rsl(frames.decode(outcome.ack_psdu))
        except frames.FrameError:
            return
        if rsl is not None:
            self.links.reported_rsl(peer, rsl, now)

    def _report(self, dst: bytes, attempts: int, acked: bool) -> None:
        self.links.transmitted(dst, attempts, acked)
        if self.on_frame_result is not None:
            self.on_frame_result(dst, attempts, acked)

    def _frame_sent(self, job: _Job) -> None:
        job.index += 1
        if job.index < len(job.payloads):
            self._after_quiet(self._next_frame)
        else:
            self._finish(job, TxResult.DONE)

    def _frame_failed(self, attempt: _Attempt, result: TxResult) -> None:
        if attempt.sent and not attempt.broadcast:
            self._report(attempt.job.dst, attempt.sent, False)
        self._finish(attempt.job, result)

    def _finish(self, job: _Job, result: TxResult) -> None:
        generation = self._generation
        state = self._state
        state.queue.popleft()
        if job.on_done is not None:
            job.on_done(result)
        if generation == self._generation:
            self._after_quiet(self._next_frame)

    # --- link metrics --------------------------------------------------------------------------

    def neighbour(self, mac: bytes) -> Neighbour | None:
        """What the MAC knows of ``mac``: RSL in and out, ETX, last heard (None: never heard)."""
        return self.links.get(mac)

    def rsl(self, mac: bytes) -> float | None:
        """The level (dBm) the link to ``mac`` works at (see ``linkcost.link_rsl``)."""
        nb = self.links.get(mac)
        return None if nb is None else link_rsl(nb)
