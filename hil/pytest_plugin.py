"""pytest plugin of the HIL rig (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop rig")
    group.addoption(
        "--hil-env", default=None, help="environment file (default: config/hil/emulated.yaml)"
    )
