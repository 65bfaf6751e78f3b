"""The thin path through every layer, on whatever target --hil-env names.

The agent runs as its own process from a config the target's fixtures write; the head end
subscribes to a real mosquitto with mTLS. Nothing here reaches into the emulator.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from firmware_agent.clock import SystemClock
from firmware_agent.spool import Spool
from hil.agent_process import AgentProcess
from hil.headend import HeadEnd

SEED_002_FIELDS = ("time", "arrival_time", "device_id", "load", "crrnt", "pf", "kva", "kw", "vltg")


def wait_for_meters(
    headend: HeadEnd, meter_ids: set[str], timeout: float, agent: AgentProcess
) -> list[dict[str, Any]]:
    """Records until every meter has reported at least once, or fail with the agent's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = headend.records()
        if meter_ids <= {r["device_id"] for r in records}:
            return records
        if agent.proc.poll() is not None:
            pytest.fail(f"agent exited with {agent.proc.returncode}:\n{agent.output()[-3000:]}")
        time.sleep(0.2)
    seen = {r["device_id"] for r in headend.records()}
    pytest.fail(
        f"no readings from {sorted(meter_ids - seen)} after {timeout} s:\n{agent.output()[-3000:]}"
    )


def spool_rows(path: Path) -> int:
    """Records left in the agent's spool file (opened read-only by the spool's own class)."""
    with Spool(path, SystemClock()) as spool:
        return spool.depth()


def test_readings_reach_the_head_end_and_leave_the_spool(
    gateway_config: Callable[..., Path],
    headend: HeadEnd,
    meters: list[dict[str, Any]],
    gateway_agent: Callable[..., AgentProcess],
) -> None:
    config = gateway_config()
    spool_path = Path(yaml.safe_load(config.read_text())["spool"]["path"])
    pcap = config.parent / "agent.pcap"
    agent = gateway_agent(config, "--log-json", "--pcap", str(pcap))
    records = wait_for_meters(headend, {m["id"] for m in meters}, timeout=60, agent=agent)
    assert agent.terminate() == 0, agent.output()[-3000:]

    for record in records:
        for field in SEED_002_FIELDS:
            assert field in record, f"{field} missing from {record}"
        uuid.UUID(record["record_id"])
        assert record["natural_key"].startswith(record["device_id"] + "|")
        # Physically consistent quantities (the emulated meters guarantee it; real ones too).
        if record["kva"] is not None and record["crrnt"]:
            assert record["kva"] == pytest.approx(record["vltg"] * record["crrnt"], rel=0.02)
            assert record["kw"] == pytest.approx(record["kva"] * record["pf"], rel=0.02)
    message_ids = {r["message_id"] for r in records}
    assert message_ids and all(uuid.UUID(mid) for mid in message_ids)

    # Every record was deleted from the spool on its PUBACK; the clean shutdown flushed the rest.
    assert spool_rows(spool_path) == 0
    log = [json.loads(line) for line in agent.output().splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "shutting down" for entry in log)

    # --pcap captured every frame of the run, and tshark decodes all of them cleanly.
    if shutil.which("tshark"):
        check = subprocess.run(
            ["tshark", "-r", str(pcap), "-Y", "_ws.malformed || _ws.expert.severity >= warning"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert check.stdout == ""
        count = subprocess.run(
            ["tshark", "-r", str(pcap), "-Y", "udp.port == 4059"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert len(count.stdout.splitlines()) >= 2 * len(meters)


def test_records_spooled_while_the_broker_is_unreachable_are_kept_then_delivered(
    gateway_config: Callable[..., Path],
    headend: HeadEnd,
    meters: list[dict[str, Any]],
    gateway_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # First run: the uplink points at a port where nothing listens, so readings pile up.
    dead_port = gateway_config()
    doc = yaml.safe_load(dead_port.read_text())
    good_broker = doc["uplink"]["broker_url"]
    doc["uplink"]["broker_url"] = "mqtts://127.0.0.1:9"
    dead_port.write_text(yaml.safe_dump(doc))
    spool_path = Path(doc["spool"]["path"])
    agent = gateway_agent(dead_port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not spool_path.exists() or spool_rows(spool_path) < len(meters)
    ):
        time.sleep(0.3)
    assert agent.terminate() == 0, agent.output()[-3000:]
    kept = spool_rows(spool_path)
    assert kept >= len(meters), agent.output()[-3000:]
    assert headend.records() == []

    # Second run against the real broker: what was kept goes out first, nothing is lost.
    doc["uplink"]["broker_url"] = good_broker
    dead_port.write_text(yaml.safe_dump(doc))
    agent = gateway_agent(dead_port)
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline and spool_rows(spool_path) > 0 and len(headend.records()) < kept
    ):
        time.sleep(0.3)
    assert agent.terminate() == 0, agent.output()[-3000:]
    assert len(headend.records()) + headend.duplicates >= kept


def test_bad_config_never_starts_the_agent(
    gateway_config: Callable[..., Path], gateway_agent: Callable[..., AgentProcess]
) -> None:
    config = gateway_config(radio={"channel": 500})
    agent = gateway_agent(config)
    assert agent.proc.wait(30) == 2
    assert "radio.channel (line" in agent.output()
