"""setup_logging / log_event: the plain (journald) and JSON line formats."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from firmware_agent.logs import log_event, setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_plain_lines_have_level_logger_message_and_fields(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(json=False, level="INFO", stream=out)
    log = logging.getLogger("firmware_agent.uplink")
    log.info("connected to %s", "broker", extra={"fields": {"port": 8883, "tls": "1.3"}})
    log_event(log, "WARNING", "queue high", depth=120, note="two words", empty="")
    log.debug("not shown")
    assert lines(out) == [
        "INFO firmware_agent.uplink: connected to broker port=8883 tls=1.3",
        'WARNING firmware_agent.uplink: queue high depth=120 note="two words" empty=""',
    ]


def test_plain_line_has_no_timestamp_and_traceback_is_indented(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(json=False, level="debug", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    got = lines(out)
    assert got[0] == "ERROR x: failed"
    assert got[1] == "  Traceback (most recent call last):"
    assert got[-1] == "  RuntimeError: boom"
    assert all(line.startswith("  ") for line in got[1:])


def test_json_lines(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(json=True, level="INFO", stream=out)
    log = logging.getLogger("firmware_agent.collector")
    log_event(log, logging.INFO, "read", meter="MTR-0001", rows=4, msg="clash", ok=True)
    log.warning("plain %d", 5)
    first, second = (json.loads(line) for line in lines(out))
    assert first["level"] == "INFO" and first["logger"] == "firmware_agent.collector"
    assert first["msg"] == "read" and first["field_msg"] == "clash"
    assert (first["meter"], first["rows"], first["ok"]) == ("MTR-0001", 4, True)
    assert first["ts"].endswith("Z")
    assert abs(datetime.fromisoformat(first["ts"]).timestamp() - datetime.now().timestamp()) < 60
    assert second == {
        "ts": second["ts"],
        "level": "WARNING",
        "logger": "firmware_agent.collector",
        "msg": "plain 5",
    }


def test_json_exception_and_unserialisable_field(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(json=True, stream=out)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("y").exception("bad", extra={"fields": {"obj": object}})
    record = json.loads(out.getvalue())
    assert "ZeroDivisionError" in record["exc"]
    assert record["obj"] == "<class 'object'>"


def test_calling_again_switches_format_without_duplicating(restore_root: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(json=False, stream=first)
    setup_logging(json=True, stream=second)
    logging.getLogger("z").error("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1 and json.loads(second.getvalue())["msg"] == "once"


def test_level_filter_and_unknown_level(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(json=False, level="error", stream=out)
    logging.getLogger("a").warning("hidden")
    logging.getLogger("a").error("shown")
    assert lines(out) == ["ERROR a: shown"]
    with pytest.raises(ValueError, match="unknown log level 'LOUD'; expected one of DEBUG"):
        setup_logging(json=False, level="LOUD")
    with pytest.raises(ValueError, match="unknown log level"):
        log_event(logging.getLogger("a"), "LOUD", "x")


def test_default_stream_is_stderr_in_a_real_process() -> None:
    code = (
        "import logging; from firmware_agent.logs import setup_logging, log_event;"
        "setup_logging(json=False); log_event(logging.getLogger('p'), 'INFO', 'hi', n=1)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == ""
    assert done.stderr == "INFO p: hi n=1\n"
