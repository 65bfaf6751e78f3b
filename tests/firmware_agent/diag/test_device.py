"""``hes-diag --check-snr --device PORT`` on a board plugged into the laptop: here the virtual
RCP served on a real PTY by ``hil rcp --pty`` with the demo's emulated meters around it, driven
by the production Spinel driver over pyserial, exactly as a USB board would be."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[3]
HES_DIAG = Path(sys.executable).with_name("hes-diag")


@pytest.fixture
def rcp_pty() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil", "rcp", "--pty", "--seed", "1",
         "--meters", str(ROOT / "config" / "demo-meters.yaml"), "--first-dis", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/"), path
        yield path
    finally:
        proc.terminate()
        proc.wait(10)


def test_device_check_scans_channels_and_measures_frames_heard(rcp_pty: str) -> None:
    done = subprocess.run(
        [str(HES_DIAG), "--check-snr", "--device", rcp_pty, "--channels", "0-5",
         "--listen-s", "6", "--threshold-db", "10", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    doc = json.loads(done.stdout)
    schema = json.loads((ROOT / "docs" / "schemas" / "diag-check-snr.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["schema"] == "hes-diag/check-snr-device/1"
    assert done.returncode == doc["exit_code"] in (0, 1), done.stderr
    assert sorted(doc["noise_floor_dbm"]) == [str(c) for c in range(6)]
    assert all(-125 < v < -100 for v in doc["noise_floor_dbm"].values())
    assert doc["device"]["frames_heard"] >= 1 and doc["links"], doc
    for link in doc["links"]:  # the emulated meters' DIS frames, SNR against our own floor
        assert link["neighbour"].startswith("02000000000000")
        assert link["snr_db"] == pytest.approx(link["rssi_dbm"] - link["noise_floor_dbm"], abs=6)


def test_device_that_does_not_exist_exits_2_with_the_reason() -> None:
    done = subprocess.run(
        [str(HES_DIAG), "--check-snr", "--device", "/dev/ttyNOPE9", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    doc = json.loads(done.stdout)
    assert done.returncode == 2 and doc["error"]["kind"] == "device"
    assert "/dev/ttyNOPE9" in doc["error"]["reason"]
