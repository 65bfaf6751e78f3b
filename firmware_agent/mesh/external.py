"""Opening an external border router's backend by its config name.

Imported lazily: the wsbrd backend needs dbus-fast (the ``gateway`` extra), which a gateway
running our own stack does not.
"""

from __future__ import annotations

import random

from firmware_agent.clock import Clock
from firmware_agent.config import Config
from firmware_agent.mesh.backend import MeshBackend, MeshBackendError


def open_external(config: Config, clock: Clock, rng: random.Random) -> MeshBackend:
    """The backend ``config.mesh.backend`` names (not yet started: call ``start()``)."""
    kind = config.mesh.backend
    if kind == "wsbrd":
        try:
            from firmware_agent.mesh.wsbrd import WsbrdBackend
        except ImportError as exc:  # dbus-fast is in the gateway extra
            raise MeshBackendError(f"mesh.backend wsbrd needs dbus-fast: {exc}") from None
        return WsbrdBackend(config, clock, rng)
    if kind == "ti-ncp":
        from firmware_agent.mesh.ti_ncp import TiNcpBackend

        return TiNcpBackend(config, clock, rng)
    raise MeshBackendError(f"mesh.backend {kind!r}: this build has no such backend")
