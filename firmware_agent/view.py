"""The live terminal view (rich): meters, readings/s, spool depth, SNR, uplink state."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from firmware_agent.agent import Agent, Snapshot
from firmware_agent.clock import Clock
from firmware_agent.collector.scheduler import MeterStatus
from firmware_agent.mesh.neighbours import LinkThresholds, Neighbour


class RateMeter:
    """Readings per second over a sliding window of (time, total) samples."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, when: float, total: int) -> float:
        self._samples.append((when, total))
        while len(self._samples) > 2 and when - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (total - n0) / (when - t0) if when > t0 else 0.0


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def _link(nb: Neighbour | None, limits: LinkThresholds, now: float) -> Text:
    """The link's SNR class in its dashboard colour (seed 000: red silent, orange lossy/slow)."""
    if nb is None:
        return Text("–")
    colour = nb.colour(limits, now).value
    return Text(nb.snr_class(limits).value, style=colour)


def _error(status: MeterStatus) -> Text:
    """The last error by its operator name first (MAC Fail, Malformed Payload, a DLMS name)."""
    if status.last_error is None:
        return Text("")
    name = status.last_error_name or ""
    detail = status.last_error if not name else f"{name}: {status.last_error}"
    return Text(detail[:48], style="red" if name == "MAC Fail" else "")


def _etx(value: float | None) -> float | None:
    return None if value is None else value / 128


def render(snap: Snapshot, rate: float, now: float) -> Group:
    """One frame of the view, built from a snapshot only (so it can be tested without a TTY)."""
    uplink = (
        Text("connected", style="green")
        if snap.uplink_connected
        else Text(f"down ({snap.uplink_error or 'connecting'})", style="red")
    )
    radio = snap.radio.ncp_version if snap.radio else "not open"
    backend = snap.mesh.get("backend", "own")
    if backend != "own":
        radio = f"{backend} {snap.mesh.get('ncp_version') or ''}".strip()
    floor = _fmt(snap.noise_floor_dbm, ".1f", " dBm")
    header = Table.grid(padding=(0, 2))
    header.add_row(
        Text(f"gateway {snap.gateway_id}", style="bold"),
        Text(f"radio {radio}"),
        Text("uplink ") + uplink,
    )
    header.add_row(
        Text(f"readings/s {rate:.2f}"),
        Text(f"readings {snap.readings_total}  published {snap.published_records}"),
        Text(f"spool depth {snap.spool_depth}  noise floor {floor}"),
    )
    header.add_row(
        Text(f"alarms {snap.alarms_total}", style="bold red" if snap.alarms_total else ""),
        Text(f"quarantined {snap.quarantined}", style="yellow" if snap.quarantined else ""),
        Text(""),
    )
    limits = snap.link_limits or LinkThresholds()
    table = Table(expand=True)
    for col in (
        "meter",
        "state",
        "reads ok/fail",
        "last read",
        "readings",
        "hops",
        "RSSI dBm",
        "SNR dB",
        "ETX",
        "link",
        "error",
    ):
        table.add_column(col)
    estimated = snap.mesh.get("estimated") or {}
    for mv in snap.meters:
        st, nb, row = mv.status, mv.neighbour, mv.link_row or {}
        colour = {"ok": "green", "failing": "red", "pending": "yellow"}[st.state]
        age = None if st.last_success is None else now - st.last_success
        table.add_row(
            mv.config.id,
            Text(st.state, style=colour),
            f"{st.reads_ok}/{st.reads_failed}",
            _fmt(age, ".0f", " s ago"),
            str(st.readings),
            _fmt(mv.hops, "d"),
            _fmt(nb.rssi_dbm if nb else row.get("rssi_dbm"), ".0f"),
            # "~": an estimate (RSL minus a configured noise floor), not a measurement
            ("~" if nb is None and "snr_db" in estimated and row.get("snr_db") is not None else "")
            + _fmt(nb.snr_db if nb else row.get("snr_db")),
            _fmt(_etx(nb.etx if nb else row.get("etx")), ".2f"),
            _link(nb, limits, now),
            _error(st),
        )
    notes = [
        f"{snap.mesh.get('backend')} backend: {field} {why}"
        for field, why in sorted((snap.mesh.get("unavailable") or {}).items())
    ] + [
        f"{snap.mesh.get('backend')} backend: {field} ~ estimated, {how}"
        for field, how in sorted(estimated.items())
    ]
    if notes:
        table.caption = "\n".join(notes)
    return Group(header, table)


class LiveView:
    """Refreshes the view once a second while the agent runs (an async context manager)."""

    def __init__(self, agent: Agent, clock: Clock, console: Console | None = None) -> None:
        self.agent = agent
        self.clock = clock
        self.console = console or Console()
        self.rate = RateMeter()
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None

    def _frame(self) -> Group:
        snap = self.agent.snapshot()
        rate = self.rate.update(self.clock.monotonic(), snap.readings_total)
        return render(snap, rate, self.clock.now())

    async def _refresh(self) -> None:
        assert self._live is not None
        while True:
            self._live.update(self._frame(), refresh=True)
            await asyncio.sleep(1.0)

    async def __aenter__(self) -> LiveView:
        self._live = Live(self._frame(), console=self.console, auto_refresh=False, transient=False)
        self._live.start()
        self._task = asyncio.create_task(self._refresh())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._live is not None:
            self._live.update(self._frame(), refresh=True)
            self._live.stop()
