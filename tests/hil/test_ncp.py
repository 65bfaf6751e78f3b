"""The TI NCP backend against the virtual NCP personality on a real PTY.

The personality counts every access that crashes TI's daemon (a topology read before the stack
is up, CONNECTED_DEVICES read back to back); every test that runs the backend asserts zero.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from drivers.pty_spawn import SpawnedRcpTransport
from drivers.spinel import Status
from firmware_agent.agent import is_push_frame
from firmware_agent.clock import SystemClock
from firmware_agent.collector.link import LinkTimeout
from firmware_agent.collector.reader import read_meter
from firmware_agent.config import (
    Config,
    GatewayConfig,
    MeshConfig,
    MeterConfig,
    RadioConfig,
    SpoolConfig,
    TiNcpConfig,
    TlsConfig,
    UplinkConfig,
)
from firmware_agent.mesh import ti_spinel as ti
from firmware_agent.mesh.backend import (
    NEIGHBOUR_FIELDS,
    MeshBackend,
    MeshBackendError,
    MeshEvent,
)
from firmware_agent.mesh.ti_ncp import TiNcpBackend
from hil.meter.push import PushSource
from hil.ncp import EmulatedNetwork, VirtualNcp, build_network
from hil.rcp import serve_pty
from hil.waiting import eventually

T = TypeVar("T")
GAP = 0.05  # min_gap_s for the backend and the personality's crash guard alike


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def config(
    url: str, *, poll_s: float = 0.2, min_gap_s: float = GAP, noise_floor_dbm: float | None = None
) -> Config:
    tls = TlsConfig(Path("ca.crt"), Path("gw.crt"), Path("gw.key"))
    return Config(
        gateway=GatewayConfig("gw-ti"),
        radio=RadioConfig(url),
        uplink=UplinkConfig("mqtts://127.0.0.1:8883", tls),
        spool=SpoolConfig(Path("spool.sqlite")),
        meters=(),
        mesh=MeshConfig(
            backend="ti-ncp",
            ti_ncp=TiNcpConfig(poll_s=poll_s, min_gap_s=min_gap_s, noise_floor_dbm=noise_floor_dbm),
        ),
    )


def network(seed: int = 7, nodes: int = 5) -> EmulatedNetwork:
    return build_network(random.Random(seed), SystemClock(), nodes=nodes)


@asynccontextmanager
async def served(ncp: VirtualNcp) -> AsyncIterator[str]:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve_pty(ncp, ready.set_result))
    try:
        yield await ready
    finally:
        server.cancel()
        await asyncio.wait([server])


@asynccontextmanager
async def started(
    ncp: VirtualNcp,
    *,
    poll_s: float = 0.2,
    min_gap_s: float = GAP,
    noise_floor_dbm: float | None = None,
) -> AsyncIterator[TiNcpBackend]:
    async with served(ncp) as path:
        cfg = config(
            f"spinel+uart://{path}",
            poll_s=poll_s,
            min_gap_s=min_gap_s,
            noise_floor_dbm=noise_floor_dbm,
        )
        backend = TiNcpBackend(cfg, SystemClock(), random.Random(1), stack_timeout_s=10)
        await backend.start()
        try:
            yield backend
        finally:
            await backend.close()


def expected_parents(net: EmulatedNetwork) -> dict[bytes, bytes]:
    return {node: parent for node, parent in net.parents.items() if net.path(node) is not None}


def table_parents(backend: TiNcpBackend) -> dict[bytes, bytes]:
    now = backend.clock.monotonic()
    out = {}
    for node in backend.routes.nodes():
        entry = backend.routes.entry(node, now)
        assert entry is not None
        out[node] = entry.transits[0].parent
    return out


def as_mesh_backend(backend: TiNcpBackend) -> MeshBackend:
    """mypy checks here that the backend is a MeshBackend (run mypy on this file)."""
    return backend


def test_the_network_has_1_to_3_hops_and_is_seeded() -> None:
    net = network()
    depths = [len(p) - 1 for n in net.parents if (p := net.path(n)) is not None]
    assert len(depths) == 5 and set(depths) <= {1, 2, 3} and max(depths) > 1
    assert network().parents == net.parents
    assert network(seed=8).parents != net.parents


def test_routing_view_from_dodag_route_and_connected_devices_equals_the_network() -> None:
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.3, guard_gap_s=GAP)

    async def main() -> None:
        async with started(ncp) as backend:
            assert as_mesh_backend(backend).kind == "ti-ncp"
            assert backend.root == net.root
            assert backend.identity()["ncp_version"].startswith("TIWISUNFAN/")
            assert backend.identity()["stack_up"] is True
            assert table_parents(backend) == expected_parents(net)
            now = backend.clock.monotonic()
            for node in net.parents:
                path = backend.routes.preferred(node, now)
                assert path is not None and list(path.hops) == net.path(node)
            # 5 devices in pages of 2: three pages, the last flagged.
            assert ncp.counters.listing_pages == 3
            # The one-hop nodes are the radio neighbours, with the RSLs the NCP reports;
            # nothing else is made up.
            rows = backend.neighbour_rows(0.0)
            one_hop = {n for n, p in net.parents.items() if p == net.root}
            assert {bytes.fromhex(r["mac"]) for r in rows} == one_hop
            for row in rows:
                node = bytes.fromhex(row["mac"])
                assert set(row) == set(NEIGHBOUR_FIELDS) and row["ipv6"]
                assert (row["rsl_in_dbm"], row["rsl_out_dbm"]) == pytest.approx(
                    net.rsl[node], abs=0.125
                )
                assert all(row[k] is None for k in backend.unavailable)
            measured = {"mac", "ipv6", "rsl_in_dbm", "rsl_out_dbm"}
            assert set(backend.unavailable) == set(NEIGHBOUR_FIELDS) - measured
            assert all(
                v.startswith("not available from this backend: ")
                for v in backend.unavailable.values()
            )
            assert "noise_floor_dbm" in backend.unavailable["snr_db"]
            assert backend.estimated == {}

    run(main())
    assert ncp.counters.violations == 0 and ncp.counters.crashes == 0


def test_snr_is_an_estimate_from_rsl_and_the_configured_noise_floor() -> None:
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.0, guard_gap_s=GAP)

    async def main() -> None:
        async with started(ncp, noise_floor_dbm=-105.0) as backend:
            rows = backend.neighbour_rows(0.0)
            assert rows
            for row in rows:
                assert row["snr_db"] == pytest.approx(row["rsl_in_dbm"] + 105.0)
                assert row["snr_class"] in ("ok", "marginal", "low")
            assert set(backend.estimated) == {"snr_db", "snr_class"}
            assert "-105 dBm" in backend.estimated["snr_db"]
            assert backend.estimated["snr_db"].startswith("estimate: ")
            assert "snr_db" not in backend.unavailable

    run(main())
    assert ncp.counters.violations == 0


def test_an_image_without_neighbour_metrics_shows_one_hop_nodes_without_figures() -> None:
    net = network()
    ncp = VirtualNcp(
        net, SystemClock(), stack_up_after_s=0.0, guard_gap_s=GAP, neighbour_metrics=False
    )

    async def main() -> None:
        async with started(ncp, poll_s=0.05, noise_floor_dbm=-105.0) as backend:
            rows = backend.neighbour_rows(0.0)
            one_hop = {n for n, p in net.parents.items() if p == net.root}
            assert {bytes.fromhex(r["mac"]) for r in rows} == one_hop
            assert set(backend.unavailable) == set(NEIGHBOUR_FIELDS) - {"mac", "ipv6"}
            assert "PHY_NBR_METRICS" in backend.unavailable["rsl_in_dbm"]
            assert backend.estimated == {}  # no RSL: no estimate, whatever the calibration
            assert all(row[k] is None for row in rows for k in backend.unavailable)
            # Asked once; the refusal is remembered, the syncs go on.
            worker = asyncio.create_task(backend.workers()["ti-ncp-poll"])
            try:
                await eventually(lambda: backend.stats.syncs >= 3, 10, "more syncs")
            finally:
                worker.cancel()
                await asyncio.wait([worker])
            assert ncp.counters.unknown_props == 1
            assert backend.stats.sync_failures == 0

    run(main())
    assert ncp.counters.violations == 0


def test_polls_follow_the_network_keep_the_gap_and_report_moves() -> None:
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.2, guard_gap_s=GAP)
    events: list[MeshEvent] = []

    async def main() -> None:
        async with started(ncp, poll_s=0.05) as backend:
            backend.add_listener(events.append)
            worker = asyncio.create_task(backend.workers()["ti-ncp-poll"])
            try:
                deep = max(net.parents, key=lambda n: len(net.path(n) or []))
                net.parents[deep] = net.root  # the deepest node moves under the root
                syncs = backend.stats.syncs
                await eventually(lambda: backend.stats.syncs >= syncs + 2, 10, "two more syncs")
                assert table_parents(backend) == expected_parents(net)
                assert any(e.node == deep and e.kind == "moved" for e in events)
                assert not worker.done()
            finally:
                worker.cancel()
                await asyncio.wait([worker])

    run(main())
    assert ncp.counters.violations == 0, ncp.counters


def test_the_personality_crashes_on_a_read_before_stack_up_and_back_to_back() -> None:
    """The guard the backend is tested against does bite: a careless host gets crashes."""
    from drivers.hdlc import HdlcDecoder, hdlc_encode
    from drivers.spinel import Cmd, decode_frame, encode

    ncp = VirtualNcp(network(), SystemClock(), stack_up_after_s=0.0, guard_gap_s=10.0)
    decoder = HdlcDecoder()

    def ask(prop: int) -> list[tuple[int, int | None]]:
        ncp.feed(hdlc_encode(encode(1, Cmd.PROP_VALUE_GET, prop)))
        frames = [decode_frame(f) for f in decoder.feed(ncp.take_output()) if isinstance(f, bytes)]
        return [(f.tid, f.prop) for f in frames]

    assert ask(ti.PROP_CONNECTED_DEVICES) == [(0, 0)]  # no reply; a RESET notification
    assert ncp.counters.reads_before_stack_up == 1
    ncp.if_up = True
    ncp.feed(hdlc_encode(encode(2, Cmd.PROP_VALUE_SET, ti.PROP_NET_STACK_UP, b"\x01")))
    ncp.take_output()
    assert ask(ti.PROP_CONNECTED_DEVICES) == [(1, ti.PROP_CONNECTED_DEVICES)]
    assert ask(ti.PROP_CONNECTED_DEVICES) == [(0, 0)]  # back to back: crash
    assert ncp.counters.back_to_back_reads == 1 and ncp.counters.violations == 2
    assert not ncp.stack_up


def test_a_backend_without_the_gap_would_crash_the_board() -> None:
    """The harness can fail: with min_gap_s below the guard the board crashes on the first
    sync (the start survives it, the stack is seen going down)."""
    ncp = VirtualNcp(network(), SystemClock(), stack_up_after_s=0.0, guard_gap_s=GAP)

    async def main() -> None:
        async with started(ncp, min_gap_s=GAP / 50) as backend:
            assert backend.stats.sync_failures == 1 and backend.stats.stack_downs == 1
            assert backend.last_error is not None
            assert "the NCP reset (RESET_CRASH)" in backend.last_error

    run(main())
    assert ncp.counters.back_to_back_reads == 1 and ncp.counters.crashes == 1


def test_a_plain_rcp_is_refused_with_the_reason() -> None:
    """A real virtual RCP (``hil rcp`` spawned by spinel+pty://) is not a TI NCP."""
    cfg = config("spinel+pty://?seed=3")

    async def main() -> None:
        backend = TiNcpBackend(cfg, SystemClock(), random.Random(1))
        with pytest.raises(MeshBackendError) as caught:
            await backend.start()
        assert str(caught.value).startswith(
            "radio.url is an RCP, not a TI Wi-SUN NCP: use mesh.backend own"
        )

    run(main())


def test_a_meter_read_over_stream_net_with_guruxs_client() -> None:
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.0, guard_gap_s=GAP)
    node = max(net.parents, key=lambda n: len(net.path(n) or []))

    async def main() -> None:
        async with started(ncp) as backend:
            meter = MeterConfig("MTR-x", "mesh", node.hex(":"))
            result = await read_meter(backend.link(node), meter, SystemClock(), timeout=2.0)
            assert result.energy_wh is not None and result.energy_wh > 0
            assert len(result.readings) > 0
            assert ncp.counters.packets_to_meters >= 3
            assert backend.stats.packets_unmatched == 0
            # A node that is not in the network never answers: the collector's LinkTimeout.
            ghost = bytes.fromhex("00124b00deadbeef")
            with pytest.raises(LinkTimeout, match="no reply over the NCP"):
                await backend.link(ghost).request(b"\x00\x01\x00\x10\x00\x01\x00\x01\x00", 0.3)

    run(main())
    assert ncp.counters.violations == 0


def test_a_meters_push_over_stream_net_reaches_the_push_handler() -> None:
    """A last gasp arrives unasked: it goes to the agent's push handler with the node's
    EUI-64, not to a request queue, and other unsolicited datagrams are still dropped."""
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.0, guard_gap_s=GAP)
    node = next(iter(net.parents))
    gasp = PushSource("MTR-1").last_gasp(1_700_000_000.0)
    pushes: list[tuple[bytes, bytes]] = []

    async def main() -> None:
        async with started(ncp) as backend:
            backend.on_push(lambda src, frame: pushes.append((src, frame)), is_push_frame)
            ncp.push_from(node, gasp)
            ncp.push_from(node, b"\x00\x01\x00\x01\x00\x10\x00\x01\x00")  # not a push
            await eventually(lambda: backend.stats.packets_unmatched >= 1, 5, "the other one")

    run(main())
    assert pushes == [(node, gasp)]


def test_malformed_values_are_typed_errors_and_the_poll_loop_survives() -> None:
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.0, guard_gap_s=GAP)

    async def main() -> None:
        async with started(ncp, poll_s=0.05) as backend:
            worker = asyncio.create_task(backend.workers()["ti-ncp-poll"])
            try:
                for prop, bad, named in [
                    (ti.PROP_DODAG_ROUTE, b"\x01" + bytes(20), "DODAG_ROUTE: 20 bytes"),
                    (ti.PROP_NUM_CONNECTED_DEVICES, b"\x01", "NUM_CONNECTED_DEVICES: 1 byte"),
                    (ti.PROP_CONNECTED_DEVICES, b"", "CONNECTED_DEVICES: empty value"),
                ]:
                    failures = backend.stats.sync_failures

                    def failed(before: int = failures) -> bool:
                        return backend.stats.sync_failures > before

                    ncp.corrupt_next[prop] = bad
                    await eventually(failed, 10, "a failed sync")
                    assert backend.last_error is not None and named in backend.last_error
                syncs = backend.stats.syncs
                await eventually(lambda: backend.stats.syncs > syncs, 10, "a good sync again")
                assert backend.stats.bad_values >= 3
                assert table_parents(backend) == expected_parents(net)
                assert not worker.done()
            finally:
                worker.cancel()
                await asyncio.wait([worker])

    run(main())
    assert ncp.counters.violations == 0


def test_a_refused_first_read_does_not_stop_the_start() -> None:
    """TI's firmware refuses topology reads (INVALID_STATE) while its network forms."""
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.0, guard_gap_s=GAP)
    ncp.refuse_next[ti.PROP_NUM_CONNECTED_DEVICES] = Status.INVALID_STATE

    async def main() -> None:
        async with started(ncp, poll_s=0.05) as backend:
            assert backend.stats.sync_failures == 1 and backend.routes.nodes() == []
            assert backend.last_error is not None and "INVALID_STATE" in backend.last_error
            worker = asyncio.create_task(backend.workers()["ti-ncp-poll"])
            try:
                await eventually(lambda: backend.stats.syncs == 1, 10, "a sync")
                assert table_parents(backend) == expected_parents(net)
            finally:
                worker.cancel()
                await asyncio.wait([worker])

    run(main())
    assert ncp.counters.violations == 0


def test_a_board_reset_brings_the_stack_back_up_before_any_read() -> None:
    net = network()
    ncp = VirtualNcp(net, SystemClock(), stack_up_after_s=0.3, guard_gap_s=GAP)

    async def main() -> None:
        async with started(ncp, poll_s=0.05) as backend:
            # The board reboots behind our back between two syncs (with no request on the
            # wire: a request already sent when a board resets is lost, not a violation).
            ncp.crash()
            await eventually(lambda: backend.stats.stack_downs == 1, 5, "the reset seen")
            assert not ncp.stack_up
            worker = asyncio.create_task(backend.workers()["ti-ncp-poll"])
            try:
                syncs = backend.stats.syncs
                await eventually(lambda: backend.stats.syncs > syncs, 10, "a sync after it")
                assert ncp.stack_up and not worker.done()
                assert table_parents(backend) == expected_parents(net)
            finally:
                worker.cancel()
                await asyncio.wait([worker])

    run(main())
    assert ncp.counters.violations == 0, ncp.counters


def test_python_m_hil_ncp_prints_its_pty_and_serves_the_backend() -> None:
    """The entry point a ``spinel+pty://`` spawn (or ``hil rcp --personality ncp``) runs."""
    argv = [sys.executable, "-m", "hil.ncp", "--pty", "--seed", "7", "--stack-up-after", "0.2"]
    argv += ["--guard-gap", str(GAP)]
    expected = expected_parents(network(seed=7))

    async def main() -> None:
        backend = TiNcpBackend(
            config("spinel+pty://"),
            SystemClock(),
            random.Random(1),
            transport=SpawnedRcpTransport(argv),
            stack_timeout_s=10,
        )
        await backend.start()
        try:
            assert table_parents(backend) == expected
        finally:
            await backend.close()

    run(main())
