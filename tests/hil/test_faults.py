"""The target's fault hooks: the request codec, the emulated world's control socket, a bench's
power-control commands and USB unbind."""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
from pathlib import Path

import pytest

from firmware_agent.clock import SystemClock
from hil.faults import (
    BoardFaults,
    EmulatedFaults,
    FaultCommand,
    FaultError,
    FaultUnsupported,
    FaultWorld,
    encode_command,
    parse_command,
    serve_control,
)
from hil.medium import Medium
from hil.population import asyncio_scheduler, populate
from hil.rcp import VirtualRcp
from hil.waiting import eventually

METERS = [
    ("MTR-A", bytes.fromhex("0200000000000001")),
    ("MTR-B", bytes.fromhex("0200000000000002")),
]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        (b"not json", "fault request is not JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"op": "melt"}', "unknown fault op 'melt'"),
        (b'{"op": "power", "meter": "M"}', "fault 'power' needs 'on'"),
        (b'{"op": "power", "meter": "M", "on": 1}', "'on' must be bool, got 1"),
        (b'{"op": "fade", "meter": "M", "db": 300}', "db must be within 0..200"),
        (b'{"op": "garbage", "count": 0}', "count must be within 1..65536"),
        (b'{"op": "garbage", "count": true}', "'count' must be int"),
    ],
)
def test_bad_requests_name_what_is_wrong(line: bytes, complaint: str) -> None:
    with pytest.raises(FaultError) as caught:
        parse_command(line)
    assert complaint in str(caught.value)


def test_requests_round_trip() -> None:
    for command in (
        FaultCommand("power", meter="M", on=False),
        FaultCommand("fade", meter="M", db=12.5),
        FaultCommand("fade", meter="M", db=3.0, peer="N"),
        FaultCommand("interferer", on=True),
        FaultCommand("reset"),
        FaultCommand("garbage", count=300),
    ):
        assert parse_command(encode_command(command)) == command


def test_the_control_socket_changes_the_emulated_world() -> None:
    """A real UNIX socket between a blocking client (the test's side) and the RCP's loop."""

    async def go() -> None:
        rng = random.Random(3)
        medium = Medium(rng, scheduler=asyncio.get_running_loop())
        rcp = VirtualRcp(medium, rng, SystemClock(), eui64=bytes(8), position=(0.0, 0.0))
        placed = populate(medium, METERS, SystemClock(), rng, asyncio_scheduler())
        world = FaultWorld(medium, rcp, {m.meter_id: m for m in placed})
        with tempfile.TemporaryDirectory(prefix="faults-") as directory:
            path = Path(directory) / "c.sock"
            server = await serve_control(path, world)
            assert path.stat().st_mode & 0o777 == 0o600
            faults = EmulatedFaults(path)
            try:
                assert await asyncio.to_thread(faults.ready)
                a, b = placed
                await asyncio.to_thread(faults.fade, "MTR-B", 20.0)
                assert medium.link_fade(rcp, b.node) == pytest.approx(20.0)
                await asyncio.to_thread(faults.fade, "MTR-B", 0.0)
                assert medium.link_fade(rcp, b.node) == 0.0
                await asyncio.to_thread(faults.fade, "MTR-B", 7.0, "MTR-A")  # meter to meter
                assert medium.link_fade(a.node, b.node) == pytest.approx(7.0)
                assert medium.link_fade(rcp, b.node) == 0.0
                await asyncio.to_thread(faults.power, "MTR-A", False)
                await eventually(lambda: not medium.is_powered(a.node), 5, "MTR-A dark")
                assert medium.is_powered(b.node)
                await asyncio.to_thread(faults.power, "MTR-A", True)
                assert medium.is_powered(a.node)
                resets = rcp.counters.resets
                await asyncio.to_thread(faults.reset_radio)
                assert rcp.counters.resets == resets + 1
                await asyncio.to_thread(faults.interferer, True)
                await asyncio.to_thread(faults.interferer, False)
                await asyncio.to_thread(faults.serial_garbage, 64)
                with pytest.raises(FaultError, match="cannot be unplugged"):
                    await asyncio.to_thread(faults.unplug, 1.0)
                unplugged: list[bool] = []
                world.on_unplug = lambda: unplugged.append(True)
                await asyncio.to_thread(faults.unplug, 1.0)
                assert unplugged == [True]
                assert [c.op for c in world.applied] == [
                    "ping", "fade", "fade", "fade", "power", "power", "reset", "interferer",
                    "interferer", "garbage", "unplug",
                ]  # fmt: skip
                with pytest.raises(FaultError, match="no emulated meter 'MTR-Z'; have MTR-A"):
                    await asyncio.to_thread(faults.power, "MTR-Z", False)
            finally:
                server.close()
                await server.wait_closed()
            # Nobody serving: an error naming the socket, and not ready.
            assert not await asyncio.to_thread(faults.ready)
            with pytest.raises(FaultError, match=str(path)):
                await asyncio.to_thread(faults.reset_radio)

    asyncio.run(go())


def test_garbage_has_no_frame_flags() -> None:
    """Line noise must make the host's HDLC decoder resynchronise, not end a frame early."""
    rng = random.Random(1)

    async def go() -> bytes:
        medium = Medium(rng, scheduler=asyncio.get_running_loop())
        rcp = VirtualRcp(medium, rng, SystemClock(), eui64=bytes(8))
        world = FaultWorld(medium, rcp, {})
        return world._garbage(4096)

    noise = asyncio.run(go())
    assert len(noise) == 4096 and 0x7E not in noise and len(set(noise)) > 200


def test_a_bench_powers_a_board_by_its_command_and_lacks_the_rest(tmp_path: Path) -> None:
    state = tmp_path / "relay"
    script = f"import sys; open({str(state)!r}, 'a').write(sys.argv[1] + chr(10))"
    command = f"{sys.executable} -c {script!r} {{state}}"
    faults = BoardFaults("bench-7", {"MTR-0001": command, "broken": "false"})
    faults.power("MTR-0001", False)
    faults.power("MTR-0001", True)
    assert state.read_text() == "off\non\n"
    with pytest.raises(FaultError, match="exited 1"):
        faults.power("broken", True)
    with pytest.raises(FaultUnsupported, match="target 'bench-7' cannot power MTR-0002"):
        faults.power("MTR-0002", False)
    for fault in (
        lambda: faults.fade("MTR-0001", 10.0),
        lambda: faults.interferer(True),
        lambda: faults.serial_garbage(10),
        faults.reset_radio,  # no USB path for the radio
    ):
        with pytest.raises(FaultUnsupported, match="target 'bench-7' cannot"):
            fault()


def test_a_bench_resets_its_radio_by_usb_unbind_and_bind(tmp_path: Path) -> None:
    sysfs = tmp_path / "usb"
    sysfs.mkdir()
    faults = BoardFaults("bench-7", radio_usb_path="1-1.2", sysfs=sysfs)
    faults.reset_radio()
    assert (sysfs / "unbind").read_text() == "1-1.2" and (sysfs / "bind").read_text() == "1-1.2"
    (sysfs / "bind").unlink()
    faults.unplug(0.2)  # away for a while: bind follows unbind after that
    gap = (sysfs / "bind").stat().st_mtime - (sysfs / "unbind").stat().st_mtime
    assert gap >= 0.15, gap
    (sysfs / "unbind").unlink()
    (sysfs / "unbind").mkdir()  # not writable as a file: the error names the action
    with pytest.raises(FaultError, match=r"USB unbind of 1-1\.2"):
        faults.reset_radio()
