"""An emulated meter's radio side: the node stack that sits on the RF medium (one hop for now).

It acks frames addressed to it, expands 6LoWPAN/UDP with the gateway's own codecs, hands
port-4059 datagrams to a DLMS server, and sends the answer back after a processing delay.
Its frames go out as a MAC sends them: CSMA-CA on the medium, then up to ``max_frame_retries``
retries while no ack comes back. The mesh issue adds joining, parent selection, RPL and
forwarding here.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from firmware_agent.mesh import frames, ipv6, lowpan
from hil.medium import DEFAULT_CSMA, CsmaConfig, Medium, TxOutcome, csma_transmit

log = logging.getLogger(__name__)

DLMS_PORT = 4059
Scheduler = Callable[[float, Callable[[], object]], object]


@dataclass
class NodeStats:
    frames_rx: int = 0
    frames_tx: int = 0
    tx_no_ack: int = 0
    cca_failures: int = 0
    rx_errors: int = 0
    requests: int = 0


class MeterNode:
    """A meter on the medium, answering DLMS over UDP/6LoWPAN/802.15.4."""

    def __init__(
        self,
        eui64: bytes,
        medium: Medium,
        dlms: Callable[[bytes], bytes | None],
        schedule: Scheduler,
        *,
        channel: int = 0,
        reply_delay_s: float = 0.01,
        max_frame_retries: int = 3,
        rng: random.Random | None = None,
        csma: CsmaConfig = DEFAULT_CSMA,
    ) -> None:
        self.eui64 = eui64
        self.medium = medium
        self.dlms = dlms
        self.schedule = schedule
        self.channel = channel
        self.reply_delay_s = reply_delay_s
        self.max_frame_retries = max_frame_retries
        # Backoffs are random; without an injected generator they follow from the address.
        self.rng = rng if rng is not None else random.Random(int.from_bytes(eui64, "big"))
        self.csma = csma
        self.stats = NodeStats()
        self.powered = True
        self._seq = 0
        self._last_seq: dict[bytes, int] = {}
        # One frame in flight at a time (with its retries), as a MAC does; the rest wait here.
        self._tx_queue: deque[tuple[bytes, Callable[[bool], None] | None]] = deque()
        self._tx_busy = False

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        if not self.powered or channel != self.channel:
            return None
        try:
            frame = frames.decode(psdu)
        except frames.FrameError:
            self.stats.rx_errors += 1
            return None
        if (
            frame.frame_type != frames.FrameType.DATA
            or frame.dst != self.eui64
            or frame.src is None
        ):
            return None
        self.stats.frames_rx += 1
        ack = frames.encode(frames.ack_for(frame)) if frame.ack_request else None
        if frame.seq is not None and self._last_seq.get(frame.src) == frame.seq:
            return ack  # a retry of a frame we already took: ack it again, do not act twice
        if frame.seq is not None:
            self._last_seq[frame.src] = frame.seq
        try:
            packet = lowpan.decompress(frame.payload, frame.src, frame.dst)
            datagram = ipv6.decode_udp(packet)
        except (lowpan.LowpanError, ipv6.PacketError) as exc:
            self.stats.rx_errors += 1
            log.debug("meter %s dropped a frame: %s", self.eui64.hex(":"), exc)
            return ack
        if datagram.dst_port == DLMS_PORT:
            self.stats.requests += 1
            reply = self.dlms(datagram.payload)
            if reply is not None:
                pan = frame.dst_pan if frame.dst_pan is not None else 0xFFFF
                answer = ipv6.UdpDatagram(DLMS_PORT, datagram.src_port, reply)
                self.schedule(
                    self.reply_delay_s, lambda: self.send_udp(frame.src or b"", pan, answer)
                )
        return ack

    def send_udp(
        self,
        dst_mac: bytes,
        pan_id: int,
        datagram: ipv6.UdpDatagram,
        on_result: Callable[[bool], None] | None = None,
    ) -> None:
        """Transmit a datagram with MAC retries; ``on_result(True)`` once the peer acked it,
        ``on_result(False)`` when every attempt went unacknowledged or the channel stayed busy."""
        if not self.powered:
            if on_result is not None:
                on_result(False)
            return
        src, dst = ipv6.link_local(self.eui64), ipv6.link_local(dst_mac)
        packet = ipv6.Ipv6Packet(src, dst, ipv6.UDP, ipv6.encode_udp(src, dst, datagram))
        self._seq = (self._seq + 1) & 0xFF
        psdu = frames.encode(
            frames.data_frame(
                self._seq, pan_id, dst_mac, self.eui64, lowpan.compress(packet, self.eui64, dst_mac)
            )
        )
        self._tx_queue.append((psdu, on_result))
        self._next_frame()

    def _next_frame(self) -> None:
        if self._tx_busy or not self._tx_queue:
            return
        psdu, on_result = self._tx_queue.popleft()
        self._tx_busy = True

        def finished(acked: bool) -> None:
            self._tx_busy = False
            if on_result is not None:
                on_result(acked)
            self._next_frame()

        self._send_frame(psdu, self.max_frame_retries, finished)

    def _send_frame(
        self, psdu: bytes, retries_left: int, on_result: Callable[[bool], None]
    ) -> None:
        def done(outcome: TxOutcome | None) -> None:
            if outcome is None:
                self.stats.cca_failures += 1
            elif outcome.ack_psdu is not None:
                on_result(True)
                return
            if retries_left > 0:
                self._send_frame(psdu, retries_left - 1, on_result)
                return
            self.stats.tx_no_ack += 1
            on_result(False)

        self.stats.frames_tx += 1
        csma_transmit(self.medium, self, psdu, self.channel, self.rng, done, self.csma)
