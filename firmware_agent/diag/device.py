"""``hes-diag --check-snr --device PORT``: measure on a radio board plugged into the laptop.

Passive only: the laptop listens and scans, it never transmits into a live mesh. The board is
opened with the production driver (``spinel+uart://PORT``), energy-scanned channel by channel for
a noise floor per channel, then put in promiscuous raw-stream mode on one channel: every frame
heard is decoded (802.15.4) and its sender's RSSI and SNR (RSSI − our noise floor of that channel,
as the gateway computes it: :class:`~firmware_agent.mesh.neighbours.NeighbourTable`) recorded.

``find_device`` picks the board with pyudev (the ``[gateway]`` extra, imported only then) among
the known radio USB ids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers import open_radio
from drivers.transceiver import RadioError, Transceiver
from firmware_agent.clock import Clock
from firmware_agent.mesh import frames
from firmware_agent.mesh.neighbours import NeighbourTable

#: Idle RSSI samples while listening, one per this many seconds (the floor between scans).
SAMPLE_EVERY_S = 0.5
SCAN_CHUNK = 8  # channels per energy-scan request: the progress bar moves per chunk
MAX_CHANNEL = 128  # FCC plan 1: 129 channels


class DeviceError(Exception):
    """The board could not be found, opened or used; says which and why."""


Progress = Callable[[str, float], None]  # (what, fraction done 0..1)


@dataclass
class DeviceReport:
    device: str
    ncp_version: str
    hwaddr: str
    channel: int
    listen_s: float
    noise_floor_dbm: dict[int, float] = field(default_factory=dict)  # per scanned channel
    links: list[dict[str, Any]] = field(default_factory=list)
    frames_heard: int = 0
    frames_undecodable: int = 0


def parse_channels(text: str) -> list[int]:
    """``0-10,20,33`` → channel list; a typed error names the bad part."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise DeviceError(f"--channels {text!r}: {part!r} is not N or N-M") from None
    bad = sorted(c for c in out if not 0 <= c <= MAX_CHANNEL)
    if bad or not out:
        raise DeviceError(f"--channels {text!r}: channels must be 0..{MAX_CHANNEL}")
    return sorted(out)


def find_device() -> str:
    """The one known radio board udev sees now (its stable path); DeviceError otherwise."""
    from drivers.discover import DiscoveryError, list_boards

    try:
        boards = list_boards()
    except DiscoveryError as exc:
        raise DeviceError(f"cannot look for a radio board: {exc}; give --device PORT") from None
    radios = [b for b in boards if b.known_radio() is not None] or boards
    if not radios:
        raise DeviceError("no radio board found by udev: plug one in or give --device PORT")
    if len(radios) > 1:
        listing = "; ".join(b.describe() for b in radios)
        raise DeviceError(f"several boards found, pick one with --device: {listing}")
    return radios[0].stable_path()


def device_url(device: str, baudrate: int) -> str:
    if "://" in device:
        return device  # a full radio URL (tests: spinel+loop://, a PTY, a board with options)
    return f"spinel+uart://{device}?baudrate={baudrate}"


async def measure(
    radio: Transceiver,
    clock: Clock,
    *,
    device: str,
    channel: int,
    scan_channels: Sequence[int],
    scan_ms: int = 32,
    listen_s: float = 10.0,
    progress: Progress | None = None,
) -> DeviceReport:
    """Scan, then listen; the radio is opened and closed here."""
    report_progress = progress or (lambda what, done: None)
    try:
        info = await radio.open()
    except (RadioError, OSError) as exc:
        raise DeviceError(f"cannot open the radio on {device}: {exc}") from None
    table = NeighbourTable()
    report = DeviceReport(device, info.ncp_version, info.hwaddr.hex(), channel, listen_s)
    try:
        channels = sorted(set(scan_channels) | {channel})
        for i in range(0, len(channels), SCAN_CHUNK):
            chunk = channels[i : i + SCAN_CHUNK]
            report_progress(f"energy scan, channels {chunk[0]}–{chunk[-1]}", i / len(channels))
            for ch, dbm in (await radio.energy_scan(chunk, scan_ms)).items():
                table.noise_sample(ch, dbm)
        report_progress("listening", 0.0)
        await radio.set_channel(channel)
        with contextlib.suppress(RadioError, AttributeError):
            await _promiscuous(radio)
        await radio.enable_raw_stream(True)
        start = clock.monotonic()
        next_sample = start
        while (now := clock.monotonic()) < start + listen_s:
            if now >= next_sample:
                table.noise_sample(channel, await radio.sample_rssi())
                next_sample = now + SAMPLE_EVERY_S
            report_progress(f"listening on channel {channel}", (now - start) / listen_s)
            wait = max(0.0, min(next_sample, start + listen_s) - clock.monotonic())
            rx = await radio.receive(timeout=wait)
            if rx is None:
                continue
            report.frames_heard += 1
            try:
                frame = frames.decode(rx.psdu)
            except frames.FrameError:
                report.frames_undecodable += 1
                continue
            if frame.src is None or frame.src == info.hwaddr:
                continue  # acks carry no sender
            table.heard(frame.src, rx.rssi_dbm, rx.lqi, rx.channel, clock.now())
        report_progress("done", 1.0)
    except RadioError as exc:
        raise DeviceError(f"radio on {device} failed during the measurement: {exc}") from None
    finally:
        with contextlib.suppress(RadioError, OSError):
            await radio.close()
    report.noise_floor_dbm = {ch: float(v) for ch, v in table.noise_floors().items()}
    now_wall = clock.now()
    for row in table.rows(now_wall):
        report.links.append(
            {
                "mac": row["mac"],
                "meter_id": None,
                "rssi_dbm": row["rssi_dbm"],
                "noise_floor_dbm": row["noise_floor_dbm"],
                "snr_in_db": row["snr_db"],
                "snr_out_db": None,
                "rsl_in_dbm": row["rsl_in_dbm"],
                "rsl_out_dbm": None,
                "etx": None,
                "frames": row["frames_heard"],
                "snr_percentiles_db": row["snr_percentiles_db"],
            }
        )
    return report


async def _promiscuous(radio: Transceiver) -> None:
    """Hear frames addressed to anyone (Spinel MAC_PROMISCUOUS_MODE), where the driver can."""
    from drivers.rcp_host import SpinelTransceiver
    from drivers.reconnect import find_layer
    from drivers.spinel import Prop

    spinel = find_layer(radio, SpinelTransceiver)
    if spinel is not None:
        await spinel.set(Prop.MAC_PROMISCUOUS_MODE, "C", 1)


async def measure_device(
    device: str,
    clock: Clock,
    *,
    baudrate: int = 460800,
    channel: int = 0,
    scan_channels: Sequence[int] = (0,),
    listen_s: float = 10.0,
    progress: Progress | None = None,
    timeout_s: float | None = None,
) -> DeviceReport:
    """Open ``device`` (a port or a radio URL) with the production driver and measure."""
    try:
        radio = open_radio(device_url(device, baudrate))
    except (RadioError, ValueError) as exc:
        raise DeviceError(f"{device}: {exc}") from None
    coro = measure(
        radio,
        clock,
        device=device,
        channel=channel,
        scan_channels=scan_channels,
        listen_s=listen_s,
        progress=progress,
    )
    if timeout_s is None:
        return await coro
    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError:
        raise DeviceError(f"{device}: the radio did not finish within {timeout_s:g} s") from None
