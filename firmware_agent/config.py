"""The agent's configuration: YAML into typed, validated, frozen dataclasses.

The dataclasses below are the contract every layer reads. The loader (``load_config``) reports
the first problem as one ``ConfigError`` naming the key path and the YAML line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(Exception):
    """A configuration problem, worded for an operator: ``key.path (line N): what is wrong``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path} (line {line})" if line is not None else path
        super().__init__(f"{where}: {message}" if path else message)


@dataclass(frozen=True)
class GatewayConfig:
    id: str
    site: str = ""


@dataclass(frozen=True)
class RadioConfig:
    url: str
    channel: int = 0
    tx_power_dbm: int = 14
    noise_sample_interval_s: float = 10.0


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path
    cert_file: Path
    key_file: Path
    version: str = "1.3"


@dataclass(frozen=True)
class UplinkConfig:
    broker_url: str
    tls: TlsConfig
    topic_prefix: str = "ami"
    keepalive_s: int = 30
    max_inflight: int = 20
    batch_max_records: int = 50

    @property
    def host(self) -> str:
        return self.broker_url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.broker_url.rsplit(":", 1)[1])


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
    max_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class MeterSecurity:
    level: str = "none"


@dataclass(frozen=True)
class MeterConfig:
    id: str
    transport: str  # "mesh" | "udp" | "tcp"
    address: str  # EUI-64 "00:12:4b:..." for mesh; host name or IP for udp/tcp
    port: int = 4059
    client_address: int = 16
    server_address: int = 1
    security: MeterSecurity = field(default_factory=MeterSecurity)


@dataclass(frozen=True)
class CollectorConfig:
    interval_s: float = 900.0
    jitter_s: float = 60.0
    profile_rows: int = 4
    timeout_s: float = 5.0
    retries: int = 2


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig
    radio: RadioConfig
    uplink: UplinkConfig
    spool: SpoolConfig
    meters: tuple[MeterConfig, ...]
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    source: Path | None = None
