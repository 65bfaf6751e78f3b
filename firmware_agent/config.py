"""The agent's configuration: YAML into typed, validated, frozen dataclasses.

The dataclasses below are the contract every layer reads. The loader (``load_config``) reports
the first problem as one ``ConfigError`` naming the key path and the YAML line.

The loader is driven by the dataclasses themselves: each field's type hint says what YAML value
is accepted, its default says whether the key is optional, and its ``metadata`` (built with
``rules(...)``) carries value checks. Adding a key is adding a field; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import stat
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

EXIT_CONFIG = 2
"""Process exit code for a configuration that is wrong."""
EXIT_SECURITY = 3
"""Process exit code for a configuration the agent refuses for security reasons."""


class ConfigError(Exception):
    """A configuration problem, worded for an operator: ``key.path (line N): what is wrong``.

    ``file`` is set when the problem is in a file included from the main config (a meters
    file), so the operator knows which file the line number belongs to. ``exit_code`` is what
    the CLI exits with: 2 for a wrong config, 3 for one refused for security reasons.
    """

    def __init__(
        self,
        path: str,
        line: int | None,
        message: str,
        *,
        file: Path | None = None,
        exit_code: int = EXIT_CONFIG,
    ) -> None:
        self.path = path
        self.line = line
        self.message = message
        self.file = file
        self.exit_code = exit_code
        super().__init__(_format_error(path, line, message, file))


def _format_error(path: str, line: int | None, message: str, file: Path | None) -> str:
    where = path
    if line is not None:
        where = f"{path} (line {line})" if path else f"line {line}"
    text = f"{where}: {message}" if where else message
    return f"{file}: {text}" if file is not None else text


# --------------------------------------------------------------------------------------------
# Value checks, attached to dataclass fields through ``rules``. A check receives the converted
# value and the record's other values (all of them, defaults included) and raises InvalidValue.


class InvalidValue(ValueError):
    """Raised by a check. ``at`` points below the checked key (e.g. ``(2, "id")`` for the id of
    the third list item) so the error carries that item's key path and line; ``first`` points
    at an earlier value this one clashes with, whose place is added to the message."""

    def __init__(
        self,
        message: str,
        *,
        at: tuple[str | int, ...] = (),
        first: tuple[str | int, ...] | None = None,
        exit_code: int = EXIT_CONFIG,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.at = at
        self.first = first
        self.exit_code = exit_code


Check = Callable[[Any, Mapping[str, Any]], None]


def rules(
    *checks: Check,
    include: bool = False,
    normalize: Callable[[Any], Any] | None = None,
    from_yaml: bool = True,
) -> dict[str, Any]:
    """Field metadata for the loader.

    ``include``: the value may also be a string naming a YAML file that holds it (relative to
    the including file). ``normalize``: applied to the converted value before the checks.
    ``from_yaml=False``: the field is set by the loader, never read from the file.
    """
    return {"checks": checks, "include": include, "normalize": normalize, "from_yaml": from_yaml}


def in_range(low: float, high: float) -> Check:
    def check(value: Any, _: Mapping[str, Any]) -> None:
        if not low <= value <= high:
            raise InvalidValue(f"must be between {low} and {high}, got {value}")

    return check


def positive(value: Any, _: Mapping[str, Any]) -> None:
    if value <= 0:
        raise InvalidValue(f"must be greater than 0, got {value}")


def non_negative(value: Any, _: Mapping[str, Any]) -> None:
    if value < 0:
        raise InvalidValue(f"must be 0 or more, got {value}")


def one_of(*allowed: str) -> Check:
    def check(value: Any, _: Mapping[str, Any]) -> None:
        if value in allowed:
            return
        choices = ", ".join(repr(a) for a in allowed)
        raise InvalidValue(f"must be one of {choices}, got {value!r}")

    return check


_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_EUI64_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){7}")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_BROKER_RE = re.compile(r"mqtts://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#\[\]@]+):(?P<port>[0-9]+)")
RADIO_SCHEMES = ("spinel+uart", "spinel+spi", "spinel+pty", "spinel+loop")


def name_like(what: str) -> Check:
    """An identifier that appears in MQTT topics, file names and logs."""

    def check(value: Any, _: Mapping[str, Any]) -> None:
        if not _NAME_RE.fullmatch(value):
            raise InvalidValue(
                f"{what} {value!r} must be 1 to 64 characters from A-Z a-z 0-9 . _ -"
            )

    return check


def radio_url(value: Any, record: Mapping[str, Any]) -> None:
    parts = urlsplit(value)
    if "://" not in value or parts.scheme not in RADIO_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in RADIO_SCHEMES)
        raise InvalidValue(f"radio URL {value!r} must start with one of {schemes}")
    if record.get("match") is not None and not parts.netloc and not parts.path:
        return  # the device path is left out: radio.match finds the board at open time
    if parts.scheme in ("spinel+uart", "spinel+spi") and not parts.path.startswith("/dev/"):
        example = "/dev/ttyACM0" if parts.scheme == "spinel+uart" else "/dev/spidev0.0"
        raise InvalidValue(
            f"{parts.scheme} needs a device path, e.g. {parts.scheme}://{example} (or a "
            f"radio.match that finds the board), got {value!r}"
        )


def udev_match(value: Any, record: Mapping[str, Any]) -> None:
    """A board picked by udev properties (drivers.discover.BoardMatch), for a UART or SPI URL.

    Only the shape is checked here: whether a board matches is known at open time, so a
    config can be checked on a machine the board is not plugged into."""
    # Imported here: loading a config must not pull in the radio drivers (pyserial, asyncio).
    from drivers.discover import BoardMatch, InvalidMatch, url_with_device

    if value is None:
        return
    if not value:
        raise InvalidValue(
            "an empty match would take whichever board is plugged in; name at least one "
            "udev property, e.g. ID_SERIAL_SHORT (`firmware-agent boards` prints one per board)"
        )
    for key, pattern in value.items():
        try:
            BoardMatch({key: pattern})
        except InvalidMatch as exc:
            raise InvalidValue(str(exc), at=(key,)) from None
    try:
        url_with_device(record["url"], "/dev/null")
    except InvalidMatch as exc:
        raise InvalidValue(str(exc)) from None


def broker_url(value: Any, _: Mapping[str, Any]) -> None:
    if value.startswith("mqtt://"):
        raise InvalidValue(
            f"plain {value!r} is refused: the uplink only speaks MQTT over TLS with client "
            "certificates; use mqtts://host:8883"
        )
    match = _BROKER_RE.fullmatch(value)
    if match is None:
        raise InvalidValue(f"broker URL {value!r} must look like mqtts://host:port")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise InvalidValue(f"broker port must be between 1 and 65535, got {port}")
    host = match["host"]
    if not (host.startswith("[") or _is_host(host)):
        raise InvalidValue(f"broker host {host!r} is not a host name or IP address")


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    return len(value) <= 253 and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)


def meter_address(value: Any, record: Mapping[str, Any]) -> None:
    """Mesh meters are addressed by EUI-64, IP meters by host name or address."""
    transport = record.get("transport")
    if transport == "mesh" and not _EUI64_RE.fullmatch(value):
        raise InvalidValue(
            f"a mesh meter's address must be an EUI-64 like 02:00:00:00:00:00:00:01, got {value!r}"
        )
    if transport in ("udp", "tcp") and not _is_host(value):
        raise InvalidValue(
            f"a {transport} meter's address must be a host name or IP address, got {value!r}"
        )


def topic_prefix(value: Any, _: Mapping[str, Any]) -> None:
    if not value or value.startswith("/") or value.endswith("/") or set(value) & {"+", "#"}:
        raise InvalidValue(
            f"topic prefix {value!r} must be non-empty, without MQTT wildcards (+ #) "
            "and without a leading or trailing '/'"
        )


SECURITY_LEVELS = ("none", "suite0")
_HEX16_RE = re.compile(r"[0-9A-Fa-f]{16}")
_OBIS_RE = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){5}"
)
_HHMM_RE = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")


def security_level(value: Any, _: Mapping[str, Any]) -> None:
    """``none`` (lowest security, public client) or ``suite0`` (HLS-GMAC, AES-GCM-128)."""
    if value not in SECURITY_LEVELS:
        raise InvalidValue(
            f"security level {value!r} is not supported: use 'none' (lowest security) or "
            "'suite0' (HLS, AES-GCM-128 with per-meter keys from security.keys_file)"
        )


def system_title(value: Any, _: Mapping[str, Any]) -> None:
    """A DLMS system title: 8 bytes, written as 16 hex digits."""
    if not _HEX16_RE.fullmatch(value):
        raise InvalidValue(
            f"a system title is 8 bytes written as 16 hex digits (e.g. 4757580000000001), "
            f"got {value!r} ({len(value)} characters)"
        )


def obis_codes(value: Any, _: Mapping[str, Any]) -> None:
    """Each item an OBIS logical name in dotted form, six groups 0..255."""
    for index, code in enumerate(value):
        if not _OBIS_RE.fullmatch(code):
            raise InvalidValue(
                f"{code!r} is not an OBIS code like 1.0.1.8.0.255 (six groups 0..255)",
                at=(index,),
            )


def time_of_day(value: Any, _: Mapping[str, Any]) -> None:
    if not _HHMM_RE.fullmatch(value):
        raise InvalidValue(f"must be a time of day HH:MM (00:00 to 23:59, UTC), got {value!r}")


def bind_address(value: Any, _: Mapping[str, Any]) -> None:
    """An IP address to listen on (``::`` or ``0.0.0.0`` for every interface)."""
    if value is None:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValue(
            f"must be an IP address to listen on (e.g. '::' or 127.0.0.1), got {value!r}"
        ) from None


def not_smaller_than(other: str) -> Check:
    def check(value: Any, record: Mapping[str, Any]) -> None:
        if value < record[other]:
            raise InvalidValue(f"must be at least {other} ({record[other]}), got {value}")

    return check


def suite0_needs_keys(value: Any, record: Mapping[str, Any]) -> None:
    """A suite 0 meter needs the top-level ``security`` section (keys, counters, title)."""
    if record.get("security") is not None:
        return
    for index, meter in enumerate(value):
        if meter.security.level == "suite0":
            raise InvalidValue(
                f"meter {meter.id!r} uses security level 'suite0' but the config has no "
                "top-level 'security' section naming keys_file, counters_file and "
                "client_system_title",
                at=(index, "security", "level"),
            )


def smaller_than(other: str) -> Check:
    def check(value: Any, record: Mapping[str, Any]) -> None:
        if value >= record[other]:
            raise InvalidValue(f"must be smaller than {other} ({record[other]}), got {value}")

    return check


def unique(attribute: str, what: str) -> Check:
    """Items of a list must differ in ``attribute``; the error points at the second one."""

    def check(value: Any, _: Mapping[str, Any]) -> None:
        seen: dict[Any, int] = {}
        for index, item in enumerate(value):
            key = getattr(item, attribute)
            if key in seen:
                raise InvalidValue(
                    f"duplicate {what} {key!r}",
                    at=(index, attribute),
                    first=(seen[key], attribute),
                )
            seen[key] = index

    return check


def readable_file(value: Any, _: Mapping[str, Any]) -> None:
    path = Path(value)
    if not path.exists():
        raise InvalidValue(f"file not found: {path}")
    if not path.is_file():
        raise InvalidValue(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise InvalidValue(f"{path} is not readable by this user (uid {os.getuid()})")


def output_file(value: Any, _: Mapping[str, Any]) -> None:
    """A file the agent will create: its directory must exist, and it must not be a directory."""
    if value is None:  # an optional output written as ``key: null``: none
        return
    path = Path(value)
    if path.is_dir():
        raise InvalidValue(f"{path} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise InvalidValue(f"directory {path.parent} does not exist")


def private_file(value: Any, _: Mapping[str, Any]) -> None:
    """A private key must not be readable by anyone but its owner (security: exit code 3)."""
    mode = stat.S_IMODE(Path(value).stat().st_mode)
    if mode & 0o077:
        how = "readable" if mode & 0o044 else "accessible"
        raise InvalidValue(
            f"{value} is {how} by group/others (mode {mode:04o}); chmod 600 it",
            exit_code=EXIT_SECURITY,
        )


# --------------------------------------------------------------------------------------------
# The configuration records.


@dataclass(frozen=True)
class GatewayConfig:
    id: str = field(metadata=rules(name_like("gateway id")))
    site: str = ""


@dataclass(frozen=True)
class RadioConfig:
    url: str = field(metadata=rules(radio_url))
    channel: int = field(default=0, metadata=rules(in_range(0, 128)))
    tx_power_dbm: int = field(default=14, metadata=rules(in_range(-40, 40)))
    noise_sample_interval_s: float = field(default=10.0, metadata=rules(positive))
    # pcap of every frame the radio sends and receives (drivers.capture); None: no capture.
    capture_file: Path | None = field(default=None, metadata=rules(output_file))
    capture_format: str = field(default="wpan", metadata=rules(one_of("wpan", "tap")))
    capture_max_bytes: int = field(default=64 * 1024 * 1024, metadata=rules(in_range(24, 2**40)))
    # udev property -> glob (``@KEY``: on an ancestor device); when set, the device path in
    # ``url`` is a placeholder replaced by the matched board's node at every (re)open.
    match: dict[str, str] | None = field(default=None, metadata=rules(udev_match))


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path = field(metadata=rules(readable_file))
    cert_file: Path = field(metadata=rules(readable_file))
    key_file: Path = field(metadata=rules(readable_file, private_file))
    version: str = field(default="1.3", metadata=rules(one_of("1.2", "1.3")))


CIM_CATEGORY_KEYS = ("power-down", "power-up", "no-response")


def cim_categories(value: Any, _: Mapping[str, Any]) -> None:
    """IEC 61968-9 status category codes by status: ``#.#.#.#`` for the keys we know."""
    if not isinstance(value, dict):
        raise InvalidValue(f"must map statuses {list(CIM_CATEGORY_KEYS)} to codes like 3.26.0.47")
    for key, code in value.items():
        if key not in CIM_CATEGORY_KEYS:
            known = list(CIM_CATEGORY_KEYS)
            raise InvalidValue(f"unknown status {key!r}; the statuses are {known}")
        if not re.fullmatch(r"\d{1,5}\.\d{1,5}\.\d{1,5}\.\d{1,5}", str(code)):
            raise InvalidValue(f"{key}: {code!r} is not a category code like 3.26.0.47")


def readable_dir(value: Any, _: Mapping[str, Any]) -> None:
    if value is None:
        return
    path = Path(value)
    if not path.is_dir():
        raise InvalidValue(f"directory not found: {path}")


@dataclass(frozen=True)
class OmsConfig:
    """The OMS interface (seed 003): MeterStatusData GETs answered by category."""

    # Status -> category code; statuses left out keep their default.
    categories: dict[str, str] = field(
        default_factory=lambda: {
            "power-down": "3.26.0.47",
            "power-up": "3.26.0.216",
            "no-response": "0.0.0.0",
        },
        metadata=rules(cim_categories),
    )
    default_respond_s: float = field(default=30.0, metadata=rules(positive))
    max_respond_s: float = field(default=240.0, metadata=rules(positive))
    ping_timeout_s: float = field(default=10.0, metadata=rules(positive))
    ping_concurrency: int = field(default=16, metadata=rules(in_range(1, 1000)))


@dataclass(frozen=True)
class CommandsConfig:
    """Head-end commands over MQTT v5 request/response."""

    # Where staged firmware images are (firmware-push by name); none: inline images only.
    firmware_dir: Path | None = field(default=None, metadata=rules(readable_dir))
    timeout_s: float = field(default=60.0, metadata=rules(positive))
    ping_timeout_s: float = field(default=5.0, metadata=rules(positive))
    oms: OmsConfig = field(default_factory=OmsConfig)


@dataclass(frozen=True)
class UplinkConfig:
    broker_url: str = field(metadata=rules(broker_url))
    tls: TlsConfig
    topic_prefix: str = field(default="ami", metadata=rules(topic_prefix))
    keepalive_s: int = field(default=30, metadata=rules(positive))
    max_inflight: int = field(default=20, metadata=rules(positive))
    batch_max_records: int = field(default=50, metadata=rules(positive))
    # In-flight messages with no PUBACK for this long: the connection is taken as stalled.
    stall_timeout_s: float = field(default=60.0, metadata=rules(positive))
    # Our clock off from the head end's by more than this is reported (seed 000 FAQ).
    clock_skew_limit_s: float = field(default=300.0, metadata=rules(positive))
    # Warn this many days before the client certificate expires.
    cert_warning_days: int = field(default=30, metadata=rules(in_range(0, 3650)))
    # Re-publish the retained "online" status with the spool's figures this often; 0: only
    # at connect.
    status_interval_s: float = field(default=300.0, metadata=rules(in_range(0, 86400)))
    # Acknowledged records are deleted from the spool in groups this large, or this old (at
    # once when nothing is in flight): a delete costs about one index page per record.
    ack_batch_records: int = field(default=20_000, metadata=rules(in_range(1, 1_000_000)))
    ack_max_delay_s: float = field(default=0.5, metadata=rules(in_range(0, 60)))
    commands: CommandsConfig = field(default_factory=CommandsConfig)

    @property
    def host(self) -> str:
        return self.broker_url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.broker_url.rsplit(":", 1)[1])


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
    # Disk budget (database + WAL); when full, the oldest interval reads age out first.
    max_bytes: int = field(default=512 * 1024 * 1024, metadata=rules(in_range(1024 * 1024, 2**50)))


@dataclass(frozen=True)
class MeterSecurity:
    level: str = field(default="none", metadata=rules(security_level))


@dataclass(frozen=True)
class MeterConfig:
    id: str = field(metadata=rules(name_like("meter id")))
    transport: str = field(metadata=rules(one_of("mesh", "udp", "tcp")))  # "mesh" | "udp" | "tcp"
    # EUI-64 "00:12:4b:..." for mesh (stored lower-case); host name or IP for udp/tcp
    address: str = field(metadata=rules(meter_address, normalize=str.lower))
    port: int = field(default=4059, metadata=rules(in_range(1, 65535)))
    client_address: int = field(default=16, metadata=rules(in_range(1, 0xFFFF)))
    server_address: int = field(default=1, metadata=rules(in_range(0, 0xFFFF)))
    security: MeterSecurity = field(default_factory=MeterSecurity)


@dataclass(frozen=True)
class CollectorConfig:
    interval_s: float = field(default=900.0, metadata=rules(positive))
    jitter_s: float = field(default=60.0, metadata=rules(non_negative, smaller_than("interval_s")))
    profile_rows: int = field(default=4, metadata=rules(positive))
    timeout_s: float = field(default=5.0, metadata=rules(positive))
    retries: int = field(default=2, metadata=rules(non_negative))
    # Daily register read (energy registers and the clock with its drift check), HH:MM UTC.
    daily_read_at: str = field(default="00:05", metadata=rules(time_of_day))
    daily_registers: tuple[str, ...] = field(default=("1.0.1.8.0.255",), metadata=rules(obis_codes))
    # After an outage, read at most this many missed profile intervals per meter and read.
    catch_up_max_intervals: int = field(default=96, metadata=rules(in_range(1, 100_000)))
    # A failed read is retried within its interval after base x 2^n seconds (+ jitter), <= cap.
    retry_backoff_base_s: float = field(default=30.0, metadata=rules(positive))
    retry_backoff_cap_s: float = field(
        default=300.0, metadata=rules(positive, not_smaller_than("retry_backoff_base_s"))
    )
    # Reads in progress at once across all meters, so a round never floods the mesh.
    max_concurrent_reads: int = field(default=8, metadata=rules(in_range(1, 10_000)))
    # Meter clock off by more than this (either way) gives a clock-drift alarm record.
    clock_drift_alarm_s: float = field(default=30.0, metadata=rules(positive))
    # UDP listener for pushes (DataNotification) from IP meters; none: no listener.
    push_bind: str | None = field(default=None, metadata=rules(bind_address))
    push_port: int = field(default=4059, metadata=rules(in_range(1, 65535)))
    # SQLite file of the collector's own state (quarantine, newest capture time per meter);
    # none: collector.sqlite next to the spool file.
    state_file: Path | None = field(default=None, metadata=rules(output_file))
    # Firmware pushes (DLMS image transfer) to a group share this many bytes/s of request
    # frames, so an image never takes the mesh's airtime from the interval reads.
    firmware_bytes_per_s: float = field(default=1000.0, metadata=rules(positive))
    firmware_concurrency: int = field(default=4, metadata=rules(in_range(1, 1000)))


DIAG_MAX_PROBES = 20


@dataclass(frozen=True)
class DiagConfig:
    """The maintenance interface: the diag API over HTTPS, for technicians' client
    certificates only (their own CA, not the uplink's)."""

    ca_file: Path = field(metadata=rules(readable_file))  # the technicians' CA
    cert_file: Path = field(metadata=rules(readable_file))  # the gateway's diag certificate
    key_file: Path = field(metadata=rules(readable_file, private_file))
    bind: str = field(default="127.0.0.1", metadata=rules(bind_address))
    port: int = field(default=8443, metadata=rules(in_range(0, 65535)))
    # This many failed TLS handshakes from one address within failure_window_s block it for
    # block_s (seed 000's fail-safe).
    max_failures: int = field(default=5, metadata=rules(in_range(1, 1000)))
    block_s: float = field(default=600.0, metadata=rules(positive))
    failure_window_s: float = field(default=600.0, metadata=rules(positive))
    handshake_timeout_s: float = field(default=10.0, metadata=rules(positive))
    probe_count: int = field(default=4, metadata=rules(in_range(1, DIAG_MAX_PROBES)))
    tls_version: str = field(default="1.2", metadata=rules(one_of("1.2", "1.3")))


@dataclass(frozen=True)
class SecurityConfig:
    """DLMS suite 0: where per-meter keys and invocation counters live, and our system title."""

    keys_file: Path = field(metadata=rules(readable_file, private_file))
    counters_file: Path = field(metadata=rules(output_file))
    client_system_title: str = field(metadata=rules(system_title))


def ula_prefix(value: Any, _: Mapping[str, Any]) -> None:
    """The mesh's /64: an IPv6 prefix written as an address ending in ``::``."""
    try:
        net = ipaddress.IPv6Network(str(value))
    except ValueError as exc:
        raise InvalidValue(f"{value!r} is not an IPv6 prefix like fd00:7a:1::/64 ({exc})") from None
    if net.prefixlen != 64:
        raise InvalidValue(f"{value!r}: the mesh prefix must be a /64")
    if net.is_multicast or net.is_link_local:
        raise InvalidValue(f"{value!r}: the mesh prefix must be a unicast, routable /64")


@dataclass(frozen=True)
class WsbrdConfig:
    """Collecting beside Silicon Labs' wsbrd: its D-Bus API for the mesh views, its TUN
    interface (the kernel's routes) for the meters' IPv6 traffic."""

    # "system", "session", or a D-Bus address such as unix:path=/run/dbus/system_bus_socket
    bus: str = "system"
    port: int = field(default=4059, metadata=rules(in_range(1, 65535)))  # the meters' DLMS port
    # wsbrd reports no noise floor: with this calibration, SNR is shown as RSL minus it,
    # labelled an estimate; without it, SNR is "not available from this backend".
    noise_floor_dbm: float | None = field(default=None, metadata=rules(in_range(-140, -30)))
    # Nodes and RoutingGraph are re-read this often as well as on their change signals.
    poll_s: float = field(default=30.0, metadata=rules(positive))


@dataclass(frozen=True)
class TiNcpConfig:
    """Collecting through a TI board that runs the Wi-SUN FAN stack itself (an NCP on
    ``radio.url``): its Spinel properties for the mesh views, STREAM_NET for IPv6."""

    port: int = field(default=4059, metadata=rules(in_range(1, 65535)))
    noise_floor_dbm: float | None = field(default=None, metadata=rules(in_range(-140, -30)))
    # CONNECTED_DEVICES / DODAG_ROUTE are read this often, never faster than min_gap_s apart:
    # back-to-back reads of the device list crash TI's stack.
    poll_s: float = field(default=30.0, metadata=rules(positive))
    min_gap_s: float = field(default=1.0, metadata=rules(positive))


@dataclass(frozen=True)
class MeshConfig:
    """The gateway's side of the mesh: the RPL root, the routing table, link thresholds."""

    prefix: str = field(default="fd00:7a:1::/64", metadata=rules(ula_prefix))
    pan_id: int = field(default=0xABCD, metadata=rules(in_range(0, 0xFFFE)))
    # Largest MAC payload per frame before 6LoWPAN fragments (802.15.4g allows up to 2047-byte
    # PSDUs; Wi-SUN meters commonly take far less).
    max_frame_payload: int = field(default=200, metadata=rules(in_range(40, 2000)))
    reassembly_timeout_s: float = field(default=60.0, metadata=rules(positive))
    dio_imin_s: float = field(default=1.0, metadata=rules(positive))
    dio_doublings: int = field(default=12, metadata=rules(in_range(0, 30)))
    dio_redundancy: int = field(default=10, metadata=rules(non_negative))
    dao_lifetime_s: float = field(default=7200.0, metadata=rules(positive))
    snr_floor_db: float = field(default=12.0, metadata=rules(in_range(-20, 60)))
    snr_ok_db: float = field(default=18.0, metadata=rules(in_range(-20, 60)))
    snr_hysteresis_db: float = field(default=3.0, metadata=rules(non_negative))
    silent_after_s: float = field(default=1800.0, metadata=rules(positive))
    # The routing table is saved here (atomically) and reloaded at start; None: not persisted.
    routes_file: Path | None = None
    # Which stack runs the mesh: our own RPL root on a raw RCP, wsbrd (D-Bus), or a TI NCP.
    backend: str = field(default="own", metadata=rules(one_of("own", "wsbrd", "ti-ncp")))
    wsbrd: WsbrdConfig = field(default_factory=WsbrdConfig)
    ti_ncp: TiNcpConfig = field(default_factory=TiNcpConfig)


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig
    radio: RadioConfig
    uplink: UplinkConfig
    spool: SpoolConfig
    meters: tuple[MeterConfig, ...] = field(
        metadata=rules(unique("id", "meter id"), suite0_needs_keys, include=True)
    )
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    security: SecurityConfig | None = None
    diag: DiagConfig | None = None
    source: Path | None = field(default=None, metadata=rules(from_yaml=False))


# --------------------------------------------------------------------------------------------
# The loader: compose the YAML node tree (so every value keeps its line), then walk it against
# the dataclasses' type hints.

_TAG = "tag:yaml.org,2002:"


def load_config(path: Path) -> Config:
    """Read, convert and check the config file at ``path``; raise one ConfigError on a problem.

    Relative paths in the file (TLS files, spool, meters file) are taken relative to the
    directory of the file they appear in, so a config works from any working directory.
    """
    path = Path(os.path.normpath(Path(path).absolute()))
    root = _compose(path, None)
    if root is None:
        raise ConfigError("", None, f"{path} is empty; expected a mapping with {_keys(Config)}")
    config: Config = _convert(_At("", root, path, main=True), Config, {})
    return dataclasses.replace(config, source=path)


def _compose(path: Path, including: _At | None) -> Node | None:
    """Parse one YAML file into its node tree; errors name the line (and, if included, the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _file_error(path, including, None, f"cannot read {path}: {_why(exc)}") from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or "syntax error"
        if exc.context:
            detail = f"{detail} ({exc.context})"
        line = mark.line + 1 if mark is not None else None
        raise _file_error(path, including, line, f"not valid YAML: {detail}") from None
    except yaml.YAMLError as exc:
        raise _file_error(path, including, None, f"not valid YAML: {exc}") from None


def _file_error(path: Path, including: _At | None, line: int | None, message: str) -> ConfigError:
    """An unreadable or unparsable file: the main config, or one included from ``including``."""
    if including is None:
        return ConfigError("", line, message)
    if line is None:
        return including.error(message)
    return ConfigError("", line, message, file=path)


def _why(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


@dataclass(frozen=True)
class _At:
    """Where a value is: its key path, its node, the file it came from."""

    key: str
    node: Node
    file: Path
    main: bool

    @property
    def line(self) -> int | None:
        mark = self.node.start_mark
        return mark.line + 1 if mark is not None else None

    def child(self, name: str | int, node: Node) -> _At:
        if isinstance(name, int):
            key = f"{self.key}[{name}]"
        else:
            key = f"{self.key}.{name}" if self.key else name
        return _At(key, node, self.file, self.main)

    def below(self, steps: Iterable[str | int]) -> _At:
        """Follow ``steps`` (mapping keys, list indexes) down the node tree as far as it goes."""
        at = self
        for step in steps:
            node: Node | None = None
            if isinstance(step, int) and isinstance(at.node, SequenceNode):
                node = at.node.value[step]
            elif isinstance(step, str) and isinstance(at.node, MappingNode):
                node = next((v for k, v in at.node.value if k.value == step), None)
            at = at.child(step, node if node is not None else at.node)
        return at

    def error(self, message: str, exit_code: int = EXIT_CONFIG) -> ConfigError:
        return ConfigError(
            self.key,
            self.line,
            message,
            file=None if self.main else self.file,
            exit_code=exit_code,
        )


def _convert(at: _At, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Turn the node at ``at`` into a value of type ``hint`` or raise a ConfigError there."""
    if meta.get("include") and _scalar_tag(at.node) == "str":
        return _convert(_included(at), hint, {})
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _convert_record(at, hint)
    origin = get_origin(hint)
    if origin is tuple:
        return _convert_list(at, get_args(hint)[0], meta)
    if origin in (dict, Mapping):
        key_hint, value_hint = get_args(hint)
        return _convert_mapping(at, key_hint, value_hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if _scalar_tag(at.node) == "null":
            return None
        return _convert(at, options[0], meta)
    return _convert_scalar(at, hint)


def _included(at: _At) -> _At:
    """A string in place of a list: the path of a YAML file holding it."""
    target = _resolve(at, at.node.value)
    root = _compose(target, at)
    if root is None:
        raise at.error(f"{target} is empty; expected a list")
    return _At(at.key, root, target, main=False)


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in _yaml_fields(cls))


def _yaml_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("from_yaml", True)]


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _convert_record(at: _At, cls: type) -> Any:
    if not isinstance(at.node, MappingNode):
        raise at.error(f"expected a mapping (with {_keys(cls)}), got {_describe(at.node)}")
    entries = _entries(at)
    fields = _yaml_fields(cls)
    names = [f.name for f in fields]
    for name, (key_node, _) in entries.items():
        if name not in names:
            raise at.child(name, key_node).error(_unknown_key(name, names))
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields:
        if f.name in entries:
            child = at.child(f.name, entries[f.name][1])
            value = _convert(child, hints[f.name], f.metadata)
            normalize = f.metadata.get("normalize")
            values[f.name] = normalize(value) if normalize is not None else value
        elif _required(f):
            raise at.child(f.name, at.node).error(f"missing required key '{f.name}'")
        else:
            factory = f.default_factory
            values[f.name] = factory() if factory is not dataclasses.MISSING else f.default
    for f in fields:
        if f.name in entries:
            _run_checks(at.child(f.name, entries[f.name][1]), f, values)
    return cls(**values)


def _run_checks(at: _At, f: dataclasses.Field[Any], values: Mapping[str, Any]) -> None:
    for check in f.metadata.get("checks", ()):
        try:
            check(values[f.name], values)
        except InvalidValue as exc:
            raise _check_error(at, exc) from None


def _check_error(at: _At, exc: InvalidValue) -> ConfigError:
    """Place an InvalidValue: below ``at``, inside an included file if the list came from one."""
    if (exc.at or exc.first) and _scalar_tag(at.node) == "str":
        at = _included(at)
    message = exc.message
    if exc.first is not None:
        first = at.below(exc.first)
        message += f" (first used at {first.key}, line {first.line})"
    return at.below(exc.at).error(message, exc.exit_code)


def _entries(at: _At) -> dict[str, tuple[Node, Node]]:
    """A mapping's keys and value nodes; duplicate or non-string keys are errors."""
    entries: dict[str, tuple[Node, Node]] = {}
    assert isinstance(at.node, MappingNode)
    for key_node, value_node in at.node.value:
        if not isinstance(key_node, ScalarNode):
            raise at.child("?", key_node).error(f"keys must be names, got {_describe(key_node)}")
        name = str(key_node.value)
        if name in entries:
            first = entries[name][0].start_mark
            where = f" (first at line {first.line + 1})" if first is not None else ""
            raise at.child(name, key_node).error(f"duplicate key '{name}'{where}")
        entries[name] = (key_node, value_node)
    return entries


def _unknown_key(name: str, allowed: list[str]) -> str:
    message = f"unknown key '{name}'"
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        message += f"; did you mean '{close[0]}'?"
    return f"{message} (allowed keys: {', '.join(allowed)})"


def _convert_list(at: _At, item: Any, meta: Mapping[str, Any]) -> tuple[Any, ...]:
    if not isinstance(at.node, SequenceNode):
        expected = "a list"
        if meta.get("include"):
            expected = "a list or the path of a YAML file holding it"
        raise at.error(f"expected {expected}, got {_describe(at.node)}")
    return tuple(_convert(at.child(i, node), item, {}) for i, node in enumerate(at.node.value))


def _convert_mapping(at: _At, key_hint: Any, value_hint: Any) -> dict[Any, Any]:
    """A mapping with free keys (``dict[K, V]``): each key and value converted and placed."""
    if not isinstance(at.node, MappingNode):
        raise at.error(
            f"expected a mapping of KEY: value ({_expected(key_hint)} to "
            f"{_expected(value_hint)}), got {_describe(at.node)}"
        )
    result: dict[Any, Any] = {}
    for name, (key_node, value_node) in _entries(at).items():
        key = _convert(at.child(name, key_node), key_hint, {})
        result[key] = _convert(at.child(name, value_node), value_hint, {})
    return result


def _convert_scalar(at: _At, hint: Any) -> Any:
    tag = _scalar_tag(at.node)
    if hint is bool and tag == "bool":
        return _construct(at.node)
    if hint is int and tag == "int":
        return _construct(at.node)
    if hint is float and tag in ("int", "float"):
        value = float(_construct(at.node))
        if not math.isfinite(value):
            raise at.error(f"expected a finite number, got {at.node.value}")
        return value
    if hint is str and tag == "str":
        return str(at.node.value)
    if hint is Path and tag == "str":
        if not at.node.value:
            raise at.error("expected a file path, got an empty string")
        return _resolve(at, at.node.value)
    raise at.error(f"expected {_expected(hint)}, got {_describe(at.node)}{_quote_hint(at, hint)}")


def _resolve(at: _At, text: str) -> Path:
    """Relative paths are relative to the directory of the file that names them."""
    return Path(os.path.normpath(at.file.parent / Path(text)))


def _construct(node: Node) -> Any:
    return SafeConstructor().construct_object(node)


def _scalar_tag(node: Node) -> str | None:
    if not isinstance(node, ScalarNode):
        return None
    return node.tag.removeprefix(_TAG)


def _expected(hint: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean (true or false)",
        Path: "a file path",
    }
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _describe(node: Node) -> str:
    """What the operator actually wrote, in words: ``a string 'abc'``, ``a list``..."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = _scalar_tag(node)
    text = str(node.value)
    if len(text) > 60:
        text = text[:57] + "..."
    words = {
        "str": f"a string {text!r}",
        "int": f"an integer {text}",
        "float": f"a number {text}",
        "bool": f"a boolean {text}",
        "null": "nothing (an empty value)",
    }
    return words.get(tag or "", f"a value tagged {node.tag} ({text!r})")


def _quote_hint(at: _At, hint: Any) -> str:
    if hint is str and _scalar_tag(at.node) in ("int", "float", "bool"):
        return f' (write it in quotes: "{at.node.value}")'
    return ""
