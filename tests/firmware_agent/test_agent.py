"""The agent process: a radio that cannot be opened is a runtime failure (exit 1), said plainly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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
