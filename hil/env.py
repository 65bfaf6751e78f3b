"""HIL environment files: which target the suite runs against (emulated or real boards).

An environment names the gateway's radio (a virtual RCP, a board by URL, or a board found by its
udev properties), the meters the target has, the broker, and the features the target offers.
A board that is not plugged in makes the target "absent": the suite skips with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import yaml

if TYPE_CHECKING:  # imported when a udev radio is used: this module loads into every pytest run
    from collections.abc import Sequence

    from drivers.discover import BoardCandidate, BoardMatch

DEFAULT_ENV = Path(__file__).resolve().parent.parent / "config" / "hil" / "emulated.yaml"


class EnvError(Exception):
    """An environment file that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class Board:
    """A radio board of the target: the gateway's radio or an injector playing meters over the
    air. ``url`` is resolved (for an absent board: without a device, and ``absent`` says why);
    ``power_command`` switches it (``{state}`` becomes on/off)."""

    role: str  # "gateway" or the injector's name
    kind: str  # virtual-rcp | url | udev
    url: str
    absent: str | None = None
    power_command: str | None = None
    match: Mapping[str, str] | None = None
    meters: tuple[str, ...] = ()  # the meter ids an injector plays
    usb_path: str | None = None  # sysfs USB device name (e.g. "1-1.2") for unbind/bind


@dataclass(frozen=True)
class HilEnv:
    name: str
    source: Path
    gateway_id: str
    radio_url: str
    meters_file: Path
    broker_kind: str
    features: frozenset[str] = field(default_factory=frozenset)
    absent: str | None = None  # why the target cannot run here (board not connected), if so
    # kind udev: the match that found the board (radio_url then names the node it found)
    radio_match: Mapping[str, str] | None = None
    radio: Board | None = None
    injectors: tuple[Board, ...] = ()
    # gateway.config: sections of the gateway config this target needs (merged over the rig's)
    gateway_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _options(radio: dict[str, Any], where: Path) -> dict[str, str]:
    """The URL query of a board: its ``options`` plus ``baud`` (a positive integer) as
    ``baudrate``."""
    options = {k: str(v) for k, v in (radio.get("options") or {}).items()}
    if "baud" in radio:
        baud = radio["baud"]
        if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
            raise EnvError(f"{where}: baud must be a positive integer, got {baud!r}")
        options["baudrate"] = str(baud)
    return options


def _require(data: dict[str, Any], key: str, where: Path) -> Any:
    if key not in data:
        raise EnvError(f"{where}: missing key {key!r}")
    return data[key]


def _radio_url(radio: dict[str, Any], meters_file: Path, where: Path) -> tuple[str, str | None]:
    kind = radio.get("kind")
    if kind == "virtual-rcp":
        options = {
            "meters": str(meters_file),
            **{k: str(v) for k, v in (radio.get("options") or {}).items()},
        }
        return f"spinel+pty://?{urlencode(options)}", None
    if kind == "url":
        url = str(_require(radio, "url", where))
        device = url.split("://", 1)[1].split("?", 1)[0]
        absent = (
            None
            if not device or Path(device).exists()
            else f"radio board {device} is not connected"
        )
        return url, absent
    if kind == "udev":
        return _udev_radio(radio, where)
    raise EnvError(f"{where}: gateway.radio.kind must be virtual-rcp, url or udev, got {kind!r}")


def _udev_match(radio: dict[str, Any], where: Path) -> BoardMatch:
    from drivers.discover import BoardMatch, InvalidMatch

    try:
        return BoardMatch(_require(radio, "match", where))
    except InvalidMatch as exc:
        raise EnvError(f"{where}: gateway.radio.match: {exc}") from None


def _udev_radio(radio: dict[str, Any], where: Path) -> tuple[str, str | None]:
    """``kind: udev``: the board that fits ``match`` now, on ``transport`` (uart or spi) with
    ``options`` as the URL's query. No such board (or no udev here): absent, with the reason."""
    from drivers.discover import (
        DiscoveryUnavailable,
        NoBoardMatched,
        SeveralBoardsMatched,
        resolve,
        url_with_device,
    )

    transport = radio.get("transport", "uart")
    if transport not in ("uart", "spi"):
        raise EnvError(f"{where}: gateway.radio.transport must be uart or spi, got {transport!r}")
    options = _options(radio, where)
    url = f"spinel+{transport}://" + (f"?{urlencode(options)}" if options else "")
    match = _udev_match(radio, where)
    try:
        return url_with_device(url, resolve(match)), None
    except (NoBoardMatched, DiscoveryUnavailable) as exc:
        return url, " ".join(line.strip() for line in str(exc).splitlines())
    except SeveralBoardsMatched as exc:
        raise EnvError(f"{where}: gateway.radio.match: {exc}") from None


def _power_command(radio: dict[str, Any], where: Path, key: str) -> str | None:
    command = radio.get("power_command")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise EnvError(f"{where}: {key}.power_command must be a command line, got {command!r}")
    return command


def _board(role: str, radio: Any, meters_file: Path, where: Path, key: str) -> Board:
    if not isinstance(radio, dict):
        raise EnvError(f"{where}: {key} must be a mapping with a kind")
    url, absent = _radio_url(radio, meters_file, where)
    kind = str(radio.get("kind"))
    match = _udev_match(radio, where).properties if kind == "udev" else None
    meters = radio.get("meters", [])
    if not isinstance(meters, list) or not all(isinstance(m, str) for m in meters):
        raise EnvError(f"{where}: {key}.meters must be a list of meter ids")
    usb_path = radio.get("usb_path")
    if usb_path is not None and (not isinstance(usb_path, str) or "/" in usb_path or not usb_path):
        raise EnvError(f"{where}: {key}.usb_path must be a USB device name like 1-1.2")
    power = _power_command(radio, where, key)
    return Board(role, kind, url, absent, power, match, tuple(meters), usb_path)


def _injectors(data: dict[str, Any], meters_file: Path, where: Path) -> tuple[Board, ...]:
    """Optional boards that play meters over the air; one absent makes the target absent."""
    raw = data.get("injectors") or {}
    if not isinstance(raw, dict):
        raise EnvError(f"{where}: injectors must be a mapping of name to board")
    boards = []
    for name, radio in raw.items():
        if isinstance(radio, dict) and radio.get("kind") == "virtual-rcp":
            raise EnvError(f"{where}: injectors.{name}: an injector is a real board (url or udev)")
        boards.append(_board(str(name), radio, meters_file, where, f"injectors.{name}"))
    return tuple(boards)


def load_env(path: Path) -> HilEnv:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EnvError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise EnvError(f"{path}: expected a mapping at the top level")
    gateway = _require(data, "gateway", path)
    meters_file = (path.parent / str(_require(data, "meters", path))).resolve()
    if not meters_file.exists():
        raise EnvError(f"{path}: meters file {meters_file} not found")
    radio = _require(gateway, "radio", path)
    if not isinstance(radio, dict):
        raise EnvError(f"{path}: gateway.radio must be a mapping with a kind")
    board = _board("gateway", radio, meters_file, path, "gateway.radio")
    injectors = _injectors(data, meters_file, path)
    absent = board.absent or next(
        (f"injector {b.role}: {b.absent}" for b in injectors if b.absent), None
    )
    overrides = gateway.get("config") or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise EnvError(f"{path}: gateway.config must map config sections to mappings")
    return HilEnv(
        name=str(data.get("name", path.stem)),
        source=path,
        gateway_id=str(_require(gateway, "id", path)),
        radio_url=board.url,
        meters_file=meters_file,
        broker_kind=str((data.get("broker") or {}).get("kind", "local-mosquitto")),
        features=frozenset(str(f) for f in data.get("features", [])),
        absent=absent,
        radio_match=board.match,
        radio=board,
        injectors=injectors,
        gateway_config=overrides,
    )


def env_yaml(candidates: Sequence[BoardCandidate], baud: int = 460_800) -> str:
    """Ready-to-paste environment YAML for connected boards (``hil boards``): the first as the
    gateway's radio, the others as injectors, each matched by udev properties (the match
    :func:`drivers.discover.suggest_match` picks), never by its /dev name."""
    from drivers.discover import suggest_match

    def board(c: BoardCandidate) -> dict[str, Any]:
        spi = c.subsystem == "spidev"
        entry: dict[str, Any] = {"kind": "udev", "transport": "spi" if spi else "uart"}
        entry["match"] = suggest_match(c, candidates)
        if not spi:
            entry["baud"] = baud
        return entry

    if not candidates:
        return ""
    doc: dict[str, Any] = {
        "name": "bench",
        "gateway": {"id": "gateway-01", "radio": board(candidates[0])},
        "meters": "emulated-meters.yaml",
        "broker": {"kind": "local-mosquitto"},
        "features": ["spi" if candidates[0].subsystem == "spidev" else "uart"],
    }
    if len(candidates) > 1:
        doc["injectors"] = {f"injector-{i}": board(c) for i, c in enumerate(candidates[1:], 1)}
    notes = "".join(f"# {c.describe()}\n" for c in candidates)
    return notes + yaml.safe_dump(doc, sort_keys=False)
