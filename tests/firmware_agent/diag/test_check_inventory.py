"""The verdict and exit codes from measured links, and the technician's inventory file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import jsonschema
import pytest

from firmware_agent.diag import check
from firmware_agent.diag.inventory import InventoryError, default_path, resolve, write_inventory

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def link(
    mac: str, snr_in: float | None, snr_out: float | None, acked: int = 4
) -> dict[str, object]:
    return {"mac": mac, "meter_id": None, "sent": 4, "acked": acked, "rssi_dbm": -80.0,
            "noise_floor_dbm": -115.0, "snr_in_db": snr_in, "snr_out_db": snr_out,
            "rsl_in_dbm": -80.0, "rsl_out_dbm": -82.0, "etx": 128, "colour": "green"}  # fmt: skip


def test_weaker_direction_decides_and_exit_codes_follow() -> None:
    checks = [
        check.evaluate(link("01" * 8, 30.0, 9.5), 12.0),
        check.evaluate(link("02" * 8, 20.0, 25.0), 12.0),
        check.evaluate(link("03" * 8, None, None, acked=0), 12.0),
        check.evaluate(link("04" * 8, None, None), 12.0),
    ]
    assert [c.status for c in checks] == ["low", "ok", "no_answer", "unknown"]
    assert checks[0].snr_db == 9.5
    v = check.verdict(checks, 12.0, "gw")
    assert v.exit_code == check.EXIT_BELOW
    assert v.text == (
        "gw: 1 of 4 links OK; 1 below 12 dB (worst 9.5 dB), 1 did not answer, "
        "1 without an SNR yet (no noise floor)"
    )
    assert check.verdict(checks[1:2], 12.0, "gw").exit_code == check.EXIT_OK
    assert check.verdict([], 12.0, "gw").text == "gw: no neighbours heard"
    assert check.verdict([], 12.0, "gw").exit_code == check.EXIT_BELOW


def test_documents_match_the_published_schema() -> None:
    schema = json.loads((SCHEMAS / "diag-check-snr.schema.json").read_text())
    checks = [check.evaluate(link("01" * 8, 30.0, 29.0), 12.0)]
    doc = check.check_document("gw", "https://x:1", 12.0, checks, check.verdict(checks, 12, "gw"))
    jsonschema.validate(json.loads(json.dumps(doc)), schema)
    err = check.error_document("gw", None, "unreachable", "connection refused")
    jsonschema.validate(err, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**err, "exit_code": 0}, schema)


def test_inventory_round_trip_keeps_other_entries_and_is_private(tmp_path: Path) -> None:
    inv = tmp_path / "cfg" / "hes-diag" / "gateways.yaml"
    for n in ("ca", "t.crt", "t.key"):
        (tmp_path / n).write_text("x")
    write_inventory("gw-a", "https://10.0.0.1:8443", tmp_path / "ca", tmp_path / "t.crt",
                    tmp_path / "t.key", inv)  # fmt: skip
    write_inventory("gw-b", "https://10.0.0.2:8443", tmp_path / "ca", tmp_path / "t.crt",
                    tmp_path / "t.key", inv)  # fmt: skip
    assert stat.S_IMODE(inv.stat().st_mode) == 0o600
    assert stat.S_IMODE(inv.parent.stat().st_mode) == 0o700
    a = resolve("gw-a", inv)
    assert (a.url, a.ca, a.key) == ("https://10.0.0.1:8443", tmp_path / "ca", tmp_path / "t.key")
    assert resolve("gw-b", inv).url == "https://10.0.0.2:8443"
    with pytest.raises(InventoryError, match=r"'gw-c' is not in .* \(it has: gw-a, gw-b\)"):
        resolve("gw-c", inv)


def test_inventory_errors_name_the_file_and_key(tmp_path: Path) -> None:
    inv = tmp_path / "gateways.yaml"
    with pytest.raises(InventoryError, match="no inventory at"):
        resolve("gw", inv)
    inv.write_text("gateways:\n  gw:\n    url: http://x:1\n    ca: a\n    cert: b\n    key: c\n")
    with pytest.raises(InventoryError, match=r"gateways.gw.url 'http://x:1': must be https"):
        resolve("gw", inv)
    inv.write_text("gateways:\n  gw:\n    url: https://x:1\n    ca: a\n")
    with pytest.raises(InventoryError, match=r"gateways\.gw: missing cert, key"):
        resolve("gw", inv)
    inv.write_text("gateways: [1, 2]\n")
    with pytest.raises(InventoryError, match="expected a mapping"):
        resolve("gw", inv)
    inv.write_text("gateways:\n  gw:\n    url: https://x:1\n    ca: a\n    cert: b\n    key: c\n")
    assert resolve("gw", inv).cert == tmp_path / "b"  # relative to the file


def test_default_path_follows_the_environment() -> None:
    assert default_path({"HES_DIAG_INVENTORY": "/x/y.yaml"}) == Path("/x/y.yaml")
    assert default_path({"XDG_CONFIG_HOME": "/c"}) == Path("/c/hes-diag/gateways.yaml")
    assert default_path({"HOME": "/h"}) == Path("/h/.config/hes-diag/gateways.yaml")
