"""The gateway agent under test, run as its own process (``firmware-agent run``), log in a file."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

AGENT = Path(sys.executable).with_name("firmware-agent")


class AgentProcess:
    """One ``firmware-agent run --config FILE [extra...]``; stdout and stderr go to ``log``."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.log = log
        self._log_handle = log.open("wb")
        self.proc = subprocess.Popen(
            [str(AGENT), "run", "--config", str(config), *extra],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (the clean shutdown path) and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_handle.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return f"--- agent log (tail) ---\n{self.output()[-chars:]}"
