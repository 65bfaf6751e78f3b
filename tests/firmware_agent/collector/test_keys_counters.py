"""Key files (mode check, named field errors) and the invocation counter store on real SQLite
files: reservation is durable ahead of use, a reopened store never reuses a counter, replays are
refused naming both counters, and resync only moves forward."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firmware_agent.collector.counters import CounterStore
from firmware_agent.collector.keys import KeyFileError, load_keys, parse_keys
from firmware_agent.collector.session import ReplayedFrame
from firmware_agent.config import EXIT_SECURITY

GOOD = """\
MTR1:
  block_cipher_key: 000102030405060708090A0B0C0D0E0F
  authentication_key: D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF
  system_title: 4D4D4D0000000001
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "keys.yaml"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_good_file_loads(tmp_path: Path) -> None:
    keys = load_keys(write(tmp_path, GOOD))
    k = keys["MTR1"]
    assert k.block_cipher_key == bytes(range(16))
    assert k.system_title == bytes.fromhex("4D4D4D0000000001")
    assert "D0D1" not in repr(k) and "d0d1" not in repr(k)  # keys stay out of logs
    assert k.suite().hls_response(k.system_title, 1, b"x" * 16)[:5] == b"\x10\x00\x00\x00\x01"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_by_others_is_refused_with_its_mode(tmp_path: Path, mode: int) -> None:
    p = write(tmp_path, GOOD, mode)
    with pytest.raises(KeyFileError) as err:
        load_keys(p)
    assert f"is mode {mode:04o}: it must be 0600" in str(err.value)
    assert err.value.exit_code == EXIT_SECURITY


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot open key file"):
        load_keys(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "meter", "field", "words"),
    [
        (
            GOOD.replace("000102030405060708090A0B0C0D0E0F", "0001"),
            "MTR1",
            "block_cipher_key",
            "must be 32 hex characters, got 4",
        ),
        (
            GOOD.replace("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF", "ZZ" * 16),
            "MTR1",
            "authentication_key",
            "must be 32 hex characters",
        ),
        (
            GOOD.replace("  system_title: 4D4D4D0000000001\n", ""),
            "MTR1",
            "system_title",
            "is missing",
        ),
        (GOOD + "  colour: red\n", "MTR1", None, "unknown field(s) colour"),
        ("MTR2: 5\n", "MTR2", None, "must be a mapping"),
    ],
)
def test_errors_name_meter_and_field(
    tmp_path: Path, text: str, meter: str, field: str | None, words: str
) -> None:
    with pytest.raises(KeyFileError) as err:
        parse_keys(text, tmp_path / "k.yaml")
    assert err.value.meter == meter and err.value.field_name == field
    assert words in str(err.value)
    assert "000102" not in str(err.value)


def test_reserve_is_strictly_increasing_and_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "ic.sqlite"
    store = CounterStore(db, window=4)
    got = [store.reserve("M") for _ in range(6)]
    assert got == [1, 2, 3, 4, 5, 6]
    assert store.reserve("other") == 1
    store.close()  # a "crash": the in-memory position is lost
    again = CounterStore(db, window=4)
    nxt = again.reserve("M")
    assert nxt > 6  # never reused, at most one window skipped
    assert nxt <= 6 + 4 + 1
    again.close()


def test_accept_refuses_replays_naming_both_counters(tmp_path: Path) -> None:
    store = CounterStore(tmp_path / "ic.sqlite")
    store.accept("M", 10)
    store.accept("M", 11)
    with pytest.raises(ReplayedFrame) as err:
        store.accept("M", 11)
    assert (err.value.counter, err.value.last) == (11, 11)
    assert "invocation counter 11 is not above 11" in str(err.value)
    with pytest.raises(ReplayedFrame):
        store.accept("M", 3)
    store.close()
    reopened = CounterStore(tmp_path / "ic.sqlite")
    with pytest.raises(ReplayedFrame):
        reopened.accept("M", 11)
    reopened.accept("M", 12)


def test_resync_moves_forward_only_and_forgets_the_meters_counter(tmp_path: Path) -> None:
    store = CounterStore(tmp_path / "ic.sqlite")
    for _ in range(50):
        store.reserve("M")
    store.accept("M", 900)
    state = store.resync("M", 20)  # the meter expects less than we already used: keep ours
    assert state.next_send == 51 and state.last_received is None
    store.accept("M", 1)  # the meter restarted its own counter
    assert store.resync("M", 5000, forget_received=False).next_send == 5000
    assert store.reserve("M") == 5000
    store.close()
    assert CounterStore(tmp_path / "ic.sqlite").reserve("M") >= 5001
    with pytest.raises(ValueError, match="outside"):
        store.resync("M", 0)
