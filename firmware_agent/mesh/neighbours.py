"""Neighbour table with link metrics and the gateway's own SNR measurement (sans-IO).

Real RCPs report no per-frame noise floor, so the gateway keeps its own per-channel noise-floor
average (idle RSSI samples, energy scans) and computes SNR = RSSI − noise floor of that channel.
RSL in is an EWMA with factor 1/8 and ETX = attempts / acks × 128 capped at 1024, as Wi-SUN
(and wsbrd) define them. The mesh issue adds RSL out, percentiles and status classes.
"""

from __future__ import annotations

from dataclasses import dataclass

EWMA_FACTOR = 1 / 8
ETX_SCALE = 128
ETX_MAX = 1024


def ewma(old: float | None, sample: float, factor: float = EWMA_FACTOR) -> float:
    return sample if old is None else old + factor * (sample - old)


@dataclass
class Neighbour:
    mac: bytes
    channel: int
    rssi_dbm: int
    lqi: int
    last_heard: float
    rsl_in_dbm: float
    snr_db: float | None = None
    frames_heard: int = 0
    tx_attempts: int = 0
    tx_acks: int = 0

    @property
    def etx(self) -> int | None:
        """ETX × 128 (capped at 1024), or None before the first transmission."""
        if not self.tx_attempts:
            return None
        if not self.tx_acks:
            return ETX_MAX
        return min(ETX_MAX, round(self.tx_attempts / self.tx_acks * ETX_SCALE))


class NeighbourTable:
    """What the gateway knows of each neighbour it hears, plus per-channel noise floors."""

    def __init__(self) -> None:
        self._neighbours: dict[bytes, Neighbour] = {}
        self._noise: dict[int, float] = {}

    def noise_sample(self, channel: int, dbm: float) -> None:
        self._noise[channel] = ewma(self._noise.get(channel), dbm)

    def noise_floor(self, channel: int) -> float | None:
        return self._noise.get(channel)

    def heard(self, mac: bytes, rssi_dbm: int, lqi: int, channel: int, when: float) -> Neighbour:
        nb = self._neighbours.get(mac)
        floor = self._noise.get(channel)
        snr = None if floor is None else rssi_dbm - floor
        if nb is None:
            nb = Neighbour(mac, channel, rssi_dbm, lqi, when, float(rssi_dbm), snr)
            self._neighbours[mac] = nb
        else:
            nb.rssi_dbm, nb.lqi, nb.channel, nb.last_heard = rssi_dbm, lqi, channel, when
            nb.rsl_in_dbm = ewma(nb.rsl_in_dbm, rssi_dbm)
            if snr is not None:
                nb.snr_db = ewma(nb.snr_db, snr)
        nb.frames_heard += 1
        return nb

    def transmitted(self, mac: bytes, attempts: int, acked: bool) -> None:
        nb = self._neighbours.get(mac)
        if nb is not None:
            nb.tx_attempts += attempts
            nb.tx_acks += int(acked)

    def get(self, mac: bytes) -> Neighbour | None:
        return self._neighbours.get(mac)

    def all(self) -> list[Neighbour]:
        return sorted(self._neighbours.values(), key=lambda n: n.mac)
