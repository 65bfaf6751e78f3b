"""The virtual-time loop: timers, sleeps and timeouts behave as on a real loop, without waiting."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from firmware_agent.clock import LoopClock
from hil import vtime


def test_a_simulated_day_of_sleeps_takes_no_real_time() -> None:
    async def main() -> tuple[float, list[tuple[str, float]]]:
        loop = asyncio.get_running_loop()
        order: list[tuple[str, float]] = []

        async def ticker(name: str, period: float, count: int) -> None:
            for _ in range(count):
                await asyncio.sleep(period)
                order.append((name, loop.time()))

        await asyncio.gather(ticker("quarter-hour", 900, 96), ticker("hour", 3600, 24))
        return loop.time(), order

    started = time.monotonic()
    end, order = vtime.run(main())
    assert time.monotonic() - started < 5
    assert end == pytest.approx(86_400)
    assert len(order) == 120
    assert [t for _, t in order] == sorted(t for _, t in order)
    # At the top of each hour both fire, at the same virtual instant.
    assert {name for name, _ in order[3:5]} == {"quarter-hour", "hour"}
    assert [t for _, t in order[3:5]] == [pytest.approx(3600)] * 2


def test_wait_for_times_out_at_the_virtual_deadline() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[None] = loop.create_future()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(never, 30)
        return loop.time()

    assert vtime.run(main(), start=100.0) == pytest.approx(130.0)


def test_call_at_runs_callbacks_in_time_order() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen: list[float] = []
        done = asyncio.Event()
        for when in (5.0, 0.25, 12.5, 0.25):
            loop.call_at(when, lambda: seen.append(loop.time()))
        loop.call_at(13.0, done.set)
        await done.wait()
        return seen

    assert vtime.run(main()) == [0.25, 0.25, 5.0, 12.5]


def test_real_io_is_still_served_between_jumps() -> None:
    """A pipe with data ready is read on the next turn, before the clock jumps to a far timer."""

    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        got: asyncio.Future[bytes] = loop.create_future()
        loop.add_reader(r, lambda: got.set_result(os.read(r, 10)))
        loop.call_later(3600, lambda: None)  # a far timer the clock could jump to
        os.write(w, b"ping")
        try:
            data = await got
            return data, loop.time()
        finally:
            loop.remove_reader(r)
            os.close(r)
            os.close(w)

    data, at = vtime.run(main())
    assert data == b"ping"
    assert at < 1.0


def test_loop_clock_follows_virtual_time_from_its_epoch() -> None:
    async def main() -> tuple[float, float, float, float]:
        loop = asyncio.get_running_loop()
        clock = LoopClock(loop, epoch=1_700_000_000.0)
        before = (clock.now(), clock.monotonic())
        await asyncio.sleep(900)
        return before[0], before[1], clock.now(), clock.monotonic()

    now0, mono0, now1, mono1 = vtime.run(main(), start=50.0)
    assert now0 == pytest.approx(1_700_000_000.0)
    assert mono0 == pytest.approx(50.0)
    assert now1 - now0 == pytest.approx(900.0)
    assert mono1 - mono0 == pytest.approx(900.0)
