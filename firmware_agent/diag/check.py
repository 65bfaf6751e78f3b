"""The SNR check's judgement, sans-IO: measured links in, per-link status, verdict, exit code and
the ``--json`` document out (schema: docs/schemas/diag-check-snr.json).

A link's SNR is the weaker of its two directions when both were measured: a meter we hear well
but that hears us badly still loses our requests. Exit codes (stable, documented):

- 0: every link answered and is at or above the threshold;
- 1: some link is below, did not answer, has no SNR yet, or no neighbour was found at all;
- 2: the gateway could not be asked (unreachable, refused, bad certificate: the reason says).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

Json = dict[str, Any]

EXIT_OK = 0
EXIT_BELOW = 1
EXIT_UNREACHABLE = 2
SCHEMA = "hes-diag/check-snr/1"
DEVICE_SCHEMA = "hes-diag/check-snr-device/1"
DEFAULT_THRESHOLD_DB = 12.0


@dataclass(frozen=True)
class LinkCheck:
    neighbour: str  # EUI-64 hex
    meter_id: str | None
    rssi_dbm: float | None
    noise_floor_dbm: float | None
    snr_db: float | None  # the weaker direction
    snr_in_db: float | None  # how the gateway (or the laptop) hears the neighbour
    snr_out_db: float | None  # how the neighbour hears the gateway (from its RSL IE)
    rsl_in_dbm: float | None
    rsl_out_dbm: float | None
    etx: float | None
    probes_sent: int | None
    probes_acked: int | None
    colour: str | None  # seed 000's dashboard colour: green / orange / red
    status: str  # ok | low | no_answer | unknown


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    text: str
    total: int
    ok: int
    below: int
    no_answer: int
    unknown: int


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def weaker(a: float | None, b: float | None) -> float | None:
    known = [x for x in (a, b) if x is not None]
    return min(known) if known else None


def evaluate(link: Json, threshold_db: float) -> LinkCheck:
    """One snr-check link (the API's ``links[]`` item, or a device measurement) judged."""
    snr_in, snr_out = _num(link.get("snr_in_db")), _num(link.get("snr_out_db"))
    snr = weaker(snr_in, snr_out)
    sent, acked = link.get("sent"), link.get("acked")
    if sent is not None and not acked:
        status = "no_answer"
    elif snr is None:
        status = "unknown"
    elif snr >= threshold_db:
        status = "ok"
    else:
        status = "low"
    return LinkCheck(
        neighbour=str(link.get("mac")),
        meter_id=link.get("meter_id"),
        rssi_dbm=_num(link.get("rssi_dbm")),
        noise_floor_dbm=_num(link.get("noise_floor_dbm")),
        snr_db=None if snr is None else round(snr, 1),
        snr_in_db=snr_in,
        snr_out_db=snr_out,
        rsl_in_dbm=_num(link.get("rsl_in_dbm")),
        rsl_out_dbm=_num(link.get("rsl_out_dbm")),
        etx=_num(link.get("etx")),
        probes_sent=sent,
        probes_acked=acked,
        colour=link.get("colour"),
        status=status,
    )


def passive_link(row: Json) -> Json:
    """A neighbour row as a check link, for a border router we cannot send probes through
    (wsbrd, a TI NCP): the SNR it reports or we estimate is the inward one, nothing is sent."""
    return {
        "mac": row.get("mac"),
        "meter_id": row.get("meter_id"),
        "rssi_dbm": row.get("rssi_dbm"),
        "noise_floor_dbm": row.get("noise_floor_dbm"),
        "snr_in_db": row.get("snr_db"),
        "snr_out_db": None,
        "rsl_in_dbm": row.get("rsl_in_dbm"),
        "rsl_out_dbm": row.get("rsl_out_dbm"),
        "etx": row.get("etx"),
        "colour": row.get("colour"),
    }


def mesh_notes(mesh: Json) -> list[str]:
    """One line per figure the gateway's backend cannot supply or only estimates."""
    backend = mesh.get("backend", "own")
    notes = [f"{field}: {why}" for field, why in sorted((mesh.get("unavailable") or {}).items())]
    notes += [
        f"{field}: estimated, {how}" for field, how in sorted((mesh.get("estimated") or {}).items())
    ]
    return [f"{backend} backend — {n}" for n in notes]


def verdict(checks: list[LinkCheck], threshold_db: float, where: str) -> Verdict:
    total = len(checks)
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "low", "no_answer")}
    unknown = total - sum(counts.values())
    ok, low, silent = counts["ok"], counts["low"], counts["no_answer"]
    if total == 0:
        return Verdict(EXIT_BELOW, f"{where}: no neighbours heard", 0, 0, 0, 0, 0)
    if ok == total:
        text = f"{where}: all {total} links at or above {threshold_db:g} dB SNR"
        return Verdict(EXIT_OK, text, total, ok, 0, 0, 0)
    parts = []
    if low:
        worst = min(c.snr_db for c in checks if c.status == "low" and c.snr_db is not None)
        parts.append(f"{low} below {threshold_db:g} dB (worst {worst:g} dB)")
    if silent:
        parts.append(f"{silent} did not answer")
    if unknown:
        parts.append(f"{unknown} without an SNR yet (no noise floor)")
    text = f"{where}: {ok} of {total} links OK; " + ", ".join(parts)
    return Verdict(EXIT_BELOW, text, total, ok, low, silent, unknown)


def _now_iso(now: float | None) -> str:
    t = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def check_document(
    gateway: str,
    url: str | None,
    threshold_db: float,
    checks: list[LinkCheck],
    result: Verdict,
    *,
    now: float | None = None,
    extra: Json | None = None,
    schema: str = SCHEMA,
) -> Json:
    """The ``--json`` output of a check that ran."""
    doc: Json = {
        "schema": schema,
        "gateway": gateway,
        "url": url,
        "checked_at": _now_iso(now),
        "threshold_db": threshold_db,
        "links": [asdict(c) for c in checks],
        "verdict": {
            "text": result.text,
            "total": result.total,
            "ok": result.ok,
            "below": result.below,
            "no_answer": result.no_answer,
            "unknown": result.unknown,
        },
        "exit_code": result.exit_code,
    }
    if extra:
        doc.update(extra)
    return doc


def error_document(
    gateway: str, url: str | None, kind: str, reason: str, *, now: float | None = None,
    schema: str = SCHEMA,
) -> Json:  # fmt: skip
    """The ``--json`` output when the gateway could not be asked (exit 2)."""
    return {
        "schema": schema,
        "gateway": gateway,
        "url": url,
        "checked_at": _now_iso(now),
        "error": {"kind": kind, "reason": reason},
        "exit_code": EXIT_UNREACHABLE,
    }
