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
    from drivers.discover import BoardMatch

DEFAULT_ENV = Path(__file__).resolve().parent.parent / "config" / "hil" / "emulated.yaml"


class EnvError(Exception):
    """An environment file that cannot be used; the message names the file and key."""


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
    options = {k: str(v) for k, v in (radio.get("options") or {}).items()}
    url = f"spinel+{transport}://" + (f"?{urlencode(options)}" if options else "")
    match = _udev_match(radio, where)
    try:
        return url_with_device(url, resolve(match)), None
    except (NoBoardMatched, DiscoveryUnavailable) as exc:
        return url, " ".join(line.strip() for line in str(exc).splitlines())
    except SeveralBoardsMatched as exc:
        raise EnvError(f"{where}: gateway.radio.match: {exc}") from None


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
    url, absent = _radio_url(radio, meters_file, path)
    match = _udev_match(radio, path).properties if radio.get("kind") == "udev" else None
    return HilEnv(
        name=str(data.get("name", path.stem)),
        source=path,
        gateway_id=str(_require(gateway, "id", path)),
        radio_url=url,
        meters_file=meters_file,
        broker_kind=str((data.get("broker") or {}).get("kind", "local-mosquitto")),
        features=frozenset(str(f) for f in data.get("features", [])),
        absent=absent,
        radio_match=match,
    )
