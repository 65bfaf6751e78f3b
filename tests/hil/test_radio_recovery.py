"""The agent carries on when its radio dies: kill the virtual RCP the agent spawned, mid-traffic.

The agent runs as its own process on the target's fixtures. Its radio is a ``spinel+pty://``
child; we find that child through /proc (it is the agent's child, and so ours to kill), kill it,
and expect the agent's log to report the lost link and the reopen, and readings from every meter
to keep reaching the head end, from the respawned radio.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hil.agent_process import AgentProcess
from hil.headend import HeadEnd


def fail(agent: AgentProcess, why: str) -> None:
    pytest.fail(f"{why}\n{agent.tail()}")


def children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (every thread's list, as the kernel keeps them)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # the thread ended while we looked
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return []


def rcp_child(agent: AgentProcess, other_than: int | None = None, timeout: float = 30.0) -> int:
    """The virtual RCP the agent spawned (``python -m hil rcp --pty ...``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            fail(agent, f"agent exited with {agent.proc.returncode}")
        for pid in children(agent.proc.pid):
            argv = cmdline(pid)
            if "hil" in argv and "rcp" in argv and pid != other_than:
                return pid
        time.sleep(0.1)
    fail(agent, f"no virtual RCP child of agent pid {agent.proc.pid} within {timeout} s")
    raise AssertionError("unreachable")


def exited(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` is gone or a zombie (nobody may reap it in a container)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def wait_for_readings(
    headend: HeadEnd, meter_ids: set[str], agent: AgentProcess, since: int, timeout: float
) -> list[dict[str, Any]]:
    """Records beyond the first ``since`` until every meter has one, or fail with the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = headend.records()[since:]
        if meter_ids <= {r["device_id"] for r in fresh}:
            return fresh
        if agent.proc.poll() is not None:
            fail(agent, f"agent exited with {agent.proc.returncode}")
        time.sleep(0.2)
    seen = {r["device_id"] for r in headend.records()[since:]}
    fail(agent, f"no readings from {sorted(meter_ids - seen)} within {timeout} s")
    raise AssertionError("unreachable")


def wait_for_log(agent: AgentProcess, text: str, timeout: float) -> int:
    """Position of ``text`` in the agent's log once it appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at = agent.output().find(text)
        if at >= 0:
            return at
        if agent.proc.poll() is not None:
            fail(agent, f"agent exited with {agent.proc.returncode} before logging {text!r}")
        time.sleep(0.1)
    fail(agent, f"agent never logged {text!r} within {timeout} s")
    raise AssertionError("unreachable")


@pytest.mark.hil_feature("virtual-rcp")
def test_agent_carries_on_after_its_virtual_rcp_is_killed(
    gateway_config: Callable[..., Path],
    headend: HeadEnd,
    meters: list[dict[str, Any]],
    gateway_agent: Callable[..., AgentProcess],
) -> None:
    meter_ids = {m["id"] for m in meters}
    agent = gateway_agent(gateway_config())
    wait_for_readings(headend, meter_ids, agent, since=0, timeout=60)
    first = rcp_child(agent)

    os.kill(first, signal.SIGKILL)  # the radio dies mid-traffic
    lost_at = wait_for_log(agent, "radio link lost", timeout=20)
    reopened_at = wait_for_log(agent, "radio reopened", timeout=30)
    assert lost_at < reopened_at
    second = rcp_child(agent, other_than=first)
    assert second != first
    assert agent.proc.poll() is None, agent.output()[-3000:]

    # Every meter is read again, through the respawned radio, and its readings arrive.
    since = len(headend.records())
    wait_for_readings(headend, meter_ids, agent, since=since, timeout=60)
    after_reopen = agent.output()[reopened_at:]
    for meter_id in meter_ids:
        assert f"read meter {meter_id}" in after_reopen, after_reopen[-3000:]

    assert agent.terminate() == 0, agent.output()[-3000:]
    assert exited(second), f"respawned virtual RCP {second} outlived the agent"
    log = agent.output()
    assert "stopped unexpectedly" not in log, log[-3000:]
    assert log.count("radio link lost") == 1, log[-3000:]
