"""The wsbrd backend against the emulated wsbrd on a private dbus-daemon (real dbus-fast on both
sides): rows, routes, events, what is unavailable, IncrementRplDtsn, malformed values, and
the errors start() gives when wsbrd or the bus is not there."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant

from firmware_agent.clock import SystemClock
from firmware_agent.config import Config, load_config
from firmware_agent.mesh import ipv6
from firmware_agent.mesh.backend import (
    NEIGHBOUR_FIELDS,
    NOT_AVAILABLE,
    MeshBackendError,
    MeshEvent,
    MeshEventKind,
)
from firmware_agent.mesh.wsbrd import NoRouteToMeter, WsbrdBackend
from firmware_agent.mesh.wsbrd_model import BUS_NAME
from hil.waiting import eventually
from hil.wsbrd.bus import PrivateBus
from hil.wsbrd.model import WsbrdModel
from hil.wsbrd.service import serve_wsbrd
from tests.firmware_agent.test_config_loader import BASE, write

ROOT = bytes.fromhex("0200000000000001")
PREFIX = bytes.fromhex("fd00007a00010000")
A, B, C = (bytes.fromhex(f"02000000000000a{i}") for i in range(3))


@pytest.fixture(scope="module")
def bus() -> Iterator[PrivateBus]:
    with PrivateBus() as private:
        yield private


@pytest.fixture(scope="module")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("wsbrd-config")
    return load_config(write(path, BASE + "mesh:\n  backend: wsbrd\n  wsbrd:\n    poll_s: 30\n"))


def with_wsbrd(config: Config, **changes: Any) -> Config:
    wsbrd = dataclasses.replace(config.mesh.wsbrd, **changes)
    return dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, wsbrd=wsbrd))


def network() -> WsbrdModel:
    model = WsbrdModel(ROOT, PREFIX)
    model.add(A, [ROOT], rssi_dbm=-70, lqi=180, rsl_dbm=-72, rsl_adv_dbm=-75)
    model.add(B, [ROOT, A], rssi_dbm=-88, rsl_dbm=-90)  # no rsl_adv yet, no lqi
    model.add(C, [A, B])  # two hops: not a neighbour, no link figures
    return model


Scenario = Callable[[WsbrdBackend, WsbrdModel], Awaitable[None]]


def run(
    bus: PrivateBus,
    config: Config,
    scenario: Scenario,
    *,
    model: WsbrdModel | None = None,
    signal_values: bool = False,
) -> None:
    async def main() -> None:
        net = model or network()
        service = await serve_wsbrd(bus.address, net, signal_values=signal_values)
        backend = WsbrdBackend(config, SystemClock(), random.Random(1), bus_address=bus.address)
        tasks: list[asyncio.Task[None]] = []
        try:
            await backend.start()
            tasks = [asyncio.create_task(w, name=n) for n, w in backend.workers().items()]
            await asyncio.wait_for(scenario(backend, net), 20.0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await backend.close()
            await service.close()

    asyncio.run(main())


def test_nodes_and_routing_graph_become_rows_routes_and_identity(
    bus: PrivateBus, base_config: Config
) -> None:
    async def scenario(backend: WsbrdBackend, net: WsbrdModel) -> None:
        assert backend.root == ROOT
        ident = backend.identity()
        assert ident["backend"] == "wsbrd" and ident["hwaddr"] == ROOT.hex()
        assert ident["rcp_api_version"] == "2.5.0" and ident["network_name"] == "emulated-wsbrd"
        now = backend.clock.monotonic()
        assert backend.routes.root == ROOT
        # Parents in wsbrd's preference order; paths come from the one routing table.
        entry = backend.routes.entry(C, now)
        assert entry is not None and [t.parent for t in entry.transits] == [A, B]
        assert backend.routes.source_route(A, now) == (A,)
        assert backend.routes.source_route(C, now) == (A, C)
        rows = {row["mac"]: row for row in backend.neighbour_rows(0.0)}
        assert set(rows) == {A.hex(), B.hex()}  # C is two hops out; the BR is not its own
        a = rows[A.hex()]
        assert list(a) == list(NEIGHBOUR_FIELDS)
        assert a["ipv6"] == ipv6.format_address(ipv6.address_in_prefix(PREFIX, A))
        assert (a["rssi_dbm"], a["lqi"], a["rsl_in_dbm"], a["rsl_out_dbm"]) == (-70, 180, -72, -75)
        b = rows[B.hex()]
        assert (b["rssi_dbm"], b["lqi"], b["rsl_in_dbm"], b["rsl_out_dbm"]) == (
            -88,
            None,
            -90,
            None,
        )
        assert backend.address_of(C) == ipv6.address_in_prefix(PREFIX, C)

    run(bus, base_config, scenario)


def test_unavailable_names_exactly_what_wsbrd_lacks_and_rows_have_none_there(
    bus: PrivateBus, base_config: Config
) -> None:
    async def scenario(backend: WsbrdBackend, net: WsbrdModel) -> None:
        assert set(backend.unavailable) == {
            "channel",
            "noise_floor_dbm",
            "snr_db",
            "snr_percentiles_db",
            "etx",
            "latency_s",
            "frames_heard",
            "last_heard_s_ago",
            "snr_class",
            "colour",
        }
        assert all(why.startswith(NOT_AVAILABLE + ": ") for why in backend.unavailable.values())
        assert "ETX" in backend.unavailable["etx"]
        assert backend.estimated == {}
        rows = backend.neighbour_rows(0.0)
        assert rows
        for row in rows:
            assert all(row[field] is None for field in backend.unavailable), row
        # Everything not named unavailable is supplied for a neighbour that has it all.
        a = next(r for r in rows if r["mac"] == A.hex())
        assert all(a[f] is not None for f in NEIGHBOUR_FIELDS if f not in backend.unavailable)

    run(bus, base_config, scenario)


def test_snr_is_an_estimate_only_with_a_noise_floor_calibration(
    bus: PrivateBus, base_config: Config
) -> None:
    config = with_wsbrd(base_config, noise_floor_dbm=-100.0)

    async def scenario(backend: WsbrdBackend, net: WsbrdModel) -> None:
        assert "snr_db" not in backend.unavailable and "snr_class" not in backend.unavailable
        assert "noise_floor_dbm" in backend.unavailable  # the calibration is not a measurement
        assert (
            "estimate" in backend.estimated["snr_db"] and "-100 dBm" in backend.estimated["snr_db"]
        )
        rows = {row["mac"]: row for row in backend.neighbour_rows(0.0)}
        assert rows[A.hex()]["snr_db"] == pytest.approx(28.0)  # -72 - (-100)
        assert rows[A.hex()]["snr_class"] == "ok"
        assert rows[B.hex()]["snr_db"] == pytest.approx(10.0)
        assert rows[B.hex()]["snr_class"] == "low"  # below mesh.snr_floor_db (12)

    run(bus, config, scenario)


@pytest.mark.parametrize("signal_values", [False, True], ids=["invalidated", "values"])
def test_a_reparent_moves_the_route_and_a_removed_node_leaves(
    bus: PrivateBus, base_config: Config, signal_values: bool
) -> None:
    async def scenario(backend: WsbrdBackend, net: WsbrdModel) -> None:
        events: list[MeshEvent] = []
        backend.add_listener(events.append)
        clock = backend.clock
        assert backend.routes.source_route(C, clock.monotonic()) == (A, C)
        net.reparent(C, [B])
        await eventually(
            lambda: backend.routes.source_route(C, clock.monotonic()) == (B, C),
            5.0,
            "C's route through B",
        )
        moved = [e for e in events if e.kind is MeshEventKind.MOVED and e.node == C]
        assert moved and moved[-1].path == (ROOT, B, C)
        net.remove(C)
        await eventually(
            lambda: any(e.kind is MeshEventKind.LEFT and e.node == C for e in events),
            5.0,
            "C's LEFT event",
        )
        assert backend.routes.source_route(C, clock.monotonic()) is None
        assert backend.address_of(C) is None
        link = backend.link(C)
        with pytest.raises(NoRouteToMeter, match="not in wsbrd's RoutingGraph"):
            await link.request(b"\x00", 0.5)
        await link.close()

    run(bus, base_config, scenario, signal_values=signal_values)


def test_the_poll_rereads_without_a_signal(bus: PrivateBus, base_config: Config) -> None:
    config = with_wsbrd(base_config, poll_s=0.2)
    model = network()
    model.add_listener(lambda: None)

    async def scenario(backend: WsbrdBackend, net: WsbrdModel) -> None:
        reads = backend.reads
        # A change wsbrd does not signal (straight into the model, no announce).
        net.nodes[C].parents = [B]
        await eventually(lambda: backend.reads >= reads + 2, 5.0, "two polls")
        assert backend.routes.source_route(C, backend.clock.monotonic()) == (B, C)

    run(bus, config, scenario, model=model)


def test_increment_rpl_dtsn_reaches_wsbrd(bus: PrivateBus, base_config: Config) -> None:
    async def scenario(backend: WsbrdBackend, net: WsbrdModel) -> None:
        assert net.dtsn == 0
        await backend.refresh_routes()
        await backend.refresh_routes()
        assert net.dtsn == 2

    run(bus, base_config, scenario)


def test_malformed_values_are_logged_and_skipped(
    bus: PrivateBus, base_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    model = network()
    model.nodes[A].extra["rssi"] = Variant("s", "strong")  # wsbrd sends 'y'
    model.nodes[B].extra["rsl"] = Variant("d", -90.5)  # wsbrd sends 'i'
    model.raw_graph_entries.append([b"\x01\x02\x03\x04", False, []])  # not 16 bytes

    async def scenario(backend: WsbrdBackend, net: WsbrdModel) -> None:
        rows = {row["mac"]: row for row in backend.neighbour_rows(0.0)}
        assert rows[A.hex()]["rssi_dbm"] is None and rows[A.hex()]["rsl_in_dbm"] == -72
        assert rows[B.hex()]["rsl_in_dbm"] is None and rows[B.hex()]["rssi_dbm"] == -88
        assert backend.routes.source_route(C, backend.clock.monotonic()) == (A, C)
        assert backend.problems >= 3
        # The loop goes on: a later change still arrives.
        net.reparent(C, [B])
        await eventually(
            lambda: backend.routes.source_route(C, backend.clock.monotonic()) == (B, C),
            5.0,
            "C moved after malformed values",
        )

    with caplog.at_level(logging.WARNING, logger="firmware_agent.mesh.wsbrd"):
        run(bus, base_config, scenario, model=model)
    text = caplog.text
    assert f"node {A.hex()}: 'rssi' has signature 's', expected 'y'" in text
    assert f"node {B.hex()}: 'rsl' has signature 'd', expected 'i'" in text
    assert "not a 16-byte IPv6 address" in text


def start_error(config: Config, address: str) -> str:
    async def main() -> str:
        backend = WsbrdBackend(config, SystemClock(), random.Random(1), bus_address=address)
        with pytest.raises(MeshBackendError) as caught:
            await backend.start()
        await backend.close()
        return str(caught.value)

    return asyncio.run(main())


def test_start_without_wsbrd_on_the_bus(bus: PrivateBus, base_config: Config) -> None:
    message = start_error(base_config, bus.address)
    assert "wsbrd not on the bus (is wsbrd running?)" in message and BUS_NAME in message


def test_start_without_a_bus(base_config: Config, tmp_path: Path) -> None:
    address = f"unix:path={tmp_path / 'no-such-socket'}"
    message = start_error(base_config, address)
    assert message.startswith("wsbrd: D-Bus not reachable at ") and "no-such-socket" in message


def test_start_when_the_policy_denies_wsbrd(base_config: Config) -> None:
    with PrivateBus(deny_destinations=(BUS_NAME,)) as denied:

        async def main() -> str:
            service = await serve_wsbrd(denied.address, network())
            backend = WsbrdBackend(
                base_config, SystemClock(), random.Random(1), bus_address=denied.address
            )
            try:
                with pytest.raises(MeshBackendError) as caught:
                    await backend.start()
            finally:
                await backend.close()
                await service.close()
            return str(caught.value)

        message = asyncio.run(main())
    assert "access denied" in message and BUS_NAME in message
