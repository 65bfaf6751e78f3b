"""The agent's collector as wired in agent.py: a plain and a suite 0 meter read over loopback UDP
into the spool, a last-gasp push through the push listener as a top-priority alarm, a counter
desync reported as "MAC Fail" and cleared by the agent's security reset, and a firmware push
under the configured byte-rate budget. Real sockets, real SQLite files, the agent's own code."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from drivers.transceiver import Registry
from firmware_agent.agent import Agent, is_push_frame
from firmware_agent.clock import SystemClock
from firmware_agent.collector.ciphering import Suite0
from firmware_agent.collector.firmware import FirmwareImage
from firmware_agent.config import (
    CollectorConfig,
    Config,
    GatewayConfig,
    MeterConfig,
    MeterSecurity,
    RadioConfig,
    SecurityConfig,
    SpoolConfig,
    TlsConfig,
    UplinkConfig,
)
from firmware_agent.spool import Priority, SpoolRecord
from firmware_agent.uplink import cim
from hil.broker import Mosquitto
from hil.env import HilEnv
from hil.headend.requester import REPLIES, CommandRequester
from hil.loop import register
from hil.medium import Medium
from hil.meter.dlms_server import MeterServer, ServerSecurity
from hil.meter.image import image_objects, seal
from hil.meter.model import MeterModel
from hil.meter.objects import build_directory
from hil.meter.push import PushSource
from hil.meter.udp import serve_udp
from hil.pki import Pki
from hil.rcp import VirtualRcp
from hil.waiting import eventually

EK = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
AK = bytes.fromhex("d0d1d2d3d4d5d6d7d8d9dadbdcdddedf")
METER_TITLE = bytes.fromhex("4d4d4d0000000002")
GATEWAY_TITLE = "4757000000000001"
PLAIN_HOST, SECURE_HOST = "127.0.0.2", "127.0.0.3"


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def config(
    tmp_path: Path,
    plain_port: int,
    secure_port: int,
    push_port: int,
    uplink: UplinkConfig | None = None,
    gateway_id: str = "gw-test",
) -> Config:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"MTR-S:\n  block_cipher_key: {EK.hex()}\n  authentication_key: {AK.hex()}\n"
        f"  system_title: {METER_TITLE.hex()}\n"
    )
    os.chmod(keys, 0o600)
    tls = TlsConfig(tmp_path / "ca.crt", tmp_path / "gw.crt", tmp_path / "gw.key")
    return Config(
        gateway=GatewayConfig(id=gateway_id),
        radio=RadioConfig(url="spinel+loop://gw", channel=0, tx_power_dbm=14),
        uplink=uplink or UplinkConfig(broker_url="mqtts://127.0.0.1:8883", tls=tls),
        spool=SpoolConfig(path=tmp_path / "spool.sqlite"),
        meters=(
            MeterConfig(id="MTR-P", transport="udp", address=PLAIN_HOST, port=plain_port),
            MeterConfig(
                id="MTR-S",
                transport="udp",
                address=SECURE_HOST,
                port=secure_port,
                client_address=1,
                security=MeterSecurity(level="suite0"),
            ),
        ),
        collector=CollectorConfig(
            interval_s=3.0,
            jitter_s=0.2,
            profile_rows=2,
            timeout_s=1.0,
            retries=0,
            retry_backoff_base_s=0.5,
            retry_backoff_cap_s=0.5,
            push_bind="127.0.0.1",
            push_port=push_port,
            firmware_bytes_per_s=20_000.0,
        ),
        security=SecurityConfig(
            keys_file=keys,
            counters_file=tmp_path / "counters.sqlite",
            client_system_title=GATEWAY_TITLE,
        ),
    )


def status_get(meters: list[str], respond_by: float, correlation: str = "cim-1") -> bytes:
    """The OMS's MeterStatusData GET (seed 003) for ``meters``, due by ``respond_by``."""
    now = cim.cim_time(time.time())
    event = cim.EndDeviceEvent("0.0.0.0", now, tuple(meters))
    msg = cim.CimMessage("GET", cim.NOUN, now, (event,), correlation, cim.cim_time(respond_by))
    return cim.build_message(msg)


def registry_with_radio() -> Registry:
    clock = SystemClock()
    medium = Medium(random.Random(1))
    rcp = VirtualRcp(medium, random.Random(2), clock, eui64=bytes.fromhex("00124b0000a00001"))
    registry = Registry()
    register(registry, "gw", rcp)
    return registry


def records(agent: Agent) -> list[SpoolRecord]:
    assert agent.spool is not None
    return agent.spool.next_batch(10_000, 1 << 30)


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), 60)

    asyncio.run(bounded())


def test_agent_reads_plain_and_suite0_meters_takes_pushes_and_recovers_a_desync(
    tmp_path: Path,
) -> None:
    clock = SystemClock()
    plain = MeterServer(MeterModel("MTR-P", random.Random(5)), clock)
    image_transfer, firmware_id = image_objects(b"FW-1.0", block_size=200)
    objects = build_directory(MeterModel("MTR-S", random.Random(6)))
    objects |= {o.logical_name: o for o in (image_transfer, firmware_id)}
    secure = MeterServer(
        MeterModel("MTR-S", random.Random(6)),
        clock,
        objects=objects,
        security=ServerSecurity(Suite0(EK, AK), METER_TITLE, random.Random(7)),
    )

    async def scenario() -> None:
        plain_svc = await serve_udp({1: plain}, PLAIN_HOST)
        secure_svc = await serve_udp({1: secure}, SECURE_HOST)
        push_port = free_udp_port("127.0.0.1")
        cfg = config(tmp_path, plain_svc.port, secure_svc.port, push_port)
        agent = Agent(cfg, clock, random.Random(3), registry_with_radio(), with_uplink=False)
        task = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: agent.collector is not None, 10, "the agent to start")
            assert agent.collector is not None
            status = agent.collector.status

            # Both meters read into the spool, the secured one through HLS-GMAC.
            await eventually(
                lambda: status["MTR-P"].reads_ok >= 1 and status["MTR-S"].reads_ok >= 1,
                15,
                "a read of each meter",
            )
            meters = {r.data.get("device_id") for r in records(agent)}
            assert {"MTR-P", "MTR-S"} <= meters
            assert secure.counters["replayed-counter"] == 0

            # A last gasp from the plain meter's address reaches the spool as an alarm, first.
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind((PLAIN_HOST, 0))
            gasp = PushSource("MTR-P").last_gasp(clock.now())
            assert is_push_frame(gasp)
            sender.sendto(gasp, ("127.0.0.1", push_port))
            sender.close()
            await eventually(
                lambda: any(r.priority == Priority.ALARM for r in records(agent)), 5, "the alarm"
            )
            first = records(agent)[0]
            assert first.priority == Priority.ALARM and "MTR-P" in first.natural_key
            assert "last-gasp" in first.natural_key

            # The meter forgets where its counters were: MAC Fail, reported once as an alarm.
            secure.desync_counters(client=secure.client_counter + 1_000_000)
            await eventually(lambda: status["MTR-S"].mac_fail, 10, "the MAC Fail")
            assert status["MTR-S"].last_error_name == "MAC Fail"
            alarms = [r for r in records(agent) if r.priority == Priority.ALARM]
            assert any("MTR-S" in r.natural_key and "mac-fail" in r.natural_key for r in alarms)

            # The head end's "security reset": read the meter's counter, send above it.
            reset = await agent.security_reset("MTR-S")
            assert reset.meter_counter >= 1_000_000
            assert reset.new_next == reset.meter_counter + 1
            ok_before = status["MTR-S"].reads_ok
            await eventually(lambda: status["MTR-S"].reads_ok > ok_before, 10, "a read after reset")
            assert not status["MTR-S"].mac_fail

            # A firmware push to the secured meter through the agent, verified and activated.
            image = FirmwareImage(b"FW-2.0", seal(os.urandom(3000)))
            [result] = await agent.push_firmware(["MTR-S"], image)
            assert result.ok, result
            assert firmware_id.read(2, None, clock.now()).endswith(b"FW-2.0")
        finally:
            agent.stop()
            assert await task == 0
            plain_svc.close()
            secure_svc.close()

    run(scenario)


def test_head_end_commands_reach_the_agent_through_mosquitto(
    tmp_path: Path, hil_pki: Pki, broker: Mosquitto, hil_env: HilEnv
) -> None:
    """The head end pings a meter and asks the OMS question (CIM MeterStatusData) through a
    real mosquitto with mTLS; the agent answers from its collector. The dark meter's last gasp
    also reaches the head end unsolicited, as a CIM REPLY without a CorrelationID."""
    clock = SystemClock()
    plain = MeterServer(MeterModel("MTR-P", random.Random(5)), clock)
    secure = MeterServer(
        MeterModel("MTR-S", random.Random(6)),
        clock,
        security=ServerSecurity(Suite0(EK, AK), METER_TITLE, random.Random(7)),
    )
    gateway = hil_env.gateway_id
    pair = hil_pki.client(gateway)
    uplink = UplinkConfig(
        broker_url=f"mqtts://{broker.host}:{broker.port}",
        tls=TlsConfig(hil_pki.ca_cert, pair.cert, pair.key),
    )
    events = f"ami/{gateway}/events/cim"

    async def scenario() -> None:
        plain_svc = await serve_udp({1: plain}, PLAIN_HOST)
        secure_svc = await serve_udp({1: secure}, SECURE_HOST)
        push_port = free_udp_port("127.0.0.1")
        cfg = config(tmp_path, plain_svc.port, secure_svc.port, push_port, uplink, gateway)
        agent = Agent(cfg, clock, random.Random(3), registry_with_radio())
        task = asyncio.create_task(agent.run())
        with CommandRequester(hil_pki, broker, (REPLIES, events), gateway=gateway) as he:
            try:
                await eventually(
                    lambda: agent.uplink is not None and agent.uplink.stats.connected,
                    10,
                    "the uplink",
                )
                await asyncio.sleep(0.3)  # the command subscription's SUBACK
                he.request("ping", json.dumps({"meter_id": "MTR-S"}).encode(), correlation=b"p1")
                [reply] = await he.wait_for(1, 10)
                assert reply.prop("CorrelationData") == b"p1"
                answer = json.loads(reply.payload)
                assert answer["status"] == "ok", answer
                assert answer["result"]["reachable"] is True, answer
                assert answer["result"]["meter_id"] == "MTR-S"

                # MTR-P goes dark after its last gasp; MTR-S answers.
                sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sender.bind((PLAIN_HOST, 0))
                sender.sendto(PushSource("MTR-P").last_gasp(clock.now()), ("127.0.0.1", push_port))
                sender.close()
                plain_svc.close()
                [event] = await he.wait_for(1, 10, topic=events)
                outage_msg = cim.parse_message(event.payload)
                assert outage_msg.correlation_id is None  # unsolicited
                assert [(e.category, e.assets) for e in outage_msg.events] == [
                    ("3.26.0.47", ("MTR-P",))
                ]

                he.request(
                    "meter-status",
                    status_get(["MTR-P", "MTR-S"], clock.now() + 6),
                    correlation=b"cim-1",
                    content_type="application/xml",
                )
                replies = await he.wait_for(2, 15)
                cim_reply = replies[-1]
                assert cim_reply.prop("CorrelationData") == b"cim-1"
                reply_msg = cim.parse_message(cim_reply.payload)
                assert (reply_msg.verb, reply_msg.correlation_id) == ("REPLY", "cim-1")
                assert reply_msg.reply_code == "0.0"
                by_category = {e.category: e.assets for e in reply_msg.events}
                assert by_category == {"3.26.0.47": ("MTR-P",), "3.26.0.216": ("MTR-S",)}
            finally:
                agent.stop()
                assert await task == 0
                secure_svc.close()

    run(scenario)
