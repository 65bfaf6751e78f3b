"""Board discovery, pyudev edge: the real udev context and netlink monitor of this machine.

No kernel events are faked: a CI container has no USB boards and usually no udev daemon, so these
tests check that enumeration and the monitor work on what is really there and shut down cleanly.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.discover import (
    SUBSYSTEMS,
    BoardMatch,
    BoardWatcher,
    HotplugEvent,
    NoBoardMatched,
    candidate_from_device,
    list_boards,
    resolve,
    watch,
)

pyudev = pytest.importorskip("pyudev")
REPO = Path(__file__).resolve().parents[2]


def _open_fds() -> set[int]:
    """This process's open descriptors, minus the one used to list them."""
    own = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {int(fd) for fd in os.listdir(own)} - {own}
    finally:
        os.close(own)


def test_enumeration_on_this_machine_returns_only_tty_and_spidev_boards() -> None:
    boards = list_boards()
    for c in boards:
        assert c.subsystem in SUBSYSTEMS
        assert c.is_board
        assert c.device_node.startswith("/dev/")
        assert c.sys_path.startswith("/sys/")
    assert boards == sorted(boards, key=lambda c: c.device_node)
    if not Path("/sys/bus/usb").exists() and not list(Path("/dev").glob("spidev*")):
        assert boards == []  # this container: no USB bus, no SPI


def test_real_ttys_that_are_not_usb_are_not_boards() -> None:
    context = pyudev.Context()
    ttys = [d for d in context.list_devices(subsystem="tty") if d.device_node]
    assert ttys, "a Linux host always has some tty device"
    usb = {c.sys_path for c in list_boards(context)}
    for device in ttys:
        candidate = candidate_from_device(device)
        assert candidate.sys_path == device.sys_path
        assert candidate.device_node == device.device_node
        assert candidate.is_board == (candidate.sys_path in usb)
        usb_like = "/usb" in device.sys_path or device.sys_name.startswith(("ttyACM", "ttyUSB"))
        if not usb_like:  # ttyS*, virtual consoles, ptmx
            assert not candidate.is_board, device.sys_path


def test_resolve_names_what_it_saw_when_nothing_matches() -> None:
    with pytest.raises(NoBoardMatched, match="ID_SERIAL_SHORT=no-such-board"):
        resolve(BoardMatch({"ID_SERIAL_SHORT": "no-such-board"}))


def test_python_m_drivers_discover_lists_boards() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "drivers.discover"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    boards = list_boards()
    if boards:
        assert boards[0].device_node in result.stdout
    else:
        assert result.stdout.strip() == "no USB serial or spidev boards found"


def _monitor_or_skip() -> None:
    try:
        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.start()
    except (OSError, ValueError) as exc:
        pytest.skip(f"no udev netlink monitor here: {exc}")
    del monitor


def test_watcher_starts_registers_and_releases_its_socket() -> None:
    _monitor_or_skip()
    events: list[HotplugEvent] = []

    async def scenario() -> None:
        before = _open_fds()
        watcher = BoardWatcher(BoardMatch({"ID_SERIAL_SHORT": "no-such-board"}), events.append)
        watcher.start()
        fd = watcher.fileno()
        assert watcher.running and fd >= 0 and fd in _open_fds() - before
        os.fstat(fd)
        watcher.start()  # idempotent
        assert watcher.fileno() == fd
        await asyncio.sleep(0.05)  # the loop runs with the reader registered
        watcher.close()
        watcher.close()
        assert not watcher.running and watcher.fileno() == -1
        assert _open_fds() - before == set()

    asyncio.run(scenario())
    assert events == []  # no board of that serial here


def test_watch_task_stops_cleanly_when_cancelled() -> None:
    _monitor_or_skip()

    async def scenario() -> None:
        before = _open_fds()
        task = asyncio.create_task(watch(BoardMatch({"ID_VENDOR_ID": "ffff"}), lambda _: None))
        await asyncio.sleep(0.05)
        assert not task.done()
        assert len(_open_fds() - before) >= 1  # the netlink socket
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _open_fds() - before == set()

    asyncio.run(scenario())
