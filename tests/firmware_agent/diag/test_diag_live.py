"""hes-diag against a live gateway: the real agent on an emulated mesh serving the diag API over
mutual TLS on loopback, asked through hes-diag's own CLI and client. One test per exit code
(including a wrong technician certificate), the JSON schemas, view-mesh/mesh/status, API errors,
and the handshake blocker end to end with a short real block."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from firmware_agent.clock import SystemClock
from firmware_agent.config import DiagConfig
from firmware_agent.diag import cli
from firmware_agent.diag.client import ApiError, DiagClient, Refused, Target
from firmware_agent.diag.inventory import write_inventory
from firmware_agent.diag.server import DiagServer
from hil.pki import generate_foreign_client

from .gateway_rig import METERS, DiagPki, LiveGateway, all_joined, make_diag_pki

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"
HES_DIAG = Path(sys.executable).with_name("hes-diag")


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, Path, DiagPki]]:
    work = tmp_path_factory.mktemp("diag-live")
    pki = make_diag_pki(work / "diag-pki")
    gw = LiveGateway(work, pki).start()
    try:
        gw.wait_for(all_joined, 30, "every meter to be heard with an SNR and to have a route")
        tech = pki.technician
        inventory = write_inventory(
            "gateway-01", gw.url, pki.pki.ca_cert, tech.cert, tech.key, work / "gateways.yaml"
        )
        yield gw, inventory, pki
    finally:
        gw.stop()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as a laptop terminal shows them (rich reads COLUMNS), not squeezed to 80."""
    monkeypatch.setenv("COLUMNS", "200")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_snr_by_inventory_json_every_neighbour_has_an_snr_exit_0(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str]
) -> None:
    _, inventory, _ = rig
    code, out, _ = run_cli(
        capsys, "--check-snr", "gateway-01", "--inventory", str(inventory), "--json",
        "--threshold-db", "10", "--probes", "3",
    )  # fmt: skip
    doc = json.loads(out)
    jsonschema.validate(doc, schema("diag-check-snr.schema.json"))
    assert code == 0 == doc["exit_code"], doc
    by_meter = {link["meter_id"]: link for link in doc["links"]}
    assert set(by_meter) == {m for m, _, _ in METERS}
    for link in doc["links"]:
        assert link["snr_in_db"] is not None and link["snr_out_db"] is not None
        assert link["snr_db"] == min(link["snr_in_db"], link["snr_out_db"]) >= 10
        assert link["probes_sent"] == 3 and link["probes_acked"] >= 1
        assert link["noise_floor_dbm"] < -100 and link["status"] == "ok"
    assert doc["verdict"]["text"] == "gateway-01: all 3 links at or above 10 dB SNR"


def test_check_snr_table_and_exit_1_when_a_link_is_below(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str]
) -> None:
    _, inventory, _ = rig
    code, out, _ = run_cli(
        capsys, "--check-snr", "gateway-01", "--inventory", str(inventory),
        "--threshold-db", "90", "--probes", "4",
    )  # fmt: skip
    # Four probes, as a technician's default: a single probe sent once (no MAC retries) can
    # collide with the meters' own traffic, and this test is about the verdict, not luck.
    assert code == 1
    assert "FAIL: gateway-01: 0 of 3 links OK; 3 below 90 dB" in out
    for column in ("neighbour", "RSSI", "noise floor", "SNR dB", "RSL in/out", "ETX", "status"):
        assert column in out
    assert "MTR-A" in out


def test_watch_repeats_the_check(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str]
) -> None:
    _, inventory, _ = rig
    code, out, _ = run_cli(
        capsys, "--check-snr", "gateway-01", "--inventory", str(inventory), "--json",
        "--watch", "0.2", "--rounds", "2", "--probes", "3", "--threshold-db", "0",
    )  # fmt: skip
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 2 and code == lines[-1]["exit_code"]
    assert all(len(d["links"]) == len(METERS) for d in lines)
    assert lines[0]["checked_at"] <= lines[1]["checked_at"]


def test_exit_2_when_unreachable(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, pki = rig
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the test connects
    tech = pki.technician
    code, out, err = run_cli(
        capsys, "--check-snr", "--url", f"https://127.0.0.1:{port}", "--ca", str(pki.pki.ca_cert),
        "--cert", str(tech.cert), "--key", str(tech.key), "--json",
    )  # fmt: skip
    doc = json.loads(out)
    jsonschema.validate(doc, schema("diag-check-snr.schema.json"))
    assert code == 2 == doc["exit_code"]
    assert doc["error"]["kind"] == "unreachable"
    assert f"connection refused by 127.0.0.1:{port}" in doc["error"]["reason"]
    assert "unreachable" in err


def test_exit_2_with_a_wrong_technician_certificate(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gw, _, pki = rig
    foreign = generate_foreign_client(tmp_path, "tech-alice")  # right name, wrong CA
    code, out, err = run_cli(
        capsys, "--check-snr", "--url", gw.url, "--ca", str(pki.pki.ca_cert),
        "--cert", str(foreign.client.cert), "--key", str(foreign.client.key), "--json",
    )  # fmt: skip
    doc = json.loads(out)
    assert code == 2 and doc["error"]["kind"] == "bad_certificate", doc
    assert "refused our technician certificate" in doc["error"]["reason"]
    assert "bad certificate" in err


def test_exit_2_when_the_gateway_certificate_is_not_from_our_ca(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gw, _, pki = rig
    foreign = generate_foreign_client(tmp_path, "x")
    tech = pki.technician
    code, out, _ = run_cli(
        capsys, "--check-snr", "--url", gw.url, "--ca", str(foreign.ca.cert),
        "--cert", str(tech.cert), "--key", str(tech.key), "--json",
    )  # fmt: skip
    doc = json.loads(out)
    assert code == 2 and doc["error"]["kind"] == "bad_certificate"
    assert "does not verify against" in doc["error"]["reason"]


def test_view_mesh_shows_every_path_preferred_marked_snr_per_hop(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str]
) -> None:
    _, inventory, _ = rig
    code, out, _ = run_cli(
        capsys, "view-mesh", "--meter-id", "MTR-C", "gateway-01", "--inventory", str(inventory),
        "--json",
    )  # fmt: skip
    doc = json.loads(out)
    jsonschema.validate({k: v for k, v in doc.items() if k != "exit_code"},
                        schema("diag-paths.schema.json"))  # fmt: skip
    assert code == 0 and doc["meter_id"] == "MTR-C"
    assert sum(p["preferred"] for p in doc["paths"]) == 1
    for path in doc["paths"]:
        assert path["hops"][0]["meter_id"] == "gateway-01"
        assert path["hops"][-1]["meter_id"] == "MTR-C"
        assert len(path["links"]) == len(path["hops"]) - 1
        assert all(link["snr_db"] is not None for link in path["links"])
    code, out, _ = run_cli(
        capsys, "view-mesh", "--meter-id", "MTR-C", "--inventory", str(inventory)
    )  # the only gateway in the inventory
    assert code == 0 and "★" in out and "valid path(s) to meter MTR-C" in out
    code, _, err = run_cli(capsys, "view-mesh", "--meter-id", "NOPE", "--inventory", str(inventory))
    assert code == 1 and "no meter 'NOPE'" in err


def test_mesh_tree_and_status(
    rig: tuple[LiveGateway, Path, DiagPki], capsys: pytest.CaptureFixture[str]
) -> None:
    _, inventory, _ = rig
    code, out, _ = run_cli(capsys, "mesh", "gateway-01", "--inventory", str(inventory))
    assert code == 0 and "gateway-01 (root 00124b0000a00001)" in out
    assert all(m in out for m, _, _ in METERS)
    code, out, _ = run_cli(capsys, "status", "--inventory", str(inventory), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["gateway_id"] == "gateway-01"
    assert {m["id"] for m in doc["meters"]} == {m for m, _, _ in METERS}
    assert doc["diag"]["handshakes_ok"] >= 1 and doc["noise_floor_dbm"] < -100


def test_api_answers_bad_requests_with_typed_json_errors(
    rig: tuple[LiveGateway, Path, DiagPki],
) -> None:
    gw, _, pki = rig
    tech = pki.technician
    target = Target("gateway-01", gw.url, pki.pki.ca_cert, tech.cert, tech.key)
    err_schema = schema("diag-error.schema.json")
    with DiagClient(target) as client:
        doc = client.post("/api/v1/snr-check", {"count": 2, "neighbours": [METERS[0][1].hex()]})
        jsonschema.validate(doc, schema("diag-snr-check.schema.json"))
        assert [link["meter_id"] for link in doc["links"]] == ["MTR-A"]
        for method, path, body, status, kind, text in [
            ("POST", "/api/v1/snr-check", {"count": 0}, 400, "bad_request", "count 0"),
            ("POST", "/api/v1/snr-check", {"neighbours": ["zz"]}, 400, "bad_request", "'zz'"),
            ("GET", "/api/v1/alarms?limit=x", None, 400, "bad_request", "limit 'x'"),
            ("GET", "/api/v1/nothing", None, 404, "not_found", "no endpoint"),
            ("GET", "/api/v1/meters/NOPE/paths", None, 404, "unknown_meter", "NOPE"),
        ]:
            with pytest.raises(ApiError) as info:
                if method == "GET":
                    client.get(path)
                else:
                    client.post(path, body)  # type: ignore[arg-type]
            assert (info.value.status, info.value.error) == (status, kind)
            assert text in str(info.value)
        assert client.get("/api/v1/alarms?limit=5")["alarms"] == []
        assert client.get("/api/v1/spool")["spool"]["open"] is True
        assert client.get("/api/v1/uplink")["uplink"] == {"enabled": False}
    jsonschema.validate(
        {"schema": "wisun-gateway/diag/error/1", "error": "bad_request", "message": "m"},
        err_schema,
    )


def test_five_failed_handshakes_block_the_sixth_until_the_block_ends(
    rig: tuple[LiveGateway, Path, DiagPki], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw, _, pki = rig
    caplog.set_level(logging.INFO, logger="firmware_agent.diag.server")
    cfg = DiagConfig(
        ca_file=pki.pki.ca_cert, cert_file=pki.pki.server.cert, key_file=pki.pki.server.key,
        port=0, block_s=1.5,
    )  # fmt: skip
    assert gw.server is not None
    server = DiagServer(gw.server.source, cfg, SystemClock())
    gw.call(server.start())
    try:
        url = f"https://127.0.0.1:{server.address[1]}"  # type: ignore[index]
        tech = pki.technician
        foreign = generate_foreign_client(tmp_path, "tech-alice")
        bad = Target("gw", url, pki.pki.ca_cert, foreign.client.cert, foreign.client.key)
        good = Target("gw", url, pki.pki.ca_cert, tech.cert, tech.key)
        for _ in range(5):
            with DiagClient(bad) as client, pytest.raises(Exception, match="certificate"):
                client.get("/api/v1/status")
        started = time.monotonic()
        with DiagClient(good) as client, pytest.raises(Refused, match="blocked"):
            client.get("/api/v1/status")  # the 6th, even with a good certificate
        assert "blocked for 1.5 s after 5 failed TLS handshakes" in caplog.text
        assert "refused 127.0.0.1 before TLS" in caplog.text
        time.sleep(max(0.0, 1.6 - (time.monotonic() - started)))
        with DiagClient(good) as client:
            assert client.get("/api/v1/status")["gateway_id"] == "gateway-01"
        assert "block of 127.0.0.1 ended" in caplog.text
        assert server.handshakes_failed == 5 and server.blocker.blocks_total == 1
    finally:
        gw.call(server.close())


def test_the_installed_entry_point_checks_the_gateway_by_name(
    rig: tuple[LiveGateway, Path, DiagPki],
) -> None:
    _, inventory, _ = rig
    env = {**os.environ, "HES_DIAG_INVENTORY": str(inventory)}
    done = subprocess.run(
        [str(HES_DIAG), "--check-snr", "gateway-01", "--json", "--probes", "2",
         "--threshold-db", "10"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert len(doc["links"]) == len(METERS) and doc["exit_code"] == 0
