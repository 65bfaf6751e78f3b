"""The TI NCP's Spinel property host against a scripted board on a real PTY: the cases a
well-behaved emulated NCP never produces (a refusal, a silent board, a reset in the middle of a
request, a stray TID), each answered with the specific error and counted."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from drivers.framing import as_frame_transport
from drivers.hdlc import HdlcDecoder, hdlc_encode
from drivers.spinel import Cmd, Prop, Status, decode_frame, encode, pack
from drivers.uart import SerialTransport
from firmware_agent.mesh import ti_spinel as ti
from firmware_agent.mesh.ti_ncp import NcpError, NcpRefused, NcpTimeout, SpinelPropertyHost
from hil.scripted_pty import raw_pty, read_frames


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(30):
            await test()

    asyncio.run(bounded())


def test_refusal_silence_reset_and_stray_replies_each_get_their_own_error() -> None:
    streamed: list[bytes] = []
    resets: list[int] = []

    async def board(master: int) -> None:
        decoder = HdlcDecoder()

        def say(tid: int, prop: int, value: bytes) -> None:
            os.write(master, hdlc_encode(encode(tid, Cmd.PROP_VALUE_IS, prop, value)))

        while True:
            for raw in await read_frames(master, decoder):
                frame = decode_frame(raw)
                if frame.prop == Prop.NCP_VERSION:
                    say(0, ti.PROP_STREAM_NET, b"\x60packet")  # unsolicited, before the reply
                    say(frame.tid % 15 + 1, Prop.NCP_VERSION, b"stray\x00")  # wrong TID
                    say(frame.tid, Prop.NCP_VERSION, b"TIWISUNFAN/1.0\x00")
                elif frame.prop == ti.PROP_NET_IF_UP:
                    say(frame.tid, Prop.LAST_STATUS, pack("i", Status.INVALID_ARGUMENT))
                elif frame.prop == ti.PROP_NET_STACK_UP:
                    say(0, Prop.LAST_STATUS, pack("i", Status.RESET_POWER_ON))  # rebooted
                # HWADDR: no answer at all

    async def go() -> None:
        async with raw_pty() as (master, path):
            script = asyncio.create_task(board(master))
            host = SpinelPropertyHost(
                as_frame_transport(SerialTransport(path)),
                request_timeout=0.3,
                on_stream_net=streamed.append,
                on_reset=resets.append,
            )
            await host.open()
            try:
                assert await host.get(Prop.NCP_VERSION) == b"TIWISUNFAN/1.0\x00"
                assert streamed == [b"\x60packet"]
                assert host.stats.unmatched_replies == 1

                with pytest.raises(NcpRefused, match="NCP refused PROP_VALUE_SET NET_IF_UP") as e:
                    await host.set(ti.PROP_NET_IF_UP, pack("b", True))
                assert e.value.status == Status.INVALID_ARGUMENT
                assert "INVALID_ARGUMENT" in str(e.value)

                with pytest.raises(NcpTimeout, match="no reply to PROP_VALUE_GET HWADDR"):
                    await host.get(Prop.HWADDR)
                assert host.stats.timeouts == 1

                with pytest.raises(NcpError, match=r"reset \(RESET_POWER_ON\) before answering"):
                    await host.get(ti.PROP_NET_STACK_UP)
                assert host.stats.resets == 1 and resets == [Status.RESET_POWER_ON]
                assert host.failure is None  # a reset is not a lost link: the next request goes
                assert await host.get(Prop.NCP_VERSION) == b"TIWISUNFAN/1.0\x00"
            finally:
                await host.close()
                script.cancel()
                await asyncio.wait([script])
            assert host.failure is not None and "link closed" in str(host.failure)
            with pytest.raises(type(host.failure), match="link closed"):
                await host.get(Prop.NCP_VERSION)

    run(go)
