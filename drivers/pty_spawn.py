"""Transport for ``spinel+pty://``: spawn a virtual RCP child process and talk to it on its PTY.

The child is ``python -m hil rcp --pty --key value ...`` (URL query parameters become its options).
It prints the PTY path as its first stdout line; from there on the child is indistinguishable from a
board on a UART, which is the point: the driver under test is the production driver. This module
never imports ``hil`` — the child is a separate process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from urllib.parse import parse_qsl, urlsplit

from drivers.transceiver import RadioError, RadioTimeout
from drivers.uart import SerialTransport

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 15.0
#: Set in the child's environment: exit when stdin (a pipe from us) closes, so a host that dies
#: without closing the radio does not leave an orphaned virtual RCP behind.
WATCH_STDIN_ENV = "HIL_RCP_EXIT_ON_STDIN_EOF"
TERMINATE_TIMEOUT_S = 5.0


def rcp_command(url: str, python: str = sys.executable) -> list[str]:
    """The child's argv for a ``spinel+pty://?k=v&flag`` URL (``k_x`` becomes ``--k-x``)."""
    parts = urlsplit(url)
    if parts.netloc or parts.path not in ("", "/"):
        raise RadioError(
            f"radio URL {url!r}: spinel+pty takes only options, e.g. spinel+pty://?seed=1"
        )
    argv = [python, "-m", "hil", "rcp", "--pty"]
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if not key or key.startswith("-") or not key.replace("_", "").replace("-", "").isalnum():
            raise RadioError(f"radio URL {url!r}: bad option name {key!r}")
        argv.append("--" + key.replace("_", "-"))
        if value:
            argv.append(value)
    return argv


class SpawnedRcpTransport:
    """Starts the virtual RCP child on ``open()``, and stops it (SIGTERM to its PID, then wait)
    on close. The child's stderr is inherited so its logs are not lost; later stdout lines are
    logged. The child's stdin is a pipe held by us: if we die, it sees EOF and exits."""

    def __init__(self, argv: list[str], *, startup_timeout: float = STARTUP_TIMEOUT_S) -> None:
        self.argv = argv
        self.startup_timeout = startup_timeout
        self.pty_path: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._serial: SerialTransport | None = None
        self._stdout_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def open(self) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                env={**os.environ, WATCH_STDIN_ENV: "1"},
            )
        except OSError as exc:
            raise RadioError(f"cannot start virtual RCP {' '.join(self.argv)}: {exc}") from exc
        try:
            self.pty_path = await self._first_line()
            self._serial = SerialTransport(self.pty_path)
            await self._serial.open()
        except BaseException:
            await self._stop_child()
            raise
        self._stdout_task = asyncio.create_task(self._log_stdout(), name="rcp-child-stdout")

    async def _first_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            async with asyncio.timeout(self.startup_timeout):
                line = await self._proc.stdout.readline()
        except TimeoutError:
            raise RadioTimeout(
                f"virtual RCP (pid {self._proc.pid}) printed no PTY path within "
                f"{self.startup_timeout:g} s: {' '.join(self.argv)}"
            ) from None
        path = line.decode("utf-8", "replace").strip()
        if not path:
            code = await self._proc.wait()
            raise RadioError(
                f"virtual RCP exited with status {code} before printing its PTY path: "
                f"{' '.join(self.argv)} (see its stderr above)"
            )
        if not path.startswith("/"):
            raise RadioError(f"virtual RCP's first line is not a PTY path: {path!r}")
        return path

    async def _log_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            log.info("virtual RCP: %s", line.decode("utf-8", "replace").rstrip())

    async def read(self) -> bytes:
        if self._serial is None:
            raise RadioError("virtual RCP transport is not open")
        return await self._serial.read()

    async def write(self, data: bytes) -> None:
        if self._serial is None:
            raise RadioError("virtual RCP transport is not open")
        await self._serial.write(data)

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()

    async def wait_closed(self) -> None:
        await self._stop_child()

    async def _stop_child(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(TERMINATE_TIMEOUT_S):
                        await proc.wait()
                except TimeoutError:
                    log.warning("virtual RCP pid %d ignored SIGTERM; killing it", proc.pid)
                    proc.kill()
                    await proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM):
                log.warning("virtual RCP pid %d exited with status %s", proc.pid, proc.returncode)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            if self._stdout_task is not None:
                self._stdout_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stdout_task
                self._stdout_task = None
            self._proc = None
