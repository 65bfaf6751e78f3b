"""Trickle (RFC 6206): one transmission per interval, intervals double to Imax, suppression at
k consistent messages, reset to Imin on inconsistency."""

from __future__ import annotations

import random

import pytest

from firmware_agent.mesh.trickle import Trickle, TrickleConfig


def run_until(trickle: Trickle, end: float) -> list[float]:
    """Drive the timer as its owner would; return the times it transmitted."""
    sent: list[float] = []
    now = 0.0
    while True:
        now = trickle.deadline()
        if now > end:
            return sent
        if trickle.poll(now):
            sent.append(now)


def test_intervals_double_up_to_imax_with_one_transmission_each() -> None:
    cfg = TrickleConfig(imin_s=1.0, doublings=3, k=10)  # Imax = 8 s
    trickle = Trickle(cfg, random.Random(1))
    trickle.start(0.0)
    sent = run_until(trickle, 1 + 2 + 4 + 8 + 8 - 0.001)
    assert len(sent) == 5
    starts = [0.0, 1.0, 3.0, 7.0, 15.0]
    sizes = [1.0, 2.0, 4.0, 8.0, 8.0]
    for t, start, size in zip(sent, starts, sizes, strict=True):
        assert start + size / 2 <= t < start + size  # t in [I/2, I)
    assert trickle.interval == cfg.imax_s


def test_k_consistent_messages_suppress_the_transmission() -> None:
    trickle = Trickle(TrickleConfig(imin_s=4.0, doublings=0, k=2), random.Random(2))
    trickle.start(0.0)
    trickle.consistent()
    trickle.consistent()
    assert trickle.poll(trickle.deadline()) is False
    assert trickle.suppressed == 1
    trickle.poll(trickle.deadline())  # interval ends: counter resets
    assert trickle.poll(trickle.deadline()) is True


def test_inconsistency_goes_back_to_imin() -> None:
    trickle = Trickle(TrickleConfig(imin_s=1.0, doublings=10), random.Random(3))
    trickle.start(0.0)
    run_until(trickle, 100.0)
    assert trickle.interval > 30
    trickle.inconsistent(100.0)
    assert trickle.interval == 1.0 and trickle.resets == 1
    assert 100.5 <= trickle.deadline() < 101.0
    trickle.inconsistent(100.2)  # already at Imin: no reset (RFC 6206 §4.2 step 6)
    assert trickle.resets == 1


def test_a_late_poll_catches_up_without_a_burst() -> None:
    """An owner that was busy polls long after the deadline: at most one transmission per call."""
    trickle = Trickle(TrickleConfig(imin_s=1.0, doublings=4), random.Random(4))
    trickle.start(0.0)
    assert trickle.poll(50.0) is True
    assert trickle.deadline() > 50.0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="Trickle"):
        Trickle(TrickleConfig(imin_s=0.0), random.Random(0))
