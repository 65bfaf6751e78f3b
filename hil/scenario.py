"""Mesh scenarios: where the gateway and the meters stand, the radio environment, and what
happens when (a node going dark, an interferer switching on, a link fading).

A scenario is a YAML file in ``config/scenarios/``; :func:`load_scenario` validates it into
records and places the meters (line, grid, random or explicit positions, random ones from the
scenario's own seed, so the same file always gives the same mesh). Applying the events to a
medium is the simulator's job; this module only reads and checks.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Where ``hil simulate --scenario NAME`` looks for NAME.yaml.
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "config" / "scenarios"
GATEWAY = "gateway"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class ScenarioError(ValueError):
    """A scenario file that is not valid; the message names the file and the key."""


def parse_duration(value: object, where: str = "duration") -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a duration like 15m or 24h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ScenarioError(f"{where}: expected a duration like 15m or 24h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ScenarioError(f"{where}: a duration cannot be negative ({value!r})")
    return seconds


@dataclass(frozen=True)
class RadioEnvironment:
    channel: int = 0
    tx_power_dbm: float = 14.0
    path_loss_exponent: float = 3.5
    shadowing_sigma_db: float = 4.0


@dataclass(frozen=True)
class NodeSpec:
    meter_id: str
    eui64: bytes
    position: tuple[float, float]


@dataclass(frozen=True)
class PowerEvent:
    at_s: float
    meter_id: str
    on: bool


@dataclass(frozen=True)
class InterfererEvent:
    at_s: float
    name: str
    on: bool
    position: tuple[float, float] = (0.0, 0.0)
    power_dbm: float = 0.0
    channels: tuple[int, ...] = ()


@dataclass(frozen=True)
class FadeEvent:
    """The extra loss on the link ``a``–``b`` ramps linearly to ``to_db`` over ``over_s``."""

    at_s: float
    a: str  # a meter id or "gateway"
    b: str
    to_db: float
    over_s: float = 0.0


Event = PowerEvent | InterfererEvent | FadeEvent


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    radio: RadioEnvironment
    gateway_position: tuple[float, float]
    nodes: tuple[NodeSpec, ...]
    read_interval_s: float = 900.0
    events: tuple[Event, ...] = field(default_factory=tuple)

    def node(self, meter_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.meter_id == meter_id:
                return spec
        raise KeyError(meter_id)


def meter_eui64(index: int) -> bytes:
    """The emulated meters' EUI-64s: 02:00:00:00:00:00:NN:NN (locally administered)."""
    return bytes.fromhex("020000000000") + index.to_bytes(2, "big")


def meter_id(index: int) -> str:
    return f"MTR-{index:04d}"


def scenario_path(name_or_path: str) -> Path:
    """A path as given, or NAME looked up in config/scenarios/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return SCENARIO_DIR / f"{name_or_path}.yaml"


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    path = scenario_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(
            f"no scenario {name_or_path!r} (looked for {path}); available: {', '.join(available())}"
        ) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(path))


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    top = _mapping(data, source)
    name = str(top.get("name", Path(source).stem))
    seed = _int(top.get("seed", 1), f"{source}: seed")
    radio_raw = _mapping(top.get("radio", {}), f"{source}: radio")
    radio = RadioEnvironment(
        channel=_int(radio_raw.get("channel", 0), f"{source}: radio.channel"),
        tx_power_dbm=_num(radio_raw.get("tx_power_dbm", 14.0), f"{source}: radio.tx_power_dbm"),
        path_loss_exponent=_num(
            radio_raw.get("path_loss_exponent", 3.5), f"{source}: radio.path_loss_exponent"
        ),
        shadowing_sigma_db=_num(
            radio_raw.get("shadowing_sigma_db", 4.0), f"{source}: radio.shadowing_sigma_db"
        ),
    )
    gateway = _mapping(top.get("gateway", {}), f"{source}: gateway")
    gw_pos = _position(gateway.get("position", [0, 0]), f"{source}: gateway.position")
    nodes = _place(_mapping(top.get("meters"), f"{source}: meters"), seed, f"{source}: meters")
    collector = _mapping(top.get("collector", {}), f"{source}: collector")
    interval = parse_duration(collector.get("interval", 900), f"{source}: collector.interval")
    known = {n.meter_id for n in nodes} | {GATEWAY}
    events_raw = top.get("events", []) or []
    if not isinstance(events_raw, list):
        raise ScenarioError(f"{source}: events: expected a list")
    events = tuple(_event(e, known, f"{source}: events[{i}]") for i, e in enumerate(events_raw))
    return Scenario(
        name=name,
        description=str(top.get("description", "")),
        seed=seed,
        radio=radio,
        gateway_position=gw_pos,
        nodes=tuple(nodes),
        read_interval_s=interval,
        events=tuple(sorted(events, key=lambda e: e.at_s)),
    )


def _place(spec: dict[str, Any], seed: int, where: str) -> list[NodeSpec]:
    layout = spec.get("layout")
    rng = random.Random(seed)
    positions: list[tuple[float, float]]
    if layout == "line":
        count = _int(spec.get("count"), f"{where}.count")
        spacing = _num(spec.get("spacing_m"), f"{where}.spacing_m")
        positions = [(spacing * (i + 1), 0.0) for i in range(count)]
    elif layout == "grid":
        rows = _int(spec.get("rows"), f"{where}.rows")
        cols = _int(spec.get("cols"), f"{where}.cols")
        spacing = _num(spec.get("spacing_m"), f"{where}.spacing_m")
        origin = _position(spec.get("origin", [spacing, 0]), f"{where}.origin")
        positions = [
            (origin[0] + c * spacing, origin[1] + r * spacing)
            for r in range(rows)
            for c in range(cols)
        ]
    elif layout == "random":
        count = _int(spec.get("count"), f"{where}.count")
        radius = _num(spec.get("radius_m"), f"{where}.radius_m")
        min_r = _num(spec.get("min_distance_m", 10.0), f"{where}.min_distance_m")
        positions = []
        for _ in range(count):
            # Uniform over the disc's area (sqrt), outside the gateway's own few metres.
            r = math.sqrt(rng.uniform((min_r / radius) ** 2, 1.0)) * radius
            angle = rng.uniform(0.0, 2 * math.pi)
            positions.append((round(r * math.cos(angle), 1), round(r * math.sin(angle), 1)))
    elif layout == "explicit":
        raw_nodes = spec.get("nodes")
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise ScenarioError(f"{where}.nodes: expected a non-empty list of positions")
        positions = [_position(p, f"{where}.nodes[{i}]") for i, p in enumerate(raw_nodes)]
    else:
        raise ScenarioError(
            f"{where}.layout: expected line, grid, random or explicit, got {layout!r}"
        )
    if not positions:
        raise ScenarioError(f"{where}: the layout places no meters")
    return [NodeSpec(meter_id(i + 1), meter_eui64(i + 1), pos) for i, pos in enumerate(positions)]


_EVENT_KINDS = ("power_off", "power_on", "interferer", "interferer_off", "fade")


def _event(raw: Any, known: set[str], where: str) -> Event:
    item = _mapping(raw, where)
    at = parse_duration(item.get("at", 0), f"{where}.at")
    kinds = [
        k for k in ("power_off", "power_on", "interferer", "interferer_off", "fade") if k in item
    ]
    if len(kinds) != 1:
        raise ScenarioError(
            f"{where}: expected exactly one of power_off, power_on, interferer, interferer_off, "
            f"fade; got {sorted(item)}"
        )
    kind = kinds[0]
    if kind in ("power_off", "power_on"):
        target = str(item[kind])
        _known(target, known, f"{where}.{kind}")
        return PowerEvent(at, target, on=kind == "power_on")
    if kind == "interferer_off":
        return InterfererEvent(at, str(item[kind]), on=False)
    if kind == "interferer":
        spec = _mapping(item[kind], f"{where}.interferer")
        channels = spec.get("channels", [0])
        if not isinstance(channels, list) or not channels:
            raise ScenarioError(f"{where}.interferer.channels: expected a list of channels")
        return InterfererEvent(
            at,
            str(spec.get("name", "interferer")),
            on=True,
            position=_position(spec.get("position"), f"{where}.interferer.position"),
            power_dbm=_num(spec.get("power_dbm"), f"{where}.interferer.power_dbm"),
            channels=tuple(_int(c, f"{where}.interferer.channels") for c in channels),
        )
    spec = _mapping(item[kind], f"{where}.fade")
    link = spec.get("link")
    if not isinstance(link, list) or len(link) != 2:
        raise ScenarioError(f"{where}.fade.link: expected two ends, e.g. [gateway, MTR-0003]")
    a, b = (str(x) for x in link)
    _known(a, known, f"{where}.fade.link")
    _known(b, known, f"{where}.fade.link")
    return FadeEvent(
        at,
        a,
        b,
        to_db=_num(spec.get("to_db"), f"{where}.fade.to_db"),
        over_s=parse_duration(spec.get("over", 0), f"{where}.fade.over"),
    )


def _known(name: str, known: set[str], where: str) -> None:
    if name not in known:
        raise ScenarioError(f"{where}: no node {name!r} in this scenario")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"{where}: expected an integer, got {value!r}")
    return value


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _position(value: Any, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ScenarioError(f"{where}: expected a position [x, y] in metres, got {value!r}")
    return float(value[0]), float(value[1])
