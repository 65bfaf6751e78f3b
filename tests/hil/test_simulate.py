"""``hil simulate``: the whole agent against an emulated mesh, in virtual time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil.scenario import load_scenario
from hil.simulate import simulate

ROOT = Path(__file__).resolve().parents[2]


def test_snr_measured_by_the_gateway_matches_the_medium_within_2_db() -> None:
    """The gateway's SNR (RSSI of frames minus its own noise-floor estimate from idle samples)
    against the medium's ground truth (mean received power minus the thermal floor)."""
    _, summary = simulate(load_scenario("link-fade"), 3000.0)  # before the fade starts
    rows = {row["meter_id"]: row for row in summary["neighbours"]}
    assert set(rows) == {"MTR-0001", "MTR-0002"}
    for row in rows.values():
        assert row["frames_heard"] >= 10
        assert row["snr_db"] == pytest.approx(row["snr_truth_db"], abs=2.0), row
    assert summary["reads"]["ok"] >= 4 and summary["reads"]["failed"] == 0


def test_cli_prints_a_summary_and_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "hil", "simulate", "--scenario", "link-fade",
         "--duration", "30m", "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "scenario link-fade (seed 7): 2 meters, 0.5 h simulated" in done.stdout
    data = json.loads(report.read_text())
    assert data["scenario"] == "link-fade" and data["simulated_s"] == 1800.0
    assert data["reads"]["ok"] >= 2


def test_unknown_scenario_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hil", "simulate", "--scenario", "no-such"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no scenario 'no-such'" in done.stderr and "line-10" in done.stderr
