"""Start and stop a real mosquitto with mutual TLS, for tests and the demo.

Why a real broker: the behaviours that matter (TLS 1.3 rejecting a client certificate after the
handshake, QoS 1 PUBACK timing, retained last wills, queue limits) are the broker's, and a fake
would encode our assumptions instead of checking them. Facts from Debian 12's mosquitto 2.0.11:
as root it switches to user ``mosquitto`` unless told ``user root``; ``log_dest stdout`` is block
buffered when redirected, so the log goes to a file; ``max_queued_messages`` defaults to 1000 and
silently drops QoS 1 messages to a slow subscriber.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hil.pki import Pki

MOSQUITTO = Path("/usr/sbin/mosquitto")
TLS_VERSIONS = {"1.3": "tlsv1.3", "1.2": "tlsv1.2", "tlsv1.3": "tlsv1.3", "tlsv1.2": "tlsv1.2"}


class BrokerError(Exception):
    """mosquitto could not be started or stopped; the message carries the log's last lines."""


class BrokerPortBusy(BrokerError):
    """The requested port is already taken by another process."""


@dataclass(frozen=True)
class BrokerOptions:
    """Everything that goes into the generated mosquitto.conf besides the PKI paths."""

    host: str = "127.0.0.1"
    tls_version: str = "1.3"
    max_queued_messages: int = 100_000
    max_inflight_messages: int = 100
    #: Keep persistent sessions (and their queued messages) across a restart, as a production
    #: broker does: a head end with a session loses nothing published while the broker restarts.
    persist_sessions: bool = False
    extra_config: Sequence[str] = ()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now (it may be taken again before it is used)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: ignore our own TIME_WAIT leftovers, still fail on a live listener.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise BrokerPortBusy(f"port {host}:{port} is already in use") from e
            raise BrokerError(f"cannot bind {host}:{port}: {e}") from e


class Mosquitto:
    """One mosquitto process with an mTLS listener; restartable on the same port.

    ``with Mosquitto(pki) as broker: ...`` or ``broker.start()`` / ``broker.stop()``.
    """

    def __init__(
        self,
        pki: Pki,
        *,
        port: int | None = None,
        options: BrokerOptions | None = None,
        workdir: Path | None = None,
        executable: Path = MOSQUITTO,
        start_timeout: float = 10.0,
    ) -> None:
        self.pki = pki
        self.options = options or BrokerOptions()
        if self.options.tls_version not in TLS_VERSIONS:
            raise BrokerError(
                f"tls_version {self.options.tls_version!r}: expected one of {sorted(TLS_VERSIONS)}"
            )
        self.host = self.options.host
        self._requested_port = port
        self.port = port or 0
        self.executable = executable
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.config_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- config ---------------------------------------------------------------------------------
    def config_text(self) -> str:
        o = self.options
        lines = [
            "per_listener_settings false",
            *(
                ("persistence true", f"persistence_location {self.workdir}/")
                if o.persist_sessions
                else ("persistence false",)
            ),
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            f"max_queued_messages {o.max_queued_messages}",
            f"max_inflight_messages {o.max_inflight_messages}",
            "allow_anonymous false",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        lines += [
            "",
            f"listener {self.port} {self.host}",
            f"cafile {self.pki.ca_cert}",
            f"certfile {self.pki.server.cert}",
            f"keyfile {self.pki.server.key}",
            "require_certificate true",
            "use_identity_as_username true",
            f"tls_version {TLS_VERSIONS[o.tls_version]}",
            *o.extra_config,
            "",
        ]
        return "\n".join(lines)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtts://{host}:{self.port}"

    def start(self) -> Mosquitto:
        if self.running:
            raise BrokerError(f"mosquitto already running (pid {self.pid})")
        if not self.executable.exists():
            raise BrokerError(f"{self.executable} not found: install the mosquitto package")
        if self.port == 0:
            self.port = free_port(self.host)
        _check_port_free(self.host, self.port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config_text())
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._proc = subprocess.Popen(
            [str(self.executable), "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self._kill()
            raise
        return self

    def _wait_ready(self, log_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                err = self._proc.stderr
                stderr = err.read().decode(errors="replace") if err is not None else ""
                tail = self.log_tail(10, since=log_offset)
                msg = f"mosquitto exited with status {rc} during start-up"
                text = "\n".join(x for x in (stderr.strip(), tail) if x)
                if "Address already in use" in text:
                    raise BrokerPortBusy(f"{msg}: port {self.port} is in use\n{text}")
                raise BrokerError(f"{msg}:\n{text}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f} s:\n{self.log_tail(10, since=log_offset)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process we started, wait, SIGKILL if it does not go."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = None

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = None

    def close(self) -> None:
        """Stop and remove the temporary directory we created (not a given workdir)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- log ------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 10, *, since: int = 0) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(since)
                data = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(data.splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """Wait until ``needle`` appears in the log; return the first line containing it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if needle in line:
                    return line
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{needle!r} not in the mosquitto log after {timeout} s:\n{self.log_tail(10)}"
                )
            time.sleep(0.02)
