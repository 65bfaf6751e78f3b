"""Route WRAPPER frames to the emulated meters behind one address by destination wPort.

Sans-IO so the UDP and TCP edges (and the mesh emulation later) share one routing rule: a frame
goes to the meter whose server wPort it names. With a single meter, frames it cannot route still go
to that meter, so the meter's own counters name what was wrong with them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from firmware_agent.collector.wrapper import WrapperError, parse_header

from .dlms_server import MeterServer


class MeterRouter:
    def __init__(self, servers: Mapping[int, MeterServer]) -> None:
        for wport, server in servers.items():
            if server.server_wport != wport:
                raise ValueError(f"server keyed {wport} answers on wPort {server.server_wport}")
        if not servers:
            raise ValueError("a router needs at least one meter")
        self.servers = dict(servers)
        self.counters: Counter[str] = Counter()

    def route(self, frame: bytes) -> bytes | None:
        """Reply frame for ``frame``, or None if nothing should be sent back."""
        try:
            server = self.servers.get(parse_header(frame).destination)
        except WrapperError as exc:
            self.counters[exc.reason] += 1
            server = None
        else:
            if server is None:
                self.counters["unknown-wport"] += 1
        if server is None and len(self.servers) == 1:
            server = next(iter(self.servers.values()))
        return server.handle(frame) if server is not None else None
