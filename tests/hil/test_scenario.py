"""Scenario files: the shipped ones load, layouts place meters, bad files say what is wrong."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hil.scenario import (
    FadeEvent,
    InterfererEvent,
    PowerEvent,
    ScenarioError,
    available,
    load_scenario,
    parse_duration,
    parse_scenario,
)


def test_the_issue_s_scenarios_are_all_shipped() -> None:
    assert set(available()) >= {
        "line-10", "grid-5x5", "random-200", "random-1000", "node-dark", "interferer", "link-fade",
    }  # fmt: skip
    for name in available():
        scenario = load_scenario(name)
        assert scenario.name == name
        ids = [n.meter_id for n in scenario.nodes]
        assert len(set(ids)) == len(ids)
        assert len({n.eui64 for n in scenario.nodes}) == len(ids)


def test_layouts() -> None:
    line = load_scenario("line-10")
    assert [n.position for n in line.nodes][:3] == [(200.0, 0.0), (400.0, 0.0), (600.0, 0.0)]
    grid = load_scenario("grid-5x5")
    assert len(grid.nodes) == 25 and grid.nodes[6].position == (250.0, 250.0)
    big = load_scenario("random-1000")
    assert len(big.nodes) == 1000
    assert max(math.dist((0, 0), n.position) for n in big.nodes) <= 2500.1
    assert big.nodes == load_scenario("random-1000").nodes  # the seed fixes the placement


def test_events_are_typed_and_sorted() -> None:
    dark = load_scenario("node-dark")
    assert dark.events == (
        PowerEvent(7200.0, "MTR-0007", on=False),
        PowerEvent(18000.0, "MTR-0007", on=True),
    )
    jam = load_scenario("interferer")
    assert isinstance(jam.events[0], InterfererEvent) and jam.events[0].channels == (0,)
    fade = load_scenario("link-fade").events[0]
    assert fade == FadeEvent(3600.0, "gateway", "MTR-0002", to_db=15.0, over_s=3600.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("1d", 86400.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"meters": {"layout": "hexagon"}}, "meters.layout: expected line, grid, random"),
        ({"meters": {"layout": "line", "count": "ten"}}, "meters.count: expected an integer"),
        (
            {"meters": {"layout": "line", "count": 2, "spacing_m": 100},
             "events": [{"at": "2h", "power_off": "MTR-0009"}]},
            "events[0].power_off: no node 'MTR-0009'",
        ),
        (
            {"meters": {"layout": "line", "count": 2, "spacing_m": 100},
             "events": [{"at": "soon", "power_off": "MTR-0001"}]},
            "events[0].at: expected a duration",
        ),
        (
            {"meters": {"layout": "line", "count": 2, "spacing_m": 100},
             "events": [{"at": 1, "power_off": "MTR-0001", "power_on": "MTR-0001"}]},
            "expected exactly one of",
        ),
        ({"meters": {"layout": "explicit", "nodes": [[1, 2, 3]]}}, "expected a position [x, y]"),
    ],
)  # fmt: skip
def test_bad_scenarios_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, "bad.yaml")
    assert message in str(err.value)


def test_unknown_scenario_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"available: .*line-10"):
        load_scenario("no-such-scenario")
    broken = tmp_path / "broken.yaml"
    broken.write_text("meters: [unclosed")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(str(broken))
