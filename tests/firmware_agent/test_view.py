"""The live view renders from a snapshot alone: meters, readings/s, spool depth, SNR, uplink."""

from __future__ import annotations

from rich.console import Console

from drivers.transceiver import RadioInfo
from firmware_agent.agent import MeterView, Snapshot
from firmware_agent.collector.scheduler import MeterStatus
from firmware_agent.config import MeterConfig
from firmware_agent.mesh.neighbours import NeighbourTable
from firmware_agent.view import RateMeter, render


def _text(snapshot: Snapshot, rate: float) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(render(snapshot, rate, now=1000.0))
    return console.export_text()


def test_rate_meter_uses_a_sliding_window() -> None:
    rate = RateMeter(window_s=10)
    assert rate.update(0.0, 0) == 0.0
    assert rate.update(5.0, 50) == 10.0
    assert rate.update(10.0, 100) == 10.0
    # After the window has slid past the early samples, only recent progress counts.
    rate.update(20.0, 100)
    assert rate.update(25.0, 100) == 0.0


def test_render_shows_every_meter_with_link_quality() -> None:
    table = NeighbourTable()
    table.noise_sample(0, -115.0)
    mac = bytes.fromhex("0200000000000001")
    table.heard(mac, -80, 200, 0, when=990.0)
    table.transmitted(mac, attempts=2, acked=True)
    ok = MeterStatus("MTR-0001", reads_ok=4, readings=20, last_attempt=995.0, last_success=995.0)
    bad = MeterStatus(
        "MTR-0002", reads_failed=2, last_attempt=990.0, last_error="LinkTimeout: no reply"
    )
    secured = MeterStatus(
        "MTR-0003",
        reads_failed=1,
        last_attempt=990.0,
        last_error="CounterDesync: meter refused counter 17",
        last_error_name="MAC Fail",
    )
    snap = Snapshot(
        gateway_id="gateway-01",
        radio=RadioInfo((4, 3), "virtual-rcp/0.1", mac, ()),
        uplink_connected=True,
        uplink_error=None,
        published_records=18,
        spool_depth=2,
        readings_total=20,
        noise_floor_dbm=-115.0,
        meters=[
            MeterView(
                MeterConfig("MTR-0001", "mesh", "02:00:00:00:00:00:00:01"), ok, table.get(mac), 3
            ),
            MeterView(MeterConfig("MTR-0002", "udp", "192.0.2.7"), bad, None),
            MeterView(MeterConfig("MTR-0003", "udp", "192.0.2.8"), secured, None),
        ],
        alarms_total=3,
        quarantined=1,
    )
    text = _text(snap, rate=1.5)
    assert "readings/s 1.50" in text and "spool depth 2" in text and "connected" in text
    line1 = next(ln for ln in text.splitlines() if "MTR-0001" in ln)
    assert (
        "ok" in line1 and "4/0" in line1 and "-80" in line1 and "35.0" in line1 and "2.00" in line1
    )
    cells = [c.strip() for c in line1.split("│")]
    assert "3" in cells  # hops on the preferred path
    assert cells.count("ok") == 2  # the read state and the link's SNR class
    line2 = next(ln for ln in text.splitlines() if "MTR-0002" in ln)
    assert "failing" in line2 and "0/2" in line2 and "LinkTimeout" in line2
    line3 = next(ln for ln in text.splitlines() if "MTR-0003" in ln)
    assert "MAC Fail: CounterDesync" in line3  # the operator's name for it comes first
    assert "alarms 3" in text and "quarantined 1" in text


def test_beside_an_external_border_router_the_view_says_what_it_cannot_show() -> None:
    from firmware_agent.mesh.backend import NOT_AVAILABLE, empty_row

    first_hop = bytes.fromhex("0200000000000001")
    row = empty_row(first_hop) | {"rssi_dbm": -71, "rsl_in_dbm": -72.0, "snr_db": 28.0}
    status = MeterStatus("MTR-0001", reads_ok=1, readings=5, last_attempt=995.0, last_success=995.0)
    snap = Snapshot(
        gateway_id="gateway-01",
        radio=None,
        uplink_connected=True,
        uplink_error=None,
        published_records=5,
        spool_depth=0,
        readings_total=5,
        noise_floor_dbm=None,
        meters=[
            MeterView(
                MeterConfig("MTR-0001", "mesh", "02:00:00:00:00:00:00:01"), status, None, 2, row
            )
        ],
        mesh={
            "backend": "wsbrd",
            "ncp_version": "wsbrd v2.1",
            "unavailable": {"etx": f"{NOT_AVAILABLE}: wsbrd reports no ETX"},
            "estimated": {"snr_db": "RSL minus the configured noise floor of -100 dBm"},
        },
    )
    text = _text(snap, 0.0)
    line = next(x for x in text.splitlines() if "MTR-0001" in x)
    assert "-71" in line and "~28.0" in line
    assert "radio wsbrd wsbrd v2.1" in text
    assert "wsbrd backend: etx not available from this backend: wsbrd reports no ETX" in text
    assert "snr_db ~ estimated, RSL minus the configured noise floor of -100 dBm" in text
