"""Emulated meters placed on the medium: where they stand, what radio they have, whose clock."""

from __future__ import annotations

import random

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector.wrapper import build_frame, parse_frame
from firmware_agent.mesh import frames, ipv6, lowpan
from hil.medium import Medium
from hil.meter_node import DLMS_PORT
from hil.population import place_scenario, populate
from hil.rcp import default_acker
from hil.scenario import load_scenario

GW = bytes.fromhex("0257530000000001")


class Gateway:
    def __init__(self) -> None:
        self.eui64 = GW
        self.heard: list[bytes] = []

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        self.heard.append(psdu)
        return default_acker(psdu, self.eui64)


def test_place_scenario_puts_meters_where_the_scenario_says() -> None:
    scenario = load_scenario("link-fade")
    medium = Medium(
        random.Random(1),
        path_loss_exponent=scenario.radio.path_loss_exponent,
        shadowing_sigma_db=scenario.radio.shadowing_sigma_db,
    )
    meters = place_scenario(medium, scenario, ManualClock(), random.Random(2))
    assert [m.meter_id for m in meters] == ["MTR-0001", "MTR-0002"]
    assert [medium.position(m.node) for m in meters] == [(110.0, 60.0), (220.0, 0.0)]
    assert all(medium.channel(m.node) == scenario.radio.channel for m in meters)
    gateway = Gateway()
    medium.attach(gateway, scenario.gateway_position, channel=scenario.radio.channel)
    # The scenario's comment: the direct link MTR-0002–gateway has an SNR of about 15 dB.
    # 14 − (31.554 + 35·log10 220 = 113.54) = −99.5 dBm, 15.5 dB over −115 (σ 0.5 dB).
    assert medium.snr_truth(meters[1].node, gateway, 0) == pytest.approx(15.5, abs=1.6)


def test_populated_meter_answers_on_the_medium_clock() -> None:
    medium = Medium(random.Random(3))
    gateway = Gateway()
    medium.attach(gateway, (0.0, 0.0))
    (meter,) = populate(
        medium, [("MTR-1", bytes.fromhex("0200000000000001"))], ManualClock(), random.Random(4)
    )
    src, dst = ipv6.link_local(GW), ipv6.link_local(meter.node.eui64)
    # A release request (RLRQ) in a WRAPPER frame from client wPort 16 to the meter's wPort 1.
    rlrq = build_frame(16, 1, bytes([0x62, 0x00]))
    request = ipv6.UdpDatagram(40_000, DLMS_PORT, rlrq)
    packet = ipv6.Ipv6Packet(src, dst, ipv6.UDP, ipv6.encode_udp(src, dst, request))
    psdu = frames.encode(
        frames.data_frame(1, 0xBEEF, meter.node.eui64, GW, lowpan.compress(packet, GW, dst[8:]))
    )
    started = medium.time()
    assert medium.transmit(gateway, psdu, 0) is not None  # acked
    # The reply came on the medium's own clock, 10 ms after the request, inside this call.
    assert meter.node.stats.requests == 1 and len(gateway.heard) == 1
    reply = frames.decode(gateway.heard[0])
    assert reply.src == meter.node.eui64
    datagram = ipv6.decode_udp(lowpan.decompress(reply.payload, reply.src, GW))
    assert parse_frame(datagram.payload)[1][0] == 0x63  # RLRE
    assert medium.time() - started > meter.node.reply_delay_s
