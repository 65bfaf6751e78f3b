"""The shipped configs stay valid, and docs/config.md documents every key the loader accepts."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from firmware_agent.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "gateway.example.yaml"
DEMO = REPO / "config" / "demo.yaml"
DEMO_METERS = REPO / "config" / "demo-meters.yaml"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"


def fill_pki(directory: Path, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(PEM)
        (directory / name).chmod(0o600)


def test_gateway_example_is_valid_once_its_files_exist(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    assert text.count("/etc/firmware-agent/pki/") == 3
    copy = tmp_path / "gateway.yaml"
    copy.write_text(text.replace("/etc/firmware-agent/pki/", f"{tmp_path}/pki/"))
    fill_pki(tmp_path / "pki", ["ca.crt", "gateway-01.crt", "gateway-01.key"])
    config = load_config(copy)
    assert config.gateway.id == "gateway-01"
    assert config.radio.url.startswith("spinel+uart:///dev/serial/by-id/usb-")
    assert config.radio.url.endswith("-if00-port0?baudrate=460800")
    assert (config.uplink.host, config.uplink.port) == ("hes.example.net", 8883)
    assert config.spool.path == Path("/var/lib/firmware-agent/spool.sqlite")
    assert [(m.transport, m.id) for m in config.meters] == [
        ("mesh", "MTR-0001"),
        ("udp", "MTR-0002"),
    ]


def test_gateway_example_as_shipped_names_the_missing_ca(tmp_path: Path) -> None:
    if Path("/etc/firmware-agent/pki/ca.crt").exists():
        pytest.skip("this machine has a real gateway PKI installed")
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE)
    assert caught.value.path == "uplink.tls.ca_file"
    assert caught.value.message == "file not found: /etc/firmware-agent/pki/ca.crt"


def test_demo_config_is_valid_once_the_demo_pki_exists(tmp_path: Path) -> None:
    # Same layout as the repository: config/ next to .demo/, which `make demo` fills.
    (tmp_path / "config").mkdir()
    shutil.copy(DEMO, tmp_path / "config" / "demo.yaml")
    shutil.copy(DEMO_METERS, tmp_path / "config" / "demo-meters.yaml")
    fill_pki(tmp_path / ".demo" / "pki", ["ca.crt", "gateway-01.crt", "gateway-01.key"])
    fill_pki(tmp_path / ".demo" / "pki" / "diag", ["ca.crt", "server.crt", "server.key"])
    config = load_config(tmp_path / "config" / "demo.yaml")
    assert config.gateway.id == "gateway-01"
    assert config.radio.url == "spinel+pty://?meters=config/demo-meters.yaml&profile_period=60"
    assert (config.uplink.host, config.uplink.port) == ("127.0.0.1", 18883)
    assert config.uplink.tls.key_file == tmp_path / ".demo" / "pki" / "gateway-01.key"
    assert config.spool.path == tmp_path / ".demo" / "spool.sqlite"
    assert (config.collector.interval_s, config.collector.jitter_s) == (10.0, 2.0)
    assert [m.id for m in config.meters] == [f"MTR-000{i}" for i in range(1, 6)]
    assert [m.address for m in config.meters] == [f"02:00:00:00:00:00:00:0{i}" for i in range(1, 6)]
    assert {m.transport for m in config.meters} == {"mesh"}
    assert config.diag is not None and (config.diag.bind, config.diag.port) == ("127.0.0.1", 18443)
    assert config.diag.ca_file == tmp_path / ".demo" / "pki" / "diag" / "ca.crt"


def key_paths(cls: type, prefix: str = "") -> list[str]:
    """Every key the loader accepts, as dotted paths (list items as ``meters[].id``)."""
    paths: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("from_yaml", True):
            continue
        path = f"{prefix}{f.name}"
        paths.append(path)
        hint: Any = hints[f.name]
        if get_origin(hint) is tuple:
            hint, path = get_args(hint)[0], f"{path}[]"
        if dataclasses.is_dataclass(hint):
            paths.extend(key_paths(hint, f"{path}."))
    return paths


def test_every_key_is_documented() -> None:
    doc = (REPO / "docs" / "config.md").read_text()
    keys = key_paths(Config)
    assert "uplink.tls.key_file" in keys and "meters[].security.level" in keys
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert missing == [], f"docs/config.md lacks {missing}"


def test_every_key_appears_in_the_commented_example() -> None:
    text = EXAMPLE.read_text()
    leaves = {k.rsplit(".", 1)[-1].removesuffix("[]") for k in key_paths(Config)}
    missing = sorted(k for k in leaves if f"{k}:" not in text)
    assert missing == []
