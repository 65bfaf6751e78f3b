"""A capture of a real exchange with a meter decodes cleanly in tshark, layer by layer.

The capture is written by CapturingTransceiver around the production Spinel driver talking to a
virtual RCP on a PTY, below the mesh stack, in both link types (195 plain 802.15.4, 283 TAP).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from drivers import open_radio
from drivers.capture import CapturingTransceiver
from drivers.pcap import FILE_HEADER_LEN, PcapWriter
from firmware_agent.clock import SystemClock
from firmware_agent.collector.reader import read_meter
from firmware_agent.config import MeterConfig
from firmware_agent.mesh.stack import MeshLinks, MeshStack
from hil import tshark

pytestmark = pytest.mark.skipif(not tshark.available(), reason="tshark not installed")

CHANNEL = 0


async def _read_with_capture(
    url: str, meter: MeterConfig, sink: PcapWriter
) -> tuple[int, CapturingTransceiver]:
    clock = SystemClock()
    radio = CapturingTransceiver(open_radio(url), sink, clock)
    info = await radio.open()
    await radio.set_channel(CHANNEL)
    await radio.enable_raw_stream(True)
    stack = MeshStack(radio, info.hwaddr, clock, channel=CHANNEL)
    links = MeshLinks(stack)
    receiver = asyncio.create_task(stack.run())
    try:
        result = await read_meter(
            links.link(bytes.fromhex(meter.address.replace(":", ""))), meter, clock
        )
    finally:
        receiver.cancel()
        await radio.close()
        sink.close()
    return len(result.readings), radio


def _meter(meters: list[dict[str, Any]]) -> MeterConfig:
    return MeterConfig(**{k: meters[0][k] for k in ("id", "transport", "address")})


@pytest.mark.parametrize("fmt", ["wpan", "tap"])
def test_meter_read_capture_decodes_without_errors(
    fmt: str, gateway_radio_url: str, meters: list[dict[str, Any]], tmp_path: Path
) -> None:
    pcap = tmp_path / f"read-{fmt}.pcap"
    sink = PcapWriter.open(pcap, fmt)
    readings, radio = asyncio.run(_read_with_capture(gateway_radio_url, _meter(meters), sink))
    assert readings > 0
    stats = radio.stats
    assert stats.tx_written > 0 and stats.acks_written > 0 and stats.rx_written > 0
    assert sink.records == stats.tx_written + stats.acks_written + stats.rx_written

    stacks = tshark.run(pcap, "-T", "fields", "-e", "frame.protocols").split()
    assert len(stacks) == sink.records
    # Under TAP the 802.15.4 layer is dissected inside wpan-tap (tshark lists no "wpan" then).
    link = "wpan-tap" if fmt == "tap" else "wpan"
    data_frames = [s for s in stacks if s != link]
    acks = [s for s in stacks if s == link]
    assert len(acks) == stats.acks_written
    assert data_frames
    assert all(s == f"{link}:6lowpan:ipv6:udp:data" for s in data_frames), set(data_frames)
    frame_types = tshark.run(pcap, "-T", "fields", "-e", "wpan.frame_type").split()
    assert frame_types.count("0x0002") == stats.acks_written  # Ack
    assert frame_types.count("0x0001") == len(data_frames)  # Data
    # No malformed packets, no bad FCS, no bad UDP checksum, no expert warning anywhere.
    assert tshark.problems(pcap) == ""
    fcs_ok = tshark.run(pcap, "-T", "fields", "-e", "wpan.fcs_ok").split()
    assert len(fcs_ok) == len(stacks) and set(fcs_ok) in ({"1"}, {"True"})
    udp = tshark.run(pcap, "-T", "fields", "-e", "udp.checksum.status").split()
    assert udp and set(udp) == {"1"}  # Wireshark checksum status: 0 bad, 1 good, 2 unverified

    if fmt == "tap":
        rows = tshark.fields(
            pcap,
            "wpan.src64",
            "wpan-tap.rss",
            "wpan-tap.ch_num",
            "wpan-tap.ch_page",
            "wpan-tap.lqi",
        )
        # Every frame carries its channel; frames the meter sent also carry RSSI and LQI.
        assert all(r[2] == str(CHANNEL) and r[3] == "9" for r in rows), rows
        heard = [r for r in rows if r[1]]
        assert len(heard) == stats.rx_written
        for _, rss, _, _, lqi in heard:
            assert -120 < float(rss) < 0 and 0 < int(lqi) <= 255
        gateway = {r[0] for r in rows if not r[1] and r[0]}
        meter_src = {r[0] for r in heard}
        assert gateway and meter_src and not gateway & meter_src


def test_size_capped_capture_stops_cleanly(
    gateway_radio_url: str,
    meters: list[dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pcap = tmp_path / "capped.pcap"
    cap = 600  # room for a few frames of the exchange, not all of them
    sink = PcapWriter.open(pcap, "tap", max_bytes=cap)
    with caplog.at_level(logging.WARNING, logger="drivers.pcap"):
        readings, _ = asyncio.run(_read_with_capture(gateway_radio_url, _meter(meters), sink))
    assert readings > 0  # the read itself is unaffected
    assert sink.full and sink.records > 0 and sink.dropped > 0
    assert FILE_HEADER_LEN < pcap.stat().st_size == sink.bytes_written <= cap
    logged = [r.getMessage() for r in caplog.records if r.name == "drivers.pcap"]
    assert len(logged) == 1, logged  # once, not once per dropped frame
    assert "size cap of 600 bytes" in logged[0]
    assert len(tshark.run(pcap, "-T", "fields", "-e", "frame.number").split()) == sink.records
    assert tshark.problems(pcap) == ""
