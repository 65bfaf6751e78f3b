"""The shipped systemd files: valid for systemd, hardened, and consistent with each other, with
the udev rules, with the agent's sd_notify code and with what docs/operator.md reports.

``systemd-analyze verify``/``security --offline=yes``, ``systemd-sysusers --root`` and
``systemd-tmpfiles --root`` all work without a running systemd (Debian 12: systemd 252), so they
run for real; each test skips, with the reason, only where its tool is absent.
"""

from __future__ import annotations

import configparser
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.sdnotify import Notifier, WatchdogFeeder, read_env

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "firmware-agent.service"
SYSUSERS = SYSTEMD / "sysusers.d" / "firmware-agent.conf"
TMPFILES = SYSTEMD / "tmpfiles.d" / "firmware-agent.conf"
RULES = SYSTEMD / "60-wisun-radio.rules"
OPERATOR_DOC = ROOT / "docs" / "operator.md"
INSTALLED = "/opt/firmware-agent/venv/bin/firmware-agent"
# udev KERNEL name of a radio node → its /proc/devices group (drivers: usbserial, cdc_acm, spidev)
RADIO_GROUPS = {"ttyUSB": "ttyUSB", "ttyACM": "ttyACM", "spidev": "spi"}

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def _all(section: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    values, current = [], None
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.split("=", 1)[0] == key:
            values.append(line.split("=", 1)[1])
    return values


def _local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's agent, since verify checks it exists."""
    agent = Path(sys.executable).with_name("firmware-agent")
    assert agent.exists(), f"{agent} missing: is the package installed in this venv?"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(agent)))
    return copy


def _table(path: Path) -> list[list[str]]:
    """sysusers.d/tmpfiles.d lines as fields (quoted GECOS kept whole)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append([a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', line)])
    return rows


def test_runs_as_its_own_user_with_restart_policy() -> None:
    service = _unit()["Service"]
    (user_line,) = _table(SYSUSERS)
    assert user_line[:2] == ["u", "firmware-agent"]
    assert service["User"] == service["Group"] == "firmware-agent"
    assert "SupplementaryGroups" not in service, "boards come through udev, not dialout"
    assert service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}
    assert service["ExecStart"].startswith(INSTALLED + " run --config ")
    # an ExecStartPre failure is not covered by RestartPreventExitStatus: `run` checks itself
    assert "ExecStartPre" not in service


def test_hardening_settings_the_issue_asks_for() -> None:
    service = _unit()["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "firmware-agent"
    assert service["CapabilityBoundingSet"] == ""
    assert service["DevicePolicy"] == "closed"
    assert "PrivateDevices" not in service, "it would hide the radio boards"


def test_device_allow_is_exactly_the_radio_groups_the_udev_rules_grant() -> None:
    allowed = {value.split()[0]: value.split()[1] for value in _all("Service", "DeviceAllow")}
    kernels = set(re.findall(r"KERNEL[!=]=\"([^\"]+)\"", RULES.read_text()))
    names = {alt.rstrip("[0-9]*") for k in kernels for alt in k.split("|")}
    assert names == set(RADIO_GROUPS), names
    assert allowed == {f"char-{RADIO_GROUPS[n]}": "rw" for n in names}
    # groups are resolved at start: their drivers are loaded before the service starts
    unit = _unit()["Unit"]
    for module in ("usbserial", "cdc_acm", "spidev"):
        assert f"modprobe@{module}.service" in unit["Wants"].split()
        assert f"modprobe@{module}.service" in unit["After"].split()


def test_notify_and_watchdog_match_the_agents_feeder() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    watchdog = float(service["WatchdogSec"].removesuffix("s"))
    assert 10 <= watchdog <= 120
    # what systemd puts in the agent's environment for this unit, read by the agent's code
    env = read_env(
        {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": str(int(watchdog * 1e6))}, 1
    )
    feeder = WatchdogFeeder(Notifier(None, env.watchdog_s), SystemClock())
    assert env.watchdog_s == watchdog and feeder.period_s is None  # disabled: no socket
    feeder = WatchdogFeeder(Notifier("/run/systemd/notify", env.watchdog_s), SystemClock())
    assert feeder.period_s == watchdog / 2


def test_tmpfiles_dirs_belong_to_the_units_user_and_state_dir() -> None:
    service = _unit()["Service"]
    rows = {row[1]: row for row in _table(TMPFILES)}
    state = rows[f"/var/lib/{service['StateDirectory']}"]
    assert state[0] == "d" and state[2] == service["StateDirectoryMode"]
    assert state[3:5] == [service["User"], service["Group"]]
    for conf in ("/etc/firmware-agent", "/etc/firmware-agent/pki"):
        assert rows[conf][:5] == ["d", conf, "0750", "root", service["Group"]]
    assert service["ExecStart"].split("--config ")[1].startswith("/etc/firmware-agent/")


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles not installed",
)
def test_sysusers_and_tmpfiles_applied_to_an_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for argv in (
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
        ["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    passwd = {
        ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()
    }
    user = passwd["firmware-agent"]
    uid, gid, home, shell = int(user[2]), int(user[3]), user[5], user[6]
    assert 0 < uid < 1000 and home == "/var/lib/firmware-agent" and shell.endswith("nologin")
    assert f"firmware-agent:x:{gid}:" in (root / "etc/group").read_text()
    expected = {
        "etc/firmware-agent": (0o750, 0, gid),
        "etc/firmware-agent/pki": (0o750, 0, gid),
        "var/lib/firmware-agent": (0o700, uid, gid),
    }
    for rel, (mode, owner, group) in expected.items():
        st = (root / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, owner, group), rel


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_local_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "firmware-agent.service" not in result.stderr, result.stderr


def _exposure(tmp_path: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(_local_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    line = next(ln for ln in result.stdout.splitlines() if "Overall exposure level" in ln)
    return float(line.split(":")[1].split()[0])


@needs_analyze
def test_security_exposure_is_low_and_the_operator_guide_says_so(tmp_path: Path) -> None:
    score = _exposure(tmp_path)
    assert score <= 2.0, f"exposure {score}: a hardening setting was lost"
    documented = re.search(r"exposure level[^0-9]*([0-9]+\.[0-9])", OPERATOR_DOC.read_text())
    assert documented is not None, "docs/operator.md must report the exposure score"
    assert float(documented.group(1)) == score, "update the score in docs/operator.md"
