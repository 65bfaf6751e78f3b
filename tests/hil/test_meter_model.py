"""The emulated meter's physics: deterministic, in range, and internally consistent."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from hil.meter.model import MeterModel

NOW = 1_700_000_000.0


def model(seed: int = 7, **kw: float) -> MeterModel:
    return MeterModel(f"M{seed}", random.Random(seed), **kw)  # type: ignore[arg-type]


def test_same_seed_same_rows_and_reads_of_one_interval_agree() -> None:
    a, b = model(3), model(3)
    assert a.rows_between(NOW - 86_400, NOW, NOW) == b.rows_between(NOW - 86_400, NOW, NOW)
    # reading the same interval later (clock moved on) gives the same row
    assert a.rows_between(NOW - 3600, NOW, NOW) == a.rows_between(NOW - 3600, NOW, NOW + 5000)[:4]
    assert model(4).interval(1_888_888) != a.interval(1_888_888)


@pytest.mark.parametrize("seed", range(12))
def test_quantities_in_range_and_consistent(seed: int) -> None:
    m = model(seed)
    rows = m.rows_between(NOW - 2 * 86_400, NOW, NOW)
    assert len(rows) == 192
    for r in rows:
        assert 0.21 <= r.vltg_kv <= 0.24
        assert 0.85 <= r.pf <= 0.99
        assert r.kva == pytest.approx(r.vltg_kv * r.crrnt_a, abs=1.8e-3)  # I to 0.01 A
        assert r.kw == pytest.approx(r.kva * r.pf, abs=0.6e-3)  # VA to 1
        assert isinstance(r.load, int) and 0 < r.load < 100
        assert r.load == round(100 * r.kw * 1000 / m.rated_w)


def test_energy_accumulates_with_power() -> None:
    m = model(5)
    rows = m.rows_between(NOW - 86_400, NOW, NOW)
    for prev, cur in itertools.pairwise(rows):
        step_wh = cur.energy_wh - prev.energy_wh
        assert step_wh > 0
        assert cur.kw * 1000 * m.profile_period_s / 3600 == pytest.approx(step_wh, abs=1)
    # instantaneous register: interpolates inside the interval at that interval's power
    k = m.interval_index(NOW)
    t0 = m.capture_time(k - 1)
    first, later = m.instant(t0 + 100), m.instant(t0 + 700)
    assert first.kw == later.kw == m.interval(k).kw
    expect_wh = first.kw * 1000 * 600 / 3600
    assert later.energy_wh - first.energy_wh == pytest.approx(expect_wh, abs=1.5)
    assert m.instant(m.capture_time(k)).energy_wh == m.interval(k).energy_wh


def test_rows_only_up_to_now_inclusive_bounds_and_depth() -> None:
    m = model(1, profile_depth=10)
    newest = m.newest_index(NOW)
    assert m.capture_time(newest) <= NOW < m.capture_time(newest + 1)
    rows = m.rows_between(m.capture_time(newest - 2), NOW + 10_000, NOW)
    assert [r.time for r in rows] == [m.capture_time(k) for k in (newest - 2, newest - 1, newest)]
    assert len(m.rows_between(0, NOW, NOW)) == 10
    assert m.rows_by_entry(1, 0, NOW)[0].time == m.capture_time(newest - 9)
    assert [r.time for r in m.rows_by_entry(9, 0, NOW)] == [
        m.capture_time(newest - 1),
        m.capture_time(newest),
    ]


def test_period_and_offset() -> None:
    m = model(2, profile_period_s=300, clock_offset_s=-12.5)
    assert m.meter_time(NOW) == NOW - 12.5
    rows = m.rows_between(NOW - 3000, NOW, NOW)
    assert all(math.isclose(r.time % 300, 0) for r in rows)
    with pytest.raises(ValueError):
        model(2, profile_period_s=0)
