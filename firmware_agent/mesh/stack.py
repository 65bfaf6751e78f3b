"""The gateway's mesh stack edge: drives a Transceiver, decodes what it hears, delivers UDP.

This is the I/O edge around the sans-IO codecs (frames, lowpan, ipv6) and the neighbour table.
Today it reaches one hop (meters that hear the gateway directly); the mesh issue adds RPL,
source routing and fragmentation behind the same ``send_udp`` / ``bind`` surface.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from drivers.reconnect import ReconnectingTransceiver, find_layer
from drivers.transceiver import RadioError, Transceiver, TxResult, TxStatus
from firmware_agent.clock import Clock
from firmware_agent.mesh import frames, ipv6, lowpan
from firmware_agent.mesh.neighbours import NeighbourTable

log = logging.getLogger(__name__)

UdpHandler = Callable[[bytes, ipv6.UdpDatagram], None]


@dataclass
class MeshStats:
    frames_rx: int = 0
    frames_tx: int = 0
    tx_no_ack: int = 0
    rx_dropped: int = 0
    rx_duplicates: int = 0
    datagrams_rx: int = 0
    rx_radio_errors: int = 0  # receive() failed: the radio was down (counted per failed call)
    tx_radio_errors: int = 0  # send_udp failed because the radio was down or refused the frame
    radio_outages: int = 0  # times the receive loop found the radio down and waited for it


class MeshStack:
    """One gateway radio, one PAN: unicast UDP to and from neighbours addressed by EUI-64."""

    def __init__(
        self,
        radio: Transceiver,
        hwaddr: bytes,
        clock: Clock,
        *,
        pan_id: int = 0xABCD,
        channel: int = 0,
        max_frame_retries: int = 3,
        radio_retry_s: float = 1.0,
    ) -> None:
        self.radio = radio
        self.hwaddr = hwaddr
        self.clock = clock
        self.pan_id = pan_id
        self.channel = channel
        self.max_frame_retries = max_frame_retries
        # How long the receive loop waits before asking a radio that cannot tell when it is
        # back (one with no ReconnectingTransceiver layer) again.
        self.radio_retry_s = radio_retry_s
        self.neighbours = NeighbourTable()
        self.stats = MeshStats()
        self._seq = 0
        self._last_seq: dict[bytes, int] = {}
        self._handlers: dict[int, UdpHandler] = {}
        self._tx_lock = asyncio.Lock()

    def bind(self, port: int, handler: UdpHandler) -> None:
        """Deliver UDP datagrams for ``port`` to ``handler(src_mac, datagram)``."""
        self._handlers[port] = handler

    async def send_udp(
        self, dst_mac: bytes, src_port: int, dst_port: int, payload: bytes
    ) -> TxResult:
        """Send one datagram to a neighbour, retrying the frame until it is acked."""
        src, dst = ipv6.link_local(self.hwaddr), ipv6.link_local(dst_mac)
        udp = ipv6.encode_udp(src, dst, ipv6.UdpDatagram(src_port, dst_port, payload))
        packet = ipv6.Ipv6Packet(src, dst, ipv6.UDP, udp)
        mac_payload = lowpan.compress(packet, self.hwaddr, dst_mac)
        async with self._tx_lock:
            self._seq = (self._seq + 1) & 0xFF
            psdu = frames.encode(
                frames.data_frame(self._seq, self.pan_id, dst_mac, self.hwaddr, mac_payload)
            )
            result = TxResult(TxStatus.FAILED)
            attempts = 0
            while attempts <= self.max_frame_retries:
                attempts += 1
                try:
                    result = await self.radio.transmit(psdu)
                except RadioError:
                    # Not retried here: while the radio reconnects every attempt would fail the
                    # same way, and the caller (a meter read) counts it as a failed read.
                    self.stats.tx_radio_errors += 1
                    raise
                self.stats.frames_tx += 1
                if result.status in (TxStatus.ACKED, TxStatus.SENT):
                    break
            else:
                self.stats.tx_no_ack += 1
            self.neighbours.transmitted(dst_mac, attempts, result.status == TxStatus.ACKED)
        return result

    async def run(self) -> None:
        """Receive frames until cancelled; nothing a neighbour sends can stop this loop, and a
        radio outage only pauses it. Ends (raising RadioError) only if the radio is closed."""
        down = False
        while True:
            try:
                rx = await self.radio.receive()
            except RadioError as exc:
                self.stats.rx_radio_errors += 1
                if not down:
                    down = True
                    self.stats.radio_outages += 1
                    log.warning("radio down, mesh receive paused: %s", exc)
                await self._wait_for_radio()
                continue
            if down:
                down = False
                log.info("radio back, mesh receiving again")
            if rx is None:
                continue
            self.stats.frames_rx += 1
            try:
                self._on_frame(rx.psdu, rx.rssi_dbm, rx.lqi, rx.channel)
            except (frames.FrameError, lowpan.LowpanError, ipv6.PacketError) as exc:
                self.stats.rx_dropped += 1
                log.warning("dropped frame: %s; hex=%s", exc, rx.psdu.hex())

    async def _wait_for_radio(self) -> None:
        """Wait until the radio may work again: a reconnecting radio says when it is back (and
        raises if it was closed instead); any other radio is asked again after a pause."""
        reconnecting = find_layer(self.radio, ReconnectingTransceiver)
        if reconnecting is not None:
            await reconnecting.wait_open()
        else:
            await asyncio.sleep(self.radio_retry_s)

    def _on_frame(self, psdu: bytes, rssi: int, lqi: int, channel: int) -> None:
        frame = frames.decode(psdu)
        if (
            frame.frame_type != frames.FrameType.DATA
            or frame.dst != self.hwaddr
            or frame.src is None
        ):
            return
        self.neighbours.heard(frame.src, rssi, lqi, channel, self.clock.now())
        if frame.seq is not None:
            if self._last_seq.get(frame.src) == frame.seq:
                self.stats.rx_duplicates += 1
                return
            self._last_seq[frame.src] = frame.seq
        packet = lowpan.decompress(frame.payload, frame.src, frame.dst)
        if packet.next_header != ipv6.UDP:
            return
        datagram = ipv6.decode_udp(packet)
        handler = self._handlers.get(datagram.dst_port)
        if handler is None:
            log.info("no listener on UDP port %d (from %s)", datagram.dst_port, frame.src.hex(":"))
            return
        self.stats.datagrams_rx += 1
        handler(frame.src, datagram)

    async def sample_noise(self) -> float:
        """Take one idle-RSSI sample on our channel into the noise-floor average."""
        dbm = await self.radio.sample_rssi()
        self.neighbours.noise_sample(self.channel, dbm)
        return dbm

    async def noise_sampler(self, interval_s: float) -> None:
        while True:
            try:
                await self.sample_noise()
            except RadioError as exc:
                log.warning("noise-floor sample failed: %s", exc)
            await asyncio.sleep(interval_s)


class MeshDatagramLink:
    """A request/response datagram link to one meter over the mesh (the collector's MeterLink)."""

    def __init__(
        self, stack: MeshStack, dst_mac: bytes, port: int = 4059, local_port: int | None = None
    ) -> None:
        self._stack = stack
        self._dst = dst_mac
        self._port = port
        self._local_port = local_port if local_port is not None else port
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()

    def deliver(self, datagram: ipv6.UdpDatagram) -> None:
        if datagram.src_port == self._port:
            self._replies.put_nowait(datagram.payload)

    async def request(self, frame: bytes, timeout: float) -> bytes:
        while not self._replies.empty():  # a late answer to an earlier, timed-out request
            self._replies.get_nowait()
        result = await self._stack.send_udp(self._dst, self._local_port, self._port, frame)
        if result.status not in (TxStatus.ACKED, TxStatus.SENT):
            raise TimeoutError(f"meter {self._dst.hex(':')} did not ack ({result.status.value})")
        return await asyncio.wait_for(self._replies.get(), timeout)

    async def close(self) -> None:
        return None


class MeshLinks:
    """Demultiplexes DLMS datagrams from many meters arriving on one UDP port."""

    def __init__(self, stack: MeshStack, port: int = 4059) -> None:
        self._stack = stack
        self._port = port
        self._links: dict[bytes, MeshDatagramLink] = {}
        stack.bind(port, self._deliver)

    def link(self, dst_mac: bytes) -> MeshDatagramLink:
        if dst_mac not in self._links:
            self._links[dst_mac] = MeshDatagramLink(self._stack, dst_mac, self._port)
        return self._links[dst_mac]

    def _deliver(self, src_mac: bytes, datagram: ipv6.UdpDatagram) -> None:
        link = self._links.get(src_mac)
        if link is None:
            log.info("datagram from unknown meter %s dropped", src_mac.hex(":"))
            return
        link.deliver(datagram)
