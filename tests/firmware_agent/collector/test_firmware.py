"""Firmware push (IC 18) from our collector to emulated meters over real loopback UDP: requests
byte-equal to gurux's own image transfer requests, the shared throughput limit (measured on an
injected clock and on a short real run), verify and activate with the new firmware identifier read
back, resume after an interruption (blocks actually re-sent counted), slow verification polled,
a bad image and a dead meter reported per meter without stopping the group."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from gurux_dlms.objects import GXDLMSImageTransfer

from firmware_agent.clock import Clock, ManualClock, SystemClock
from firmware_agent.collector import obis
from firmware_agent.collector.ciphering import Suite0
from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.firmware import (
    FirmwareImage,
    Progress,
    PushResult,
    ThroughputLimit,
    action,
    block_params,
    initiate_params,
    push_group,
    push_image,
)
from firmware_agent.collector.keys import MeterKeys
from firmware_agent.collector.link import UdpMeterLink
from firmware_agent.collector.session import DlmsSession, session_factory
from firmware_agent.config import MeterConfig, MeterSecurity
from hil.meter.dlms_server import MeterServer, ServerSecurity
from hil.meter.faults import Fault, FaultKind, FaultyMeter
from hil.meter.image import ACTIVE_FIRMWARE_ID, ImageTransferObject, image_objects, seal
from hil.meter.model import MeterModel
from hil.meter.objects import DataObject, build_directory
from hil.meter.udp import serve_udp

T = TypeVar("T")
NOW = 1_700_000_000.0
IMAGE = FirmwareImage(b"FW-2.0", seal(random.Random(42).randbytes(20_000 - 32)))


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


class Meter:
    """One emulated meter with image transfer, served on its own loopback UDP port."""

    def __init__(self, meter_id: str, clock: Clock, *, seed: int = 1, **image_kw: Any) -> None:
        model = MeterModel(meter_id, random.Random(seed))
        objects = build_directory(model)
        self.image, self.firmware = image_objects(b"FW-1.0", **image_kw)
        objects[self.image.logical_name] = self.image
        objects[self.firmware.logical_name] = self.firmware
        self.server = MeterServer(model, clock, objects=objects)
        self.faulty = FaultyMeter(self.server, random.Random(seed))
        self.port = 0
        self.id = meter_id

    def config(self) -> MeterConfig:
        return MeterConfig(self.id, "udp", "127.0.0.1", self.port)


@asynccontextmanager
async def served(*meters: Meter) -> AsyncIterator[list[tuple[MeterConfig, UdpMeterLink]]]:
    async with AsyncExitStack() as stack:
        targets = []
        for m in meters:
            svc = await serve_udp({1: m.faulty})
            stack.callback(svc.close)
            m.port = svc.port
            link = UdpMeterLink("127.0.0.1", svc.port)
            stack.push_async_callback(link.close)
            targets.append((m.config(), link))
        yield targets


def virtual_limit(rate: float, clock: ManualClock) -> ThroughputLimit:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return ThroughputLimit(rate, clock, sleep)


def active_firmware(firmware: DataObject) -> bytes:
    value = firmware.value
    assert value[0] == 9
    return value[2:]


# ---------------------------------------------------------------------- requests


def test_requests_are_byte_equal_to_gurux_image_transfer_requests() -> None:
    """Byte-equal but for the invoke-id: gurux sends 1 every time, ours rotate (1, 2, 3, ...)
    so a late reply to an earlier request is told apart from the answer."""
    ours, theirs = DlmsSession(), DlmsSession()
    for s in (ours, theirs):
        s.client.maxReceivePDUSize = 1024
    invokes: list[int] = []

    def same(got: bytes, expected: object) -> bool:
        want = bytes(expected)  # type: ignore[call-overload]
        invokes.append(got[10] & 0x0F)
        return got[:10] + got[11:] == want[:10] + want[11:] and got[10] & 0xF0 == want[10] & 0xF0

    it = GXDLMSImageTransfer(obis.IMAGE_TRANSFER)
    it.imageBlockSize = 200
    data = bytes(range(256)) * 2
    (expected_init,) = it.imageTransferInitiate(theirs.client, "FW-2.0", len(data))
    got_init = action(ours, obis.IMAGE_TRANSFER, 1, initiate_params(b"FW-2.0", len(data))).request
    assert same(got_init, expected_init)
    blocks = it.imageBlockTransfer(theirs.client, data, None)
    assert len(blocks) == 3
    for n, (expected,) in enumerate(blocks):
        block = data[n * 200 : (n + 1) * 200]
        assert same(action(ours, obis.IMAGE_TRANSFER, 2, block_params(n, block)).request, expected)
    (verify,) = it.imageVerify(theirs.client)
    assert same(action(ours, obis.IMAGE_TRANSFER, 3, 0).request, verify)
    (activate,) = it.imageActivate(theirs.client)
    assert same(action(ours, obis.IMAGE_TRANSFER, 4, 0).request, activate)
    assert invokes == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------- throughput limit


def test_throughput_limit_paces_on_the_injected_clock() -> None:
    clock = ManualClock(NOW)
    limit = virtual_limit(1000.0, clock)

    async def go() -> None:
        for _ in range(10):
            await limit.take(100)

    t0 = clock.monotonic()
    run(go())
    assert clock.monotonic() - t0 == pytest.approx(0.9)  # the first 100 bytes go at once
    assert limit.sent_bytes == 1000

    burst = ThroughputLimit(1000.0, clock, limit.sleep, burst=500)
    t0 = clock.monotonic()

    async def together() -> None:
        await asyncio.gather(*(burst.take(100) for _ in range(10)))

    run(together())
    assert clock.monotonic() - t0 == pytest.approx(0.4)  # 500 bytes of burst, then 1000 B/s


def test_throughput_limit_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        ThroughputLimit(0, ManualClock(), asyncio.sleep)


# ---------------------------------------------------------------------- end to end


def test_group_push_of_20kb_under_a_shared_limit_verifies_and_activates() -> None:
    clock = ManualClock(NOW)
    meters = [Meter("MTR-A", clock, seed=1), Meter("MTR-B", clock, seed=2)]
    limit = virtual_limit(8000.0, clock)
    progress: list[Progress] = []

    async def go() -> list[PushResult]:
        async with served(*meters) as targets:
            t0 = clock.monotonic()
            results = await push_group(targets, IMAGE, limit, progress=progress.append)
            elapsed = clock.monotonic() - t0
            rate = limit.sent_bytes / elapsed
            assert rate == pytest.approx(8000.0, rel=0.10)
            assert sum(r.frame_bytes for r in results) == limit.sent_bytes
            # the new identifier, read back over the link as the head end would
            for m, (_cfg, link) in zip(meters, targets, strict=True):
                s = DlmsSession()
                for ex in (s.associate(), s.read_value(ACTIVE_FIRMWARE_ID, obis.IC_DATA)):
                    frame: bytes | None = ex.request
                    while frame is not None:
                        frame = ex.feed(await link.request(frame, 2.0))
                assert bytes(ex.result) == b"FW-2.0", m.id
            return results

    results = run(go())
    assert [r.ok for r in results] == [True, True], results
    for m, r in zip(meters, results, strict=True):
        assert r.blocks_total == 100 and r.blocks_sent == 100 and r.resumed_blocks == 0
        assert m.image.received_blocks == 100
        assert m.image.activations == 1 and active_firmware(m.firmware) == b"FW-2.0"
    by_meter = {m: [p for p in progress if p.meter_id == m] for m in ("MTR-A", "MTR-B")}
    for steps in by_meter.values():
        done = [p.blocks_done for p in steps]
        assert done == sorted(done) and done[-1] == 100 and steps[-1].stage == "done"
        assert all(p.blocks_total == 100 for p in steps)


def test_real_short_run_keeps_to_the_limit() -> None:
    clock = SystemClock()
    meters = [Meter("MTR-A", clock, seed=1), Meter("MTR-B", clock, seed=2)]
    limit = ThroughputLimit(40_000.0, clock, asyncio.sleep)

    async def go() -> tuple[list[PushResult], float]:
        async with served(*meters) as targets:
            t0 = time.monotonic()
            results = await push_group(targets, IMAGE, limit)
            return results, time.monotonic() - t0

    results, elapsed = run(go())
    assert all(r.ok for r in results), results
    assert limit.sent_bytes / elapsed == pytest.approx(40_000.0, rel=0.10)


def test_interrupted_push_resumes_from_the_missing_blocks() -> None:
    clock = ManualClock(NOW)
    meter = Meter("MTR-R", clock)
    limit = virtual_limit(1e9, clock)
    # the link goes dead after 40 frames (association, 4 prepare reads, initiate, 34 blocks)
    meter.faulty.inject(Fault(FaultKind.SILENCE, None, after=40))

    async def go() -> tuple[PushResult, PushResult]:
        async with served(meter) as [(cfg, link)]:
            first = await push_image(link, cfg, IMAGE, limit, timeout=0.1, retries=1)
            meter.faulty.clear()
            second = await push_image(link, cfg, IMAGE, limit, timeout=1.0)
            return first, second

    first, second = run(go())
    assert not first.ok and first.stage == "blocks" and "LinkTimeout" in (first.error or "")
    held = len(meter.image.blocks) - second.blocks_sent
    assert first.blocks_sent == held == 34
    assert second.ok and second.resumed_blocks == 34 and second.blocks_sent == 100 - 34
    assert meter.image.received_blocks == 100  # no block went twice
    assert active_firmware(meter.firmware) == b"FW-2.0"


def test_attempts_resume_within_one_call() -> None:
    clock = ManualClock(NOW)
    meter = Meter("MTR-R", clock)
    meter.faulty.inject(Fault(FaultKind.SILENCE, 2, after=30))

    async def go() -> PushResult:
        async with served(meter) as [(cfg, link)]:
            return await push_image(
                link, cfg, IMAGE, virtual_limit(1e9, clock), timeout=0.1, retries=1, attempts=2
            )

    result = run(go())
    assert result.ok and result.blocks_sent == 100
    assert meter.image.received_blocks == 100


def test_push_of_the_active_image_is_a_no_op() -> None:
    clock = ManualClock(NOW)
    meter = Meter("MTR-N", clock)

    async def go() -> tuple[PushResult, PushResult]:
        async with served(meter) as [(cfg, link)]:
            limit = virtual_limit(1e9, clock)
            return await push_image(link, cfg, IMAGE, limit), await push_image(
                link, cfg, IMAGE, limit
            )

    first, again = run(go())
    assert first.ok and again.ok and again.already_active and again.blocks_sent == 0
    assert meter.image.activations == 1


def test_slow_verification_and_activation_are_polled() -> None:
    clock = ManualClock(NOW)
    meter = Meter("MTR-S", clock, verify_delay_s=30.0, activate_delay_s=10.0)

    async def go() -> PushResult:
        async with served(meter) as [(cfg, link)]:
            return await push_image(
                link, cfg, IMAGE, virtual_limit(1e9, clock), poll_interval_s=5.0
            )

    t0 = clock.monotonic()
    result = run(go())
    assert result.ok, result
    assert clock.monotonic() - t0 >= 40.0
    assert active_firmware(meter.firmware) == b"FW-2.0"


def test_bad_image_and_dead_meter_fail_alone() -> None:
    clock = ManualClock(NOW)
    good, bad = Meter("MTR-G", clock, seed=1), Meter("MTR-X", clock, seed=2)
    bad.faulty.inject(Fault(FaultKind.SILENCE, None, after=0))
    unsealed = FirmwareImage(b"FW-3.0", b"\x00" * 5000)

    async def go() -> list[PushResult]:
        async with served(good, bad) as targets:
            return await push_group(
                targets, unsealed, virtual_limit(1e9, clock), timeout=0.1, retries=0
            )

    verify_failed, dead = run(go())
    assert not verify_failed.ok and verify_failed.stage == "verify"
    assert "other-reason" in (verify_failed.error or "")
    assert good.image.status.name == "VERIFICATION_FAILED"
    assert not dead.ok and dead.stage == "associate" and "LinkTimeout" in (dead.error or "")
    assert active_firmware(good.firmware) == b"FW-1.0"


def test_image_needs_identifier_and_bytes() -> None:
    with pytest.raises(ValueError, match="identifier"):
        FirmwareImage(b"", b"x")
    with pytest.raises(ValueError, match="empty"):
        FirmwareImage(b"X", b"")


_ = ImageTransferObject  # the type the tests inspect through Meter.image


def test_push_over_suite0_through_the_secured_session(tmp_path: Path) -> None:
    ek, ak = bytes(range(16)), bytes(range(16, 32))
    meter_title, gateway_title = (
        bytes.fromhex("4D4D4D0000000009"),
        bytes.fromhex("4757000000000001"),
    )
    clock = ManualClock(NOW)
    meter = Meter("MTR-SEC", clock)
    meter.server.security = ServerSecurity(Suite0(ek, ak), meter_title, random.Random(4))
    store = CounterStore(tmp_path / "counters.sqlite")
    factory = session_factory(
        {"MTR-SEC": MeterKeys("MTR-SEC", ek, ak, meter_title)}, store, gateway_title,
        random.Random(5),
    )  # fmt: skip

    async def go() -> PushResult:
        async with served(meter) as [(cfg, link)]:
            secured = MeterConfig(
                cfg.id, "udp", "127.0.0.1", cfg.port, client_address=1,
                security=MeterSecurity("suite0"),
            )  # fmt: skip
            small = FirmwareImage(b"FW-SEC", seal(b"s" * 3000))
            return await push_image(
                link, secured, small, virtual_limit(1e9, clock), session_factory=factory
            )

    result = run(go())
    assert result.ok, result
    assert active_firmware(meter.firmware) == b"FW-SEC"
    assert meter.server.client_counter >= result.blocks_sent  # every block came ciphered
