"""The agent's radio: one that cannot be opened is a runtime failure (exit 1), said plainly; one
named by udev properties is looked up again at every reopen, and a replug ends the backoff."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers import default_registry
from drivers.discover import (
    BoardAppeared,
    BoardCandidate,
    BoardMatch,
    UdevNode,
    candidate_from_udev,
)
from drivers.rcp_host import SpinelTransceiver
from drivers.reconnect import Backoff, RadioEvent, RadioEventKind, ReconnectingTransceiver
from drivers.spinel import Prop
from firmware_agent.agent import HotplugWake, matched_radio_factory
from firmware_agent.clock import ManualClock
from hil.medium import Medium
from hil.rcp import PtyBoard, VirtualRcp

AGENT = Path(sys.executable).with_name("firmware-agent")


def test_missing_radio_board_exits_1_and_names_the_port(
    gateway_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = gateway_config(radio={"url": "spinel+uart:///dev/ttyNOPE0?baudrate=460800"})
    done = subprocess.run(
        [str(AGENT), "run", "--config", str(config), "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "cannot open radio spinel+uart:///dev/ttyNOPE0" in done.stderr
    assert "No such file or directory" in done.stderr


def test_radio_match_that_fits_no_board_exits_1_naming_the_match(
    gateway_config: Callable[..., Path],
) -> None:
    config = gateway_config(
        radio={
            "url": "spinel+uart://?baudrate=460800",
            "match": {"ID_SERIAL_SHORT": "no-such-board-0000", "@ID_PATH": "pci-*"},
        }
    )
    done = subprocess.run(
        [str(AGENT), "run", "--config", str(config), "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert (
        "cannot open radio spinel+uart://?baudrate=460800: no radio board matches "
        "{ID_SERIAL_SHORT=no-such-board-0000, @ID_PATH=pci-*}; boards seen:"
    ) in done.stderr
    assert "Traceback" not in done.stderr


# ---- a board found by udev properties, again after a replug ---------------------------------

GW = bytes.fromhex("0257530000000001")
SERIAL = "L4100A7B"


class PluggedBoard:
    """A virtual RCP served on a fresh PTY (a new /dev node each time it is plugged in), and
    the udev record a USB board of that serial number would have there."""

    def __init__(self, serial: str, eui64: bytes = GW) -> None:
        rng = random.Random(eui64[-1])
        self.serial = serial
        self.rcp = VirtualRcp(Medium(rng), rng, ManualClock(), eui64=eui64, channel=0)
        self.pty = PtyBoard(self.rcp)

    async def plug(self) -> BoardCandidate:
        path = await self.pty.plug()
        props = {"DEVNAME": path, "ID_BUS": "usb", "ID_SERIAL_SHORT": self.serial}
        return candidate_from_udev(UdevNode(f"/sys/class/tty/{path[5:]}", "tty", props))

    async def unplug(self) -> None:
        await self.pty.unplug()


def test_matched_board_is_found_again_on_another_node_and_a_replug_ends_the_backoff() -> None:
    events: list[RadioEvent] = []
    changed = asyncio.Event()

    def listen(event: RadioEvent) -> None:
        events.append(event)
        changed.set()

    async def until(kind: RadioEventKind, count: int = 1) -> RadioEvent:
        while [e.kind for e in events].count(kind) < count:
            changed.clear()
            await changed.wait()
        return [e for e in events if e.kind is kind][count - 1]

    async def scenario() -> None:
        plugged: list[BoardCandidate] = []
        match = BoardMatch({"ID_SERIAL_SHORT": SERIAL})
        wake = HotplugWake(match, watch_udev=False)  # udev events come from notify() here
        radio = ReconnectingTransceiver(
            matched_radio_factory(
                "spinel+uart://?baudrate=460800&timeout=0.3&retries=1",
                match,
                default_registry(),
                lambda: plugged,
            ),
            # a backoff far longer than the test: only a hotplug wake-up can reopen in time
            backoff=Backoff(min_s=60.0, max_s=60.0, jitter=0.0),
            sleep=wake.sleep,
            listener=listen,
        )
        board = PluggedBoard(SERIAL)
        other = PluggedBoard("SOMEONE-ELSE", eui64=bytes.fromhex("02575300000000ee"))
        plugged[:] = [await other.plug(), await board.plug()]
        first_path = board.pty.path
        held: int | None = None
        started = asyncio.get_running_loop().time()
        try:
            info = await radio.open()
            assert info.hwaddr == GW
            assert isinstance(radio.inner, SpinelTransceiver)
            assert radio.inner.name == first_path  # the match, not the other board
            await radio.set_channel(7)

            # like a tty the kernel cannot reuse while someone still holds it open
            held = os.open(first_path, os.O_RDWR | os.O_NOCTTY)
            await board.unplug()
            plugged[:] = plugged[:1]
            await until(RadioEventKind.LINK_LOST)
            # an arrival that is not our board: the attempt resolves the match and says why
            wake.notify(BoardAppeared(plugged[0]))
            failed = await until(RadioEventKind.REOPEN_FAILED)
            assert f"no radio board matches {{ID_SERIAL_SHORT={SERIAL}}}" in failed.reason
            assert "SOMEONE-ELSE" in failed.reason  # what was seen

            # plugged back: the old node was still held, so it comes back as another one
            back = await board.plug()
            assert board.pty.path != first_path
            plugged.append(back)
            wake.notify(BoardAppeared(back))
            reopened = await until(RadioEventKind.REOPENED)
            assert reopened.info is not None and reopened.info.hwaddr == GW
            assert isinstance(radio.inner, SpinelTransceiver)
            assert radio.inner.name == board.pty.path
            assert (await radio.inner.get(Prop.PHY_CHAN, "C"))[0] == 7  # settings re-applied
            assert wake.wakeups == 2
            assert asyncio.get_running_loop().time() - started < 20  # not the 60 s backoff
        finally:
            if held is not None:
                os.close(held)
            await radio.close()
            await board.unplug()
            await other.unplug()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_hotplug_wake_watches_udev_through_an_outage_and_releases_it() -> None:
    pyudev = pytest.importorskip("pyudev")
    try:
        pyudev.Monitor.from_netlink(pyudev.Context()).start()
    except (OSError, ValueError) as exc:
        pytest.skip(f"no udev netlink monitor here: {exc}")

    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    async def scenario() -> None:
        before = fds()
        wake = HotplugWake(BoardMatch({"ID_SERIAL_SHORT": "no-such-board"}))
        loop = asyncio.get_running_loop()
        started = loop.time()
        sleeper = asyncio.create_task(wake.sleep(0.3))
        await asyncio.sleep(0.1)
        opened = fds() - before
        assert wake.watching and opened, "the netlink socket is open while sleeping"
        await sleeper
        assert 0.3 <= loop.time() - started < 2  # nothing plugged in: the whole delay
        assert wake.wakeups == 0
        assert wake.watching and opened <= fds()  # kept between reopen attempts
        # a board arriving (between two attempts) ends the next sleep at once
        board = candidate_from_udev(UdevNode("/sys/x", "tty", {"DEVNAME": "/dev/ttyACM9"}))
        wake.notify(BoardAppeared(board))
        started = loop.time()
        await wake.sleep(30)
        assert loop.time() - started < 1 and wake.wakeups == 1
        # reopened: the watch ends and its socket is released
        wake.on_radio_event(RadioEvent(RadioEventKind.REOPENED, "reopened"))
        assert not wake.watching and not opened & fds()
        # a recovery cancelled mid-sleep (the radio closed) releases it too
        sleeper = asyncio.create_task(wake.sleep(30))
        await asyncio.sleep(0.1)
        assert wake.watching
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        assert not wake.watching and fds() <= before | opened
        assert not (fds() - before)

    asyncio.run(asyncio.wait_for(scenario(), 10))
