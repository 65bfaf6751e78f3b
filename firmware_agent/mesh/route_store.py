"""The file edge of the routing table: its snapshot as JSON, written atomically.

Kept apart from :mod:`firmware_agent.mesh.routes` so the table stays free of I/O. A crash or
power cut while saving must leave either the old file or the new one, never a torn mix: the
JSON goes to a temporary file in the same directory, is fsynced, renamed over the old file,
and the directory is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from firmware_agent.mesh.routes import RoutingTable, SnapshotError


def save_json(path: str | os.PathLike[str], table: RoutingTable, now: float) -> None:
    """Write ``table.snapshot(now)`` to ``path`` atomically (tmp + fsync + rename)."""
    target = Path(path)
    text = json.dumps(table.snapshot(now), allow_nan=False, separators=(",", ":"))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The snapshot stored at ``path``, or None when there is none yet (first start).

    Raises SnapshotError naming the file when it is not a JSON object; the content itself is
    checked by ``RoutingTable.restore``.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SnapshotError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise SnapshotError(
            f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(data, dict):
        raise SnapshotError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_table(
    path: str | os.PathLike[str], now: float, *, elapsed_s: float = 0.0, **settings: Any
) -> RoutingTable | None:
    """``RoutingTable.restore`` of the snapshot at ``path``, None when there is no file."""
    data = load_json(path)
    if data is None:
        return None
    try:
        return RoutingTable.restore(data, now, elapsed_s=elapsed_s, **settings)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {e}") from None
