"""The collector's and security's config keys: defaults, and one test per rule with its message."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_agent.config import EXIT_SECURITY, ConfigError, SecurityConfig, load_config
from tests.firmware_agent.test_config_loader import BASE, line_of, reject, write

SUITE0_METER = """\
  - id: M3
    transport: udp
    address: 127.0.0.1
    security: {level: suite0}
"""


def _keys(tmp_path: Path, mode: int = 0o600) -> Path:
    keys = tmp_path / "keys.yaml"
    keys.write_text("M3: {}\n")
    keys.chmod(mode)
    return keys


def _security(keys: str = "keys.yaml", title: str = "4757580000000001") -> str:
    return (
        "security:\n"
        f"  keys_file: {keys}\n"
        "  counters_file: counters.sqlite\n"
        f"  client_system_title: '{title}'\n"
    )


def test_collector_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    c = config.collector
    assert c.daily_read_at == "00:05" and c.daily_registers == ("1.0.1.8.0.255",)
    assert c.catch_up_max_intervals == 96
    assert (c.retry_backoff_base_s, c.retry_backoff_cap_s) == (30.0, 300.0)
    assert c.max_concurrent_reads == 8 and c.push_bind is None and c.push_port == 4059
    assert c.state_file is None and config.security is None


def test_collector_keys_load(tmp_path: Path) -> None:
    text = BASE + (
        "collector:\n  daily_read_at: '23:59'\n  daily_registers: [1.0.1.8.0.255, 1.0.2.8.0.255]\n"
        "  catch_up_max_intervals: 10\n  retry_backoff_base_s: 1\n  retry_backoff_cap_s: 1\n"
        "  max_concurrent_reads: 2\n  push_bind: '::1'\n  push_port: 14059\n"
        "  state_file: state/collector.sqlite\n"
    )
    (tmp_path / "state").mkdir()
    c = load_config(write(tmp_path, text)).collector
    assert c.daily_registers == ("1.0.1.8.0.255", "1.0.2.8.0.255")
    assert c.push_bind == "::1" and c.push_port == 14059 and c.max_concurrent_reads == 2
    assert c.state_file == tmp_path / "state" / "collector.sqlite"


@pytest.mark.parametrize(
    ("collector", "path", "message"),
    [
        ("daily_read_at: '24:00'", "collector.daily_read_at", "must be a time of day HH:MM"),
        ("daily_read_at: '7:05'", "collector.daily_read_at", "got '7:05'"),
        (
            "daily_registers: [1.0.1.8.0.255, 1.0.1.8.0]",
            "collector.daily_registers[1]",
            "'1.0.1.8.0' is not an OBIS code like 1.0.1.8.0.255",
        ),
        (
            "daily_registers: [1.0.256.8.0.255]",
            "collector.daily_registers[0]",
            "six groups 0..255",
        ),
        ("catch_up_max_intervals: 0", "collector.catch_up_max_intervals", "between 1 and"),
        ("retry_backoff_base_s: 0", "collector.retry_backoff_base_s", "greater than 0"),
        (
            "retry_backoff_base_s: 60, retry_backoff_cap_s: 30",
            "collector.retry_backoff_cap_s",
            "must be at least retry_backoff_base_s (60.0), got 30.0",
        ),
        ("max_concurrent_reads: 0", "collector.max_concurrent_reads", "between 1 and"),
        ("push_port: 0", "collector.push_port", "between 1 and 65535"),
        ("push_bind: gateway.local", "collector.push_bind", "must be an IP address to listen on"),
        ("state_file: nodir/x.sqlite", "collector.state_file", "does not exist"),
    ],
)
def test_collector_rules(tmp_path: Path, collector: str, path: str, message: str) -> None:
    error = reject(tmp_path, BASE + f"collector: {{{collector}}}\n")
    assert error.path == path, error
    assert message in error.message, error.message


def test_suite0_meter_loads_with_a_security_section(tmp_path: Path) -> None:
    _keys(tmp_path)
    config = load_config(write(tmp_path, BASE + SUITE0_METER + _security()))
    assert config.meters[2].security.level == "suite0"
    assert config.security == SecurityConfig(
        tmp_path / "keys.yaml", tmp_path / "counters.sqlite", "4757580000000001"
    )


def test_suite0_meter_without_security_section_is_refused(tmp_path: Path) -> None:
    text = BASE + SUITE0_METER
    error = reject(tmp_path, text)
    assert error.path == "meters[2].security.level"
    assert error.line == line_of(text, "suite0")
    assert "meter 'M3' uses security level 'suite0' but the config has no top-level" in str(error)


def test_keys_file_must_exist(tmp_path: Path) -> None:
    text = BASE + SUITE0_METER + _security("missing-keys.yaml")
    error = reject(tmp_path, text)
    assert error.path == "security.keys_file" and error.line == line_of(text, "keys_file")
    assert "file not found" in error.message and "missing-keys.yaml" in error.message


def test_keys_file_readable_by_others_is_a_security_refusal(tmp_path: Path) -> None:
    _keys(tmp_path, 0o644)
    error = reject(tmp_path, BASE + SUITE0_METER + _security())
    assert error.path == "security.keys_file" and error.exit_code == EXIT_SECURITY
    assert "mode 0644" in error.message and "chmod 600" in error.message


@pytest.mark.parametrize("title", ["ABCDEFGH", "47575800000000011", "47575800000000zz"])
def test_client_system_title_is_16_hex_digits(tmp_path: Path, title: str) -> None:
    _keys(tmp_path)
    error = reject(tmp_path, BASE + SUITE0_METER + _security(title=title))
    assert error.path == "security.client_system_title"
    assert "16 hex digits" in error.message and repr(title) in error.message


def test_security_section_requires_its_keys(tmp_path: Path) -> None:
    _keys(tmp_path)
    error = reject(tmp_path, BASE + "security:\n  keys_file: keys.yaml\n")
    assert error.path == "security.counters_file"
    assert "missing required key 'counters_file'" in error.message


def test_error_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, BASE + "collector: {push_port: -1}\n"))
