"""The shipped systemd unit: valid for systemd, hardened, and pointing at real commands."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "firmware-agent.service"
INSTALLED = "/opt/firmware-agent/venv/bin/firmware-agent"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def _local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's agent, since verify checks it exists."""
    agent = Path(sys.executable).with_name("firmware-agent")
    assert agent.exists(), f"{agent} missing: is the package installed in this venv?"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(agent)))
    return copy


def test_runs_as_unprivileged_user_with_restart_policy() -> None:
    service = _unit()["Service"]
    assert service["User"] not in ("", "root")
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["ExecStart"].startswith(INSTALLED + " run --config ")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_local_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "firmware-agent.service" not in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_security_exposure_is_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(_local_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    line = next(ln for ln in result.stdout.splitlines() if "Overall exposure level" in ln)
    score = float(line.split(":")[1].split()[0])
    assert score <= 5.0, line
