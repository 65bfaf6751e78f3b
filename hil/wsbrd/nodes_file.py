"""A network for the emulated wsbrd from a small YAML file (for ``python -m hil.wsbrd`` and
end-to-end drivers)::

    root: "02:00:00:00:00:00:00:01"
    prefix: "fd00:7a:1::/64"
    nodes:
      - eui64: "02:00:00:00:00:00:00:a1"
        parents: ["02:00:00:00:00:00:00:01"]    # most preferred first; the root included
        rssi_dbm: -70                            # optional: rssi_dbm lqi rsl_dbm rsl_adv_dbm
        rsl_dbm: -72                             #   address (default prefix + IID) role
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from .model import WsbrdModel

LINK_KEYS = ("rssi_dbm", "lqi", "rsl_dbm", "rsl_adv_dbm", "role")


class NodesFileError(ValueError):
    """The nodes file says something the emulated wsbrd cannot be; names where."""


def _eui(value: Any, where: str) -> bytes:
    try:
        raw = bytes.fromhex(str(value).replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise NodesFileError(f"{where}: {value!r} is not an EUI-64")
    return raw


def model_from_text(text: str) -> WsbrdModel:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise NodesFileError("a nodes file is a mapping with root, prefix and nodes")
    try:
        network = ipaddress.IPv6Network(str(data.get("prefix", "fd00:7a:1::/64")))
    except ValueError as exc:
        raise NodesFileError(f"prefix: {exc}") from exc
    if network.prefixlen != 64:
        raise NodesFileError(f"prefix: {network} is not a /64")
    model = WsbrdModel(_eui(data.get("root"), "root"), network.network_address.packed[:8])
    for index, node in enumerate(data.get("nodes") or []):
        where = f"nodes[{index}]"
        if not isinstance(node, dict):
            raise NodesFileError(f"{where}: not a mapping")
        eui = _eui(node.get("eui64"), f"{where}.eui64")
        parents = [_eui(p, f"{where}.parents") for p in node.get("parents") or []]
        address = None
        if node.get("address") is not None:
            try:
                address = ipaddress.IPv6Address(str(node["address"])).packed
            except ValueError as exc:
                raise NodesFileError(f"{where}.address: {exc}") from exc
        links = {key: node[key] for key in LINK_KEYS if node.get(key) is not None}
        for key, value in links.items():
            if not isinstance(value, int):
                raise NodesFileError(f"{where}.{key}: {value!r} is not an integer")
        model.add(eui, parents, address=address, **links)
    return model
