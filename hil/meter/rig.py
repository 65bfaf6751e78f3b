"""Rig helpers for driving the collector's sans-IO exchanges against emulated meters.

Tests, the bench and manual checks all need the same few things: run an ``Exchange`` against a
``MeterServer`` in-process (no sockets: the frames go straight through ``handle``), serve one
meter on loopback UDP with a link to it, and one set of suite 0 demo keys. They live here once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from firmware_agent.collector.keys import MeterKeys
from firmware_agent.collector.link import UdpMeterLink
from firmware_agent.collector.session import DlmsSession, Exchange

from .faults import FaultyMeter
from .udp import Meter, UdpMeterService, serve_udp

T = TypeVar("T")

# The DLMS Green Book's example keys: well known, for the rig only.
DEMO_EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
DEMO_AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
DEMO_METER_TITLE = bytes.fromhex("4D4D4D0000000001")
DEMO_GATEWAY_TITLE = bytes.fromhex("4757000000000001")


def demo_keys(meter_id: str, ek: bytes = DEMO_EK) -> MeterKeys:
    """The demo keys as the gateway's key file would hold them for ``meter_id``."""
    return MeterKeys(meter_id, ek, DEMO_AK, DEMO_METER_TITLE)


def drive(server: Meter, exchange: Exchange[T], replies: list[bytes] | None = None) -> T:
    """Run ``exchange`` to completion against ``server`` in-process; returns its result. A request
    the server does not answer fails the caller's test with the server's last fault. Each reply
    frame is appended to ``replies`` when given (the bench decodes the same bytes again)."""
    frame: bytes | None = exchange.request
    while frame is not None:
        reply = server.handle(frame)
        assert reply is not None, f"no reply: {_last_fault(server)}"
        if replies is not None:
            replies.append(reply)
        frame = exchange.feed(reply)
    return exchange.result


def associated(server: Meter, **session_kwargs: Any) -> DlmsSession:
    """A ``DlmsSession(**session_kwargs)`` already associated with ``server``."""
    session = DlmsSession(**session_kwargs)
    drive(server, session.associate())
    return session


def _last_fault(server: Meter) -> object:
    return (server.server if isinstance(server, FaultyMeter) else server).last_fault


@asynccontextmanager
async def udp_meter(
    meters: Meter | Mapping[int, Meter], host: str = "127.0.0.1"
) -> AsyncIterator[tuple[UdpMeterLink, UdpMeterService]]:
    """Serve one meter (at server wPort 1) or several (keyed by wPort) on loopback UDP, with a
    link to it; both are closed on the way out."""
    servers = meters if isinstance(meters, Mapping) else {1: meters}
    svc = await serve_udp(servers, host)
    link = UdpMeterLink(host, svc.port)
    try:
        yield link, svc
    finally:
        await link.close()
        svc.close()
