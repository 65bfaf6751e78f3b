"""Logging for the agent: plain lines for journald, or JSON lines for log shippers.

Plain lines carry no timestamp because journald stamps every line itself; they start with the
level word so ``grep``/``journalctl -g`` can filter on it. Structured fields ride along on a
record as ``extra={"fields": {...}}`` (or via ``log_event``) and are printed as ``key=value``
pairs or as JSON members.
"""

from __future__ import annotations

import json as jsonlib
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


def setup_logging(json: bool, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send all logging to ``stream`` (stderr by default) in the chosen format.

    Replaces the root logger's handlers, so calling it again switches format instead of
    duplicating lines. Raises ValueError for an unknown level name.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)


def log_event(logger: logging.Logger, level: int | str, msg: str, /, **fields: Any) -> None:
    """Log ``msg`` with structured ``fields``: ``log_event(log, "INFO", "published", n=50)``."""
    levelno = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(levelno, int):
        raise ValueError(f"unknown log level {level!r}")
    logger.log(levelno, msg, extra={"fields": fields}, stacklevel=2)


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """The structured fields attached to a record (empty when there are none)."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else jsonlib.dumps(value, default=str)
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        return jsonlib.dumps(text)
    return text


class PlainFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``; a traceback follows on indented lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        pairs = " ".join(f"{k}={_logfmt_value(v)}" for k, v in record_fields(record).items())
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join(f"  {t}" for t in trace.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, then the fields.

    A field named like one of the fixed members is kept as ``field_<name>`` instead of
    overwriting it.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return jsonlib.dumps(out, default=str, ensure_ascii=False)
