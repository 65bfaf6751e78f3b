"""``firmware-agent boards``: the real command on this machine, without pyudev, and the pasted
YAML: fed back through the config loader, it selects exactly the board it was printed for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drivers.discover import BoardCandidate, BoardMatch, UdevNode, candidate_from_udev, list_boards
from firmware_agent.cli import _match_yaml
from firmware_agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = json.loads((REPO / "tests" / "drivers" / "udev_boards.json").read_text())["boards"]
PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "firmware-agent"
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_boards_on_this_machine_exits_0() -> None:
    pytest.importorskip("pyudev")
    present = list_boards()
    done = agent_cli("boards")
    assert done.returncode == 0, done.stderr
    if not present:  # this container: no USB bus, no spidev
        assert done.stdout == "no radio boards found (no USB serial or spidev device is present)\n"
    else:
        for board in present:
            assert board.device_node in done.stdout
        assert done.stdout.count("  match:\n") == len(present)


def test_boards_without_pyudev_exits_1_saying_what_to_install() -> None:
    # pyudev made unimportable in a real child process (sys.modules entry None = not installed)
    code = (
        "import sys; sys.modules['pyudev'] = None\n"
        "from firmware_agent.cli import main\n"
        "raise SystemExit(main(['boards']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("firmware-agent: cannot list radio boards: board discovery needs")
    assert "pip install 'wisun-gateway[gateway]'" in done.stderr


def _board(name: str) -> BoardCandidate:
    entry = FIXTURES[name]

    def node(data: dict[str, object]) -> UdevNode:
        return UdevNode(
            str(data["sys_path"]),
            str(data["subsystem"]),
            data["properties"],  # type: ignore[arg-type]
            data["attributes"],  # type: ignore[arg-type]
        )

    return candidate_from_udev(node(entry["device"]), [node(a) for a in entry["ancestors"]])


@pytest.mark.parametrize("name", ["cp210x", "xds110_if00", "xds110_if03", "rpi_spidev0_0"])
def test_pasted_radio_section_loads_and_selects_that_board(tmp_path: Path, name: str) -> None:
    names = ["cp210x", "xds110_if00", "xds110_if03", "nrf52840_dongle", "rpi_spidev0_0", "ttyS0"]
    boards = [_board(n) for n in names]
    board = _board(name)
    pasted = _match_yaml(board, boards)
    pki = tmp_path / "pki"
    pki.mkdir()
    for file in ("ca.crt", "gw.crt", "gw.key"):
        (pki / file).write_text(PEM)
    (pki / "gw.key").chmod(0o600)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "gateway: {id: gw-1}\n" + pasted + "uplink:\n"
        "  broker_url: mqtts://127.0.0.1:8883\n"
        "  tls: {ca_file: pki/ca.crt, cert_file: pki/gw.crt, key_file: pki/gw.key}\n"
        "spool: {path: spool.sqlite}\n"
        "meters: []\n"
    )
    radio = load_config(config).radio
    assert radio.match is not None
    assert radio.match == yaml.safe_load(pasted)["radio"]["match"]
    assert BoardMatch(radio.match).select(boards) == board
    scheme = "spinel+spi" if board.subsystem == "spidev" else "spinel+uart"
    assert radio.url.startswith(f"{scheme}://?")
