"""The mosquitto launcher: config, readiness, port conflicts, early exit, stop by PID."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest

from hil.broker import BrokerError, BrokerOptions, BrokerPortBusy, Mosquitto, free_port
from hil.pki import Pki, generate_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


def mtls_handshake(pki: Pki, port: int) -> str:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    pair = pki.client("gateway-01")
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


def test_start_serves_mtls_and_stop_ends_the_process(pki: Pki, tmp_path: Path) -> None:
    b = Mosquitto(pki, workdir=tmp_path / "b")
    with b:
        pid = b.pid
        assert pid is not None and b.running
        assert mtls_handshake(pki, b.port) == "TLSv1.3"
        conf = b.config_file.read_text()
        for line in (
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.3",
            "persistence false",
            f"log_dest file {b.log_file}",
            "max_queued_messages 100000",
            f"listener {b.port} 127.0.0.1",
        ):
            assert line in conf
        assert ("user root" in conf) == (os.geteuid() == 0)
        assert "running" in b.log_text()
    assert not b.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (tmp_path / "b").exists() or b.workdir == tmp_path / "b"


def test_restart_on_the_same_port(pki: Pki, tmp_path: Path) -> None:
    with Mosquitto(pki, workdir=tmp_path / "b") as b:
        port = b.port
        mtls_handshake(pki, port)
        b.stop()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        b.start()
        assert b.port == port
        mtls_handshake(pki, port)


def test_busy_port_is_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerPortBusy, match=str(port)):
            Mosquitto(pki, port=port, workdir=tmp_path / "b").start()


def test_early_exit_reports_the_log(pki: Pki, tmp_path: Path) -> None:
    b = Mosquitto(
        pki, options=BrokerOptions(extra_config=("no_such_option 1",)), workdir=tmp_path / "b"
    )
    with pytest.raises(BrokerError, match="no_such_option") as e:
        b.start()
    assert "exited with status" in str(e.value)
    assert not b.running


def test_tls12_listener_option(pki: Pki, tmp_path: Path) -> None:
    with Mosquitto(pki, options=BrokerOptions(tls_version="1.2"), workdir=tmp_path / "b") as b:
        assert "tls_version tlsv1.2" in b.config_file.read_text()
    with pytest.raises(BrokerError, match="tls_version"):
        Mosquitto(pki, options=BrokerOptions(tls_version="1.0"))


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
