"""``spinel+pty://``: the driver spawns ``python -m hil rcp --pty`` and drives it like a board."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from drivers import default_registry, open_radio
from drivers.pty_spawn import SpawnedRcpTransport, rcp_command
from drivers.rcp_host import SpinelTransceiver
from drivers.transceiver import RadioError, TxStatus


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 60)

    asyncio.run(bounded())


def test_registry_schemes() -> None:
    assert default_registry().schemes() == ["spinel+pty", "spinel+spi", "spinel+uart"]
    with pytest.raises(RadioError, match=re.escape("unknown radio URL scheme 'spinel+i2c'")):
        open_radio("spinel+i2c:///dev/i2c-1")


def test_query_becomes_child_options() -> None:
    argv = rcp_command("spinel+pty://?seed=7&profile_period=60&meters=%2Ftmp%2Fm.yaml&verbose")
    assert argv == [
        sys.executable, "-m", "hil", "rcp", "--pty",
        "--seed", "7", "--profile-period", "60", "--meters", "/tmp/m.yaml", "--verbose",
    ]  # fmt: skip
    with pytest.raises(RadioError, match="bad option name"):
        rcp_command("spinel+pty://?--evil=1")
    with pytest.raises(RadioError, match="takes only options"):
        rcp_command("spinel+pty://somewhere/else")


def test_spawned_child_end_to_end_and_terminated_on_close() -> None:
    async def go() -> None:
        radio = open_radio("spinel+pty://?seed=5&channel=4&eui64=0257530000000005")
        assert isinstance(radio, SpinelTransceiver)
        transport = radio._transport
        assert isinstance(transport, SpawnedRcpTransport)
        info = await radio.open()
        pid = transport.pid
        assert pid is not None
        assert transport.pty_path is not None and transport.pty_path.startswith("/dev/")
        assert info.hwaddr == bytes.fromhex("0257530000000005")
        assert info.protocol_version == (4, 3)
        await radio.set_channel(11)
        broadcast = bytes.fromhex("41d80122ffffffff0100") + b"hi" + b"\0\0"
        assert (await radio.transmit(broadcast)).status is TxStatus.SENT
        unicast = bytes.fromhex("61dc0122ef") + bytes(8) + bytes(8) + b"\0\0"
        assert (await radio.transmit(unicast)).status is TxStatus.NO_ACK
        scan = await radio.energy_scan([4, 11], 16)
        assert set(scan) == {4, 11}
        assert -125 < await radio.sample_rssi() < -100
        await radio.close()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # terminated and reaped
        assert transport.pid is None

    run(go)


def test_child_failing_to_start_is_a_clear_error() -> None:
    async def go() -> None:
        radio = open_radio("spinel+pty://?no_such_option=1")
        with pytest.raises(RadioError, match="exited with status 2 before printing its PTY path"):
            await radio.open()

    run(go)


def test_hil_rcp_cli_prints_pty_first_and_exits_zero_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil", "rcp", "--pty", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/")
        assert os.path.exists(path)
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, bytes.fromhex("7E800102927E"))  # RESET, the ARCHITECTURE.md vector
            got = b""
            while got.count(b"\x7e") < 2:
                got += os.read(fd, 64)
            assert got.startswith(bytes.fromhex("7E80060072"))
        finally:
            os.close(fd)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_child_exits_when_its_host_dies_without_closing() -> None:
    host = (
        "import asyncio, os\n"
        "from drivers import open_radio\n"
        "async def main():\n"
        "    radio = open_radio('spinel+pty://?seed=2')\n"
        "    await radio.open()\n"
        "    print(radio._transport.pid, flush=True)\n"
        "    os._exit(3)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", host], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 3, out.stderr
    child = int(out.stdout.strip())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # exited; waiting for a reaper that may not exist in a container
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail(f"virtual RCP pid {child} outlived its host")
