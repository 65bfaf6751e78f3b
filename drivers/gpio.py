"""GPIO lines for the SPI radio: the slave's data-ready ("interrupt", active low) input and its
reset output, through sysfs ``/sys/class/gpio``.

Why sysfs and not the character device (``/dev/gpiochipN``, which OpenThread's host uses): the
chardev needs either libgpiod bindings (not in the base install, and their Python API changed
incompatibly between v1 and v2) or hand-packed ioctl structs; sysfs is plain file I/O, is still
built into the kernels the target boards ship (Raspberry Pi OS, Debian arm64), and its
``edge=falling`` + ``poll(POLLPRI)`` gives the same wake-on-edge. When ``edge`` cannot be set
(no permission, or a line without interrupt support) the line is polled every
``poll_interval`` (5 ms) instead: correct, only a little slower to notice data. Either way the
value is re-read before and after each wait, so a missed edge costs latency, never a frame.

:meth:`SysfsGpioLine.wait_asserted` blocks: call it from a worker thread (the SPI transport runs it
in its own executor), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from pathlib import Path
from typing import Protocol

from drivers.transceiver import RadioError

SYSFS_GPIO = Path("/sys/class/gpio")
POLL_INTERVAL_S = 0.005
#: In edge mode, re-read the value at least this often anyway (a missed edge costs no more).
EDGE_RECHECK_S = 0.1
RESET_HOLD_S = 0.01


class InputLine(Protocol):
    """A data-ready line as the SPI transport uses it (real sysfs or emulated)."""

    def asserted(self) -> bool:
        """The slave has something to send (the line is at its active level)."""
        ...

    def wait_asserted(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until asserted; True if it is. Runs in a worker thread."""
        ...

    def close(self) -> None: ...


class OutputLine(Protocol):
    def pulse_reset(self) -> None:
        """Hold the slave in reset briefly, then release it."""
        ...

    def close(self) -> None: ...


def _write(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)


def export(number: int, root: Path = SYSFS_GPIO) -> Path:
    """``/sys/class/gpio/gpioN``, exported if it is not yet."""
    line = root / f"gpio{number}"
    if not line.exists():
        try:
            _write(root / "export", str(number))
        except OSError as exc:
            raise RadioError(f"cannot export GPIO {number} via {root}/export: {exc}") from exc
    if not (line / "value").exists():
        raise RadioError(f"GPIO {number}: {line}/value does not exist after export")
    return line


class SysfsGpioLine:
    """The slave's active-low data-ready output, read through sysfs."""

    def __init__(
        self,
        number: int,
        *,
        root: Path = SYSFS_GPIO,
        active_low: bool = True,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> None:
        self.number = number
        self.path = export(number, root)
        self.active_low = active_low
        self.poll_interval = poll_interval
        with contextlib.suppress(OSError):
            _write(self.path / "direction", "in")
        try:
            _write(self.path / "edge", "falling" if active_low else "rising")
            self.edges = True
        except OSError:
            self.edges = False  # polled instead (see the module docstring)
        try:
            self._fd = os.open(self.path / "value", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise RadioError(f"cannot open GPIO {number} value: {exc}") from exc
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLPRI | select.POLLERR)

    def _level(self) -> int:
        os.lseek(self._fd, 0, os.SEEK_SET)
        raw = os.read(self._fd, 8).strip()
        if raw not in (b"0", b"1"):
            raise RadioError(f"GPIO {self.number}: unexpected value {raw!r}")
        return int(raw)

    def asserted(self) -> bool:
        return self._level() == (0 if self.active_low else 1)

    def wait_asserted(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.asserted():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.edges:
                self._poller.poll(max(1, int(min(remaining, EDGE_RECHECK_S) * 1000)))
            else:
                time.sleep(min(remaining, self.poll_interval))

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


class SysfsResetLine:
    """The slave's reset input, driven low then high through sysfs."""

    def __init__(self, number: int, *, root: Path = SYSFS_GPIO, hold: float = RESET_HOLD_S):
        self.number = number
        self.path = export(number, root)
        self.hold = hold
        try:
            _write(self.path / "direction", "high")  # output, not in reset
        except OSError as exc:
            raise RadioError(f"cannot make GPIO {number} an output: {exc}") from exc

    def pulse_reset(self) -> None:
        _write(self.path / "value", "0")
        time.sleep(self.hold)
        _write(self.path / "value", "1")

    def close(self) -> None:
        return None
