"""Fixtures for the uplink tests: a fresh PKI per module and a real mosquitto per test."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.config import TlsConfig, UplinkConfig
from firmware_agent.spool import Spool
from hil.broker import Mosquitto
from hil.pki import Pki, generate_pki

GATEWAY = "gateway-01"


@pytest.fixture(scope="module")
def mtls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"), gateway_ids=(GATEWAY, "gateway-02"))


@pytest.fixture
def mqtt_broker(mtls_pki: Pki, tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(mtls_pki, workdir=tmp_path / "broker") as broker:
        yield broker


@pytest.fixture
def make_uplink_config(mtls_pki: Pki, mqtt_broker: Mosquitto) -> Callable[..., UplinkConfig]:
    """``make(gateway=..., host=..., cert=CertPair, ca_file=..., **UplinkConfig fields)``."""

    def make(
        *,
        gateway: str = GATEWAY,
        host: str = "localhost",
        port: int | None = None,
        cert: Any = None,
        ca_file: Path | None = None,
        tls_version: str = "1.3",
        **kw: Any,
    ) -> UplinkConfig:
        pair = cert or mtls_pki.client(gateway)
        return UplinkConfig(
            broker_url=f"mqtts://{host}:{port or mqtt_broker.port}",
            tls=TlsConfig(ca_file or mtls_pki.ca_cert, pair.cert, pair.key, tls_version),
            **kw,
        )

    return make


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool.sqlite", SystemClock(), rng=random.Random(3))
    yield s
    s.close()
