"""A private ``dbus-daemon`` for tests and demos (Debian's ``dbus`` package).

Its own config in a temp directory: a unix socket there, anyone may own any name and call
anything, except the destinations named in ``deny_destinations`` (to show what an agent sees
when the system bus's policy does not let it talk to wsbrd). Stopped by the PID it was started
with, never by name.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import quoteattr

START_TIMEOUT_S = 10.0


class PrivateBus:
    """``with PrivateBus() as bus:`` … ``bus.address`` is the D-Bus address to connect to."""

    def __init__(self, *, deny_destinations: tuple[str, ...] = ()) -> None:
        self.deny_destinations = deny_destinations
        self.address = ""
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _config(self, socket: Path) -> str:
        denies = "".join(
            f"    <deny send_destination={quoteattr(name)}/>\n" for name in self.deny_destinations
        )
        return (
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            "<busconfig>\n"
            "  <type>session</type>\n"
            f"  <listen>unix:path={socket}</listen>\n"
            "  <auth>EXTERNAL</auth>\n"
            '  <policy context="default">\n'
            '    <allow user="*"/>\n'
            '    <allow own="*"/>\n'
            '    <allow send_destination="*"/>\n'
            '    <allow receive_sender="*"/>\n'
            f"{denies}"
            "  </policy>\n"
            "</busconfig>\n"
        )

    def start(self) -> str:
        """Start the daemon; returns its address once it listens."""
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise RuntimeError("dbus-daemon not found: install Debian's dbus package")
        self.directory = Path(tempfile.mkdtemp(prefix="wsbrd-bus-"))
        config = self.directory / "bus.conf"
        config.write_text(self._config(self.directory / "socket"))
        self.process = subprocess.Popen(
            [daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line:
            err = self.process.stderr.read().decode() if self.process.stderr else ""
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start: {err.strip()}")
        self.address = line
        return line

    def stop(self) -> None:
        """Terminate the daemon (by its PID) and remove its directory."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(START_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
