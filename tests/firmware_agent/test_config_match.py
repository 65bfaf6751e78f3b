"""radio.match: a board named by udev properties; accepted shapes and every rejection placed by
key path and line. The board never has to be present for the config to load."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_agent.cli import main, summary
from firmware_agent.config import ConfigError, load_config

BASE = """\
gateway: {{id: gw-1}}
radio:
  url: {url}
  match:
{match}
uplink:
  broker_url: mqtts://127.0.0.1:8883
  tls: {{ca_file: pki/ca.crt, cert_file: pki/gw.crt, key_file: pki/gw.key}}
spool: {{path: spool.sqlite}}
meters: []
"""
UART = '"spinel+uart://?baudrate=460800"'
PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"


def write(tmp_path: Path, match: str, url: str = UART) -> Path:
    pki = tmp_path / "pki"
    pki.mkdir(exist_ok=True)
    for name in ("ca.crt", "gw.crt", "gw.key"):
        (pki / name).write_text(PEM)
    (pki / "gw.key").chmod(0o600)
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE.format(url=url, match=match))
    return path


def reject(tmp_path: Path, match: str, url: str = UART) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, match, url))
    assert caught.value.exit_code == 2
    return caught.value


def test_match_loads_as_a_mapping_and_the_url_may_leave_out_the_device(tmp_path: Path) -> None:
    match = '    ID_SERIAL_SHORT: "0123"\n    "@ID_PATH": "pci-0000:00:14.0-usb-0:*"'
    radio = load_config(write(tmp_path, match)).radio
    assert radio.match == {"ID_SERIAL_SHORT": "0123", "@ID_PATH": "pci-0000:00:14.0-usb-0:*"}
    assert radio.url == "spinel+uart://?baudrate=460800"


def test_a_device_path_next_to_a_match_is_accepted_as_a_placeholder(tmp_path: Path) -> None:
    url = '"spinel+spi:///dev/spidev0.0?speed_hz=1000000"'
    radio = load_config(write(tmp_path, "    DEVNAME: /dev/spidev*", url)).radio
    assert radio.match == {"DEVNAME": "/dev/spidev*"}


def test_without_a_match_the_radio_has_none(tmp_path: Path) -> None:
    path = write(tmp_path, "    null", url='"spinel+uart:///dev/ttyACM0"')
    assert load_config(path).radio.match is None
    text = path.read_text().replace("  match:\n    null\n", "")
    assert "match" not in text
    path.write_text(text)
    assert load_config(path).radio.match is None


def test_check_config_passes_with_no_board_plugged_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '    ID_SERIAL_SHORT: "no-such-board-here"')
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    expected = (
        "radio spinel+uart://?baudrate=460800 (board matching {ID_SERIAL_SHORT=no-such-board-here})"
    )
    assert expected in out
    assert "board matching" in summary(load_config(path))


@pytest.mark.parametrize(
    ("match", "where", "complaint"),
    [
        # a serial number YAML reads as an integer
        (
            "    ID_SERIAL_SHORT: 0123",
            "radio.match.ID_SERIAL_SHORT (line 5)",
            'expected a string, got an integer 0123 (write it in quotes: "0123")',
        ),
        (
            "    ID_SERIAL_SHORT: [a, b]",
            "radio.match.ID_SERIAL_SHORT (line 5)",
            "expected a string, got a list",
        ),
        (
            "    ID_SERIAL_SHORT:",
            "radio.match.ID_SERIAL_SHORT (line 5)",
            "expected a string, got nothing (an empty value)",
        ),
        ("    5: x", "radio.match.5 (line 5)", "expected a string, got an integer 5"),
        (
            '    ID_VENDOR_ID: "10c4"\n    "@": "x"',
            "radio.match.@ (line 6)",
            "udev match key '@' must be a non-empty property name",
        ),
        (
            '    ID_SERIAL_SHORT: "a"\n    ID_SERIAL_SHORT: "b"',
            "radio.match.ID_SERIAL_SHORT (line 6)",
            "duplicate key 'ID_SERIAL_SHORT' (first at line 5)",
        ),
        (
            "    - ID_SERIAL_SHORT",
            "radio.match (line 5)",
            "expected a mapping of KEY: value (a string to a string), got a list",
        ),
        ("    {}", "radio.match (line 5)", "an empty match would take whichever board"),
    ],
)
def test_bad_match_names_key_path_and_line(
    tmp_path: Path, match: str, where: str, complaint: str
) -> None:
    error = reject(tmp_path, match)
    assert str(error).startswith(f"{where}: "), str(error)
    assert complaint in error.message


def test_match_needs_a_uart_or_spi_url(tmp_path: Path) -> None:
    error = reject(tmp_path, '    ID_SERIAL_SHORT: "x"', url="spinel+loop://r0")
    assert str(error) == (
        "radio.match (line 5): a udev match needs a spinel+uart:// or spinel+spi:// radio URL, "
        "got 'spinel+loop://r0'"
    )


def test_a_url_without_device_still_needs_a_match(tmp_path: Path) -> None:
    error = reject(tmp_path, "    null")
    assert str(error).startswith("radio.url (line 3): spinel+uart needs a device path")
    assert "or a radio.match that finds the board" in error.message
