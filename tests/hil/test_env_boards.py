"""Environment files: injectors, baud, power commands, and `hil boards`' ready-to-paste YAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.discover import BoardCandidate, UdevNode, candidate_from_udev
from hil.env import EnvError, env_yaml, load_env

ROOT = Path(__file__).resolve().parents[2]
METERS = (ROOT / "config" / "hil" / "emulated-meters.yaml").resolve()
FIXTURES = json.loads((ROOT / "tests" / "drivers" / "udev_boards.json").read_text())["boards"]


def _node(data: dict[str, Any]) -> UdevNode:
    return UdevNode(data["sys_path"], data["subsystem"], data["properties"], data["attributes"])


def _board(name: str) -> BoardCandidate:
    entry = FIXTURES[name]
    return candidate_from_udev(_node(entry["device"]), [_node(a) for a in entry["ancestors"]])


def _env(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(f"name: bench\nmeters: {METERS}\n{body}")
    return path


def test_injectors_baud_and_power_commands_are_read(tmp_path: Path) -> None:
    tty = tmp_path / "ttyFAKE0"
    tty.touch()
    env = load_env(
        _env(
            tmp_path,
            "gateway:\n  id: gw-7\n"
            f"  radio: {{kind: url, url: 'spinel+uart://{tty}', usb_path: 1-1.2,\n"
            "          power_command: 'relay 1 {state}'}\n"
            "injectors:\n"
            f"  east: {{kind: url, url: 'spinel+uart://{tty}', meters: [MTR-0001, MTR-0002]}}\n",
        )
    )
    assert env.absent is None and env.radio is not None
    assert env.radio.power_command == "relay 1 {state}" and env.radio.usb_path == "1-1.2"
    (east,) = env.injectors
    assert (east.role, east.kind, east.meters) == ("east", "url", ("MTR-0001", "MTR-0002"))


def test_the_default_target_tunes_its_gateway_config() -> None:
    env = load_env(ROOT / "config" / "hil" / "emulated.yaml")
    assert env.gateway_config["mesh"]["snr_floor_db"] == 8  # its layout's fade goes below it


def test_an_absent_injector_makes_the_target_absent(tmp_path: Path) -> None:
    env = load_env(
        _env(
            tmp_path,
            "gateway:\n  id: gw-7\n  radio: {kind: virtual-rcp}\n"
            "injectors:\n  west: {kind: url, url: 'spinel+uart:///dev/serial/by-id/gone'}\n",
        )
    )
    assert env.absent == "injector west: radio board /dev/serial/by-id/gone is not connected"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("  radio: {kind: udev, baud: fast, match: {ID_SERIAL_SHORT: x}}\n", "baud must be a pos"),
        ("  radio: {kind: virtual-rcp, power_command: ''}\n", "power_command must be a command"),
        ("  radio: {kind: virtual-rcp}\ninjectors: [a]\n", "injectors must be a mapping"),
        ("  radio: {kind: virtual-rcp, usb_path: /sys/x}\n", "usb_path must be a USB device"),
        ("  radio: {kind: virtual-rcp}\n  config: {mesh: 3}\n", "gateway.config must map"),
        ("  radio: {kind: virtual-rcp}\ninjectors: {a: {kind: virtual-rcp}}\n", "real board"),
        ("  radio: {kind: virtual-rcp}\ninjectors: {a: {kind: url, url: 'x://y', meters: 3}}\n",
         "injectors.a.meters must be a list"),
    ],
)  # fmt: skip
def test_bad_boards_are_environment_errors(tmp_path: Path, body: str, complaint: str) -> None:
    with pytest.raises(EnvError, match=r"bench\.yaml: ") as caught:
        load_env(_env(tmp_path, "gateway:\n  id: gw-7\n" + body))
    assert complaint in str(caught.value)


def test_boards_yaml_pastes_into_an_environment_that_matches_by_udev(tmp_path: Path) -> None:
    pytest.importorskip("pyudev")
    boards = [_board("cp210x"), _board("xds110_if00"), _board("rpi_spidev0_0")]
    text = env_yaml(boards, baud=230_400)
    assert text.startswith("# /dev/ttyUSB0")  # each board described in a comment
    (tmp_path / "emulated-meters.yaml").write_text(METERS.read_text())
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(text)
    env = load_env(pasted)
    assert env.radio is not None and env.radio.kind == "udev"
    assert env.radio_match == {"ID_SERIAL_SHORT": boards[0].serial}
    assert env.radio_url.startswith("spinel+uart://") and "baudrate=230400" in env.radio_url
    assert [b.role for b in env.injectors] == ["injector-1", "injector-2"]
    assert env.injectors[1].url.startswith("spinel+spi://")
    # The boards are not plugged in here: the target is absent, with the reason.
    assert env.absent is not None and "no radio board matches" in env.absent
    assert "/dev/ttyUSB0" not in text.split("\n", 3)[3]  # matched by udev, never by /dev name


def test_hil_boards_lists_what_is_connected_and_exits_0() -> None:
    pytest.importorskip("pyudev")
    done = subprocess.run(
        [sys.executable, "-m", "hil", "boards"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "no radio boards found" in done.stdout or (
        "# an environment for them" in done.stdout and "kind: udev" in done.stdout
    ), done.stdout


def test_the_acceptance_suite_skips_on_a_bench_whose_board_is_not_connected(
    tmp_path: Path,
) -> None:
    """The done-when line: the same command against a udev board that is not plugged in skips
    every acceptance test with the reason and exits 0."""
    pytest.importorskip("pyudev")
    env = _env(
        tmp_path,
        "gateway:\n  id: gateway-01\n"
        "  radio: {kind: udev, match: {ID_SERIAL_SHORT: 'bench-board-absent-42'}, baud: 460800}\n"
        "features: [uart]\n",
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "--hil-env", str(env), str(ROOT / "tests" / "hil" / "acceptance")],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" not in done.stdout and " failed" not in done.stdout, done.stdout[-3000:]
    assert "no radio board matches {ID_SERIAL_SHORT=bench-board-absent-42}" in done.stdout
    assert "lacks link-fade" in done.stdout  # a feature the bench does not list: its own reason
