"""load_config: what it accepts, and one test per rejection asserting key path, line and reason."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_agent.config import (
    EXIT_CONFIG,
    EXIT_SECURITY,
    CollectorConfig,
    Config,
    ConfigError,
    MeterSecurity,
    load_config,
)

BASE = """\
gateway:
  id: gw-1
radio:
  url: spinel+loop://r0
  channel: 3
uplink:
  broker_url: mqtts://127.0.0.1:8883
  tls:
    ca_file: pki/ca.crt
    cert_file: pki/gw.crt
    key_file: pki/gw.key
spool:
  path: spool.sqlite
meters:
  - id: M1
    transport: mesh
    address: "02:00:00:00:00:00:00:01"
  - id: M2
    transport: tcp
    address: 127.0.0.1
    port: 14059
"""

PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"


def make_pki(directory: Path) -> Path:
    """Dummy PEM files: the loader checks presence and mode only."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "gw.crt"):
        (directory / name).write_text(PEM)
    key = directory / "gw.key"
    key.write_text(PEM.replace("CERTIFICATE", "PRIVATE KEY"))
    key.chmod(0o600)
    return directory


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    make_pki(tmp_path / "pki")
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[occurrence - 1]


def reject(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# ---- accepted ---------------------------------------------------------------------------------


def test_valid_config_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.source == path
    assert config.gateway.id == "gw-1" and config.gateway.site == ""
    assert config.radio.url == "spinel+loop://r0" and config.radio.channel == 3
    assert config.radio.tx_power_dbm == 14
    assert config.uplink.host == "127.0.0.1" and config.uplink.port == 8883
    assert config.uplink.tls.version == "1.3"
    assert config.uplink.tls.key_file == tmp_path / "pki" / "gw.key"
    assert config.spool.path == tmp_path / "spool.sqlite"
    assert config.collector == CollectorConfig()
    assert [m.id for m in config.meters] == ["M1", "M2"]
    assert config.meters[0].port == 4059 and config.meters[1].port == 14059
    assert config.meters[0].security == MeterSecurity("none")


def test_relative_paths_do_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, BASE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path(os.path.relpath(path, elsewhere)))
    assert config.uplink.tls.ca_file == tmp_path / "pki" / "ca.crt"
    assert config.source == path


def test_integers_are_accepted_for_numbers_and_eui64_is_lowercased(tmp_path: Path) -> None:
    text = BASE.replace("02:00:00:00:00:00:00:01", "02:00:00:00:00:00:00:AB")
    text += "collector:\n  interval_s: 30\n  jitter_s: 2.5\n"
    config = load_config(write(tmp_path, text))
    assert config.collector.interval_s == 30.0 and isinstance(config.collector.interval_s, float)
    assert config.collector.jitter_s == 2.5
    assert config.meters[0].address == "02:00:00:00:00:00:00:ab"


def test_ipv6_broker_and_absolute_paths(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "abs")
    text = BASE.replace("mqtts://127.0.0.1:8883", "mqtts://[::1]:18883").replace(
        "ca_file: pki/ca.crt", f"ca_file: {pki / 'ca.crt'}"
    )
    config = load_config(write(tmp_path, text))
    assert (config.uplink.host, config.uplink.port) == ("::1", 18883)
    assert config.uplink.tls.ca_file == pki / "ca.crt"


def test_empty_meter_list_is_allowed(tmp_path: Path) -> None:
    text = BASE[: BASE.index("meters:")] + "meters: []\n"
    assert load_config(write(tmp_path, text)).meters == ()


def test_key_file_mode_0400_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    (tmp_path / "pki" / "gw.key").chmod(0o400)
    assert load_config(path).uplink.tls.key_file.name == "gw.key"


# ---- the file itself --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert str(caught.value) == f"cannot read {tmp_path / 'nope.yaml'}: file not found"
    assert caught.value.exit_code == EXIT_CONFIG


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="it is a directory"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"gateway:\n  id: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(invalid start byte at byte 15\)"):
        load_config(path)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    text = BASE.replace("  channel: 3", "  channel: [3\n  oops: 1")
    error = reject(tmp_path, text)
    assert error.line is not None and error.line >= line_of(text, "channel:")
    assert str(error).startswith(f"line {error.line}: not valid YAML: ")


def test_bad_indentation_yaml(tmp_path: Path) -> None:
    text = BASE.replace("    cert_file:", "   cert_file:")
    error = reject(tmp_path, text)
    assert error.line == line_of(text, "cert_file")
    assert "not valid YAML" in error.message


def test_empty_file(tmp_path: Path) -> None:
    error = reject(tmp_path, "# nothing here\n")
    assert "is empty; expected a mapping with gateway, radio, uplink, spool, meters" in str(error)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = reject(tmp_path, "- gateway\n- radio\n")
    assert str(error) == (
        "line 1: expected a mapping (with gateway, radio, uplink, spool, meters, collector, mesh, "
        "security, diag), got a list"
    )


def test_two_documents_are_refused(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE + "---\ngateway: {id: x}\n")
    assert "expected a single document" in error.message
    assert error.line == BASE.count("\n") + 1


# ---- keys -------------------------------------------------------------------------------------


def test_unknown_key_suggests_close_match_and_lists_allowed(tmp_path: Path) -> None:
    text = BASE.replace("  channel: 3", "  chanel: 3")
    error = reject(tmp_path, text)
    assert str(error) == (
        f"radio.chanel (line {line_of(text, 'chanel')}): unknown key 'chanel'; did you mean "
        "'channel'? (allowed keys: url, channel, tx_power_dbm, noise_sample_interval_s, "
        "capture_file, capture_format, capture_max_bytes, match)"
    )


def test_unknown_top_level_key_without_close_match(tmp_path: Path) -> None:
    text = BASE + "zzz: 1\n"
    error = reject(tmp_path, text)
    assert error.path == "zzz" and error.line == line_of(text, "zzz")
    assert "did you mean" not in error.message
    assert "allowed keys: gateway, radio, uplink, spool, meters, collector" in error.message
    assert "source" not in error.message  # set by the loader, not a key


def test_missing_required_key(tmp_path: Path) -> None:
    text = BASE.replace("    cert_file: pki/gw.crt\n", "")
    error = reject(tmp_path, text)
    assert str(error) == (
        f"uplink.tls.cert_file (line {line_of(text, 'ca_file')}): missing required key 'cert_file'"
    )


def test_missing_required_top_level_section(tmp_path: Path) -> None:
    text = BASE.replace("spool:\n  path: spool.sqlite\n", "")
    error = reject(tmp_path, text)
    assert str(error) == "spool (line 1): missing required key 'spool'"


def test_duplicate_key(tmp_path: Path) -> None:
    text = BASE.replace("  channel: 3", "  channel: 3\n  channel: 4")
    error = reject(tmp_path, text)
    first = line_of(text, "channel")
    assert (
        str(error)
        == f"radio.channel (line {first + 1}): duplicate key 'channel' (first at line {first})"
    )


# ---- types ------------------------------------------------------------------------------------


def test_wrong_type_string_for_integer(tmp_path: Path) -> None:
    text = BASE.replace("channel: 3", "channel: abc")
    error = reject(tmp_path, text)
    assert str(error) == (
        f"radio.channel (line {line_of(text, 'channel')}): expected an integer, got a string 'abc'"
    )


def test_boolean_is_not_an_integer(tmp_path: Path) -> None:
    text = BASE.replace("channel: 3", "channel: yes")
    error = reject(tmp_path, text)
    assert error.message == "expected an integer, got a boolean yes"


def test_float_is_not_an_integer(tmp_path: Path) -> None:
    text = BASE.replace("    port: 14059", "    port: 4059.5")
    error = reject(tmp_path, text)
    assert error.path == "meters[1].port" and error.line == line_of(text, "4059.5")
    assert error.message == "expected an integer, got a number 4059.5"


def test_number_for_string_suggests_quotes(tmp_path: Path) -> None:
    text = BASE.replace("    key_file: pki/gw.key", "    key_file: pki/gw.key\n    version: 1.3")
    error = reject(tmp_path, text)
    assert str(error) == (
        f"uplink.tls.version (line {line_of(text, 'version')}): expected a string, "
        'got a number 1.3 (write it in quotes: "1.3")'
    )


def test_unquoted_eui64_that_yaml_reads_as_a_number(tmp_path: Path) -> None:
    # YAML 1.1 reads 10:20:30:... as a base-60 integer: the message says to quote it.
    text = BASE.replace('"02:00:00:00:00:00:00:01"', "10:20:30:40:50:00:00:01")
    error = reject(tmp_path, text)
    assert error.path == "meters[0].address"
    assert error.message.endswith('(write it in quotes: "10:20:30:40:50:00:00:01")')


def test_section_given_as_a_scalar(tmp_path: Path) -> None:
    text = BASE.replace("spool:\n  path: spool.sqlite", "spool: spool.sqlite")
    error = reject(tmp_path, text)
    assert error.message == "expected a mapping (with path, max_bytes), got a string 'spool.sqlite'"


def test_empty_value(tmp_path: Path) -> None:
    text = BASE.replace("  id: gw-1", "  id:")
    error = reject(tmp_path, text)
    assert (
        str(error) == f"gateway.id (line {line_of(text, '  id:')}): expected a string, "
        "got nothing (an empty value)"
    )


def test_infinite_interval(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE + "collector:\n  interval_s: .inf\n")
    assert error.path == "collector.interval_s"
    assert error.message == "expected a finite number, got .inf"


def test_meters_must_be_a_list_or_a_file_name(tmp_path: Path) -> None:
    text = BASE[: BASE.index("meters:")] + "meters: {id: M1}\n"
    error = reject(tmp_path, text)
    assert error.message == "expected a list or the path of a YAML file holding it, got a mapping"


# ---- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["gw 1", "gw/1", "", "x" * 65, "gé"])
def test_gateway_id_charset(tmp_path: Path, bad: str) -> None:
    error = reject(tmp_path, BASE.replace("id: gw-1", f"id: {bad!r}"))
    assert error.path == "gateway.id" and error.line == 2
    assert error.message == f"gateway id {bad!r} must be 1 to 64 characters from A-Z a-z 0-9 . _ -"


@pytest.mark.parametrize("url", ["serial:///dev/ttyACM0", "/dev/ttyACM0", "spinel+usb://x"])
def test_radio_url_scheme(tmp_path: Path, url: str) -> None:
    error = reject(tmp_path, BASE.replace("spinel+loop://r0", f'"{url}"'))
    assert str(error) == (
        f"radio.url (line 4): radio URL {url!r} must start with one of spinel+uart://, "
        "spinel+spi://, spinel+pty://, spinel+loop://"
    )


def test_radio_uart_needs_a_device(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE.replace("spinel+loop://r0", "spinel+uart://ttyACM0"))
    assert "spinel+uart needs a device path, e.g. spinel+uart:///dev/ttyACM0" in error.message


def test_channel_range(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE.replace("channel: 3", "channel: 129"))
    assert str(error) == "radio.channel (line 5): must be between 0 and 128, got 129"


def test_plain_mqtt_is_refused_with_a_reason(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE.replace("mqtts://127.0.0.1:8883", "mqtt://127.0.0.1:1883"))
    assert error.path == "uplink.broker_url" and error.line == 7
    assert "plain 'mqtt://127.0.0.1:1883' is refused" in error.message
    assert "use mqtts://host:8883" in error.message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mqtts://broker", "must look like mqtts://host:port"),
        ("mqtts://broker:8883/x", "must look like mqtts://host:port"),
        ("https://broker:8883", "must look like mqtts://host:port"),
        ("mqtts://user@broker:8883", "must look like mqtts://host:port"),
        ("mqtts://broker:0", "broker port must be between 1 and 65535, got 0"),
        ("mqtts://broker:65536", "broker port must be between 1 and 65535, got 65536"),
        ("mqtts://bad_host!:8883", "broker host 'bad_host!' is not a host name or IP address"),
    ],
)
def test_bad_broker_url(tmp_path: Path, url: str, reason: str) -> None:
    error = reject(tmp_path, BASE.replace("mqtts://127.0.0.1:8883", url))
    assert error.path == "uplink.broker_url" and error.line == 7
    assert reason in error.message


def test_tls_version(tmp_path: Path) -> None:
    text = BASE.replace("    key_file: pki/gw.key", '    key_file: pki/gw.key\n    version: "1.1"')
    error = reject(tmp_path, text)
    assert str(error) == "uplink.tls.version (line 12): must be one of '1.2', '1.3', got '1.1'"


@pytest.mark.parametrize("prefix", ["", "/ami", "ami/", "ami/#", "a+b"])
def test_topic_prefix(tmp_path: Path, prefix: str) -> None:
    text = BASE.replace("  tls:", f"  topic_prefix: {prefix!r}\n  tls:")
    error = reject(tmp_path, text)
    assert error.path == "uplink.topic_prefix" and "without MQTT wildcards" in error.message


@pytest.mark.parametrize(
    ("collector", "path", "message"),
    [
        ("interval_s: 0", "collector.interval_s", "must be greater than 0, got 0.0"),
        ("interval_s: -5", "collector.interval_s", "must be greater than 0, got -5.0"),
        ("jitter_s: -1", "collector.jitter_s", "must be 0 or more, got -1.0"),
        (
            "{interval_s: 10, jitter_s: 10}",
            "collector.jitter_s",
            "must be smaller than interval_s (10.0), got 10.0",
        ),
        ("retries: -1", "collector.retries", "must be 0 or more, got -1"),
        ("profile_rows: 0", "collector.profile_rows", "must be greater than 0, got 0"),
    ],
)
def test_intervals_and_counts(tmp_path: Path, collector: str, path: str, message: str) -> None:
    body = collector if collector.startswith("{") else "{" + collector + "}"
    error = reject(tmp_path, BASE + f"collector: {body}\n")
    assert (error.path, error.message) == (path, message)
    assert error.line == BASE.count("\n") + 1


def test_spool_budget_at_least_a_mebibyte(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE.replace("  path: spool.sqlite", "  path: s.db\n  max_bytes: 0"))
    assert str(error) == (
        "spool.max_bytes (line 14): must be between 1048576 and 1125899906842624, got 0"
    )


# ---- TLS files --------------------------------------------------------------------------------


def test_missing_cert_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    (tmp_path / "pki" / "gw.crt").unlink()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"uplink.tls.cert_file (line 10): file not found: {tmp_path / 'pki' / 'gw.crt'}"
    )
    assert caught.value.exit_code == EXIT_CONFIG


def test_tls_path_is_a_directory(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE.replace("ca_file: pki/ca.crt", "ca_file: pki"))
    assert str(error) == f"uplink.tls.ca_file (line 9): {tmp_path / 'pki'} is not a regular file"


@pytest.mark.parametrize(
    ("mode", "how"),
    [(0o644, "readable"), (0o640, "readable"), (0o604, "readable"), (0o620, "accessible")],
)
def test_key_file_readable_by_others_is_refused_for_security(
    tmp_path: Path, mode: int, how: str
) -> None:
    path = write(tmp_path, BASE)
    key = tmp_path / "pki" / "gw.key"
    key.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"uplink.tls.key_file (line 11): {key} is {how} by group/others "
        f"(mode {mode:04o}); chmod 600 it"
    )
    assert caught.value.exit_code == EXIT_SECURITY


# ---- meters -----------------------------------------------------------------------------------


def test_duplicate_meter_id(tmp_path: Path) -> None:
    text = BASE.replace("- id: M2", "- id: M1")
    error = reject(tmp_path, text)
    assert str(error) == (
        f"meters[1].id (line {line_of(text, 'id: M1', 2)}): duplicate meter id 'M1' "
        f"(first used at meters[0].id, line {line_of(text, 'id: M1')})"
    )


def test_meter_transport(tmp_path: Path) -> None:
    text = BASE.replace("transport: tcp", "transport: serial")
    error = reject(tmp_path, text)
    assert str(error) == (
        f"meters[1].transport (line {line_of(text, 'serial')}): "
        "must be one of 'mesh', 'udp', 'tcp', got 'serial'"
    )


@pytest.mark.parametrize(
    "address", ["02:00:00:00:00:00:01", "02-00-00-00-00-00-00-01", "127.0.0.1", "0200000000000001"]
)
def test_mesh_address_must_be_eui64(tmp_path: Path, address: str) -> None:
    text = BASE.replace('"02:00:00:00:00:00:00:01"', f'"{address}"')
    error = reject(tmp_path, text)
    assert error.path == "meters[0].address" and error.line == line_of(text, f'"{address}"')
    assert error.message == (
        "a mesh meter's address must be an EUI-64 like 02:00:00:00:00:00:00:01, "
        f"got {address.lower()!r}"
    )


@pytest.mark.parametrize("address", ["not a host", "host_name", "-bad.example"])
def test_ip_meter_address_must_be_a_host(tmp_path: Path, address: str) -> None:
    error = reject(tmp_path, BASE.replace("address: 127.0.0.1", f"address: {address!r}"))
    assert error.path == "meters[1].address"
    assert error.message.startswith("a tcp meter's address must be a host name or IP address")


def test_meter_port_range(tmp_path: Path) -> None:
    error = reject(tmp_path, BASE.replace("port: 14059", "port: 70000"))
    assert str(error) == "meters[1].port (line 21): must be between 1 and 65535, got 70000"


def test_meter_security_level_must_be_none_or_suite0(tmp_path: Path) -> None:
    text = BASE + "    security: {level: hls}\n"
    error = reject(tmp_path, text)
    assert error.path == "meters[1].security.level" and error.line == line_of(text, "security")
    assert "security level 'hls' is not supported: use 'none'" in error.message
    assert "'suite0'" in error.message


def test_unknown_key_in_a_meter(tmp_path: Path) -> None:
    text = BASE.replace("    port: 14059", "    prot: 14059")
    error = reject(tmp_path, text)
    assert str(error).startswith(
        "meters[1].prot (line 21): unknown key 'prot'; did you mean 'port'?"
    )


# ---- meters file ------------------------------------------------------------------------------

METERS = """\
# two meters
- id: A
  transport: mesh
  address: "02:00:00:00:00:00:00:0a"
- id: B
  transport: udp
  address: localhost
"""


def with_meters_file(tmp_path: Path, meters: str, ref: str = "meters.yaml") -> Path:
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / "sub" / "meters.yaml").write_text(meters)
    text = BASE[: BASE.index("meters:")] + f"meters: {ref}\n"
    return write(tmp_path / "sub", text)


def test_meters_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    config = load_config(with_meters_file(tmp_path, METERS))
    assert [(m.id, m.transport, m.address) for m in config.meters] == [
        ("A", "mesh", "02:00:00:00:00:00:00:0a"),
        ("B", "udp", "localhost"),
    ]


def test_error_in_meters_file_names_the_file_and_its_line(tmp_path: Path) -> None:
    path = with_meters_file(tmp_path, METERS.replace("transport: udp", "transport: udpp"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    meters = tmp_path / "sub" / "meters.yaml"
    assert str(caught.value) == (
        f"{meters}: meters[1].transport (line 6): must be one of 'mesh', 'udp', 'tcp', got 'udpp'"
    )
    assert caught.value.file == meters and caught.value.line == 6


def test_duplicate_id_in_meters_file(tmp_path: Path) -> None:
    path = with_meters_file(tmp_path, METERS.replace("id: B", "id: A"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{tmp_path / 'sub' / 'meters.yaml'}: meters[1].id (line 5): duplicate meter id 'A' "
        "(first used at meters[0].id, line 2)"
    )


def test_malformed_meters_file(tmp_path: Path) -> None:
    path = with_meters_file(tmp_path, METERS.replace("  transport: udp", "  transport: [udp"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == tmp_path / "sub" / "meters.yaml"
    assert re.match(
        rf"{re.escape(str(caught.value.file))}: line \d+: not valid YAML", str(caught.value)
    )


def test_meters_file_not_a_list(tmp_path: Path) -> None:
    path = with_meters_file(tmp_path, "id: A\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{tmp_path / 'sub' / 'meters.yaml'}: meters (line 1): expected a list, got a mapping"
    )


def test_missing_meters_file_is_reported_where_it_is_named(tmp_path: Path) -> None:
    path = with_meters_file(tmp_path, METERS, ref="../other/m.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"meters (line 14): cannot read {tmp_path / 'other' / 'm.yaml'}: file not found"
    )
    assert caught.value.file is None


# ---- robustness -------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
VALUE_LINES = [i for i, line in enumerate(BASE.splitlines()) if re.match(r"^\s*-? ?\w+: \S", line)]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(index=st.sampled_from(VALUE_LINES), value=SCALARS)
def test_any_replaced_value_gives_a_config_or_a_config_error(
    tmp_path: Path, index: int, value: object
) -> None:
    lines = BASE.splitlines()
    key, _ = lines[index].split(": ", 1)
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
    lines[index] = f"{key}: {dumped}"
    try:
        load_config(write(tmp_path, "\n".join(lines) + "\n"))
    except ConfigError as error:
        assert error.message
        assert error.line is None or 1 <= error.line <= len(lines) + 1
