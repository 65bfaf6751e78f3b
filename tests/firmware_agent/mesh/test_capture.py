"""A capture of a real exchange with a meter decodes cleanly in tshark, layer by layer."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drivers import open_radio
from drivers.pcap import PcapWriter
from firmware_agent.clock import SystemClock
from firmware_agent.collector.reader import read_meter
from firmware_agent.config import MeterConfig
from firmware_agent.mesh.stack import MeshLinks, MeshStack

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


async def _read_with_capture(url: str, meter: MeterConfig, pcap: Path) -> int:
    radio = open_radio(url)
    info = await radio.open()
    await radio.enable_raw_stream(True)
    with pcap.open("wb") as stream:
        stack = MeshStack(radio, info.hwaddr, SystemClock(), capture=PcapWriter(stream))
        links = MeshLinks(stack)
        receiver = asyncio.create_task(stack.run())
        try:
            result = await read_meter(
                links.link(bytes.fromhex(meter.address.replace(":", ""))), meter, SystemClock()
            )
        finally:
            receiver.cancel()
            await radio.close()
    return len(result.readings)


def _tshark(pcap: Path, *args: str) -> str:
    result = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", "udp.check_checksum:TRUE", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_meter_read_capture_decodes_without_errors(
    gateway_radio_url: str, meters: list[dict[str, Any]], tmp_path: Path
) -> None:
    meter = MeterConfig(**{k: meters[0][k] for k in ("id", "transport", "address")})
    pcap = tmp_path / "read.pcap"
    assert asyncio.run(_read_with_capture(gateway_radio_url, meter, pcap)) > 0

    stacks = _tshark(pcap, "-T", "fields", "-e", "frame.protocols").split()
    data_frames = [s for s in stacks if s != "wpan"]
    acks = [s for s in stacks if s == "wpan"]
    assert data_frames and acks
    assert all(s == "wpan:6lowpan:ipv6:udp:data" for s in data_frames), set(data_frames)
    # No malformed packets, no bad FCS, no bad UDP checksum anywhere in the capture.
    assert _tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= warning") == ""
    fcs_ok = _tshark(pcap, "-T", "fields", "-e", "wpan.fcs_ok").split()
    assert len(fcs_ok) == len(stacks) and set(fcs_ok) in ({"1"}, {"True"})
    udp = _tshark(pcap, "-T", "fields", "-e", "udp.checksum.status").split()
    assert udp and set(udp) == {"1"}  # Wireshark checksum status: 0 bad, 1 good, 2 unverified
