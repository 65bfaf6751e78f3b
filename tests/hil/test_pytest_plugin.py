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


def _udev_env(tmp_path: Path, radio: str) -> Path:
    env = tmp_path / "bench-udev.yaml"
    meters = (ROOT / "config" / "hil" / "emulated-meters.yaml").resolve()
    env.write_text(
        "name: bench-udev\n"
        "gateway:\n"
        "  id: gateway-01\n"
        f"  radio: {radio}\n"
        f"meters: {meters}\n"
        "features: [uart]\n"
    )
    return env


UDEV_RADIO = (
    "{kind: udev, match: {ID_SERIAL_SHORT: 'not-plugged-in-0000', '@ID_PATH': 'pci-*'}, "
    "options: {baudrate: 460800}}"
)


def test_udev_board_that_is_not_connected_makes_the_target_absent(tmp_path: Path) -> None:
    pytest.importorskip("pyudev")
    env = load_env(_udev_env(tmp_path, UDEV_RADIO))
    assert env.radio_match == {"ID_SERIAL_SHORT": "not-plugged-in-0000", "@ID_PATH": "pci-*"}
    assert env.radio_url == "spinel+uart://?baudrate=460800"  # no device: nothing matched
    assert env.absent is not None
    assert env.absent.startswith(
        "no radio board matches {ID_SERIAL_SHORT=not-plugged-in-0000, @ID_PATH=pci-*}; boards seen:"
    )
    assert "\n" not in env.absent


def test_udev_board_that_is_not_connected_skips_the_suite_with_the_reason(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pyudev")
    env = _udev_env(tmp_path, UDEV_RADIO)
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
    assert (
        "target 'bench-udev': no radio board matches "
        "{ID_SERIAL_SHORT=not-plugged-in-0000, @ID_PATH=pci-*}" in result.stdout
    )


@pytest.mark.parametrize(
    ("radio", "complaint"),
    [
        ("{kind: udev}", "missing key 'match'"),
        ("{kind: udev, match: {ID_SERIAL_SHORT: 123}}", "must be a string (quote it in YAML)"),
        ("{kind: udev, match: [a]}", "a udev match must be a mapping"),
        (
            "{kind: udev, transport: usb, match: {ID_SERIAL_SHORT: x}}",
            "gateway.radio.transport must be uart or spi, got 'usb'",
        ),
        ("{kind: serial}", "gateway.radio.kind must be virtual-rcp, url or udev, got 'serial'"),
    ],
)
def test_bad_udev_radio_is_an_environment_error(tmp_path: Path, radio: str, complaint: str) -> None:
    with pytest.raises(EnvError, match=r"bench-udev\.yaml: ") as caught:
        load_env(_udev_env(tmp_path, radio))
    assert complaint in str(caught.value)
