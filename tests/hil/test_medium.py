"""The stub RF medium: who hears a frame, at what power, and who acks it."""

from __future__ import annotations

import math
import random

import pytest

from hil.medium import REFERENCE_LOSS_DB, Medium


class Node:
    def __init__(self, eui64: bytes, ack: bytes | None = None) -> None:
        self.eui64 = eui64
        self.ack = ack
        self.heard: list[tuple[bytes, int, int, int]] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append((psdu, rssi_dbm, lqi, channel))
        return self.ack


def eui(n: int) -> bytes:
    return n.to_bytes(8, "big")


def test_path_loss_is_log_distance() -> None:
    medium = Medium(random.Random(0), path_loss_exponent=3.0)
    assert medium.path_loss_db((0, 0), (1, 0)) == pytest.approx(REFERENCE_LOSS_DB)
    assert medium.path_loss_db((0, 0), (100, 0)) == pytest.approx(REFERENCE_LOSS_DB + 60)
    assert medium.path_loss_db((0, 0), (0, 0)) == pytest.approx(REFERENCE_LOSS_DB)  # clamp at 1 m


def test_delivery_rssi_channel_and_ack() -> None:
    medium = Medium(random.Random(1))
    a, b, c = Node(eui(1)), Node(eui(2), ack=b"ACK"), Node(eui(3), ack=b"OTHER")
    medium.attach(a, (0, 0), tx_power_dbm=14, channel=2)
    medium.attach(b, (50, 0), channel=2)
    medium.attach(c, (10, 0), channel=3)
    assert medium.transmit(a, b"frame", 2) == b"ACK"
    assert a.heard == [] and c.heard == []  # not the sender, not another channel
    (psdu, rssi, lqi, channel) = b.heard[0]
    expected = 14 - REFERENCE_LOSS_DB - 30 * math.log10(50)
    assert (psdu, channel) == (b"frame", 2)
    assert abs(rssi - expected) < 8  # shadowing σ 2 dB + jitter
    assert 0 < lqi <= 255
    medium.set_channel(c, 2)
    assert medium.transmit(a, b"again", 2) in (b"ACK", b"OTHER")
    assert c.heard[-1][0] == b"again"


def test_below_noise_floor_is_not_delivered() -> None:
    medium = Medium(random.Random(2), noise_floor_dbm=-115)
    a, far = Node(eui(1)), Node(eui(2), ack=b"ACK")
    medium.attach(a, (0, 0), tx_power_dbm=0)
    medium.attach(far, (10_000, 0))  # 0 - 31.7 - 120 dB: far below -112 dBm
    assert medium.transmit(a, b"x", 0) is None
    assert far.heard == []
    medium.set_tx_power(a, 30)
    medium.attach(far, (300, 0))  # re-attach moves it: 30 - 31.7 - 74.3 ≈ -76 dBm
    assert medium.transmit(a, b"x", 0) == b"ACK"


def test_same_seed_same_run() -> None:
    def run(seed: int) -> list[int]:
        medium = Medium(random.Random(seed))
        nodes = [Node(eui(i)) for i in range(4)]
        for i, node in enumerate(nodes):
            medium.attach(node, (i * 40.0, 0.0))
        for _ in range(3):
            for node in nodes:
                medium.transmit(node, b"p", 0)
        return [rssi for node in nodes for (_, rssi, _, _) in node.heard]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_link_shadowing_is_stable_per_link() -> None:
    medium = Medium(random.Random(3))
    a, b = Node(eui(1)), Node(eui(2))
    medium.attach(a, (0, 0))
    medium.attach(b, (80, 0))
    for _ in range(50):
        medium.transmit(a, b"p", 0)
    rssis = [r for (_, r, _, _) in b.heard]
    assert max(rssis) - min(rssis) <= 5  # only the small per-frame jitter varies


def test_noise_floor_and_unknown_node() -> None:
    medium = Medium(random.Random(0), noise_floor_dbm=-110.5)
    assert medium.noise_floor_dbm((1, 2), 5) == -110.5
    with pytest.raises(ValueError, match="not attached"):
        medium.transmit(Node(eui(9)), b"x", 0)
