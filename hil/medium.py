"""A stub RF medium good enough for one hop: every transmission reaches, at once, each other node
on the same channel whose received power clears the noise floor.

Received power follows log-distance path loss with a fixed, seeded shadowing term per link (so a
link is consistently good or bad, as real ones are) plus a small per-frame jitter. Everything
random comes from the injected ``random.Random``, so a seed replays the same run.
The mesh issue replaces this with airtime, collisions and SINR-based packet errors.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol


class RadioNode(Protocol):
    eui64: bytes

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        """Called for each frame this node hears; return an ack PSDU if this node acks it."""
        ...


#: Free-space loss at the 1 m reference distance for ~915 MHz: 20·log10(4π·d0/λ).
REFERENCE_LOSS_DB = 31.7
#: A frame is delivered only when it is this far above the noise floor (a crude sensitivity).
DELIVERY_MARGIN_DB = 3.0
#: Standard deviation of the fixed per-link shadowing and of the per-frame jitter.
SHADOWING_SIGMA_DB = 2.0
JITTER_SIGMA_DB = 0.5
#: SNR at which LQI saturates at 255.
LQI_FULL_SCALE_SNR_DB = 30.0


@dataclass
class _Attachment:
    node: RadioNode
    position: tuple[float, float]
    tx_power_dbm: float
    channel: int


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


class Medium:
    def __init__(
        self,
        rng: random.Random,
        *,
        noise_floor_dbm: float = -115.0,
        path_loss_exponent: float = 3.0,
    ) -> None:
        self.rng = rng
        self.noise_floor = noise_floor_dbm
        self.path_loss_exponent = path_loss_exponent
        self._nodes: dict[int, _Attachment] = {}
        self._shadowing: dict[tuple[bytes, bytes], float] = {}

    # --- membership ---------------------------------------------------------------------------

    def attach(
        self,
        node: RadioNode,
        position: tuple[float, float],
        tx_power_dbm: float = 14.0,
        channel: int = 0,
    ) -> None:
        self._nodes[id(node)] = _Attachment(node, position, tx_power_dbm, channel)

    def detach(self, node: RadioNode) -> None:
        self._nodes.pop(id(node), None)

    def set_channel(self, node: RadioNode, channel: int) -> None:
        """A node retuned: it now hears (and is heard on) ``channel`` only."""
        self._attachment(node).channel = channel

    def set_tx_power(self, node: RadioNode, tx_power_dbm: float) -> None:
        self._attachment(node).tx_power_dbm = tx_power_dbm

    def position(self, node: RadioNode) -> tuple[float, float]:
        return self._attachment(node).position

    def nodes(self) -> list[RadioNode]:
        return [a.node for a in self._nodes.values()]

    def _attachment(self, node: RadioNode) -> _Attachment:
        try:
            return self._nodes[id(node)]
        except KeyError:
            raise ValueError(f"node {node.eui64.hex()} is not attached to the medium") from None

    # --- propagation --------------------------------------------------------------------------

    def noise_floor_dbm(self, position: tuple[float, float], channel: int) -> float:
        """The idle noise floor at a place on a channel (uniform in this stub)."""
        return self.noise_floor

    def path_loss_db(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        distance = max(math.dist(a, b), 1.0)
        return REFERENCE_LOSS_DB + 10 * self.path_loss_exponent * math.log10(distance)

    def _link_shadowing(self, a: RadioNode, b: RadioNode) -> float:
        key = (min(a.eui64, b.eui64), max(a.eui64, b.eui64))
        if key not in self._shadowing:
            self._shadowing[key] = self.rng.gauss(0.0, SHADOWING_SIGMA_DB)
        return self._shadowing[key]

    def _received(self, tx: _Attachment, rx: _Attachment) -> tuple[float, int, int] | None:
        """(power dBm, RSSI, LQI) of tx's frame at rx, or None when it is below sensitivity."""
        power = (
            tx.tx_power_dbm
            - self.path_loss_db(tx.position, rx.position)
            + self._link_shadowing(tx.node, rx.node)
            + self.rng.gauss(0.0, JITTER_SIGMA_DB)
        )
        snr = power - self.noise_floor_dbm(rx.position, rx.channel)
        if snr < DELIVERY_MARGIN_DB:
            return None
        lqi = max(0, min(255, round(snr * 255 / LQI_FULL_SCALE_SNR_DB)))
        return power, max(-128, min(127, round(power))), lqi

    def transmit(self, sender: RadioNode, psdu: bytes, channel: int) -> bytes | None:
        """Deliver ``psdu`` now to every other node on ``channel`` that can hear it; return the
        ack PSDU from whichever receiver returned one (or None)."""
        return self.transmit_detailed(sender, psdu, channel).ack_psdu

    def transmit_detailed(self, sender: RadioNode, psdu: bytes, channel: int) -> TxOutcome:
        tx = self._attachment(sender)
        receptions: list[Reception] = []
        ack: tuple[bytes, RadioNode, _Attachment] | None = None
        for rx in list(self._nodes.values()):
            if rx.node is sender or rx.channel != channel:
                continue
            heard = self._received(tx, rx)
            if heard is None:
                continue
            _, rssi, lqi = heard
            receptions.append(Reception(rx.node, rssi, lqi))
            reply = rx.node.on_air_frame(psdu, rssi, lqi, channel)
            if reply is not None and ack is None:
                ack = (reply, rx.node, rx)
        if ack is None:
            return TxOutcome(tuple(receptions))
        reply, acker, acker_at = ack
        back = self._received(acker_at, tx)
        if back is None:  # the ack did not make it back over the link
            return TxOutcome(tuple(receptions))
        _, rssi, lqi = back
        return TxOutcome(tuple(receptions), reply, rssi, lqi, acker)

    def channel_energy_dbm(self, position: tuple[float, float], channel: int) -> float:
        """Energy an energy scan would see: the noise floor (no transmissions linger here)."""
        return self.noise_floor_dbm(position, channel)
