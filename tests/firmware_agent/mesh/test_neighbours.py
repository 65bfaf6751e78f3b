"""The neighbour table: RSL, ETX, noise floor, SNR per frame and per link, classes and colours."""

from __future__ import annotations

import pytest

from firmware_agent.mesh.neighbours import (
    ETX_MAX,
    Colour,
    LinkThresholds,
    NeighbourTable,
    SnrClass,
    ewma,
    percentile,
)

A = bytes.fromhex("0200000000000001")


def test_ewma_uses_one_eighth() -> None:
    assert ewma(None, -80) == -80
    assert ewma(-80, -88) == pytest.approx(-81.0)  # -80 + (-88 - -80) / 8


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 10) == 1.0
    assert percentile(values, 50) == 5.0
    assert percentile(values, 90) == 9.0
    assert percentile([7.0], 90) == 7.0


def test_noise_floor_ignores_samples_that_caught_a_frame() -> None:
    table = NeighbourTable()
    for _ in range(20):
        table.noise_sample(3, -115)
    for _ in range(5):  # idle samples that landed on someone's transmission
        table.noise_sample(3, -70)
    assert table.noise_floor(3) == -115
    assert table.noise_floor(4) is None
    assert table.noise_floors() == {3: -115}


def test_snr_per_frame_and_per_link() -> None:
    table = NeighbourTable()
    table.noise_sample(0, -110)
    nb = table.heard(A, -90, 200, 0, when=10.0)
    assert nb.last_snr_db == 20 and nb.snr_db == 20
    nb = table.heard(A, -98, 150, 0, when=11.0)
    assert nb.last_snr_db == 12
    assert nb.snr_db == pytest.approx(19.0)  # 20 + (12 - 20) / 8
    assert nb.rsl_in_dbm == pytest.approx(-91.0)
    assert nb.frames_heard == 2 and nb.last_heard == 11.0 and nb.lqi == 150
    pct = nb.snr_percentiles()
    assert pct == {"p10": 12, "p50": 12, "p90": 20}


def test_no_snr_before_any_noise_floor() -> None:
    table = NeighbourTable()
    nb = table.heard(A, -90, 200, 0, when=1.0)
    assert nb.snr_db is None and nb.snr_percentiles() is None
    assert nb.snr_class(table.limits) is SnrClass.UNKNOWN


def test_etx_counts_attempts_per_ack_and_caps() -> None:
    table = NeighbourTable()
    table.heard(A, -90, 200, 0, when=1.0)
    nb = table.get(A)
    assert nb is not None and nb.etx is None
    table.transmitted(A, attempts=1, acked=True)
    table.transmitted(A, attempts=3, acked=True)
    assert nb.etx == 256  # 4 attempts / 2 acks × 128
    for _ in range(20):
        table.transmitted(A, attempts=4, acked=False)
    assert nb.etx == ETX_MAX and nb.tx_failures == 20


def test_rsl_out_comes_from_the_peer() -> None:
    table = NeighbourTable()
    table.heard(A, -90, 200, 0, when=1.0)
    table.reported_rsl(A, -87.0, when=2.0)
    nb = table.get(A)
    assert nb is not None and nb.rsl_out_dbm == -87.0 and nb.rsl_out_at == 2.0


def test_snr_classes_follow_the_thresholds() -> None:
    limits = LinkThresholds(snr_ok_db=14, snr_floor_db=8)
    table = NeighbourTable(limits)
    table.noise_sample(0, -110)
    for rssi, expected in ((-90, SnrClass.OK), (-100, SnrClass.MARGINAL), (-105, SnrClass.LOW)):
        mac = bytes([rssi & 0xFF]) * 8
        nb = table.heard(mac, rssi, 100, 0, when=0.0)
        assert nb.snr_class(limits) is expected, rssi


def test_colours_red_when_silent_orange_on_loss_or_latency() -> None:
    limits = LinkThresholds(silent_after_s=900, latency_limit_s=2.0)
    table = NeighbourTable(limits)
    nb = table.heard(A, -90, 200, 0, when=1000.0)
    assert nb.colour(limits, now=1500.0) is Colour.GREEN
    assert nb.colour(limits, now=1901.0) is Colour.RED
    table.round_trip(A, 2.5)
    assert nb.colour(limits, now=1500.0) is Colour.ORANGE
    table.round_trip(A, 0.2)  # the EWMA comes down slowly: still over the limit once
    assert nb.latency_s == pytest.approx(2.5 + (0.2 - 2.5) / 8)
    fresh = NeighbourTable(limits)
    nb2 = fresh.heard(A, -90, 200, 0, when=0.0)
    fresh.transmitted(A, attempts=3, acked=True)  # ETX 384 > 256: lossy
    assert nb2.colour(limits, now=1.0) is Colour.ORANGE


def test_rows_are_json_able_and_complete() -> None:
    table = NeighbourTable()
    table.noise_sample(0, -112)
    table.heard(A, -92, 180, 0, when=100.0)
    table.transmitted(A, attempts=1, acked=True)
    (row,) = table.rows(now=130.0)
    assert row["mac"] == A.hex()
    assert row["snr_db"] == 20.0 and row["noise_floor_dbm"] == -112
    assert row["etx"] == 128 and row["last_heard_s_ago"] == 30.0
    assert row["snr_class"] == "ok" and row["colour"] == "green"


def test_etx_follows_a_link_that_goes_bad() -> None:
    """A month of good frames does not hide a link that stops acking now."""
    table = NeighbourTable()
    nb = table.heard(A, -90, 200, 0, when=1.0)
    for _ in range(1000):
        table.transmitted(A, attempts=1, acked=True)
    assert nb.etx == 128
    table.transmitted(A, attempts=4, acked=False)
    table.transmitted(A, attempts=4, acked=False)
    assert nb.etx == round((6 + 8) / 6 * 128)  # the last 8: six good, two lost after 4 tries
    for _ in range(8):
        table.transmitted(A, attempts=4, acked=False)
    assert nb.etx == ETX_MAX
    table.transmitted(A, attempts=1, acked=True)
    assert nb.etx == ETX_MAX  # 29 attempts for one ack in the window: still capped
    for _ in range(7):
        table.transmitted(A, attempts=1, acked=True)
    assert nb.etx == 128  # recovered once the window holds only good frames
