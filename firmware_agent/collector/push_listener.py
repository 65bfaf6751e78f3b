"""The UDP edge for pushes from IP meters (DLMS/UDP port 4059): datagram in, ``on_push`` out.

Why a separate edge: the parser and the spooling are sans-IO (push.py); this module only owns a
socket and the mapping from a sender's IP address to a configured meter. A datagram from an
address no meter is configured at is quarantined under ``unknown:<address>`` (never dropped
silently: a mis-addressed meter is something an engineer wants to see).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable

from ..config import MeterConfig
from .quarantine import Quarantine

log = logging.getLogger(__name__)

OnPush = Callable[[str, bytes], None]


def meters_by_address(meters: Iterable[MeterConfig]) -> dict[str, str]:
    """IP meters' normalised addresses -> meter id (host names are not resolved here)."""
    out: dict[str, str] = {}
    for m in meters:
        if m.transport in ("udp", "tcp"):
            out[_normal(m.address)] = m.id
    return out


def _normal(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class _PushProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: PushListener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.listener.datagram(str(addr[0]), data)


class PushListener:
    """Listens on ``bind:port`` and hands each datagram to ``on_push(meter_id, frame)``."""

    def __init__(
        self,
        on_push: OnPush,
        meters: Iterable[MeterConfig],
        *,
        quarantine: Quarantine | None = None,
        resolve: Callable[[str], str | None] | None = None,
    ) -> None:
        self.on_push = on_push
        self.by_address = meters_by_address(meters)
        # Addresses not configured as IP meters: mesh meters behind an external border
        # router, found by the address's interface id (the agent knows how).
        self.resolve = resolve
        self.quarantine = quarantine
        self.unknown = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, bind: str, port: int) -> tuple[str, int]:
        """Open the socket; returns the bound (address, port) (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _PushProtocol(self), local_addr=(bind, port)
        )
        self._transport = transport
        sock = transport.get_extra_info("sockname")
        return str(sock[0]), int(sock[1])

    def datagram(self, address: str, data: bytes) -> None:
        meter_id = self.by_address.get(_normal(address))
        if meter_id is None and self.resolve is not None:
            meter_id = self.resolve(address)
        if meter_id is None:
            self.unknown += 1
            log.warning("push from %s, which is no configured meter: quarantined", address)
            if self.quarantine is not None:
                self.quarantine.add(f"unknown:{address}", "push", "unknown-sender", data)
            return
        try:
            self.on_push(meter_id, data)
        except Exception:  # the receiver never raises; if it does, the socket must live on
            log.exception("push handler failed for meter %s", meter_id)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
