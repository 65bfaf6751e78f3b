"""The capture settings: radio.capture_* config keys and ``firmware-agent run --pcap FILE``."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_agent.cli import build_parser, main, with_pcap
from firmware_agent.config import ConfigError, load_config

BASE = """\
gateway: {{id: gw-1}}
radio:
  url: spinel+loop://r0
{radio}
uplink:
  broker_url: mqtts://127.0.0.1:8883
  tls: {{ca_file: pki/ca.crt, cert_file: pki/gw.crt, key_file: pki/gw.key}}
spool: {{path: spool.sqlite}}
meters: []
"""
PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"


def write_config(tmp_path: Path, radio: str = "") -> Path:
    pki = tmp_path / "pki"
    pki.mkdir(exist_ok=True)
    for name in ("ca.crt", "gw.crt", "gw.key"):
        (pki / name).write_text(PEM)
    (pki / "gw.key").chmod(0o600)
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE.format(radio=radio))
    return path


def test_capture_is_off_by_default(tmp_path: Path) -> None:
    radio = load_config(write_config(tmp_path)).radio
    assert (radio.capture_file, radio.capture_format, radio.capture_max_bytes) == (
        None,
        "wpan",
        64 * 1024 * 1024,
    )


def test_capture_keys_load_and_the_path_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "captures").mkdir()
    text = "  capture_file: captures/radio.pcap\n  capture_format: tap\n  capture_max_bytes: 4096"
    radio = load_config(write_config(tmp_path, text)).radio
    assert radio.capture_file == tmp_path / "captures" / "radio.pcap"
    assert (radio.capture_format, radio.capture_max_bytes) == ("tap", 4096)
    assert load_config(write_config(tmp_path, "  capture_file: null")).radio.capture_file is None


@pytest.mark.parametrize(
    ("radio", "key", "complaint"),
    [
        ("  capture_format: pcapng", "capture_format", "must be one of 'wpan', 'tap'"),
        ("  capture_file: nowhere/radio.pcap", "capture_file", "nowhere does not exist"),
        ("  capture_file: pki", "capture_file", "pki is a directory; name a file in it"),
        ("  capture_max_bytes: 10", "capture_max_bytes", "must be between 24"),
    ],
)
def test_bad_capture_settings_name_the_key(
    tmp_path: Path, radio: str, key: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, radio))
    assert str(caught.value).startswith(f"radio.{key} (line 4): ")
    assert complaint in str(caught.value)
    assert caught.value.exit_code == 2


def test_pcap_option_overrides_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "captures").mkdir()
    config = load_config(
        write_config(tmp_path, "  capture_file: captures/a.pcap\n  capture_format: tap")
    )
    args = build_parser().parse_args(
        ["run", "--config", "x.yaml", "--pcap", str(tmp_path / "b.pcap")]
    )
    assert args.pcap == tmp_path / "b.pcap"
    overridden = with_pcap(config, args.pcap)
    assert overridden.radio.capture_file == tmp_path / "b.pcap"
    assert overridden.radio.capture_format == "tap"  # the rest of the radio section stays
    assert overridden.radio.url == config.radio.url
    assert with_pcap(config, None) is config
    no_pcap = build_parser().parse_args(["run", "--config", "x.yaml"])
    assert no_pcap.pcap is None


def test_pcap_option_relative_path_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the process's working directory, not project code
    args = build_parser().parse_args(["run", "--config", "x.yaml", "--pcap", "radio.pcap"])
    assert args.pcap == tmp_path / "radio.pcap"


@pytest.mark.parametrize(
    ("where", "complaint"),
    [("missing/radio.pcap", "does not exist"), (".", "is a directory")],
)
def test_pcap_in_a_missing_directory_is_a_usage_error(
    tmp_path: Path, where: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["run", "--config", str(config), "--pcap", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: firmware-agent") and complaint in err
