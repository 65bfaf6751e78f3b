"""Outage logic without a network: unsolicited REPLY messages from real push frames (the emulated
meter's last gasp / power restored, parsed by the collector), the power-state rule, the
category table, and the deadline logic in virtual time (injected clock and sleep)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from firmware_agent.clock import ManualClock
from firmware_agent.collector.ping import PingResult
from firmware_agent.collector.push import parse_push
from firmware_agent.uplink import cim, outage
from firmware_agent.uplink.outage import (
    MeterState,
    MeterStatusResponder,
    OutageConfig,
    power_state,
)
from hil.meter.push import MeterEvent, PushSource

T0 = 1_714_546_800.0  # 2024-05-01T07:00:00Z


def test_last_gasp_and_restoration_become_unsolicited_replies() -> None:
    src = PushSource("MTR-7")
    gasp = parse_push("MTR-7", src.last_gasp(T0 + 3.4), T0 + 5)
    back = parse_push("MTR-7", src.power_restored(T0 + 600), T0 + 601)
    tamper = parse_push("MTR-7", src.frame(MeterEvent.METER_COVER_REMOVED, T0), T0)
    down = outage.outage_reply(gasp, now=T0 + 6)
    assert down is not None
    msg = cim.parse_message(down)
    assert (msg.verb, msg.noun, msg.reply_code, msg.correlation_id) == (
        "REPLY", "MeterStatusData", "0.0", None,
    )  # fmt: skip
    assert msg.timestamp == "2024-05-01T07:00:06Z"
    assert msg.events == (
        cim.EndDeviceEvent("3.26.0.47", "2024-05-01T07:00:03Z", ("MTR-7",), "power down"),
    )
    up = outage.outage_reply(back.to_dict(), now=T0 + 602)  # the spooled record works too
    assert up is not None
    assert cim.parse_message(up).events[0].category == "3.26.0.216"
    assert outage.outage_reply(tamper, now=T0) is None


def test_a_last_gasp_storm_is_grouped_and_split_under_the_cap() -> None:
    alarms = []
    for i in range(600):
        src = PushSource(f"MTR-{i:04d}")
        alarms.append(parse_push(src.device_id, src.last_gasp(T0 + (i % 3)), T0 + 10))
    alarms.append(alarms[0])  # a repeat of the same push collapses
    table = {"power-down": "9.9.9.1", "power-up": "9.9.9.2", "no-response": "9.9.9.3"}
    parts = outage.outage_replies(alarms, now=T0 + 11, categories=table, max_bytes=8192)
    assert len(parts) >= 2
    seen: list[str] = []
    groups = set()
    for p in parts:
        assert len(p) <= 8192
        msg = cim.parse_message(p)
        assert msg.correlation_id is None
        for ev in msg.events:
            assert ev.category == "9.9.9.1" and ev.description == "power down"
            groups.add(ev.created)
            seen.extend(ev.assets)
    assert sorted(seen) == [f"MTR-{i:04d}" for i in range(600)]
    assert groups == {"2024-05-01T07:00:00Z", "2024-05-01T07:00:01Z", "2024-05-01T07:00:02Z"}


@pytest.mark.parametrize(
    ("gasp", "restored", "heard", "want"),
    [
        (None, None, None, "unknown"),
        (None, None, 5.0, "on"),
        (10.0, None, 5.0, "off"),
        (10.0, 12.0, 5.0, "on"),
        (10.0, None, 11.0, "on"),
        (10.0, None, None, "off"),
    ],
)
def test_power_state(
    gasp: float | None, restored: float | None, heard: float | None, want: str
) -> None:
    assert power_state(gasp, restored, heard) == want


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="lacks no-response"):
        OutageConfig(categories={"power-down": "3.26.0.47", "power-up": "3.26.0.216"})
    with pytest.raises(ValueError, match=r"power-up.*not #1\.#2\.#3\.#4"):
        OutageConfig(categories=dict(outage.DEFAULT_CATEGORIES, **{"power-up": "3.26"}))
    with pytest.raises(ValueError, match="unknown status"):
        OutageConfig(categories=dict(outage.DEFAULT_CATEGORIES, flicker="1.1.1.1"))
    with pytest.raises(ValueError, match="reply_margin_s"):
        OutageConfig(reply_margin_s=30.0)
    with pytest.raises(ValueError, match="ping_timeout_s"):
        OutageConfig(ping_timeout_s=0)


class VirtualOps:
    """Meters that answer a ping after ``delay[m]`` virtual seconds (None: never)."""

    def __init__(self, clock: ManualClock, delay: dict[str, float | None], off: Sequence[str]):
        self.clock = clock
        self.delay = delay
        self.off = set(off)
        self.pinged: list[tuple[str, float]] = []
        self.active = 0
        self.peak = 0

    def meter_ids(self) -> Sequence[str]:
        return list(self.delay)

    def meter_status(self, meter_id: str) -> MeterState:
        power = "off" if meter_id in self.off else "on"
        return MeterState(meter_id, "ok", T0 - 900, power)

    async def ping(self, meter_id: str, timeout_s: float) -> PingResult:
        self.pinged.append((meter_id, timeout_s))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            d = self.delay[meter_id]
            if d is None or d > timeout_s:
                await virtual_sleep(self.clock, timeout_s)
                return PingResult(meter_id, False, error="LinkTimeout: no answer")
            if d < 0:
                raise ConnectionResetError("link reset")
            await virtual_sleep(self.clock, d)
            return PingResult(meter_id, True, d, 2)
        finally:
            self.active -= 1


async def virtual_sleep(clock: ManualClock, seconds: float) -> None:
    """Wait until the shared virtual clock has advanced by ``seconds`` (a driver advances it)."""
    until = clock.now() + seconds
    while clock.now() < until:
        await asyncio.sleep(0)


async def drive(clock: ManualClock, step: float, task: asyncio.Task[outage.StatusAnswer]) -> None:
    while not task.done():
        await asyncio.sleep(0)
        clock.advance(step)


def run_answer(
    ops: VirtualOps, clock: ManualClock, req: cim.MeterStatusRequest, cfg: OutageConfig
) -> outage.StatusAnswer:
    async def go() -> outage.StatusAnswer:
        responder = MeterStatusResponder(ops, clock, cfg, sleep=lambda s: virtual_sleep(clock, s))
        task = asyncio.create_task(responder.answer(req, clock.now()))
        await drive(clock, 0.05, task)
        return task.result()

    return asyncio.run(go())


def request(meters: Sequence[str], respond_by: float | None) -> cim.MeterStatusRequest:
    return cim.MeterStatusRequest("c-1", T0, respond_by, "0.0.0.0", tuple(meters))


def test_deadline_in_virtual_time_groups_by_category() -> None:
    clock = ManualClock(T0)
    delay: dict[str, float | None] = {"UP1": 0.5, "UP2": 3.0, "DARK": None, "GONE": None,
                                      "SLOW": 50.0, "RESET": -1.0}  # fmt: skip
    ops = VirtualOps(clock, delay, off=["GONE"])
    cfg = OutageConfig(reply_margin_s=1.0, ping_timeout_s=30.0, ping_concurrency=3)
    ans = run_answer(ops, clock, request([*delay, "ELSEWHERE"], T0 + 20), cfg)
    assert ans.deadline == T0 + 20
    # SLOW (50 s) and DARK (never) are still out at deadline - margin: the answer goes then
    assert T0 + 19 - 0.2 <= ans.answered_at <= T0 + 19.5, ans.answered_at - T0  # by the deadline
    assert ans.statuses == {"UP1": "power-up", "UP2": "power-up", "DARK": "no-response",
                            "GONE": "power-down", "SLOW": "no-response",
                            "RESET": "no-response"}  # fmt: skip
    assert ans.unknown == ("ELSEWHERE",)
    assert ops.peak <= 3
    assert all(t <= 19.0 for _, t in ops.pinged)  # no ping may outlast the answer
    assert ans.timed_out == ("RESET",)  # three slots held by DARK, GONE, SLOW to the end
    [reply] = ans.replies
    msg = cim.parse_message(reply)
    got = {(ev.category, ev.description): ev.assets for ev in msg.events}
    assert got == {
        ("3.26.0.47", "power down"): ("GONE",),
        ("3.26.0.216", "power up"): ("UP1", "UP2"),
        ("0.0.0.0", "Response Timed Out"): ("DARK", "SLOW", "RESET"),
        ("0.0.0.0", "Unknown Meter"): ("ELSEWHERE",),
    }
    assert msg.correlation_id == "c-1"


def test_answers_as_soon_as_every_meter_answered() -> None:
    clock = ManualClock(T0)
    ops = VirtualOps(clock, {"A": 0.2, "B": 0.4}, off=[])
    ans = run_answer(ops, clock, request(["A", "B"], T0 + 60), OutageConfig())
    assert ans.answered_at - T0 < 1.0
    assert set(ans.statuses.values()) == {"power-up"} and ans.timed_out == ()


def test_past_deadline_answers_at_once_from_what_is_known() -> None:
    clock = ManualClock(T0)
    ops = VirtualOps(clock, {"A": 0.2, "B": None}, off=["B"])
    ans = run_answer(ops, clock, request(["A", "B"], T0 - 5), OutageConfig())
    assert ans.answered_at - T0 < 0.5 and ops.pinged == []
    assert ans.statuses == {"A": "no-response", "B": "power-down"}
    assert ans.timed_out == ("A", "B")


def test_no_respond_by_uses_the_default_and_far_deadlines_are_capped() -> None:
    r = MeterStatusResponder(
        VirtualOps(ManualClock(T0), {}, []),
        ManualClock(T0),
        OutageConfig(default_respond_s=30, max_respond_s=120),
    )
    assert r.deadline(request(["A"], None), T0) == T0 + 30
    assert r.deadline(request(["A"], T0 + 10_000), T0) == T0 + 120
