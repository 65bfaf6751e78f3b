"""ReconnectingTransceiver over real virtual RCPs served on real PTYs, reached as ``spinel+uart://``.

The RCPs run in this process so a test can pull a board's PTY away mid-traffic, make a board hang,
reboot it, or bring up a different board at the next reopen; the driver side is the production
Spinel driver inside the production wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drivers import open_radio
from drivers.capture import CapturingTransceiver
from drivers.pcap import PcapWriter
from drivers.rcp_host import SpinelTransceiver
from drivers.reconnect import (
    Backoff,
    RadioEvent,
    RadioEventKind,
    RadioReconnecting,
    ReconnectingTransceiver,
    find_layer,
)
from drivers.spinel import Prop, Status
from drivers.transceiver import RadioError, RadioTimeout, Transceiver, TxStatus
from firmware_agent.clock import ManualClock
from firmware_agent.mesh import frames
from hil.medium import Medium
from hil.rcp import PtyBoard, VirtualRcp, default_acker

GW_A = bytes.fromhex("0257530000000001")
GW_B = bytes.fromhex("02575300000000b2")
METER = bytes.fromhex("00124b0000000042")
PAN = 0xBEEF
SEED = 11


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 30)

    asyncio.run(bounded())


class Meter:
    """A node on the medium that acks frames addressed to it and counts what it heard."""

    def __init__(self, eui64: bytes = METER) -> None:
        self.eui64 = eui64
        self.heard = 0

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard += 1
        return default_acker(psdu, self.eui64)


class Board:
    """A virtual RCP on its own medium, served on a fresh PTY, with a meter 20 m away."""

    def __init__(self, eui64: bytes) -> None:
        rng = random.Random(eui64[-1])
        self.clock = ManualClock()
        self.medium = Medium(rng)
        self.rcp = VirtualRcp(self.medium, rng, self.clock, eui64=eui64, channel=0)
        self.meter = Meter()
        self.medium.attach(self.meter, (20.0, 0.0), channel=9)
        self.pty = PtyBoard(self.rcp)

    async def start(self) -> Board:
        await self.pty.plug()
        return self

    async def pull_plug(self) -> None:
        """The board's end of the line goes away (USB unplugged, PTY master closed)."""
        await self.pty.unplug()

    def meter_sends(self, seq: int) -> bytes:
        up = frames.encode(frames.data_frame(seq, PAN, self.rcp.eui64, METER, b"reading"))
        self.medium.transmit(self.meter, up, 9)
        return up


class Factory:
    """Opens whichever board is plugged in now; counts how often it was asked."""

    def __init__(self) -> None:
        self.board: Board | None = None
        self.calls = 0

    def __call__(self) -> Transceiver:
        self.calls += 1
        path = self.board.pty.path if self.board is not None else "/dev/no-board-plugged-in"
        return open_radio(f"spinel+uart://{path}?baudrate=460800&timeout=0.3&retries=1")


class Recorder:
    """Injected sleep and event listener: records delays and events, sleeps only a little."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.events: list[RadioEvent] = []
        self.changed = asyncio.Event()

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.02)

    def listen(self, event: RadioEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def kinds(self) -> list[RadioEventKind]:
        return [e.kind for e in self.events]

    async def wait_for(
        self, kind: RadioEventKind, count: int = 1, timeout: float = 10
    ) -> RadioEvent:
        async def seen() -> None:
            while self.kinds().count(kind) < count:
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            pytest.fail(f"no {count}x {kind.name} within {timeout} s; events: {self.kinds()}")
        return [e for e in self.events if e.kind is kind][count - 1]


@contextlib.asynccontextmanager
async def wrapped(
    factory: Factory, recorder: Recorder, **kwargs: object
) -> AsyncIterator[ReconnectingTransceiver]:
    radio = ReconnectingTransceiver(
        factory,
        name="test-radio",
        backoff=Backoff(min_s=0.1, max_s=1.6, factor=2.0, jitter=0.5),
        rng=random.Random(SEED),
        sleep=recorder.sleep,
        listener=recorder.listen,
        **kwargs,  # type: ignore[arg-type]
    )
    await radio.open()
    try:
        yield radio
    finally:
        await radio.close()


def data_psdu(dst: bytes, seq: int) -> bytes:
    return frames.encode(frames.data_frame(seq, PAN, dst, GW_A, b"hello"))


async def board_value(radio: ReconnectingTransceiver, prop: int, fmt: str) -> object:
    """GET a property from the board the wrapper has open now (through its Spinel driver)."""
    inner = radio.inner
    assert isinstance(inner, SpinelTransceiver)
    return (await inner.get(prop, fmt))[0]


def test_backoff_grows_is_capped_and_jittered_by_the_injected_rng() -> None:
    policy = Backoff(min_s=0.1, max_s=5.0, factor=2.0, jitter=0.5)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(12)]
    for n, delay in enumerate(delays):
        base = min(5.0, 0.1 * 2**n)
        assert max(0.1, base * 0.5) <= delay <= base
    assert delays[6] > delays[0] * 8  # grows
    assert max(delays) <= 5.0 and delays[-1] >= 2.5  # capped, still jittered near the cap
    again = [policy.delay(n, random.Random(1)) for n in range(1)]
    assert again[0] == delays[0]  # same seed, same delays
    other = [policy.delay(n, r) for r in [random.Random(2)] for n in range(12)]
    assert other != delays  # another gateway retries at other moments
    exact = Backoff(min_s=0.1, max_s=5.0, jitter=0.0)
    assert [exact.delay(n, rng) for n in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert exact.delay(10_000, rng) == 5.0  # no overflow on a very long outage
    with pytest.raises(ValueError, match="min_s <= max_s"):
        Backoff(min_s=2.0, max_s=1.0)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)


def test_pulled_pty_mid_traffic_reopens_a_new_board_with_settings_and_traffic_resumes() -> None:
    async def go() -> None:
        factory, recorder = Factory(), Recorder()
        factory.board = board_a = await Board(GW_A).start()
        async with wrapped(factory, recorder) as radio:
            assert radio.state == "open"
            await radio.set_channel(9)
            await radio.set_tx_power(5)
            await radio.enable_raw_stream()
            assert (await radio.transmit(data_psdu(METER, 1))).status is TxStatus.ACKED
            board_a.meter_sends(1)
            rx = await radio.receive(timeout=2)
            assert rx is not None and rx.channel == 9

            # A receiver waits across the outage; a transmitter keeps trying.
            waiter = asyncio.create_task(radio.receive())
            outcomes: list[str] = []

            async def transmitter() -> None:
                seq = 10
                while True:
                    seq += 1
                    try:
                        result = await radio.transmit(data_psdu(METER, seq & 0xFF))
                        outcomes.append(result.status.value)
                    except RadioReconnecting as exc:
                        assert "reconnecting" in str(exc)
                        outcomes.append("reconnecting")
                    except RadioError:
                        outcomes.append("error")  # the in-flight frame when the line died
                    await asyncio.sleep(0.01)

            sender = asyncio.create_task(transmitter())
            await asyncio.sleep(0.1)
            factory.board = None  # nothing plugged in for a while
            await board_a.pull_plug()
            lost = await recorder.wait_for(RadioEventKind.LINK_LOST)
            assert "vanished" in lost.reason
            assert radio.state == "reconnecting"
            assert radio.inner is None
            with pytest.raises(RadioReconnecting, match="reconnecting"):
                await radio.sample_rssi()
            with pytest.raises(RadioReconnecting):
                await radio.set_channel(3)
            await recorder.wait_for(RadioEventKind.REOPEN_FAILED, 3)
            assert not waiter.done()

            board_b = await Board(GW_B).start()  # another board, another EUI-64
            factory.board = board_b
            reopened = await recorder.wait_for(RadioEventKind.REOPENED)
            assert radio.state == "open"
            assert reopened.info is not None and reopened.info.hwaddr == GW_B
            assert reopened.previous_hwaddr == GW_A and reopened.hwaddr_changed
            assert radio.info == reopened.info
            assert radio.stats.hwaddr_changes == 1

            # Settings the layers above made were re-applied on the new board (read back by GET).
            assert await board_value(radio, Prop.PHY_CHAN, "C") == 9
            assert await board_value(radio, Prop.PHY_TX_POWER, "c") == 5
            assert await board_value(radio, Prop.MAC_RAW_STREAM_ENABLED, "b") is True
            assert await board_value(radio, Prop.PHY_ENABLED, "b") is True

            # Traffic flows again both ways.
            board_b.meter_sends(2)
            rx = await asyncio.wait_for(waiter, 5)
            assert rx is not None and frames.decode(rx.psdu).seq == 2
            heard_before = board_b.meter.heard
            deadline = asyncio.get_running_loop().time() + 10
            while board_b.meter.heard < heard_before + 3:
                if sender.done() or asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"transmitter stalled after the reopen: {outcomes[-10:]}, {sender}")
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            sender.cancel()
            await asyncio.wait([sender])
            assert "reconnecting" in outcomes
            assert outcomes[-1] == "acked"

            stats = radio.stats
            assert stats.links_lost == 1 and stats.reopens == 1
            assert stats.failures == recorder.kinds().count(RadioEventKind.REOPEN_FAILED) >= 3
            assert stats.last_error is not None and "no-board-plugged-in" in stats.last_error
            assert factory.calls == 1 + stats.failures + 1

            # Delays: exactly the policy's sequence from an identically seeded rng.
            policy, rng = radio.backoff, random.Random(SEED)
            expected = [policy.delay(n, rng) for n in range(len(recorder.delays))]
            assert recorder.delays == expected
            assert recorder.delays[3] > recorder.delays[0]
            assert recorder.delays[:4] != [0.1, 0.2, 0.4, 0.8]  # jittered, not the bare curve
            assert radio.recent_events[-1].kind is RadioEventKind.REOPENED

    run(go)


def test_close_while_reconnecting_stops_cleanly() -> None:
    async def go() -> None:
        factory, recorder = Factory(), Recorder()
        factory.board = board = await Board(GW_A).start()
        radio = ReconnectingTransceiver(
            factory, rng=random.Random(1), sleep=recorder.sleep, listener=recorder.listen
        )
        await radio.open()
        waiter = asyncio.create_task(radio.receive())
        factory.board = None
        await board.pull_plug()
        await recorder.wait_for(RadioEventKind.REOPEN_FAILED, 2)
        assert radio.state == "reconnecting"
        opener = asyncio.create_task(radio.wait_open())
        await asyncio.sleep(0.05)
        assert not opener.done()
        await radio.close()
        assert radio.state == "closed"
        with pytest.raises(RadioError, match="closed"):
            await asyncio.wait_for(waiter, 2)
        with pytest.raises(RadioError, match="closed"):
            await asyncio.wait_for(opener, 2)
        calls = factory.calls
        await asyncio.sleep(0.2)
        assert factory.calls == calls  # nothing reopens after close()
        with pytest.raises(RadioError, match="radio closed"):
            await radio.transmit(data_psdu(METER, 1))
        with pytest.raises(RadioError, match="radio closed"):
            await radio.receive(timeout=0.1)
        left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("radio-")]
        assert left == []  # neither the receive pump nor the reconnect task outlives close()

    run(go)


def test_unsolicited_board_reset_is_reported_and_radio_stays_open() -> None:
    async def go() -> None:
        factory, recorder = Factory(), Recorder()
        factory.board = board = await Board(GW_A).start()
        async with wrapped(factory, recorder) as radio:
            await radio.set_channel(9)
            await radio.enable_raw_stream()
            board.rcp.reboot()  # a watchdog on the board
            event = await recorder.wait_for(RadioEventKind.RESET)
            assert event.reason == "RESET_POWER_ON"
            inner = radio.inner
            assert isinstance(inner, SpinelTransceiver)
            await inner.wait_recovered()
            assert (board.rcp.channel, board.rcp.raw_stream) == (9, True)
            assert radio.state == "open"
            assert radio.stats.resets == 1
            assert radio.stats.last_reset_reason == "RESET_POWER_ON"
            assert radio.stats.links_lost == 0
            board.meter_sends(5)
            assert await radio.receive(timeout=2) is not None

    run(go)


def test_resets_are_seen_through_a_capture_layer_inside_the_factory() -> None:
    async def go() -> None:
        plain, recorder = Factory(), Recorder()
        plain.board = board = await Board(GW_A).start()
        sink = PcapWriter(io.BytesIO())

        def captured() -> Transceiver:
            return CapturingTransceiver(plain(), sink, ManualClock())

        radio = ReconnectingTransceiver(captured, sleep=recorder.sleep, listener=recorder.listen)
        await radio.open()
        try:
            await radio.set_channel(9)
            board.rcp.reboot(Status.RESET_WATCHDOG)
            event = await recorder.wait_for(RadioEventKind.RESET)
            assert event.reason == "RESET_WATCHDOG"
            assert find_layer(radio, ReconnectingTransceiver) is radio
            assert isinstance(find_layer(radio, CapturingTransceiver), CapturingTransceiver)
            spinel = find_layer(radio, SpinelTransceiver)
            assert spinel is not None and spinel.stats.unexpected_resets == 1
            assert find_layer(spinel, ReconnectingTransceiver) is None
            await spinel.wait_recovered()  # channel 9 is back on the board
            board.meter_sends(3)  # raw stream off: the host hears nothing
            await radio.enable_raw_stream()
            board.meter_sends(4)
            rx = await radio.receive(timeout=2)
            assert rx is not None and frames.decode(rx.psdu).seq == 4
            assert sink.records >= 1  # the capture layer saw the frame on its way up
        finally:
            await radio.close()
            await board.pull_plug()

    run(go)


def test_a_hung_board_counts_as_lost_after_repeated_timeouts() -> None:
    async def go() -> None:
        factory, recorder = Factory(), Recorder()
        factory.board = hung = await Board(GW_A).start()
        async with wrapped(factory, recorder, lost_after_timeouts=2) as radio:
            await radio.set_channel(9)
            hung.rcp.set_output_listener(None)  # the board still reads, but never answers
            factory.board = await Board(GW_B).start()
            with pytest.raises(RadioTimeout):
                await radio.sample_rssi()
            assert radio.state == "open"  # one timeout is not a lost board
            with pytest.raises(RadioTimeout):
                await radio.sample_rssi()
            lost = await recorder.wait_for(RadioEventKind.LINK_LOST)
            assert "2 operations timed out in a row" in lost.reason
            await radio.wait_open()
            assert radio.info is not None and radio.info.hwaddr == GW_B
            assert await board_value(radio, Prop.PHY_CHAN, "C") == 9
            assert -125 < await radio.sample_rssi() < -100
            await hung.pull_plug()

    run(go)


def test_first_open_failure_is_raised_not_retried() -> None:
    async def go() -> None:
        factory, recorder = Factory(), Recorder()
        radio = ReconnectingTransceiver(factory, sleep=recorder.sleep)
        with pytest.raises(RadioError, match="cannot open serial port /dev/no-board-plugged-in"):
            await radio.open()
        assert radio.state == "closed" and recorder.delays == []
        factory.board = board = await Board(GW_A).start()
        info = await radio.open()  # the caller may try again
        assert info.hwaddr == GW_A and radio.state == "open"
        await radio.close()
        await board.pull_plug()

    run(go)


def test_reset_listeners_are_public_and_stack_with_the_wrappers_own() -> None:
    async def go() -> None:
        board = await Board(GW_A).start()
        heard: list[int] = []
        removed: list[int] = []

        def broken(status: int) -> None:
            raise ValueError("a listener with a bug")

        def factory() -> Transceiver:
            radio = open_radio(f"spinel+uart://{board.pty.path}?timeout=0.3&retries=1")
            assert isinstance(radio, SpinelTransceiver)
            radio.add_reset_listener(broken)  # must not stop the re-apply or the others
            radio.add_reset_listener(heard.append)  # the agent's own listener, say
            radio.add_reset_listener(removed.append)
            radio.remove_reset_listener(removed.append)
            radio.remove_reset_listener(print)  # never added: ignored
            return radio

        recorder = Recorder()
        radio = ReconnectingTransceiver(factory, sleep=recorder.sleep, listener=recorder.listen)
        await radio.open()
        try:
            await radio.set_channel(9)
            await radio.enable_raw_stream()
            board.rcp.reboot(Status.RESET_WATCHDOG)
            event = await recorder.wait_for(RadioEventKind.RESET)
            assert event.reason == "RESET_WATCHDOG"
            assert heard == [Status.RESET_WATCHDOG]  # the factory's listener was kept
            assert removed == []
            spinel = find_layer(radio, SpinelTransceiver)
            assert spinel is not None
            await spinel.wait_recovered()
            assert (board.rcp.channel, board.rcp.raw_stream) == (9, True)
            assert radio.state == "open" and radio.stats.resets == 1
        finally:
            await radio.close()
            await board.pull_plug()

    run(go)
