"""The technician's list of gateways: ``~/.config/hes-diag/gateways.yaml``, name → URL and
certificate paths, so ``hes-diag --check-snr gateway-01`` needs no more typing in the field.

Format (relative paths are relative to the file's directory)::

    gateways:
      gateway-01:
        url: https://10.20.0.1:8443
        ca: certs/diag-ca.crt        # the CA that signed the gateway's diag certificate
        cert: certs/alice.crt        # the technician's certificate ...
        key: certs/alice.key         # ... and key (0600)
        server_name: gateway-01      # optional: the name in the gateway's certificate
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from firmware_agent.diag.client import Target

ENTRY_KEYS = ("url", "ca", "cert", "key")
OPTIONAL_KEYS = ("server_name",)


class InventoryError(Exception):
    """The inventory cannot be read or does not name the gateway; says which file and why."""


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """``$HES_DIAG_INVENTORY``, else ``$XDG_CONFIG_HOME/hes-diag/gateways.yaml``, else
    ``~/.config/hes-diag/gateways.yaml``."""
    env = os.environ if env is None else env
    if env.get("HES_DIAG_INVENTORY"):
        return Path(env["HES_DIAG_INVENTORY"])
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "hes-diag" / "gateways.yaml"


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InventoryError(
            f"no inventory at {path}: add the gateway there or give --url/--ca/--cert/--key"
        ) from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("gateways", {}), dict):
        raise InventoryError(f"{path}: expected a mapping with a 'gateways:' mapping")
    gateways: dict[str, Any] = data.get("gateways") or {}
    return gateways


def _entry(path: Path, name: str, raw: Any) -> Target:
    if not isinstance(raw, dict):
        raise InventoryError(f"{path}: gateways.{name}: expected a mapping of {ENTRY_KEYS}")
    missing = [k for k in ENTRY_KEYS if not raw.get(k)]
    if missing:
        raise InventoryError(f"{path}: gateways.{name}: missing {', '.join(missing)}")
    unknown = sorted(set(raw) - set(ENTRY_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise InventoryError(f"{path}: gateways.{name}: unknown key(s) {unknown}")

    def file(key: str) -> Path:
        p = Path(os.path.expanduser(str(raw[key])))
        return p if p.is_absolute() else path.parent / p

    url = str(raw["url"])
    if not url.startswith("https://"):
        raise InventoryError(f"{path}: gateways.{name}.url {url!r}: must be https://HOST:PORT")
    server_name = raw.get("server_name")
    return Target(
        name,
        url,
        file("ca"),
        file("cert"),
        file("key"),
        None if server_name is None else str(server_name),
    )


def load_inventory(path: Path) -> dict[str, Target]:
    return {str(name): _entry(path, str(name), raw) for name, raw in _read(path).items()}


def resolve(name: str, path: Path) -> Target:
    """The inventory's entry for ``name``; the error lists the names it has."""
    raw = _read(path)
    if name not in raw:
        have = ", ".join(sorted(map(str, raw))) or "none"
        raise InventoryError(f"gateway {name!r} is not in {path} (it has: {have})")
    return _entry(path, name, raw[name])


def write_inventory(
    name: str, url: str, ca: Path, cert: Path, key: Path, path: Path | None = None
) -> Path:
    """Add or replace ``name`` in the inventory (other entries kept; file 0600, its directory
    0700, written atomically). For ``make demo`` and installers. Returns the file's path."""
    path = path or default_path()
    entry = {"url": url, "ca": str(Path(ca).resolve()), "cert": str(Path(cert).resolve()),
             "key": str(Path(key).resolve())}  # fmt: skip
    _entry(path, name, entry)  # the same checks as reading it back
    gateways = _read(path) if path.exists() else {}
    gateways[name] = entry
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = "# hes-diag inventory: gateway name -> diag API URL and certificates\n" + yaml.safe_dump(
        {"gateways": gateways}, sort_keys=True
    )
    fd, tmp = tempfile.mkstemp(prefix=".gateways-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
