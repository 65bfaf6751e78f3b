"""``spinel+pty://`` under ReconnectingTransceiver: kill the spawned virtual RCP mid-traffic; the
wrapper reports the lost link, spawns a new RCP, reopens it and traffic resumes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Awaitable, Callable

import pytest

from drivers import open_radio
from drivers.pty_spawn import SpawnedRcpTransport
from drivers.rcp_host import SpinelTransceiver
from drivers.reconnect import (
    Backoff,
    RadioEvent,
    RadioEventKind,
    RadioReconnecting,
    ReconnectingTransceiver,
)
from drivers.spinel import Prop
from drivers.transceiver import RadioError, Transceiver, TxStatus

URL = "spinel+pty://?seed=5&channel=4&eui64=0257530000000005"
BROADCAST = bytes.fromhex("41d80122ffffffff0100") + b"hi" + b"\0\0"


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 60)

    asyncio.run(bounded())


def child_pid(radio: ReconnectingTransceiver) -> int:
    inner = radio.inner
    assert isinstance(inner, SpinelTransceiver)
    transport = inner._transport
    assert isinstance(transport, SpawnedRcpTransport)
    assert transport.pid is not None
    return transport.pid


async def gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (exited and reaped by its parent, the driver)."""
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


def test_killed_rcp_child_is_respawned_and_traffic_resumes() -> None:
    async def go() -> None:
        events: list[RadioEvent] = []
        opened: list[Transceiver] = []

        def factory() -> Transceiver:
            radio = open_radio(URL)
            opened.append(radio)
            return radio

        radio = ReconnectingTransceiver(
            factory,
            name="virtual-rcp",
            backoff=Backoff(min_s=0.05, max_s=1.0),
            rng=random.Random(3),
            listener=events.append,
        )
        info = await radio.open()
        try:
            await radio.set_channel(11)
            await radio.set_tx_power(-2)
            first = child_pid(radio)

            results: list[str] = []

            async def traffic() -> None:
                while True:
                    try:
                        results.append((await radio.transmit(BROADCAST)).status.value)
                    except RadioReconnecting:
                        results.append("reconnecting")
                    except RadioError:
                        results.append("error")
                    await asyncio.sleep(0.01)

            sender = asyncio.create_task(traffic())
            while results.count("sent") < 5:
                await asyncio.sleep(0.01)

            before_kill = len(results)
            os.kill(first, signal.SIGKILL)  # the child our driver spawned dies under it
            while not any(e.kind is RadioEventKind.REOPENED for e in events):
                await asyncio.sleep(0.02)
            kinds = [e.kind for e in events]
            assert kinds[0] is RadioEventKind.LINK_LOST, kinds
            assert "vanished" in events[0].reason
            reopened = next(e for e in events if e.kind is RadioEventKind.REOPENED)
            assert reopened.info is not None
            assert reopened.info.hwaddr == info.hwaddr  # same seed, same EUI-64
            assert not reopened.hwaddr_changed

            second = child_pid(radio)
            assert second != first
            assert await gone(first)  # the dead child was reaped, not left a zombie
            assert len(opened) >= 2 and radio.state == "open"
            inner = radio.inner
            assert isinstance(inner, SpinelTransceiver)
            assert (await inner.get(Prop.PHY_CHAN, "C"))[0] == 11
            assert (await inner.get(Prop.PHY_TX_POWER, "c"))[0] == -2

            mark = len(results)
            while results[mark:].count("sent") < 5:
                await asyncio.sleep(0.01)
            sender.cancel()
            await asyncio.wait([sender])
            assert set(results[:before_kill]) == {"sent"}
            assert any(r in ("reconnecting", "error") for r in results[before_kill:mark])
            assert (await radio.transmit(BROADCAST)).status is TxStatus.SENT
            assert radio.stats.links_lost == 1 and radio.stats.reopens == 1
        finally:
            await radio.close()
        assert await gone(second)  # close() stopped the respawned child too
        with pytest.raises(RadioError, match="closed"):
            await radio.transmit(BROADCAST)

    run(go)
