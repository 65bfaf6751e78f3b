"""``hil meter serve`` as a real subprocess: it prints its addresses, our reader reads it over UDP
and TCP on loopback, ``--fault`` makes it misbehave, and SIGTERM ends it cleanly."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.keys import load_keys
from firmware_agent.collector.link import TcpMeterLink, UdpMeterLink
from firmware_agent.collector.reader import MeterRead, MeterReadError, read_meter
from firmware_agent.collector.session import MalformedReply, session_factory
from firmware_agent.config import MeterConfig, MeterSecurity

ROOT = Path(__file__).resolve().parents[3]


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil", "meter", "serve", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ports: dict[str, int] = {}
        wanted = sum(a in ("--udp", "--tcp") for a in args) or 1
        assert proc.stdout is not None
        for _ in range(wanted):
            line = proc.stdout.readline().split()
            assert len(line) == 2, proc.stderr.read() if proc.stderr else ""
            ports[line[0]] = int(line[1].rpartition(":")[2])
        yield proc, ports
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def read(transport: str, port: int, meter_id: str) -> MeterRead | MeterReadError:
    async def go() -> MeterRead | MeterReadError:
        link = (
            UdpMeterLink("127.0.0.1", port)
            if transport == "udp"
            else TcpMeterLink("127.0.0.1", port)
        )
        try:
            return await read_meter(
                link,
                MeterConfig(meter_id, transport, "127.0.0.1", port),
                SystemClock(),
                timeout=3.0,
            )
        except MeterReadError as exc:
            return exc
        finally:
            await link.close()

    return asyncio.run(go())


def test_serve_udp_and_tcp_read_by_our_reader_then_sigterm_ends_it_cleanly() -> None:
    with serving("--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--meter-id", "MTR-CLI") as (
        proc,
        ports,
    ):
        for transport in ("udp", "tcp"):
            result = read(transport, ports[transport], "MTR-CLI")
            assert isinstance(result, MeterRead), result
            assert len(result.readings) == 5 and abs(result.clock_drift_s) < 2.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "meter MTR-CLI stopped" in err and "'associations': 2" in err


def test_serve_with_a_garbage_fault_fails_one_read_then_behaves() -> None:
    with serving("--udp", "127.0.0.1:0", "--fault", "garbage:1") as (proc, ports):
        first = read("udp", ports["udp"], "EMU-1")
        second = read("udp", ports["udp"], "EMU-1")
        assert isinstance(first, MeterReadError) and isinstance(first.cause, MalformedReply)
        assert isinstance(second, MeterRead)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stderr is not None and "'fault-garbage': 1" in proc.stderr.read()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "boom"], "fault kind 'boom'"),
        (["--security", "suite0"], "needs --keys"),
        (["--udp", "nonsense"], "is not HOST:PORT"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hil", "meter", "serve", "--udp", "127.0.0.1:0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


EK = "000102030405060708090A0B0C0D0E0F"
AK = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"
TITLE = "4D4D4D0000000001"


def key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"MTR-SEC:\n  block_cipher_key: {EK}\n  authentication_key: {AK}\n  system_title: {TITLE}\n"
    )
    path.chmod(mode)
    return path


def test_serve_suite0_is_read_by_our_secured_session(tmp_path: Path) -> None:
    keys = load_keys(key_file(tmp_path))
    store = CounterStore(tmp_path / "counters.sqlite")
    factory = session_factory(keys, store, bytes.fromhex("4757000000000001"), random.Random(1))
    meter = MeterConfig(
        "MTR-SEC", "udp", "127.0.0.1", 1, client_address=1, security=MeterSecurity("suite0")
    )
    with serving(
        "--udp", "127.0.0.1:0", "--meter-id", "MTR-SEC", "--security", "suite0",
        "--keys", str(key_file(tmp_path)),
    ) as (proc, ports):  # fmt: skip

        async def go() -> MeterRead:
            link = UdpMeterLink("127.0.0.1", ports["udp"])
            try:
                return await read_meter(
                    link, meter, SystemClock(), timeout=3.0, session_factory=factory
                )
            finally:
                await link.close()

        result = asyncio.run(go())
        assert len(result.readings) == 5
        assert store.state("MTR-SEC").next_send > 1  # frames really went ciphered
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_serve_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = key_file(tmp_path, 0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "hil", "meter", "serve", "--udp", "127.0.0.1:0",
         "--meter-id", "MTR-SEC", "--security", "suite0", "--keys", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert proc.returncode == 2 and "must be 0600" in proc.stderr
