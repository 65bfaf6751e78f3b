"""The SPI transport: URL options, sysfs GPIO lines, and faults on an emulated spidev."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from drivers import default_registry, open_radio
from drivers.gpio import SysfsGpioLine, SysfsResetLine
from drivers.rcp_host import SpinelTransceiver
from drivers.spi import SpiOptions, SpiTransport, parse_spi_url
from drivers.transceiver import RadioError, TxStatus
from firmware_agent.clock import ManualClock
from firmware_agent.mesh import frames
from hil.loop import register
from hil.medium import Medium
from hil.rcp import VirtualRcp, default_acker
from hil.spidev_emu import EmulatedSpiDev

GW = bytes.fromhex("0257530000000001")
METER = bytes.fromhex("00124b0000000042")


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 30)

    asyncio.run(bounded())


def make_rcp() -> tuple[Medium, VirtualRcp, ManualClock]:
    rng = random.Random(3)
    clock = ManualClock()
    medium = Medium(rng)
    return medium, VirtualRcp(medium, rng, clock, eui64=GW), clock


@contextlib.asynccontextmanager
async def spi_radio(
    dev: EmulatedSpiDev, *, data_ready: bool = True, **opts: object
) -> AsyncIterator[SpinelTransceiver]:
    """The production SPI transport on an emulated spidev, built by hand (no registry)."""
    options = SpiOptions(device="emulated", int_gpio=0 if data_ready else None)
    for key, value in opts.items():
        options = SpiOptions(**{**options.__dict__, key: value})  # type: ignore[arg-type]
    transport = SpiTransport(
        options,
        open_device=lambda _o: dev.open(asyncio.get_running_loop()),
        open_int_line=lambda _n: dev.int_line,
        bad_pattern_retry=0.0005,
    )
    radio = SpinelTransceiver(transport, name="spi-test", request_timeout=0.5)
    await radio.open()
    try:
        yield radio
    finally:
        await radio.close()


def test_spi_url_options() -> None:
    opts = parse_spi_url(
        "spinel+spi:///dev/spidev0.1?speed_hz=2000000&int_gpio=25&reset_gpio=24&mode=1"
        "&align_allowance=4&small_packet=64&crc=1&timeout=0.3&retries=4"
    )
    assert opts == SpiOptions(
        device="/dev/spidev0.1",
        speed_hz=2_000_000,
        mode=1,
        int_gpio=25,
        reset_gpio=24,
        align_allowance=4,
        small_packet=64,
        crc=True,
        timeout=0.3,
        retries=4,
    )
    assert parse_spi_url("spinel+spi:///dev/spidev0.0") == SpiOptions(device="/dev/spidev0.0")
    for url, match in [
        ("spinel+spi:///dev/spidev0.0?speed=1", "unknown option 'speed'"),
        ("spinel+spi:///dev/spidev0.0?int_gpio=x", "int_gpio='x'.*not a number"),
        ("spinel+spi:///dev/spidev0.0?mode=4", "SPI mode 4 out of range"),
        ("spinel+spi:///dev/spidev0.0?align_allowance=17", "align_allowance 17 out of range"),
        ("spinel+spi://dev/spidev0.0", "three slashes"),
        ("spinel+spi://", "names no SPI device"),
    ]:
        with pytest.raises(RadioError, match=match):
            parse_spi_url(url)


def test_real_spidev_missing_is_a_clear_error() -> None:
    async def go() -> None:
        radio = open_radio("spinel+spi:///dev/spidev9.7")
        with pytest.raises(RadioError, match=r"cannot open SPI device /dev/spidev9\.7"):
            await radio.open()
        radio = open_radio("spinel+spi:///dev/ttyS0")
        with pytest.raises(RadioError, match=r"not /dev/spidevB\.C"):
            await radio.open()

    run(go)


def test_hub_urls_and_fallback_to_hardware_spi() -> None:
    _, rcp, _ = make_rcp()
    registry = default_registry()
    hub = register(registry, "gw", rcp)
    assert register(registry, "gw2", make_rcp()[1]) is hub  # one hub per registry
    assert hub.names() == ["gw", "gw2"]
    assert "spinel+loop" not in default_registry().schemes()  # other registries untouched
    with pytest.raises(RadioError, match="no in-process RCP named 'nope' \\(known: gw, gw2\\)"):
        registry.open_url("spinel+spi://emulated/nope")
    with pytest.raises(RadioError, match="unknown option 'baudrate'"):
        registry.open_url("spinel+loop://gw?baudrate=9600")

    async def go() -> None:
        radio = registry.open_url("spinel+spi:///dev/spidev9.7")  # not emulated: real spidev
        with pytest.raises(RadioError, match=r"cannot open SPI device /dev/spidev9\.7"):
            await radio.open()

    run(go)


def test_bad_pattern_is_retried_then_the_link_fails_after_200() -> None:
    async def go() -> None:
        _, rcp, _ = make_rcp()
        dev = EmulatedSpiDev(rcp)
        async with spi_radio(dev) as radio:
            transport = radio.transport
            assert isinstance(transport, SpiTransport)
            dev.garbage_transfers = 199
            assert await radio.sample_rssi() < -100  # 199 retries, then through
            assert transport.stats.bad_headers == 199
            dev.garbage_transfers = 10_000
            with pytest.raises(RadioError, match="200 transfers in a row with a bad header"):
                await radio.sample_rssi()
            assert dev.garbage_transfers == 10_000 - 200

    run(go)


def test_alignment_bytes_within_the_allowance() -> None:
    async def go() -> None:
        _, rcp, _ = make_rcp()
        dev = EmulatedSpiDev(rcp)
        dev.align_bytes = 16
        async with spi_radio(dev) as radio:
            assert await radio.sample_rssi() < -100
            assert radio.stats.framing_errors == 0

    run(go)


def test_big_frames_both_ways_small_packets_crc_and_polling() -> None:
    """A 300-byte PSDU each way with 8-byte small packets (two-transfer receive), CRC on both
    sides, and no data-ready line (polled bus)."""

    async def go() -> None:
        medium, rcp, _ = make_rcp()
        meter_heard: list[bytes] = []

        class Meter:
            eui64 = METER

            def on_air_frame(self, psdu: bytes, *_: int) -> bytes | None:
                meter_heard.append(psdu)
                return default_acker(psdu, METER)

        meter = Meter()
        medium.attach(meter, (10.0, 0.0), channel=0)
        dev = EmulatedSpiDev(rcp, crc=True)
        async with spi_radio(dev, data_ready=False, small_packet=8, crc=True) as radio:
            await radio.enable_raw_stream()
            big = frames.encode(frames.data_frame(7, 0xBEEF, METER, GW, bytes(range(256)) * 1))
            assert (await radio.transmit(big)).status is TxStatus.ACKED
            assert meter_heard == [big]
            up = frames.encode(frames.data_frame(8, 0xBEEF, GW, METER, bytes(280)))
            medium.transmit(meter, up, 0)
            rx = await radio.receive(timeout=5)
            assert rx is not None and rx.psdu == up
            transport = radio.transport
            assert isinstance(transport, SpiTransport)
            assert transport.stats.framing_errors == 0 and dev.errors == 0

    run(go)


def test_slave_refusing_our_frame_keeps_it_until_accepted() -> None:
    async def go() -> None:
        _, rcp, _ = make_rcp()
        dev = EmulatedSpiDev(rcp)
        async with spi_radio(dev) as radio:
            transport = radio.transport
            assert isinstance(transport, SpiTransport)
            dev.slave.accept_len = 2  # the board's buffers are full
            request = asyncio.create_task(radio.sample_rssi())
            for _ in range(100):
                if transport.stats.refused >= 3:
                    break
                await asyncio.sleep(0.005)
            assert transport.stats.refused >= 3 and not request.done()
            dev.slave.accept_len = 2048
            assert await request < -100

    run(go)


def test_bus_vanishing_fails_the_link_with_a_clear_error() -> None:
    async def go() -> None:
        _, rcp, _ = make_rcp()
        dev = EmulatedSpiDev(rcp)
        async with spi_radio(dev) as radio:
            waiter = asyncio.create_task(radio.receive())
            await asyncio.sleep(0.01)
            dev.close()  # the device goes away under the driver
            rcp.inject_to_host(b"\x80\x06\x00\x00")  # data-ready: make the pump clock
            with pytest.raises(RadioError, match="vanished"):
                await asyncio.wait_for(waiter, 5)
            with pytest.raises(RadioError, match="vanished"):
                await radio.sample_rssi()

    run(go)


def test_data_ready_line_wakes_the_host_without_polling() -> None:
    async def go() -> None:
        _, rcp, _ = make_rcp()
        dev = EmulatedSpiDev(rcp)
        async with spi_radio(dev) as radio:
            await asyncio.sleep(0.15)
            idle = dev.transfers
            await asyncio.sleep(0.15)
            assert dev.transfers == idle  # line quiet: no transfers at all
            rcp.inject_to_host(bytes.fromhex("80060000"))  # unsolicited LAST_STATUS OK
            for _ in range(100):
                if dev.transfers > idle:
                    break
                await asyncio.sleep(0.005)
            assert dev.transfers > idle and radio.stats.spinel_errors == 0

    run(go)


# --- sysfs GPIO on a directory laid out like /sys/class/gpio --------------------------------------


def fake_sysfs(root: Path, number: int, value: str = "1") -> Path:
    line = root / f"gpio{number}"
    line.mkdir(parents=True)
    (line / "value").write_text(value + "\n")
    (line / "direction").write_text("in\n")
    (line / "edge").write_text("none\n")
    (root / "export").write_text("")
    return line


def test_sysfs_data_ready_line_waits_for_low(tmp_path: Path) -> None:
    line_dir = fake_sysfs(tmp_path, 25)
    line = SysfsGpioLine(25, root=tmp_path)
    try:
        assert line.edges and (line_dir / "edge").read_text() == "falling"
        assert (line_dir / "direction").read_text() == "in"
        assert not line.asserted()
        start = time.monotonic()
        assert not line.wait_asserted(0.05)
        assert time.monotonic() - start >= 0.05
        timer = threading.Timer(0.05, lambda: (line_dir / "value").write_text("0\n"))
        timer.start()
        assert line.wait_asserted(2.0)  # seen on the next re-read at the latest
        timer.join()
        assert line.asserted()
    finally:
        line.close()


def test_sysfs_line_without_edges_is_polled(tmp_path: Path) -> None:
    line_dir = fake_sysfs(tmp_path, 7, value="0")
    (line_dir / "edge").unlink()
    (line_dir / "edge").mkdir()  # writing it fails, as on a line without interrupts
    line = SysfsGpioLine(7, root=tmp_path)
    try:
        assert not line.edges and line.wait_asserted(0.01)
        (line_dir / "value").write_text("x\n")
        with pytest.raises(RadioError, match="unexpected value"):
            line.asserted()
    finally:
        line.close()


def test_sysfs_export_and_reset_pulse(tmp_path: Path) -> None:
    (tmp_path / "export").write_text("")
    with pytest.raises(RadioError, match="gpio9/value does not exist after export"):
        SysfsGpioLine(9, root=tmp_path)
    assert (tmp_path / "export").read_text() == "9"  # it asked the kernel to export it
    line_dir = fake_sysfs(tmp_path, 24)
    reset = SysfsResetLine(24, root=tmp_path, hold=0.001)
    assert (line_dir / "direction").read_text() == "high"
    reset.pulse_reset()
    assert (line_dir / "value").read_text() == "1"
