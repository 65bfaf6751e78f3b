"""Capture below the mesh: a Transceiver wrapper that writes every frame the radio handles to pcap.

Sitting directly on the radio (not in the mesh stack) means the capture holds what was on the
air as the radio saw it, including frames the mesh later drops as malformed, for someone else, or
duplicates. Transmitted frames are written once their result is known: a frame that went out
(acked, not acked, or sent without asking for an ack) is written, followed by the ack PSDU when
the radio returns one; a frame that never left the radio (CCA failure, failed) is only counted.
Received frames are written with the RSSI, LQI, channel and start-of-frame time the radio
reported (kept by the TAP link type, dropped by the plain 802.15.4 one).

Timestamps come from an injected clock (anything with ``now()`` → epoch seconds); drivers never
import the agent's clock module.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Protocol

from drivers.hdlc import fcs16_update
from drivers.pcap import CHANNEL_PAGE_SUN, FrameInfo, PcapError, PcapWriter
from drivers.transceiver import RadioInfo, RxFrame, Transceiver, TxResult, TxStatus

log = logging.getLogger(__name__)

#: Transmit results after which the frame was on the air (so it belongs in the capture).
ON_AIR = frozenset({TxStatus.ACKED, TxStatus.NO_ACK, TxStatus.SENT})


def on_air(psdu: bytes) -> bytes:
    """The PSDU as the radio sends it: the radio computes the FCS itself (a host may hand it
    zeros), so the capture carries the CRC-16/KERMIT the frame really went out with."""
    if len(psdu) < 2:
        return psdu
    return psdu[:-2] + struct.pack("<H", fcs16_update(0, psdu[:-2]))


class WallClock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...


@dataclass
class CaptureStats:
    tx_written: int = 0
    tx_not_on_air: int = 0  # CCA failure or failed: nothing went out, nothing written
    acks_written: int = 0
    rx_written: int = 0
    unwritable: int = 0  # frames whose metadata a pcap record cannot hold (logged)


class CapturingTransceiver(Transceiver):
    """Wraps any :class:`Transceiver`; every call is passed through unchanged, and every frame
    sent or received is also written to ``sink``. The sink is not closed with the radio (one
    capture may outlive several radios, e.g. across reconnects): close it yourself."""

    def __init__(
        self,
        radio: Transceiver,
        sink: PcapWriter,
        clock: WallClock,
        *,
        channel_page: int = CHANNEL_PAGE_SUN,
    ) -> None:
        self.inner = radio
        self.sink = sink
        self.clock = clock
        self.channel_page = channel_page
        self.stats = CaptureStats()
        self._channel: int | None = None  # what we last tuned to: the channel of our TX frames

    async def open(self) -> RadioInfo:
        return await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def set_channel(self, channel: int) -> None:
        await self.inner.set_channel(channel)
        self._channel = channel

    async def set_tx_power(self, dbm: int) -> None:
        await self.inner.set_tx_power(dbm)

    async def enable_raw_stream(self, enabled: bool = True) -> None:
        await self.inner.enable_raw_stream(enabled)

    async def transmit(self, psdu: bytes) -> TxResult:
        started = self.clock.now()
        result = await self.inner.transmit(psdu)
        if result.status not in ON_AIR:
            self.stats.tx_not_on_air += 1
            log.debug("not captured: frame not sent (%s)", result.status.value)
            return result
        tx_info = FrameInfo(channel=self._channel, channel_page=self.channel_page)
        if self._write(started, on_air(psdu), tx_info):
            self.stats.tx_written += 1
        if result.ack_psdu and self._write(self.clock.now(), result.ack_psdu, tx_info):
            self.stats.acks_written += 1
        return result

    async def receive(self, timeout: float | None = None) -> RxFrame | None:
        frame = await self.inner.receive(timeout)
        if frame is not None:
            info = FrameInfo(
                rssi_dbm=frame.rssi_dbm,
                lqi=frame.lqi,
                channel=frame.channel,
                channel_page=self.channel_page,
                sof_ns=frame.timestamp_us * 1000 if frame.timestamp_us >= 0 else None,
            )
            if self._write(self.clock.now(), frame.psdu, info):
                self.stats.rx_written += 1
        return frame

    def _write(self, timestamp: float, psdu: bytes, info: FrameInfo) -> bool:
        """Capture never breaks the radio: a frame it cannot record is logged and skipped."""
        try:
            return self.sink.write(timestamp, psdu, info)
        except PcapError as exc:
            self.stats.unwritable += 1
            log.warning("frame not captured: %s; hex=%s", exc, psdu.hex())
            return False

    async def energy_scan(self, channels: list[int], duration_ms: int) -> dict[int, int]:
        return await self.inner.energy_scan(channels, duration_ms)

    async def sample_rssi(self) -> int:
        return await self.inner.sample_rssi()
