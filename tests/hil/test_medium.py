"""The RF medium: who hears a frame, when, at what power, what breaks it, and who acks it."""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable

import pytest

from hil import phy
from hil.medium import (
    REFERENCE_LOSS_DB,
    CsmaConfig,
    InstantScheduler,
    Medium,
    TxOutcome,
    csma_transmit,
)

AR = 0x21  # frame control low byte: a data frame with the ack-request bit
NO_AR = 0x01  # a data frame without it


class Node:
    """A radio that records what it hears and acks (with ``ack``) what asks for one."""

    def __init__(self, eui64: bytes, ack: bytes | None = None) -> None:
        self.eui64 = eui64
        self.ack = ack
        self.heard: list[tuple[bytes, int, int, int]] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append((psdu, rssi_dbm, lqi, channel))
        return self.ack if psdu[0] & 0x20 else None


def eui(n: int) -> bytes:
    return n.to_bytes(8, "big")


def frame(length: int = 20, ack: bool = True, tag: int = 0) -> bytes:
    """A PSDU of ``length`` bytes whose first byte carries (or not) the AR bit."""
    return bytes([AR if ack else NO_AR, tag]) + bytes(length - 2)


def outcomes(
    log: list[tuple[float, TxOutcome]], sched: InstantScheduler
) -> Callable[[TxOutcome], None]:
    def done(outcome: TxOutcome) -> None:
        log.append((sched.time(), outcome))

    return done


def test_path_loss_is_log_distance_on_the_channel_frequency() -> None:
    medium = Medium(random.Random(0), path_loss_exponent=3.0)
    # 20·log10(4π·915e6/c) = 31.676 dB; +10·3·log10(100) = +60 dB
    assert abs(REFERENCE_LOSS_DB - 31.676) < 1e-3
    assert medium.path_loss_db((0, 0), (1, 0)) == pytest.approx(REFERENCE_LOSS_DB)
    assert medium.path_loss_db((0, 0), (100, 0)) == pytest.approx(REFERENCE_LOSS_DB + 60)
    assert medium.path_loss_db((0, 0), (0, 0)) == pytest.approx(REFERENCE_LOSS_DB)  # clamp at 1 m
    # Channel 0 is 902.2 MHz: 0.122 dB less loss than at 915 MHz.
    assert medium.path_loss_db((0, 0), (100, 0), 0) == pytest.approx(91.554, abs=1e-3)
    assert medium.noise_floor_dbm((1, 2), 5) == pytest.approx(-114.99, abs=0.01)


def test_ground_truth_link_budget_and_snr() -> None:
    medium = Medium(random.Random(1), path_loss_exponent=3.5, shadowing_sigma_db=4.0)
    a, b = Node(eui(1)), Node(eui(2))
    medium.attach(a, (0, 0), tx_power_dbm=14, channel=0)
    medium.attach(b, (200, 0), channel=0)
    shadow = medium.shadowing_db(a, b)
    assert shadow == medium.shadowing_db(b, a) and abs(shadow) <= 12.0  # clipped at 3σ
    # 14 − (31.554 + 35·log10(200)) + shadow = 14 − 112.090 + shadow
    expected = 14 - (31.554 + 35 * math.log10(200)) + shadow
    assert medium.link_budget(a, b, 0) == pytest.approx(expected, abs=1e-3)
    assert medium.snr_truth(a, b, 0) == pytest.approx(expected + 114.99, abs=0.01)
    medium.set_tx_power(a, 20)
    assert medium.link_budget(a, b, 0) == pytest.approx(expected + 6, abs=1e-3)


def test_delivery_rssi_channel_ack_and_timing() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(1), scheduler=sched)
    a, b, c = Node(eui(1)), Node(eui(2), ack=b"\x02\x00\x07AK"), Node(eui(3), ack=b"OTHER")
    medium.attach(a, (0, 0), tx_power_dbm=14, channel=2)
    medium.attach(b, (50, 0), channel=2)
    medium.attach(c, (10, 0), channel=3)
    log: list[tuple[float, TxOutcome]] = []
    psdu = frame(20)
    assert medium.transmit(a, psdu, 2, outcomes(log, sched)) is None  # not over yet
    assert b.heard == [] and log == []
    sched.run()
    ((at, outcome),) = log
    # 20-byte frame 5.12 ms, turnaround 1 ms, 5-byte ack (8+2+2+5)·8/50k = 2.72 ms
    assert at == pytest.approx(5.12e-3 + 1e-3 + 2.72e-3)
    assert outcome.ack_psdu == b"\x02\x00\x07AK" and outcome.acked_by is b
    assert a.heard == [] and c.heard == []  # not the sender, not another channel
    ((heard, rssi, lqi, channel),) = b.heard
    assert (heard, channel) == (psdu, 2)
    assert abs(rssi - medium.link_budget(a, b, 2)) < 3  # per-frame jitter σ 0.5 dB
    assert abs(outcome.ack_rssi_dbm - medium.link_budget(b, a, 2)) < 3
    assert 0 < lqi <= 255 and [r.node for r in outcome.receptions] == [b]
    assert medium.counters.frames == 1 and medium.counters.acks == 1
    assert medium.counters.airtime_s[2] == pytest.approx(5.12e-3 + 2.72e-3)


def test_outcome_times_without_ack_request_and_without_an_acker() -> None:
    sched = InstantScheduler(start=100.0)
    medium = Medium(random.Random(2), scheduler=sched)
    a, b = Node(eui(1)), Node(eui(2), ack=None)
    medium.attach(a, (0, 0))
    medium.attach(b, (30, 0))
    log: list[tuple[float, TxOutcome]] = []
    medium.transmit(a, frame(127, ack=False), 0, outcomes(log, sched))
    sched.run()
    assert log[0][0] == pytest.approx(100 + 22.24e-3)  # right when the frame ends
    medium.transmit(a, frame(20, ack=True), 0, outcomes(log, sched))
    sched.run()
    start = 100 + 22.24e-3
    # nobody acked: the ack wait (1 ms + a 40-byte ack's 8.32 ms) after the frame's end
    assert log[1][0] == pytest.approx(start + 5.12e-3 + 1e-3 + 8.32e-3)
    assert log[1][1].ack_psdu is None and len(b.heard) == 2


def test_the_default_scheduler_finishes_a_transmission_inside_the_call() -> None:
    medium = Medium(random.Random(3))
    a, b = Node(eui(1)), Node(eui(2), ack=b"ACK!!")
    medium.attach(a, (0, 0))
    medium.attach(b, (40, 0))
    got: list[TxOutcome] = []
    assert medium.transmit(a, frame(), 0, got.append) == b"ACK!!"
    assert got[0].ack_psdu == b"ACK!!" and medium.time() == pytest.approx(8.84e-3)


def test_far_node_is_not_a_neighbour_and_hears_nothing() -> None:
    medium = Medium(random.Random(2))
    a, far = Node(eui(1)), Node(eui(2), ack=b"ACK!!")
    medium.attach(a, (0, 0), tx_power_dbm=0)
    medium.attach(far, (10_000, 0))  # 0 − 31.6 − 120 dB ≈ −152 dBm, far under −125
    assert medium.transmit(a, frame(), 0) is None
    assert far.heard == [] and medium.neighbours(a) == []
    medium.set_tx_power(a, 30)
    medium.attach(far, (300, 0))  # attaching again moves it: 30 − 31.6 − 74.3 ≈ −76 dBm
    assert medium.neighbours(a) == [far]
    assert medium.transmit(a, frame(), 0) == b"ACK!!"


def test_delivery_rate_follows_the_per_curve() -> None:
    """At the SNR where a 20-byte frame fails half the time, about half get through."""
    medium = Medium(random.Random(4), shadowing_sigma_db=0.0, jitter_sigma_db=0.0)
    a, b = Node(eui(1)), Node(eui(2))
    snr = medium.phy.sinr_for_per(0.5, 20)  # ≈ 6.9 dB: −108.1 dBm
    medium.attach(a, (0, 0), tx_power_dbm=0)
    loss = 0 - (medium.noise_floor + snr)  # path loss that puts a's frames at that SNR
    distance = 10 ** ((loss - medium.path_loss_db((0, 0), (1, 0), 0)) / 30)
    medium.attach(b, (distance, 0))
    assert medium.snr_truth(a, b, 0) == pytest.approx(snr, abs=1e-6)
    for _ in range(400):
        medium.transmit(a, frame(20, ack=False), 0)
    assert 160 <= len(b.heard) <= 240  # binomial(400, 0.5): ±4σ
    assert medium.counters.losses["per"] == 400 - len(b.heard)


def test_collision_when_overlapping_and_both_delivered_when_apart() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(5), scheduler=sched, shadowing_sigma_db=0.0)
    a, b, c = Node(eui(1)), Node(eui(2)), Node(eui(3))
    medium.attach(a, (-100, 0))
    medium.attach(b, (0, 0))
    medium.attach(c, (100, 0))  # as loud at b as a is: SINR ≈ 0 dB
    sniffed: list[tuple[float, bytes]] = []
    medium.on_air(lambda t, node, psdu, ch: sniffed.append((t, psdu)))
    medium.transmit(a, frame(40, ack=False, tag=1), 0)
    sched.call_at(0.003, lambda: medium.transmit(c, frame(40, ack=False, tag=2), 0))
    sched.run()
    assert b.heard == []
    assert medium.counters.losses["collision"] == 2
    assert [round(t, 6) for t, _ in sniffed] == [0.0, 0.003]
    # One after the other (the second starts after the first's 8.32 ms): both arrive.
    medium.transmit(a, frame(40, ack=False, tag=3), 0)
    sched.call_at(sched.time() + 0.009, lambda: medium.transmit(c, frame(40, False, 4), 0))
    sched.run()
    assert [h[0][1] for h in b.heard] == [3, 4]


def test_a_weak_overlap_does_not_destroy_a_strong_frame() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(6), scheduler=sched, shadowing_sigma_db=0.0)
    a, b, c = Node(eui(1)), Node(eui(2)), Node(eui(3))
    medium.attach(a, (-20, 0))
    medium.attach(b, (0, 0))
    medium.attach(c, (800, 0))  # 46 dB weaker at b than a: capture
    medium.transmit(a, frame(40, ack=False, tag=1), 0)
    medium.transmit(c, frame(40, ack=False, tag=2), 0)
    sched.run()
    assert [h[0][1] for h in b.heard] == [1]


def test_half_duplex_a_transmitting_node_hears_nothing() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(7), scheduler=sched)
    a, b, far = Node(eui(1)), Node(eui(2)), Node(eui(3))
    medium.attach(a, (0, 0), channel=0)
    medium.attach(b, (30, 0), channel=0)
    medium.attach(far, (30, 0), channel=1)  # b's own frame goes out on another channel
    medium.transmit(a, frame(60, ack=False), 0)
    sched.call_at(0.002, lambda: medium.transmit(b, frame(10, ack=False), 1))
    sched.run()
    assert b.heard == [] and len(far.heard) == 1
    assert medium.counters.losses["half_duplex"] == 1


def test_interferer_makes_a_marginal_link_lose_frames_and_raises_energy() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(8), scheduler=sched, shadowing_sigma_db=0.0)
    a, b = Node(eui(1)), Node(eui(2))
    medium.attach(a, (0, 0), tx_power_dbm=0)
    # 0 − (31.554 + 30·log10 250 = 103.494) = −103.49 dBm: SNR 11.5 dB, PER(20 B) ≈ 2e-4
    medium.attach(b, (250, 0))
    assert medium.channel_energy_dbm((250, 0), 0) == pytest.approx(medium.noise_floor)
    jammer = medium.add_interferer((300, 0), power_dbm=-20, channels=[0], on=False)
    jammer.switch(True, at=1.0)
    jammer.switch(False, at=2.0)
    energy: list[float] = []

    def burst(start: float) -> None:
        for i in range(40):
            sched.call_at(start + i * 0.02, medium.transmit, a, frame(20, ack=False), 0)

    for start in (0.0, 1.0, 2.0):
        burst(start)
    sched.call_at(1.51, lambda: energy.append(medium.channel_energy_dbm((250, 0), 0)))
    sched.call_at(1.51, lambda: energy.append(medium.node_energy_dbm(b, 0)))
    sched.run()
    # Jammer 50 m from b: −20 − (31.554 + 30·log10 50 = 82.524) = −102.52 dBm at b.
    # Noise + jammer = 10·log10(10^−11.499 + 10^−10.252) = −102.28 dBm: SINR ≈ −1.2 dB.
    assert energy[0] == pytest.approx(-102.28, abs=0.01)
    assert energy[1] == pytest.approx(energy[0], abs=1e-9)
    assert medium.channel_energy_dbm((250, 0), 1) == pytest.approx(medium.noise_floor)
    tags = [h[0] for h in b.heard]
    assert len(tags) >= 78  # both quiet bursts get through
    assert medium.counters.losses["interference"] >= 38  # the jammed one does not
    assert medium.counters.losses["per"] <= 2


def test_fade_lowers_rssi_by_the_fade_and_ramps() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(9), scheduler=sched)
    a, b = Node(eui(1)), Node(eui(2))
    medium.attach(a, (0, 0))
    medium.attach(b, (100, 0))
    before = medium.link_budget(a, b, 0)
    for i in range(30):
        sched.call_at(sched.time() + i * 0.01, medium.transmit, a, frame(ack=False), 0)
    sched.run()
    medium.set_link_fade(a, b, 12.0)
    assert medium.link_fade(b, a) == 12.0
    assert medium.link_budget(a, b, 0) == pytest.approx(before - 12)
    for i in range(30):
        sched.call_at(sched.time() + i * 0.01, medium.transmit, a, frame(ack=False), 0)
    sched.run()
    rssi = [r for (_, r, _, _) in b.heard]
    drop = statistics.mean(rssi[:30]) - statistics.mean(rssi[30:])
    assert drop == pytest.approx(12.0, abs=0.5)  # jitter 0.5 dB, RSSI rounded to 1 dB
    # A ramp: from 12 dB to 0 over 10 s starting at t = 5.
    medium.set_link_fade(a, b, 0.0, at=5.0, over_s=10.0)
    sched.call_at(10.0, lambda: mid.append(medium.link_fade(a, b)))
    mid: list[float] = []
    sched.run()
    assert mid == [pytest.approx(6.0)]
    with pytest.raises(ValueError, match="fade"):
        medium.set_link_fade(a, b, -3.0)


def test_dark_node_neither_hears_nor_sends() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(10), scheduler=sched)
    a, b = Node(eui(1)), Node(eui(2), ack=b"ACK!!")
    medium.attach(a, (0, 0))
    medium.attach(b, (50, 0))
    medium.power(b, False)
    log: list[tuple[float, TxOutcome]] = []
    medium.transmit(a, frame(), 0, outcomes(log, sched))
    sched.run()
    assert b.heard == [] and log[0][1].ack_psdu is None
    assert medium.counters.losses["dark"] == 1
    medium.transmit(b, frame(ack=False), 0, outcomes(log, sched))
    sched.run()
    assert a.heard == [] and log[1][1].sent is False and medium.counters.dark_tx == 1
    # Back at t = 3; a frame in flight when a node goes dark is cut off.
    medium.power(b, True, at=3.0)
    sched.run()
    assert medium.is_powered(b) and sched.time() == 3.0
    medium.transmit(a, frame(), 0, outcomes(log, sched))
    sched.run()
    assert log[2][1].ack_psdu == b"ACK!!"
    medium.transmit(b, frame(60, ack=False), 0)  # 13.92 ms on the air
    medium.power(b, False, at=sched.time() + 0.005)
    sched.run()
    assert a.heard == [] and medium.counters.losses["dark"] == 2


def test_channel_energy_sees_a_frame_on_the_air_and_remembers_a_second() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(11), scheduler=sched, shadowing_sigma_db=0.0)
    a, b = Node(eui(1)), Node(eui(2))
    medium.attach(a, (0, 0), tx_power_dbm=14)
    medium.attach(b, (100, 0))
    medium.transmit(a, frame(127, ack=False), 0)
    readings: list[float] = []
    sched.call_at(0.010, lambda: readings.append(medium.channel_energy_dbm((100, 0), 0)))
    sched.call_at(0.010, lambda: readings.append(medium.node_energy_dbm(b, 0)))
    sched.call_at(0.010, lambda: readings.append(medium.node_energy_dbm(a, 0)))  # its own TX
    sched.run()
    # 14 − 31.554 − 60 = −77.55 dBm, far above the noise
    assert readings[0] == pytest.approx(-77.55, abs=0.01)
    assert readings[1] == pytest.approx(readings[0], abs=0.01)
    assert readings[2] == pytest.approx(medium.noise_floor)
    assert medium.channel_energy_dbm((100, 0), 0) == pytest.approx(medium.noise_floor)
    assert medium.channel_energy_dbm((100, 0), 0, at=0.010) == pytest.approx(-77.55, abs=0.01)
    with pytest.raises(ValueError, match="past now"):
        medium.channel_energy_dbm((0, 0), 0, at=sched.time() + 1)
    with pytest.raises(ValueError, match="history"):
        medium.channel_energy_dbm((0, 0), 0, at=sched.time() - 5)


def test_csma_backs_off_on_a_busy_channel_then_gives_up() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(12), scheduler=sched)
    a, b = Node(eui(1)), Node(eui(2))
    medium.attach(a, (0, 0))
    medium.attach(b, (50, 0))
    config = CsmaConfig()
    jammer = medium.add_interferer((10, 0), power_dbm=0, channels=[0])  # ≈ −61 dBm at a
    got: list[tuple[float, TxOutcome | None]] = []
    rng = random.Random(1)
    csma_transmit(medium, a, frame(), 0, rng, lambda o: got.append((sched.time(), o)), config)
    sched.run()
    assert got[0][1] is None and b.heard == []
    # 5 assessments, each after up to 2^BE − 1 units (BE 3, 4, 5, 5, 5): at most 7+15+31·3
    assert 0 < got[0][0] <= (7 + 15 + 31 * 3) * config.unit_backoff_s
    jammer.switch(False)
    csma_transmit(medium, a, frame(ack=False), 0, rng, lambda o: got.append((sched.time(), o)))
    sched.run()
    assert got[1][1] is not None and len(b.heard) == 1


def test_same_seed_same_run() -> None:
    def run(seed: int) -> tuple[list[int], dict[str, int]]:
        sched = InstantScheduler()
        medium = Medium(random.Random(seed), scheduler=sched, shadowing_sigma_db=6.0)
        nodes = [Node(eui(i), ack=b"ACK!!") for i in range(6)]
        for i, node in enumerate(nodes):
            medium.attach(node, (i * 90.0, 0.0))
        for step in range(60):
            sender = nodes[step % 6]
            sched.call_at(step * 0.004, medium.transmit, sender, frame(30, tag=step), 0)
        sched.run()
        heard = [rssi for node in nodes for (_, rssi, _, _) in node.heard]
        return heard, dict(medium.counters.losses)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_shadowing_is_fixed_per_link_whatever_the_order() -> None:
    def shadows(order: list[int]) -> dict[tuple[int, int], float]:
        medium = Medium(random.Random(3), shadowing_sigma_db=4.0)
        nodes = {i: Node(eui(i)) for i in order}
        for i in order:
            medium.attach(nodes[i], (i * 10.0, 0.0))
        return {(i, j): medium.shadowing_db(nodes[i], nodes[j]) for i in order for j in order}

    assert shadows([1, 2, 3, 4]) == shadows([4, 2, 3, 1])
    spread = statistics.pstdev(shadows(list(range(40))).values())
    assert 3.0 < spread < 5.0


def test_thousand_nodes_have_small_neighbour_lists_and_a_frame_touches_only_them() -> None:
    rng = random.Random(1000)
    medium = Medium(random.Random(5), path_loss_exponent=3.5, shadowing_sigma_db=4.0)
    nodes = [Node(eui(i)) for i in range(1000)]
    started = time.perf_counter()
    for node in nodes:
        r, angle = 2500 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        medium.attach(node, (r * math.cos(angle), r * math.sin(angle)))
    sizes = [len(medium.neighbours(n)) for n in nodes]
    build = time.perf_counter() - started
    assert build < 10, f"neighbour lists took {build:.1f} s"
    assert max(sizes) < 400 and statistics.mean(sizes) < 250  # of 1,000
    assert min(sizes) > 0
    # Every listed neighbour really is above noise − 10 dB; a node just outside is not.
    sender = nodes[0]
    listed = medium.neighbours(sender)
    floor = medium.noise_floor - 10
    assert all(medium.link_budget(sender, n, 0) >= floor - 0.2 for n in listed)
    outside = [n for n in nodes[1:] if n not in listed]
    assert all(medium.link_budget(sender, n, 0) < floor + 0.2 for n in outside)
    before = medium.counters.receivers_evaluated
    started = time.perf_counter()
    for _ in range(200):
        medium.transmit(sender, frame(40, ack=False), 0)
    per_tx = (time.perf_counter() - started) / 200
    touched = {id(n) for n in nodes if n.heard}
    assert touched and touched <= {id(n) for n in listed}
    assert medium.counters.receivers_evaluated - before <= 200 * len(listed)
    assert per_tx < 0.01, f"{per_tx * 1e3:.2f} ms per transmission"
    # Moving one node updates only its links.
    medium.move(nodes[1], medium.position(sender))
    assert nodes[1] in medium.neighbours(sender) and sender in medium.neighbours(nodes[1])


def test_bad_arguments_are_typed_errors() -> None:
    medium = Medium(random.Random(0))
    a = Node(eui(1))
    with pytest.raises(ValueError, match="not attached"):
        medium.transmit(a, b"x", 0)
    with pytest.raises(ValueError, match="channel 200 is outside"):
        medium.attach(a, (0, 0), channel=200)
    medium.attach(a, (0, 0))
    with pytest.raises(ValueError, match="empty PSDU"):
        medium.transmit(a, b"", 0)
    with pytest.raises(ValueError, match="at least one channel"):
        medium.add_interferer((0, 0), 0, [])
    assert phy.channel_frequency_hz(medium.channel(a)) == pytest.approx(902.2e6)


def test_a_radio_sends_one_frame_at_a_time_and_its_ack_first() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(13), scheduler=sched)
    a, b = Node(eui(1)), Node(eui(2), ack=b"ACK!!")
    medium.attach(a, (0, 0))
    medium.attach(b, (50, 0))
    starts: list[tuple[float, bytes]] = []
    medium.on_air(lambda t, node, psdu, ch: starts.append((t, node.eui64)))
    medium.transmit(a, frame(40, ack=False), 0)  # 8.32 ms
    sched.call_at(0.001, medium.transmit, a, frame(20, ack=False), 0)
    sched.run()
    assert [round(t, 6) for t, _ in starts] == [0.0, 0.00832]  # not on top of itself
    assert medium.counters.deferred == 1 and medium.is_busy(a) is False
    # b owes an ack for a's frame; a frame b starts in the turnaround waits for the ack.
    starts.clear()
    t0 = sched.time()
    medium.transmit(a, frame(20, ack=True), 0)  # ends at t0 + 5.12 ms
    sched.call_at(t0 + 0.0055, medium.transmit, b, frame(20, ack=False), 0)
    sched.call_at(t0 + 0.0055, lambda: busy.append(medium.is_busy(b)))
    busy: list[bool] = []
    sched.run()
    ack_start = t0 + 5.12e-3 + 1e-3
    assert [(round(t - t0, 6), who) for t, who in starts] == [
        (0.0, eui(1)),
        (round(ack_start - t0, 6), eui(2)),
        (round(ack_start + 2.72e-3 - t0, 6), eui(2)),
    ]
    assert busy == [True]


def test_detached_node_is_gone_from_every_list_and_its_frame_is_cut() -> None:
    sched = InstantScheduler()
    medium = Medium(random.Random(14), scheduler=sched)
    a, b, c = Node(eui(1)), Node(eui(2)), Node(eui(3))
    for i, node in enumerate((a, b, c)):
        medium.attach(node, (40.0 * i, 0.0))
    assert set(map(id, medium.neighbours(a))) == {id(b), id(c)}
    medium.transmit(b, frame(60, ack=False), 0)
    medium.detach(b)
    sched.run()
    assert a.heard == [] and c.heard == []
    assert medium.neighbours(a) == [c] and b not in medium.nodes()
    medium.transmit(a, frame(ack=False), 0)
    sched.run()
    assert b.heard == [] and len(c.heard) == 1


def test_a_frame_filter_skips_receptions_but_the_frame_still_interferes() -> None:
    """A node whose address filter rejects a frame is not evaluated for it (nothing it would
    do depends on it), yet that frame's power still breaks an overlapping frame it wants."""
    sched = InstantScheduler()
    medium = Medium(random.Random(5), scheduler=sched, shadowing_sigma_db=0.0)
    a, b, c = Node(eui(1)), Node(eui(2)), Node(eui(3))
    medium.attach(a, (-100, 0))
    medium.attach(b, (0, 0), frame_filter=lambda psdu: psdu[1] != 2)  # b ignores tag 2
    medium.attach(c, (100, 0))  # as loud at b as a is
    medium.transmit(c, frame(40, ack=False, tag=2), 0)  # alone: b is not even evaluated
    sched.run()
    assert b.heard == [] and medium.counters.filtered == 1
    assert medium.counters.receivers_evaluated == 1  # a only
    medium.transmit(a, frame(40, ack=False, tag=1), 0)
    sched.call_at(sched.time() + 0.003, lambda: medium.transmit(c, frame(40, False, 2), 0))
    sched.run()
    assert b.heard == []  # tag 1 collided with the tag-2 frame b filters out
    assert medium.counters.filtered == 2 and medium.counters.losses["collision"] >= 1
    medium.transmit(a, frame(40, ack=False, tag=1), 0)
    sched.run()
    assert [h[0][1] for h in b.heard] == [1]


def test_far_above_the_cliff_no_per_draw_is_spent() -> None:
    """A frame whose PER is below SURE_PER gets through without a draw from the medium's
    generator (only the RSSI jitter draws); near the cliff every frame still draws."""
    medium = Medium(random.Random(4), shadowing_sigma_db=0.0)
    a, b = Node(eui(1)), Node(eui(2))
    medium.attach(a, (0, 0))
    medium.attach(b, (30, 0))  # ~60 dB SNR
    state = medium.rng.getstate()
    medium.transmit(a, frame(20, ack=False), 0)
    twin = random.Random()
    twin.setstate(state)
    twin.gauss(0.0, medium.jitter_sigma_db)  # what one reception draws: the jitter only
    assert medium.rng.getstate() == twin.getstate()
    assert len(b.heard) == 1
    assert medium.phy.per(medium.snr_truth(a, b, 0) - 3, 20) < 1e-9
