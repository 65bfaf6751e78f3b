"""sd_notify and the watchdog feeder against a real AF_UNIX datagram socket, as systemd binds it."""

from __future__ import annotations

import array
import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware_agent.clock import ManualClock, SystemClock
from firmware_agent.sdnotify import (
    Notifier,
    NotifyError,
    WatchdogFeeder,
    WatchdogPolicy,
    encode,
    notifier_from_env,
    parse_address,
    read_env,
    watchdog_seconds,
)

ROOT = Path(__file__).resolve().parents[2]


class SystemdSide:
    """The receiving end systemd would hold: a bound datagram socket with SO_PASSCRED."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(3.0)

    def recv(self) -> tuple[bytes, int]:
        """One datagram and the sender's PID from SCM_CREDENTIALS (what NotifyAccess= checks)."""
        creds = struct.calcsize("3i")
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:creds])[0]
        return data, pid

    def drain(self, within_s: float) -> list[bytes]:
        got: list[bytes] = []
        self.sock.settimeout(within_s)
        try:
            while True:
                got.append(self.sock.recv(4096))
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(3.0)
        return got

    def collect(self, for_s: float) -> list[bytes]:
        """Every datagram that arrives in the next ``for_s`` seconds (however busy the sender)."""
        got: list[bytes] = []
        deadline = time.monotonic() + for_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    got.append(self.sock.recv(4096))
                except TimeoutError:
                    break
        finally:
            self.sock.settimeout(3.0)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[SystemdSide]:
    # Not tmp_path: its long name could pass the 107-byte sun_path limit.
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        side = SystemdSide(os.path.join(d, "notify"))
        yield side
        side.close()


# --- messages and environment --------------------------------------------------------------------


def test_encode_keeps_order_and_cannot_be_tricked_by_a_status_newline() -> None:
    assert encode([("READY", "1"), ("STATUS", "up")]) == b"READY=1\nSTATUS=up\n"
    assert encode([("STATUS", "radio lost\nREADY=1")]) == b"STATUS=radio lost / READY=1\n"
    with pytest.raises(ValueError, match="newline"):
        encode([("EXTEND_TIMEOUT_USEC", "1\nREADY=1")])
    with pytest.raises(ValueError, match="'ready'"):
        encode([("ready", "1")])
    with pytest.raises(ValueError, match="at least one"):
        encode([])


def test_parse_address_paths_abstract_and_refusals() -> None:
    assert parse_address("/run/systemd/notify") == "/run/systemd/notify"
    assert parse_address("@sd-notify/1") == b"\0sd-notify/1"
    for bad, why in [
        ("run/notify", "neither an absolute path"),
        ("vsock:2:1234", "neither an absolute path"),
        ("@", "empty or too long"),
        ("/" + "x" * 200, "longer than 107"),
    ]:
        with pytest.raises(NotifyError, match=why):
            parse_address(bad)


def test_watchdog_timeout_only_for_the_named_process() -> None:
    env = {"WATCHDOG_USEC": "30000000"}
    assert watchdog_seconds(env, 42) == 30.0
    assert watchdog_seconds({**env, "WATCHDOG_PID": "42"}, 42) == 30.0
    assert watchdog_seconds({**env, "WATCHDOG_PID": "41"}, 42) is None  # a child's inheritance
    assert watchdog_seconds({}, 42) is None
    for bad in ("0", "-5", "30s", ""):
        with pytest.raises(NotifyError, match="WATCHDOG_USEC"):
            watchdog_seconds({"WATCHDOG_USEC": bad}, 42)
    with pytest.raises(NotifyError, match="WATCHDOG_PID 'me'"):
        watchdog_seconds({**env, "WATCHDOG_PID": "me"}, 42)
    # no socket: nobody to pet, whatever WATCHDOG_USEC says
    assert read_env(env, 42).watchdog_s is None


# --- the socket edge ----------------------------------------------------------------------------


def test_ready_status_watchdog_stopping_arrive_from_our_pid(systemd: SystemdSide) -> None:
    env = {"NOTIFY_SOCKET": str(systemd.address), "WATCHDOG_USEC": "4000000"}
    n = Notifier.from_env(env)
    assert n.enabled and n.watchdog_s == 4.0
    assert n.ready("gateway-01: 12 meters")
    assert systemd.recv() == (b"READY=1\nSTATUS=gateway-01: 12 meters\n", os.getpid())
    n.status("reading")
    n.watchdog()
    n.extend_timeout(2.5)
    n.stopping()
    got = [systemd.recv()[0] for _ in range(4)]
    assert got == [
        b"STATUS=reading\n",
        b"WATCHDOG=1\n",
        b"EXTEND_TIMEOUT_USEC=2500000\n",
        b"STOPPING=1\n",
    ]
    assert n.sent == 5 and n.failures == 0
    n.close()


def test_abstract_socket_address() -> None:
    name = f"@wisun-sdnotify-test-{os.getpid()}"
    side = SystemdSide(b"\0" + name[1:].encode())
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": name})
        assert n.ready()
        assert side.recv()[0] == b"READY=1\n"
        n.close()
    finally:
        side.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled and n.watchdog_s is None
    assert n.ready("x") is False and n.watchdog() is False
    assert n.sent == 0 and n.failures == 0


def test_vanished_socket_is_counted_and_logged_once_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        path = os.path.join(d, "notify")
        side = SystemdSide(path)
        n = Notifier(path)
        side.close()
        os.unlink(path)
        with caplog.at_level(logging.WARNING, logger="firmware_agent.sdnotify"):
            assert n.watchdog() is False
            assert n.watchdog() is False
        assert n.failures == 2
        warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
        assert len(warnings) == 1 and "ENOENT" in warnings[0].getMessage()
        n.close()


def test_bad_environment_gives_a_disabled_notifier_and_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), notifier_from_env({"NOTIFY_SOCKET": "relative"}) as n:
        assert not n.enabled
    assert "not notifying systemd: NOTIFY_SOCKET 'relative'" in caplog.text


def test_a_fresh_process_notifies_from_its_real_environment(systemd: SystemdSide) -> None:
    code = (
        "from firmware_agent.sdnotify import Notifier\n"
        "n = Notifier.from_env()\n"
        "assert n.watchdog_s == 0.5, n.watchdog_s\n"
        "n.ready('child up')\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(systemd.address), "WATCHDOG_USEC": "500000"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    data, pid = systemd.recv()
    assert proc.wait(timeout=30) == 0
    assert data == b"READY=1\nSTATUS=child up\n"
    assert pid == proc.pid


# --- the watchdog decision (sans-IO, manual clock) ---------------------------------------------


def test_policy_ended_loops_are_dead_for_good_silent_ones_until_they_beat() -> None:
    p = WatchdogPolicy()
    p.expect("mesh", 0.0)
    p.expect("collector", 0.0, max_silence_s=60)
    assert p.check(59.0).healthy
    silent = p.check(61.0)
    assert not silent.healthy and silent.reasons == ("collector silent for 61 s (limit 60 s)",)
    p.beat("collector", 62.0)
    assert p.check(100.0).healthy
    p.ended("mesh", "RadioError: board gone")
    p.ended("mesh", "cancelled")  # the first reason stays
    p.beat("collector", 101.0)
    assert p.check(101.0).reasons == ("mesh ended (RadioError: board gone)",)
    with pytest.raises(ValueError, match="no loop named 'uplink'"):
        p.beat("uplink", 1.0)
    with pytest.raises(ValueError, match="already watched"):
        p.expect("mesh", 0.0)
    with pytest.raises(ValueError, match="max_silence_s must be > 0"):
        p.expect("rpl", 0.0, max_silence_s=0)


def test_feeder_ticks_pet_only_while_heartbeats_arrive(systemd: SystemdSide) -> None:
    clock = ManualClock()
    n = Notifier(str(systemd.address), watchdog_s=30.0)
    statuses = iter(["3 meters", "3 meters", "4 meters"])
    feeder = WatchdogFeeder(n, clock, status=lambda: next(statuses))
    assert feeder.period_s == 15.0
    beat = feeder.heartbeat("collector", max_silence_s=40)
    assert feeder.tick().healthy
    clock.advance(15)
    beat()
    feeder.tick()  # same status: not repeated
    clock.advance(15)
    feeder.tick()
    clock.advance(30)  # 45 s since the beat
    verdict = feeder.tick()
    assert not verdict.healthy
    got = systemd.drain(0.2)
    assert got == [
        b"WATCHDOG=1\nSTATUS=3 meters\n",
        b"WATCHDOG=1\n",
        b"WATCHDOG=1\nSTATUS=4 meters\n",
        b"STATUS=unhealthy: collector silent for 45 s (limit 40 s)\n",
    ]
    assert feeder.pets == 3 and feeder.withheld == 1
    n.close()


def test_feeder_period_must_be_shorter_than_the_timeout() -> None:
    with pytest.raises(ValueError, match="shorter than WatchdogSec"):
        WatchdogFeeder(Notifier("/run/x", watchdog_s=10), SystemClock(), period_s=10)


# --- the feeder on a real event loop ------------------------------------------------------------


def test_feeder_stops_petting_when_a_loop_task_dies(systemd: SystemdSide) -> None:
    async def scenario() -> None:
        n = Notifier(str(systemd.address), watchdog_s=0.2)
        feeder = WatchdogFeeder(n, SystemClock())
        forever = asyncio.Event()

        async def mesh() -> None:
            await forever.wait()

        async def collector() -> None:
            await asyncio.sleep(0.35)
            raise RuntimeError("meter table corrupt")

        tasks = [asyncio.create_task(mesh()), asyncio.create_task(collector())]
        feeder.watch_task("mesh", tasks[0])
        feeder.watch_task("collector", tasks[1])
        runner = asyncio.create_task(feeder.run())
        await asyncio.sleep(0.8)
        runner.cancel()
        tasks[0].cancel()
        await asyncio.gather(runner, *tasks, return_exceptions=True)
        n.close()

    asyncio.run(scenario())
    got = systemd.drain(0.2)
    assert got[0] == b"WATCHDOG=1\n"
    first_bad = got.index(
        b"STATUS=unhealthy: collector ended (RuntimeError: meter table corrupt)\n"
    )
    assert 3 <= first_bad <= 5, got  # pets every 0.1 s until the death at 0.35 s
    assert all(m == b"WATCHDOG=1\n" for m in got[:first_bad])
    assert b"WATCHDOG=1\n" not in got[first_bad:]


def test_feeder_without_watchdog_returns_at_once() -> None:
    async def scenario() -> None:
        feeder = WatchdogFeeder(Notifier(None), SystemClock())
        assert not feeder.active
        await asyncio.wait_for(feeder.run(), 1.0)

    asyncio.run(scenario())


def test_feeder_reports_a_blocked_event_loop(
    systemd: SystemdSide, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        n = Notifier(str(systemd.address), watchdog_s=0.2)
        feeder = WatchdogFeeder(n, SystemClock())
        runner = asyncio.create_task(feeder.run())
        await asyncio.sleep(0.05)
        time.sleep(0.4)  # a synchronous call hogging the loop
        await asyncio.sleep(0.05)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        n.close()

    with caplog.at_level(logging.WARNING, logger="firmware_agent.sdnotify"):
        asyncio.run(scenario())
    assert "event loop was blocked for about" in caplog.text


# --- the agent as a systemd service --------------------------------------------------------------


def test_the_agent_says_ready_pets_the_watchdog_and_says_stopping(
    systemd: SystemdSide, gateway_config: Callable[..., Path]
) -> None:
    """``firmware-agent run`` under Type=notify: READY=1 once its loops run, WATCHDOG=1 while
    they live (WatchdogSec=2 s here), STOPPING=1 on SIGTERM, then a clean exit."""
    config = gateway_config()
    env = {**os.environ, "NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "2000000"}
    agent_bin = Path(sys.executable).with_name("firmware-agent")
    proc = subprocess.Popen(
        [str(agent_bin), "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # a pipe nobody reads would fill and stall the agent
    )
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(b"READY=1" in m for m in seen):
            seen += systemd.collect(0.5)
        assert any(b"READY=1" in m for m in seen), (seen, proc.poll())
        ready = next(m for m in seen if b"READY=1" in m)
        assert b"STATUS=" in ready and b"meters" in ready
        pets = [m for m in systemd.collect(2.5) if b"WATCHDOG=1" in m]
        assert len(pets) >= 2  # every WatchdogSec/2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert any(b"STOPPING=1" in m for m in systemd.collect(1.0))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
