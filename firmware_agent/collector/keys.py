"""Per-meter suite 0 keys from a key file (YAML), refused unless only its owner can read it.

The file maps meter id -> block_cipher_key, authentication_key (32 hex chars each) and the meter's
system_title (16 hex chars)::

    MTR0001:
      block_cipher_key: 000102030405060708090A0B0C0D0E0F
      authentication_key: D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF
      system_title: 4D4D4D0000000001

Keys are secrets: a file that group or others may read is refused before it is parsed, so a
copy-paste install never runs with world-readable keys. Every error names the file, the meter
and the field (never the key's value).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from firmware_agent.config import EXIT_CONFIG, EXIT_SECURITY, ConfigError

from .ciphering import KEY_LEN, TITLE_LEN, Suite0

FIELDS = {
    "block_cipher_key": KEY_LEN,
    "authentication_key": KEY_LEN,
    "system_title": TITLE_LEN,
}


class KeyFileError(ConfigError):
    """A key file that cannot be used; ``meter`` and ``field`` say where, when known."""

    def __init__(
        self,
        file: Path,
        message: str,
        *,
        meter: str | None = None,
        field_name: str | None = None,
        line: int | None = None,
        exit_code: int = EXIT_CONFIG,
    ) -> None:
        self.meter = meter
        self.field_name = field_name
        where = ".".join(p for p in ("keys", meter, field_name) if p)
        super().__init__(where, line, message, file=file, exit_code=exit_code)


@dataclass(frozen=True)
class MeterKeys:
    """One meter's suite 0 key set and its system title."""

    meter_id: str
    block_cipher_key: bytes = field(repr=False)
    authentication_key: bytes = field(repr=False)
    system_title: bytes

    def suite(self) -> Suite0:
        return Suite0(self.block_cipher_key, self.authentication_key)


def parse_keys(text: str, source: Path) -> dict[str, MeterKeys]:
    """Parse key file text (no file access: ``source`` only names it in errors)."""
    try:
        # BaseLoader keeps every scalar a string: an all-digit key must not become an int.
        doc = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise KeyFileError(source, f"not valid YAML: {exc}", line=line) from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise KeyFileError(source, "must map meter ids to their keys")
    out: dict[str, MeterKeys] = {}
    for meter, entry in doc.items():
        meter_id = str(meter)
        if not isinstance(entry, Mapping):
            raise KeyFileError(source, "must be a mapping of key fields", meter=meter_id)
        unknown = sorted(str(k) for k in entry if k not in FIELDS)
        if unknown:
            raise KeyFileError(source, f"unknown field(s) {', '.join(unknown)}", meter=meter_id)
        values: dict[str, bytes] = {}
        for name, size in FIELDS.items():
            values[name] = _hex_field(source, meter_id, name, entry.get(name), size)
        out[meter_id] = MeterKeys(meter_id, **values)
    return out


def _hex_field(source: Path, meter: str, name: str, raw: object, size: int) -> bytes:
    if raw is None:
        raise KeyFileError(source, "is missing", meter=meter, field_name=name)
    if not isinstance(raw, str):
        raise KeyFileError(
            source,
            f"must be {size * 2} hex characters, got a {type(raw).__name__}",
            meter=meter,
            field_name=name,
        )
    text = raw.strip().replace(" ", "")
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(
            source, f"must be {size * 2} hex characters", meter=meter, field_name=name
        ) from None
    if len(value) != size:
        raise KeyFileError(
            source,
            f"must be {size * 2} hex characters, got {len(text)}",
            meter=meter,
            field_name=name,
        )
    return value


def check_mode(path: Path, mode: int) -> None:
    """Refuse a key file readable or writable by group or others."""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            path,
            f"key file {path} is mode {stat.S_IMODE(mode):04o}: it must be 0600",
            exit_code=EXIT_SECURITY,
        )


def load_keys(path: str | os.PathLike[str]) -> dict[str, MeterKeys]:
    """Read and parse a key file after checking its permissions (on the open descriptor, so the
    file checked is the file read)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(p, f"cannot open key file {p}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        check_mode(p, os.fstat(fh.fileno()).st_mode)
        text = fh.read()
    return parse_keys(text, p)
