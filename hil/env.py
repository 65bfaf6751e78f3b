"""HIL environment files: which target the suite runs against (emulated or real boards).

An environment names the gateway's radio (a virtual RCP, or a board by URL; udev matching comes
with the HIL issue), the meters the target has, the broker, and the features the target offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

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
    raise EnvError(f"{where}: gateway.radio.kind must be virtual-rcp or url, got {kind!r}")


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
    url, absent = _radio_url(_require(gateway, "radio", path), meters_file, path)
    return HilEnv(
        name=str(data.get("name", path.stem)),
        source=path,
        gateway_id=str(_require(gateway, "id", path)),
        radio_url=url,
        meters_file=meters_file,
        broker_kind=str((data.get("broker") or {}).get("kind", "local-mosquitto")),
        features=frozenset(str(f) for f in data.get("features", [])),
        absent=absent,
    )
