"""The rig's plugin: an absent board skips with its reason; a missing feature skips; exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hil.env import DEFAULT_ENV, EnvError, load_env

ROOT = Path(__file__).resolve().parents[2]


def _bench_env(tmp_path: Path, device: str) -> Path:
    env = tmp_path / "bench.yaml"
    meters = (ROOT / "config" / "hil" / "emulated-meters.yaml").resolve()
    env.write_text(
        "name: bench-7\n"
        "gateway:\n"
        "  id: gateway-01\n"
        f"  radio: {{kind: url, url: 'spinel+uart://{device}?baudrate=460800'}}\n"
        f"meters: {meters}\n"
        "features: [uart]\n"
    )
    return env


def test_default_environment_is_the_emulated_target() -> None:
    env = load_env(DEFAULT_ENV)
    assert env.name == "emulated" and env.absent is None
    assert env.radio_url.startswith("spinel+pty://?meters=")
    assert env.meters_file.exists()


def test_environment_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmeters: m.yaml\n")
    with pytest.raises(EnvError, match=r"bad.yaml: missing key 'gateway'"):
        load_env(bad)


def test_absent_board_skips_the_suite_with_the_reason(tmp_path: Path) -> None:
    env = _bench_env(tmp_path, "/dev/serial/by-id/usb-not-plugged-in")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--hil-env",
            str(env),
            str(ROOT / "tests" / "hil" / "test_thin_path.py"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 skipped" in result.stdout
    assert "radio board /dev/serial/by-id/usb-not-plugged-in is not connected" in result.stdout


def test_missing_feature_skips_with_the_reason(tmp_path: Path) -> None:
    test = tmp_path / "test_needs_spi.py"
    test.write_text(
        "import pytest\n\n"
        "@pytest.mark.hil_feature('spi')\n"
        "def test_spi():\n"
        "    raise AssertionError('must not run')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "target 'emulated' lacks spi" in result.stdout
