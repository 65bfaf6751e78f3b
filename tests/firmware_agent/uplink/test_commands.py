"""The command dispatcher against a gateway made of real parts: the real Collector reading
emulated meters (hil MeterServer with image transfer) over loopback UDP, real SQLite spool and
counter store, a real routing table; ping is the collector's public-client associate/release
(``ping_meter``); a dark meter is a meter whose UDP service was closed. Requests and responses
are validated against the JSON Schemas in docs/schemas/."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.firmware import FirmwareImage, PushResult, ThroughputLimit, push_group
from firmware_agent.collector.link import UdpMeterLink
from firmware_agent.collector.ping import PingResult, ping_meter
from firmware_agent.collector.scheduler import Collector
from firmware_agent.collector.security_reset import ResetResult, security_reset
from firmware_agent.config import CollectorConfig, MeterConfig
from firmware_agent.mesh.routes import LinkQuality, RoutingTable, Transit
from firmware_agent.spool import Priority, Spool
from firmware_agent.uplink import cim
from firmware_agent.uplink.commands import (
    CommandDispatcher,
    CommandsConfig,
    MeshPath,
    mesh_paths,
)
from firmware_agent.uplink.outage import MeterState, OutageConfig, power_state
from firmware_agent.uplink.requests import CommandRequest, CommandResponse
from hil.meter.dlms_server import MeterServer
from hil.meter.image import image_objects, seal
from hil.meter.model import MeterModel
from hil.meter.objects import build_directory
from hil.meter.udp import UdpMeterService, serve_udp

T = TypeVar("T")
SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"
ROOT = bytes.fromhex("0212 4b00 0000 0001".replace(" ", ""))
RELAY = bytes.fromhex("0212 4b00 0000 0002".replace(" ", ""))
NODE = bytes.fromhex("0212 4b00 0000 0003".replace(" ", ""))


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, limit)

    return asyncio.run(main())


class Gateway:
    """A small implementation of ``GatewayOperations`` on the project's real parts."""

    def __init__(self, tmp: Path, clock: SystemClock) -> None:
        self.tmp = tmp
        self.clock = clock
        self.services: dict[str, UdpMeterService] = {}
        self.servers: dict[str, MeterServer] = {}
        self.links: dict[str, UdpMeterLink] = {}
        self.configs: dict[str, MeterConfig] = {}
        self.last_gasp: dict[str, float] = {}
        self.spool = Spool(tmp / "spool.sqlite", clock)
        self.counters = CounterStore(tmp / "counters.sqlite")
        self.collector: Collector | None = None
        self.routes = RoutingTable(ROOT)
        self.firmware_dir = tmp / "firmware"
        self.firmware_dir.mkdir()
        self.pushes: list[tuple[list[str], bytes, float | None]] = []
        self.silent: list[asyncio.BaseTransport] = []

    async def start(self, ids: Sequence[str]) -> None:
        for i, mid in enumerate(ids):
            model = MeterModel(mid, random.Random(i), profile_period_s=900)
            objects = build_directory(model)
            image, firmware = image_objects(b"FW-1.0", block_size=200)
            objects[image.logical_name] = image
            objects[firmware.logical_name] = firmware
            server = MeterServer(model, self.clock, objects=objects)
            svc = await serve_udp({1: server})
            self.servers[mid] = server
            self.services[mid] = svc
            self.configs[mid] = MeterConfig(mid, "udp", "127.0.0.1", port=svc.port)
            self.links[mid] = UdpMeterLink("127.0.0.1", svc.port)
        cfg = CollectorConfig(timeout_s=0.5, retries=0, profile_rows=2)
        self.collector = Collector(
            tuple(self.configs.values()),
            lambda m: self.links[m.id],
            self.spool,
            self.clock,
            cfg,
            random.Random(1),
        )
        now = self.clock.monotonic()
        self.routes.update_dao(RELAY, 1, [Transit(ROOT, 1, math.inf)], now)
        self.routes.update_dao(
            NODE, 1, [Transit(RELAY, 1, math.inf), Transit(ROOT, 1, math.inf, 1)], now
        )
        self.routes.set_link(ROOT, RELAY, LinkQuality(160.0, 18.5), now)
        self.routes.set_link(RELAY, NODE, LinkQuality(200.0, 11.0), now)
        self.routes.set_link(ROOT, NODE, LinkQuality(900.0, 3.0), now)

    async def go_dark(self, mid: str) -> None:
        """The meter stops answering (power gone, radio dead): its port still takes datagrams
        (no ICMP refusal to give it away), and nothing comes back."""
        self.services[mid].close()
        await asyncio.sleep(0.01)  # the transport lets go of its socket on a later loop turn
        loop = asyncio.get_running_loop()
        silent, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", self.services[mid].port)
        )
        self.silent.append(silent)

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()
        for svc in self.services.values():
            svc.close()
        for t in self.silent:
            t.close()
        self.spool.close()
        self.counters.close()

    # -- GatewayOperations ------------------------------------------------------------------
    def meter_ids(self) -> Sequence[str]:
        return list(self.configs)

    def meter_status(self, meter_id: str) -> MeterState:
        assert self.collector is not None
        st = self.collector.status[meter_id]
        power = power_state(self.last_gasp.get(meter_id), None, st.last_success)
        return MeterState(meter_id, st.state, st.last_success, power, st.last_error)

    async def ping(self, meter_id: str, timeout_s: float) -> PingResult:
        assert self.collector is not None
        async with self.collector.exclusive(meter_id) as m:
            result = await ping_meter(self.links[meter_id], m, timeout_s, clock=self.clock)
            return dataclasses.replace(result, hops=2)

    async def read_now(self, meter_id: str, what: str) -> list[dict[str, Any]]:
        assert self.collector is not None
        result = await self.collector.read_now(meter_id, what)
        return [r.to_dict() for r in result.readings]

    def view_mesh(self, meter_id: str) -> list[MeshPath]:
        return mesh_paths(self.routes, NODE, self.clock.monotonic())

    async def push_firmware(
        self, meter_ids: Sequence[str], image: FirmwareImage, bytes_per_s: float | None
    ) -> list[PushResult]:
        self.pushes.append((list(meter_ids), image.identifier, bytes_per_s))
        limit = ThroughputLimit(bytes_per_s or 1e6, self.clock, asyncio.sleep)
        targets = [(self.configs[m], self.links[m]) for m in meter_ids]
        return await push_group(targets, image, limit, timeout=0.5, retries=1)

    async def security_reset(self, meter_id: str) -> ResetResult:
        assert self.collector is not None
        async with self.collector.exclusive(meter_id) as m:
            return await security_reset(self.links[meter_id], meter_id, self.counters,
                                        server_address=m.server_address, timeout=0.5)  # fmt: skip

    def firmware_image(self, name: str) -> bytes:
        return (self.firmware_dir / name).read_bytes()


def req(name: str, payload: bytes | dict[str, Any], received_at: float | None = None,
        content_type: str = "application/json") -> CommandRequest:  # fmt: skip
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    at = time.time() if received_at is None else received_at
    return CommandRequest(name, data, content_type, b"corr", "reply/to", at)


def schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


def check(name: str, request: dict[str, Any], resp: CommandResponse) -> dict[str, Any]:
    """Validate the request and the (successful) response against the command's schemas."""
    jsonschema.validate(request, schema(f"cmd-{name}.request.json"))
    body: dict[str, Any] = json.loads(resp.payload)
    assert resp.status in ("ok", "partial"), body
    jsonschema.validate(body, schema(f"cmd-{name}.response.json"))
    assert body["command"] == name and body["status"] == resp.status
    assert resp.content_type == "application/json"
    return body


def error_of(resp: CommandResponse) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(resp.payload)
    assert resp.status == "error" and body["status"] == "error", body
    assert body["schema"] == "cmd-error/1"
    err_schema = SCHEMAS / "cmd-error.schema.json"
    if err_schema.exists():  # the transport's schema (docs/schemas, owned by the MQTT side)
        jsonschema.validate(body, json.loads(err_schema.read_text()))
    return body


async def rig(tmp: Path, ids: Sequence[str], **cfg: Any) -> tuple[Gateway, CommandDispatcher]:
    gw = Gateway(tmp, SystemClock())
    await gw.start(ids)
    return gw, CommandDispatcher(gw, gw.clock, CommandsConfig(**cfg))


# ------------------------------------------------------------------------------------- CIM


def get_xml(meters: Sequence[str], respond_by: float | None, corr: str = "OMS-42") -> bytes:
    msg = cim.CimMessage(
        "GET",
        cim.NOUN,
        cim.cim_time(time.time()),
        (cim.EndDeviceEvent("0.0.0.0", cim.cim_time(time.time()), tuple(meters)),),
        corr,
        None if respond_by is None else cim.cim_time(respond_by),
    )
    return cim.build_message(msg)


def test_meter_status_get_with_dark_meters_answers_by_the_deadline(tmp_path: Path) -> None:
    """Done-when (issue 7): a MeterStatusData GET for a set of meters, some of them dark, gets
    a REPLY with correct categories and "Response Timed Out" for the dark ones by the
    deadline. B is dark (its meter server stopped); D is dark after a last gasp; X is not ours."""

    async def go() -> tuple[CommandResponse, float, float]:
        oms = OutageConfig(reply_margin_s=0.5, ping_timeout_s=10.0)
        gw, dispatcher = await rig(tmp_path, ["A", "B", "C", "D"], oms=oms)
        await gw.go_dark("B")
        await gw.go_dark("D")
        gw.last_gasp["D"] = time.time() - 60
        deadline = math.ceil(time.time()) + 2.0  # RespondByTimestamp has whole seconds
        t0 = time.time()
        resp = await dispatcher.handle(
            req("meter-status", get_xml(["A", "B", "C", "D", "X"], deadline), t0, "application/xml")
        )
        done = time.time()
        await gw.close()
        return resp, deadline, done

    resp, deadline, done = run(go())
    assert done <= deadline, f"answered {done - deadline:.2f} s after the deadline"
    assert done >= deadline - 0.5 - 0.3  # it waited for the dark ones until deadline - margin
    assert resp.status == "ok" and resp.content_type == "application/xml"
    msg = cim.parse_message(resp.payload)
    assert (msg.verb, msg.noun, msg.reply_code, msg.correlation_id) == (
        "REPLY", "MeterStatusData", "0.0", "OMS-42",
    )  # fmt: skip
    got = {(ev.category, ev.description): ev.assets for ev in msg.events}
    assert got == {
        ("3.26.0.216", "power up"): ("A", "C"),
        ("3.26.0.47", "power down"): ("D",),
        ("0.0.0.0", "Response Timed Out"): ("B",),
        ("0.0.0.0", "Unknown Meter"): ("X",),
    }


def test_meter_status_all_alive_answers_at_once_with_configured_codes(tmp_path: Path) -> None:
    async def go() -> tuple[CommandResponse, float]:
        table = {"power-down": "3.26.0.85", "power-up": "3.26.0.216", "no-response": "3.0.0.0"}
        gw, dispatcher = await rig(tmp_path, ["A", "B"], oms=OutageConfig(categories=table))
        t0 = time.time()
        resp = await dispatcher.handle(req("meter-status", get_xml(["A", "B"], None), t0))
        took = time.time() - t0
        await gw.close()
        return resp, took

    resp, took = run(go())
    assert took < 2.0  # no waiting for the 30 s default deadline once everyone answered
    [ev] = cim.parse_message(resp.payload).events
    assert (ev.category, ev.assets) == ("3.26.0.216", ("A", "B"))


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"not xml at all", "5.1", "not XML"),
        (b"<Message><Header><Verb>GET</Verb>", "5.1", "not well-formed"),
        (get_xml(["A"], None).replace(b"MeterStatusData", b"MeterReadings"), "5.2", "Noun"),
        (get_xml(["A"], None).replace(b"<Verb>GET", b"<Verb>CANCEL"), "5.2", "Verb"),
        (get_xml(["A"], None).replace(b"0.0.0.0", b"0.0"), "5.1", "category"),
        (get_xml([f"M{i}" for i in range(30)], None), "5.3", "at most 20"),
    ],
)
def test_malformed_meter_status_gets_an_error_reply(
    tmp_path: Path, payload: bytes, code: str, words: str
) -> None:
    async def go() -> CommandResponse:
        gw, dispatcher = await rig(tmp_path, ["A"], oms=OutageConfig(max_meters=20))
        resp = await dispatcher.handle(req("meter-status", payload))
        await gw.close()
        return resp

    resp = run(go())
    assert resp.status == "error" and resp.content_type == "application/xml"
    msg = cim.parse_message(resp.payload)
    assert msg.verb == "REPLY" and msg.reply_code == code and msg.events == ()
    assert msg.error is not None and words in msg.error, msg.error
    if b"OMS-42" in payload:
        assert msg.correlation_id == "OMS-42"  # echoed even when the GET is refused


# ------------------------------------------------------------------------------------ JSON


def test_read_ping_view_mesh_and_security_reset(tmp_path: Path) -> None:
    async def go() -> dict[str, Any]:
        gw, dispatcher = await rig(tmp_path, ["A", "B"])
        out: dict[str, Any] = {}
        r = {"meter_id": "A", "what": "instantaneous"}
        out["read"] = check("read", r, await dispatcher.handle(req("read", r)))
        spooled = [x for x in gw.spool.next_batch(1000, 10**8) if x.data["device_id"] == "A"]
        out["spooled"] = {x.priority for x in spooled}
        r = {"meter_id": "A", "timeout_s": 2}
        out["ping"] = check("ping", r, await dispatcher.handle(req("ping", r)))
        await gw.go_dark("B")
        r = {"meter_id": "B", "timeout_s": 0.3}
        t0 = time.monotonic()
        out["ping_dark"] = check("ping", r, await dispatcher.handle(req("ping", r)))
        out["ping_dark_s"] = time.monotonic() - t0
        r = {"meter_id": "A"}
        out["mesh"] = check("view-mesh", r, await dispatcher.handle(req("view-mesh", r)))
        # the gateway's counter for A is behind what A accepted: a reset moves it forward
        gw.servers["A"].client_counter = 41
        out["reset"] = check("security-reset", r, await dispatcher.handle(req("security-reset", r)))
        out["reset_dark"] = error_of(
            await dispatcher.handle(req("security-reset", {"meter_id": "B"}))
        )
        out["read_dark"] = error_of(await dispatcher.handle(req("read", {"meter_id": "B"})))
        out["stats"] = dispatcher.stats
        await gw.close()
        return out

    out = run(go())
    read = out["read"]["result"]
    assert read["meter_id"] == "A" and read["what"] == "instantaneous" and not read["truncated"]
    inst = [x for x in read["readings"] if x["source"] == "instantaneous"]
    assert inst and inst[0]["device_id"] == "A" and inst[0]["vltg"] > 0
    assert out["spooled"] == {Priority.ON_DEMAND}  # and the head end gets them through the spool
    ping = out["ping"]["result"]
    assert ping["reachable"] is True and 0 < ping["round_trip_ms"] < 1000 and ping["hops"] == 2
    dark = out["ping_dark"]["result"]
    assert dark["reachable"] is False and "LinkTimeout" in dark["error"]
    assert dark["round_trip_ms"] is None and out["ping_dark_s"] < 1.5
    paths = out["mesh"]["result"]["paths"]
    assert [[h["node"] for h in p["hops"]] for p in paths] == [
        ["02:12:4b:00:00:00:00:01", "02:12:4b:00:00:00:00:02", "02:12:4b:00:00:00:00:03"],
        ["02:12:4b:00:00:00:00:01", "02:12:4b:00:00:00:00:03"],
    ]
    assert [h["snr_db"] for h in paths[0]["hops"]] == [None, 18.5, 11.0]
    assert paths[1]["hops"][1] == {"node": "02:12:4b:00:00:00:00:03", "snr_db": 3.0, "etx": 900.0}
    assert paths[0]["usable"] is True and paths[1]["usable"] is False and paths[1]["reasons"]
    reset = out["reset"]["result"]
    assert reset == {"meter_id": "A", "meter_counter": 41, "old_next": reset["old_next"],
                     "new_next": 42}  # fmt: skip
    assert out["reset_dark"]["error"] == "meter-unreachable"
    assert out["read_dark"]["error"] == "meter-unreachable" and "B" in out["read_dark"]["detail"]
    assert out["stats"].received["ping"] == 2 and out["stats"].errors["meter-unreachable"] == 2


def test_firmware_push_by_path_and_inline(tmp_path: Path) -> None:
    image = seal(random.Random(5).randbytes(3000))

    async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Gateway]:
        gw, dispatcher = await rig(tmp_path, ["A", "B", "C"])
        (gw.firmware_dir / "fw-2.0.bin").write_bytes(image)
        r1 = {"meter_ids": ["A", "B"], "image_id": "FW-2.0", "image": {"path": "fw-2.0.bin"},
              "sha256": hashlib.sha256(image).hexdigest(), "bytes_per_s": 200_000}  # fmt: skip
        by_path = check("firmware-push", r1, await dispatcher.handle(req("firmware-push", r1)))
        await gw.go_dark("C")
        r2 = {"meter_ids": ["A", "C"], "image_id": "FW-2.1",
              "image": {"base64": base64.b64encode(image).decode()}}  # fmt: skip
        inline = check("firmware-push", r2, await dispatcher.handle(req("firmware-push", r2)))
        r3 = dict(r1, image={"path": "nope.bin"})
        missing = error_of(await dispatcher.handle(req("firmware-push", r3)))
        await gw.close()
        return by_path, inline, missing, gw

    by_path, inline, missing, gw = run(go())
    res = by_path["result"]
    assert by_path["status"] == "ok" and res["succeeded"] == 2 and res["failed"] == 0
    assert res["size"] == len(image) and res["sha256"] == hashlib.sha256(image).hexdigest()
    assert {m["meter_id"]: m["ok"] for m in res["meters"]} == {"A": True, "B": True}
    assert gw.pushes[0] == (["A", "B"], b"FW-2.0", 200_000.0)
    res = inline["result"]
    assert inline["status"] == "partial" and res["succeeded"] == 1 and res["failed"] == 1
    failed = next(m for m in res["meters"] if not m["ok"])
    assert failed["meter_id"] == "C" and failed["error"]
    assert gw.pushes[1] == (["A", "C"], b"FW-2.1", None)  # None: the configured default rate
    assert missing["error"] == "bad-request" and "nope.bin" in missing["detail"]


def _big_b64() -> str:
    return base64.b64encode(b"x" * 2000).decode()


MALFORMED: list[tuple[str, bytes | dict[str, Any], str, str]] = [
    ("read", b"{not json", "bad-request", "payload: not JSON"),
    ("read", b"[1, 2]", "bad-request", "payload: must be a JSON object"),
    ("read", b"\xff\xfe", "bad-request", "payload: not JSON"),
    ("read", {}, "bad-request", "meter_id: missing"),
    ("read", {"meter_id": 7}, "bad-request", "meter_id: must be a non-empty string"),
    ("read", {"meter_id": ""}, "bad-request", "meter_id: must be"),
    ("read", {"meterid": "A"}, "bad-request", "meterid: unknown field"),
    ("read", {"meter_id": "Z"}, "unknown-meter", "'Z' is not served"),
    ("read", {"meter_id": "A", "what": "everything"}, "bad-request", "what: 'everything'"),
    ("ping", {"meter_id": "A", "timeout_s": -1}, "bad-request", "timeout_s: -1 is outside"),
    ("ping", {"meter_id": "A", "timeout_s": True}, "bad-request", "timeout_s: must be a number"),
    ("ping", {"meter_id": "A", "timeout_s": 999}, "bad-request", "timeout_s: 999 is outside"),
    ("view-mesh", {"meter_id": None}, "bad-request", "meter_id: must be"),
    ("security-reset", {"meter_id": "A", "force": True}, "bad-request", "force: unknown"),
    ("reboot", {"meter_id": "A"}, "unknown-command", "'reboot'"),
    ("firmware-push", {"meter_ids": "A", "image_id": "X", "image": {"path": "f"}},
     "bad-request", "meter_ids: must be a non-empty array"),
    ("firmware-push", {"meter_ids": [], "image_id": "X", "image": {"path": "f"}},
     "bad-request", "meter_ids: must be a non-empty array"),
    ("firmware-push", {"meter_ids": ["A", "A"], "image_id": "X", "image": {"path": "f"}},
     "bad-request", "meter_ids: lists a meter twice"),
    ("firmware-push", {"meter_ids": ["A", "Q"], "image_id": "X", "image": {"path": "f"}},
     "unknown-meter", "Q"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"path": "../etc/passwd"}},
     "bad-request", "image.path: '../etc/passwd' is not a plain file name"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"path": "..x"}},
     "bad-request", "image.path"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"url": "http://x"}},
     "bad-request", "image: must be"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"base64": "!!!"}},
     "bad-request", "image.base64: not base64"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"base64": _big_b64()}},
     "bad-request", "image.base64: longer than the inline limit of 1000"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"base64": "AAAA"},
                       "sha256": "00" * 32}, "bad-request", "sha256: image digest is"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"base64": "AAAA"},
                       "sha256": "xyz"}, "bad-request", "sha256: must be 64 hex"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "Ä", "image": {"base64": "AAAA"}},
     "bad-request", "image_id: must be printable ASCII"),
    ("firmware-push", {"meter_ids": ["A"], "image_id": "X", "image": {"base64": "AAAA"},
                       "bytes_per_s": 0}, "bad-request", "bytes_per_s: 0 is outside"),
]  # fmt: skip


def test_malformed_commands_get_error_responses_naming_what_was_wrong(tmp_path: Path) -> None:
    async def go() -> list[tuple[CommandResponse, str, str]]:
        gw, dispatcher = await rig(tmp_path, ["A"], max_inline_image_bytes=1000)
        out = []
        for name, payload, code, words in MALFORMED:
            out.append((await dispatcher.handle(req(name, payload)), code, words))
        # the gateway still works afterwards
        ok = await dispatcher.handle(req("ping", {"meter_id": "A"}))
        await gw.close()
        assert ok.status == "ok"
        return out

    for resp, code, words in run(go()):
        body = error_of(resp)
        assert body["error"] == code, body
        assert words in body["detail"], body


def test_a_failing_operation_is_an_error_response_not_a_crash(tmp_path: Path) -> None:
    """An operation that raises something unexpected, or hangs, still gets an answer."""

    class Broken(Gateway):
        def view_mesh(self, meter_id: str) -> list[MeshPath]:
            raise RuntimeError("routing table is being rebuilt")

        async def read_now(self, meter_id: str, what: str) -> list[dict[str, Any]]:
            await asyncio.sleep(10)
            return []

    async def go() -> tuple[CommandResponse, CommandResponse]:
        gw = Broken(tmp_path, SystemClock())
        await gw.start(["A"])
        dispatcher = CommandDispatcher(gw, gw.clock, CommandsConfig(timeout_s=0.2))
        a = await dispatcher.handle(req("view-mesh", {"meter_id": "A"}))
        b = await dispatcher.handle(req("read", {"meter_id": "A"}))
        await gw.close()
        return a, b

    a, b = run(go())
    assert error_of(a)["error"] == "failed" and "being rebuilt" in error_of(a)["detail"]
    assert error_of(b)["error"] == "timeout" and "0.2 s" in error_of(b)["detail"]


def test_every_command_has_request_and_response_schemas() -> None:
    for name in ("read", "ping", "view-mesh", "firmware-push", "security-reset"):
        for kind in ("request", "response"):
            doc = schema(f"cmd-{name}.{kind}.json")
            assert doc["$id"].endswith(f"cmd-{name}.{kind}.json")
    # a request schema refuses what the dispatcher refuses
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"meter_id": "A", "x": 1}, schema("cmd-read.request.json"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"meter_ids": ["A"], "image_id": "X", "image": {"path": "a", "base64": "b"}},
            schema("cmd-firmware-push.request.json"),
        )


def test_a_big_meter_status_answer_goes_out_in_parts(tmp_path: Path) -> None:
    """With the uplink's ``respond`` the REPLY is split under the byte cap (each meter once, the
    same CorrelationID); without it the GET is refused with 5.3 rather than answered in part."""
    meters = ["A", "B"] + [f"ELSEWHERE-{i:03d}" for i in range(120)]
    sent: list[CommandResponse] = []
    seen_time: list[tuple[float, str]] = []

    async def go() -> tuple[CommandResponse, CommandResponse]:
        gw, _ = await rig(tmp_path, ["A", "B"])
        oms = OutageConfig(max_reply_bytes=2048)
        split = CommandDispatcher(
            gw, gw.clock, CommandsConfig(oms=oms),
            respond=lambda _req, resp: sent.append(resp),
            on_reference_time=lambda t, src: seen_time.append((t, src)),
        )  # fmt: skip
        last = await split.handle(req("meter-status", get_xml(meters, None)))
        whole = CommandDispatcher(gw, gw.clock, CommandsConfig(oms=oms))
        refused = await whole.handle(req("meter-status", get_xml(meters, None)))
        await gw.close()
        return last, refused

    last, refused = run(go())
    parts = [*sent, last]
    assert len(parts) >= 3 and all(len(p.payload) <= 2048 for p in parts)
    listed: list[str] = []
    for p in parts:
        msg = cim.parse_message(p.payload)
        assert msg.correlation_id == "OMS-42" and p.status == "ok"
        listed += [m for ev in msg.events for m in ev.assets]
    assert sorted(listed) == sorted(meters)
    assert seen_time and seen_time[0][1] == "CIM Header/Timestamp"
    assert abs(seen_time[0][0] - time.time()) < 5
    bad = cim.parse_message(refused.payload)
    assert refused.status == "error" and bad.reply_code == "5.3"


def test_commands_config_is_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        CommandsConfig(timeout_s=0)
    with pytest.raises(ValueError, match="ping_timeout_s must be <= max_ping_timeout_s"):
        CommandsConfig(ping_timeout_s=40)
    with pytest.raises(ValueError, match="max_response_bytes"):
        CommandsConfig(max_response_bytes=10)
