"""Head-end commands end to end through a real mosquitto with mutual TLS: the head end's paho
client sends an MQTT v5 request (Response Topic + Correlation Data), the uplink hands it to the
command dispatcher, which drives the real collector against emulated meters over loopback UDP.
Done-when (issue 7): a CIM MeterStatusData GET for meters some of which are dark gets a REPLY
with the right categories and "Response Timed Out" for the dark ones, by the deadline."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

from firmware_agent.clock import SystemClock
from firmware_agent.collector.push import parse_push
from firmware_agent.config import UplinkConfig
from firmware_agent.spool import Priority, Spool
from firmware_agent.uplink import cim, payloads
from firmware_agent.uplink.commands import CommandDispatcher, CommandsConfig
from firmware_agent.uplink.mqtt import Uplink
from firmware_agent.uplink.outage import OutageConfig, outage_record
from hil.broker import Mosquitto
from hil.headend.requester import CommandRequester
from hil.meter.push import PushSource
from hil.pki import Pki
from hil.waiting import eventually

from .test_commands import Gateway, get_xml
from .test_uplink_commands import FAST, GATEWAY, wait_connected


def test_meter_status_and_json_commands_through_mosquitto(
    mtls_pki: Pki,
    mqtt_broker: Mosquitto,
    make_uplink_config: Callable[..., UplinkConfig],
    tmp_path: Path,
) -> None:
    clock = SystemClock()
    result: dict[str, object] = {}

    async def main(he: CommandRequester) -> None:
        gw = Gateway(tmp_path, clock)
        await gw.start(["A", "B", "C", "D"])
        spool = Spool(tmp_path / "uplink-spool.sqlite", clock, rng=random.Random(2))
        uplink = Uplink(make_uplink_config(), GATEWAY, spool, clock, tuning=FAST)
        dispatcher = CommandDispatcher(
            gw,
            clock,
            CommandsConfig(oms=OutageConfig(reply_margin_s=0.7, ping_timeout_s=10.0)),
            respond=uplink.respond,
            on_reference_time=uplink.observe_reference_time,
        )
        uplink.command_handler = dispatcher.handle
        task = asyncio.create_task(uplink.run())
        try:
            await wait_connected(uplink)
            await gw.go_dark("B")
            await gw.go_dark("D")
            gw.last_gasp["D"] = time.time() - 30
            deadline = math.ceil(time.time()) + 3.0
            he.request("meter-status", get_xml(["A", "B", "C", "D"], deadline, "OMS-7"),
                       correlation=b"oms-7")  # fmt: skip
            he.request("ping", b'{"meter_id": "C"}', correlation=b"ping-c")
            he.request("read", b'{"meter_id": 5}', correlation=b"bad")
            await he.wait_for(3, timeout=10)
            result["arrived"] = time.time()
            result["deadline"] = deadline
            result["replies"] = {g.prop("CorrelationData"): g for g in he.received()}
            # an outage alarm becomes an unsolicited REPLY on events/cim, through the spool
            alarm = parse_push("D", PushSource("D").last_gasp(time.time() - 30), time.time())
            entry = outage_record(alarm, now=time.time())
            assert entry is not None
            spool.add([entry], Priority.ALARM)
            await eventually(lambda: spool.depth() == 0, 10, "the event published")
        finally:
            await uplink.stop(flush_timeout=1.0)
            await asyncio.wait_for(task, 10)
            await gw.close()
            spool.close()

    events_topic = payloads.events_filter("ami")
    with CommandRequester(mtls_pki, mqtt_broker, ("ami/headend/replies", events_topic)) as he:
        asyncio.run(asyncio.wait_for(main(he), 60))
        events = he.received(f"ami/{GATEWAY}/events/cim")

    replies = result["replies"]
    assert isinstance(replies, dict)
    assert set(replies) == {b"oms-7", b"ping-c", b"bad"}
    # CIM: by the deadline, with the right groups
    assert isinstance(result["arrived"], float) and isinstance(result["deadline"], float)
    assert result["arrived"] <= result["deadline"], result["arrived"] - result["deadline"]
    got = replies[b"oms-7"]
    assert got.prop("ContentType") == "application/xml" and got.user()["status"] == "ok"
    msg = cim.parse_message(got.payload)
    assert (msg.verb, msg.correlation_id, msg.reply_code) == ("REPLY", "OMS-7", "0.0")
    groups = {(ev.category, ev.description): ev.assets for ev in msg.events}
    assert groups == {
        ("3.26.0.216", "power up"): ("A", "C"),
        ("3.26.0.47", "power down"): ("D",),
        ("0.0.0.0", "Response Timed Out"): ("B",),
    }
    # JSON commands on the same path
    ping = json.loads(replies[b"ping-c"].payload)
    assert ping["result"]["reachable"] is True and ping["status"] == "ok"
    bad = json.loads(replies[b"bad"].payload)
    assert replies[b"bad"].user()["status"] == "error"
    assert bad["error"] == "bad-request" and bad["detail"].startswith("meter_id:")
    # the unsolicited outage REPLY: no CorrelationID
    [event] = events
    out = cim.parse_message(event.payload)
    assert out.correlation_id is None and out.events[0].assets == ("D",)
    assert out.events[0].category == "3.26.0.47"
    assert event.user()["natural_key"].endswith("|cim")
