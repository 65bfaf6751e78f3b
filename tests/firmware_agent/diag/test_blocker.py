"""The handshake-failure fail-safe (seed 000: more than five failed handshakes → temporarily
blacklisted), on an injected clock: the 6th attempt is refused, the block ends on time."""

from __future__ import annotations

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.diag.blocker import BlockerSettingsError, HandshakeBlocker, Verdict, normalise


def test_fifth_failure_blocks_sixth_attempt_refused_released_after_timeout() -> None:
    clock = ManualClock()
    b = HandshakeBlocker(clock, max_failures=5, block_s=300, window_s=600)
    for n in range(1, 5):
        assert b.check("192.0.2.7").verdict is Verdict.ALLOW
        d = b.failed("192.0.2.7", "TLSV1_ALERT_UNKNOWN_CA")
        assert (d.verdict, d.failures) == (Verdict.COUNTED, n)
        assert "UNKNOWN_CA" in d.message
    assert b.check("192.0.2.7").allowed
    fifth = b.failed("192.0.2.7", "bad certificate")
    assert fifth.verdict is Verdict.BLOCKED_NOW
    assert fifth.blocked_until == pytest.approx(clock.now() + 300)
    assert "blocked for 300 s after 5 failed TLS handshakes" in fifth.message
    sixth = b.check("192.0.2.7")
    assert sixth.verdict is Verdict.REFUSE and not sixth.allowed
    assert "blocked for another 300 s" in sixth.message
    assert b.blocked() == {"192.0.2.7": pytest.approx(clock.now() + 300)}
    # Another address is not affected.
    assert b.check("192.0.2.8").allowed
    clock.advance(299)
    assert b.check("192.0.2.7").verdict is Verdict.REFUSE  # attempts do not extend the block
    clock.advance(1.5)
    released = b.check("192.0.2.7")
    assert released.verdict is Verdict.RELEASED and released.allowed
    assert "2 attempts refused meanwhile" in released.message
    assert b.blocked() == {} and b.failures("192.0.2.7") == 0
    assert (b.blocks_total, b.refused_total) == (1, 2)


def test_a_good_handshake_forgets_earlier_failures() -> None:
    b = HandshakeBlocker(ManualClock(), max_failures=3)
    b.failed("10.0.0.1")
    b.failed("10.0.0.1")
    b.succeeded("10.0.0.1")
    assert b.failures("10.0.0.1") == 0
    assert b.failed("10.0.0.1").verdict is Verdict.COUNTED


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = ManualClock()
    b = HandshakeBlocker(clock, max_failures=2, window_s=60)
    b.failed("10.0.0.1")
    clock.advance(61)
    assert b.failed("10.0.0.1").verdict is Verdict.COUNTED
    assert b.failed("10.0.0.1").verdict is Verdict.BLOCKED_NOW


def test_ipv4_mapped_and_plain_addresses_are_one_peer() -> None:
    b = HandshakeBlocker(ManualClock(), max_failures=2)
    b.failed("::ffff:192.0.2.1")
    assert b.failed("192.0.2.1").verdict is Verdict.BLOCKED_NOW
    assert normalise("fe80::1%eth0") == "fe80::1"
    assert normalise("not-an-ip") == "not-an-ip"


def test_the_table_is_bounded_and_keeps_live_blocks() -> None:
    b = HandshakeBlocker(ManualClock(), max_failures=1, max_addresses=3)
    assert b.failed("10.0.0.1").verdict is Verdict.BLOCKED_NOW
    b2 = HandshakeBlocker(ManualClock(), max_failures=5, max_addresses=3)
    for i in range(10):
        b2.failed(f"10.0.1.{i}")
    assert sum(b2.failures(f"10.0.1.{i}") for i in range(10)) == 3
    assert b2.failures("10.0.1.9") == 1  # the newest kept, the oldest evicted


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"max_failures": 0}, "max_failures"), ({"block_s": 0}, "block_s"),
     ({"window_s": -1}, "window_s"), ({"max_addresses": 0}, "max_addresses")],
)  # fmt: skip
def test_bad_settings_are_named(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(BlockerSettingsError, match=name):
        HandshakeBlocker(ManualClock(), **kwargs)  # type: ignore[arg-type]
