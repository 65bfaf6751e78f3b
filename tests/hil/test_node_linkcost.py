"""Link cost at a node: ETX from RSL, measured ETX with the RSL estimate as prior, ageing."""

from __future__ import annotations

import pytest

from firmware_agent.mesh.neighbours import NeighbourTable
from hil.node.linkcost import LinkCostConfig, LinkRecord, link_etx, link_rsl, rsl_etx

CFG = LinkCostConfig()


def test_rsl_maps_to_etx_solid_marginal_and_unusable() -> None:
    assert rsl_etx(-60.0, CFG) == 128
    assert rsl_etx(-93.0, CFG) == 128  # good from here up
    assert rsl_etx(-98.0, CFG) == 256  # half-way down the margin: ETX 2.0
    assert rsl_etx(-103.0, CFG) == 384  # the cut-off itself: ETX 3.0
    assert rsl_etx(-103.1, CFG) is None  # below it: not a link to use
    with pytest.raises(ValueError, match="rsl_good_dbm"):
        LinkCostConfig(rsl_good_dbm=-105.0)
    with pytest.raises(ValueError, match="bad link cost"):
        LinkCostConfig(etx_at_cutoff=100)


def test_measured_etx_is_attempts_over_acks() -> None:
    record = LinkRecord(window=4)
    assert record.etx() is None
    record.add(1, True, 0.0)
    record.add(3, True, 1.0)
    assert record.etx() == 256  # 4 attempts / 2 acks
    for t in range(4):
        record.add(4, False, 2.0 + t)
    assert record.etx() == 1024 and record.consecutive_failures == 4  # window full of losses
    assert record.streak_since == 2.0
    record.add(1, True, 9.0)
    assert record.consecutive_failures == 0


def test_one_lost_frame_makes_a_link_dearer_a_run_of_them_unusable() -> None:
    record = LinkRecord(window=CFG.window)
    assert link_etx(-80.0, record, CFG, 0.0) == 128  # nothing measured: the RSL estimate
    record.add(4, False, 1.0)
    assert link_etx(-80.0, record, CFG, 1.0) == 192  # (4 + 8 × 1) / (0 + 8) × 128
    for t in range(5):
        record.add(4, False, 2.0 + t)
    assert link_etx(-80.0, record, CFG, 8.0) == 512  # six lost: (24 + 8) / 8 × 128
    record.add(4, False, 9.0)
    assert link_etx(-80.0, record, CFG, 9.0) > 512  # over MAX_LINK_METRIC
    # A marginal link never looks better than its RSL says, whatever the acks.
    lucky = LinkRecord(window=CFG.window)
    for t in range(16):
        lucky.add(1, True, float(t))
    assert link_etx(-101.0, lucky, CFG, 16.0) == rsl_etx(-101.0, CFG)
    assert link_etx(None, lucky, CFG, 16.0) is None
    assert link_etx(-104.0, lucky, CFG, 16.0) is None


def test_an_unused_link_is_judged_on_its_rsl_again() -> None:
    record = LinkRecord(window=CFG.window)
    for t in range(8):
        record.add(4, False, float(t))
    assert link_etx(-80.0, record, CFG, 10.0) > 512
    assert link_etx(-80.0, record, CFG, 7.0 + CFG.memory_s + 1) == 128
    assert not record.frames


def test_a_link_works_at_the_weaker_of_rsl_in_and_out() -> None:
    table = NeighbourTable()
    nb = table.heard(b"\x02" * 8, -80, 200, 0, 0.0)
    assert link_rsl(nb) == -80.0
    table.reported_rsl(nb.mac, -97.0, 1.0)  # it hears us worse
    assert link_rsl(nb) == -97.0
    table.reported_rsl(nb.mac, -70.0, 2.0)
    assert link_rsl(nb) == -80.0
