"""The rig's report: pytest's JUnit XML turned into one HTML page with PNG plots.

A bench engineer should be able to *look* at a run: which tests passed, failed or were skipped
(and why), the SNR of every mesh link, and readings produced versus delivered to the head end.

Measurements travel in the JUnit XML itself, as the test's ``record_property`` entries, so no
extra plumbing between the tests and the report is needed:

- ``snr_db:<link>`` = SNR in dB of one link (e.g. ``snr_db:MTR-0003``);
- ``delivery`` = JSON list of ``[t_s, produced, delivered]`` samples (cumulative counts, e.g.
  the diag status's ``readings_total`` and the head end's record count, sampled while waiting);
- ``delivered:<meter>`` = readings of one meter the head end got (drawn as bars when no test
  recorded a ``delivery`` curve);
- anything else (``join_s``, ``on_demand_latency_s``...) is listed next to its test.

Use :func:`snr_property` / :func:`delivery_property` to build the first two:
``record_property(*snr_property("MTR-0003", 12.5))``. Runs must use ``junit_family=xunit1``
(``hil run`` does) since pytest warns about ``record_property`` under xunit2.
"""

from __future__ import annotations

import html
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not with the package
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SNR_PREFIX = "snr_db:"
DELIVERY = "delivery"
DELIVERED_PREFIX = "delivered:"
SNR_PNG = "snr.png"
DELIVERY_PNG = "delivery.png"
OUTCOMES = ("passed", "failed", "error", "skipped")


class ReportError(ValueError):
    """The JUnit XML (or a measurement in it) is not what pytest writes; names what was wrong."""


@dataclass(frozen=True)
class DeliverySample:
    t_s: float
    produced: int
    delivered: int


@dataclass(frozen=True)
class TestCase:
    """One test from the JUnit XML, with its outcome and its recorded measurements."""

    __test__ = False  # not a pytest test class

    classname: str
    name: str
    outcome: str  # one of OUTCOMES
    time_s: float
    message: str = ""
    snr_db: dict[str, float] = field(default_factory=dict)
    delivery: tuple[DeliverySample, ...] = ()
    delivered: dict[str, int] = field(default_factory=dict)
    properties: tuple[tuple[str, str], ...] = ()  # every record_property, in recorded order

    @property
    def nodeid(self) -> str:
        return f"{self.classname}::{self.name}" if self.classname else self.name


@dataclass(frozen=True)
class RunResult:
    cases: tuple[TestCase, ...]

    def count(self, outcome: str) -> int:
        return sum(1 for c in self.cases if c.outcome == outcome)


def snr_property(link: str, snr_db: float) -> tuple[str, float]:
    """A ``record_property`` entry for one link's SNR."""
    return (SNR_PREFIX + link, float(snr_db))


def delivery_property(samples: Iterable[tuple[float, int, int]]) -> tuple[str, str]:
    """A ``record_property`` entry for a delivery curve (t_s, produced, delivered)."""
    return (DELIVERY, json.dumps([[float(t), int(p), int(d)] for t, p, d in samples]))


def _float(text: str | None, what: str) -> float:
    try:
        value = float(text or "0")
    except ValueError:
        raise ReportError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ReportError(f"{what}: {text!r} is not finite")
    return value


def _delivery(text: str, where: str) -> tuple[DeliverySample, ...]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{where}: {DELIVERY} is not JSON ({exc.msg})") from None
    if not isinstance(rows, list):
        raise ReportError(f"{where}: {DELIVERY} is not a list")
    out = []
    for i, row in enumerate(rows):
        if not (
            isinstance(row, list)
            and len(row) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
        ):
            raise ReportError(f"{where}: {DELIVERY}[{i}] is not [t_s, produced, delivered]")
        out.append(DeliverySample(float(row[0]), int(row[1]), int(row[2])))
    return tuple(out)


def _suffix(key: str, prefix: str, where: str) -> str:
    name = key[len(prefix) :]
    if not name:
        raise ReportError(f"{where}: property {key!r} names no link or meter")
    return name


def _case(elem: ET.Element) -> TestCase:
    classname = elem.get("classname", "")
    name = elem.get("name")
    if not name:
        raise ReportError(f"testcase in {classname!r} has no name")
    where = f"{classname}::{name}"
    outcome, message = "passed", ""
    for tag, kind in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        child = elem.find(tag)
        if child is not None:
            outcome = kind
            message = child.get("message") or (child.text or "").strip()
            break
    snr: dict[str, float] = {}
    delivered: dict[str, int] = {}
    delivery: tuple[DeliverySample, ...] = ()
    props: list[tuple[str, str]] = []
    for prop in elem.iterfind("properties/property"):
        key, value = prop.get("name", ""), prop.get("value", "")
        props.append((key, value))
        if key.startswith(SNR_PREFIX):
            snr[_suffix(key, SNR_PREFIX, where)] = _float(value, f"{where}: {key}")
        elif key.startswith(DELIVERED_PREFIX):
            count = _float(value, f"{where}: {key}")
            if count < 0 or count != int(count):
                raise ReportError(f"{where}: {key}: {value!r} is not a count")
            delivered[_suffix(key, DELIVERED_PREFIX, where)] = int(count)
        elif key == DELIVERY:
            delivery = _delivery(value, where)
    return TestCase(
        classname=classname,
        name=name,
        outcome=outcome,
        time_s=_float(elem.get("time"), f"{where}: time"),
        message=message,
        snr_db=snr,
        delivery=delivery,
        delivered=delivered,
        properties=tuple(props),
    )


def parse_junit(text: str | bytes) -> RunResult:
    """The tests of one pytest ``--junitxml`` file (``testsuites`` or a bare ``testsuite``)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ReportError(f"JUnit XML does not parse: {exc}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ReportError(f"JUnit XML root is <{root.tag}>, not <testsuites>/<testsuite>")
    # An interrupted session (Ctrl-C, ``hil run --timeout``) ends with a bare <testcase/>
    # standing for the test that was running: nothing to report about it but the interrupt.
    return RunResult(
        tuple(_case(e) for e in root.iter("testcase") if e.get("name") or e.get("classname"))
    )


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def snr_png(cases: Sequence[TestCase]) -> bytes:
    """Bar chart of SNR per link (mean over the tests that measured it, with min..max)."""
    from matplotlib.figure import Figure  # Agg canvas: no display, no pyplot state

    per_link: dict[str, list[float]] = {}
    for case in cases:
        for link, value in case.snr_db.items():
            per_link.setdefault(link, []).append(value)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("SNR per link")
    if not per_link:
        _empty(ax, "no SNR measurements recorded")
        return _png(fig)
    links = sorted(per_link)
    means = [sum(per_link[k]) / len(per_link[k]) for k in links]
    lo = [m - min(per_link[k]) for m, k in zip(means, links, strict=True)]
    hi = [max(per_link[k]) - m for m, k in zip(means, links, strict=True)]
    ax.bar(range(len(links)), means, yerr=[lo, hi], capsize=3, color="tab:blue")
    ax.set_xticks(range(len(links)), links, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("SNR, dB")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def delivery_png(cases: Sequence[TestCase]) -> bytes:
    """Readings produced (dashed) vs delivered to the head end (solid) over time, per test."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Readings produced vs delivered to the head end")
    curves = [c for c in cases if c.delivery]
    if not curves:
        counts: dict[str, int] = {}
        for case in cases:
            counts.update(case.delivered)
        if not counts:
            _empty(ax, "no delivery measurements recorded")
            return _png(fig)
        meters = sorted(counts)
        ax.set_title("Readings delivered to the head end, per meter")
        ax.bar(range(len(meters)), [counts[m] for m in meters], color="tab:green")
        ax.set_xticks(range(len(meters)), meters, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("readings")
        ax.grid(axis="y", alpha=0.3)
        return _png(fig)
    for case in curves:
        t = [s.t_s for s in case.delivery]
        (line,) = ax.plot(
            t,
            [s.delivered for s in case.delivery],
            drawstyle="steps-post",
            label=f"{case.name} delivered",
        )
        ax.plot(
            t,
            [s.produced for s in case.delivery],
            linestyle="--",
            drawstyle="steps-post",
            color=line.get_color(),
            label=f"{case.name} produced",
        )
    ax.set_xlabel("time, s")
    ax.set_ylabel("readings (cumulative)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#c62828", "skipped": "#9e9e9e"}


def _measurements(case: TestCase) -> str:
    """The test's recorded properties, one a line (a delivery curve by its sample count)."""
    lines = [
        f"{key} = {len(case.delivery)} samples" if key == DELIVERY else f"{key} = {value}"
        for key, value in case.properties
    ]
    return "<br>".join(html.escape(line) for line in lines)


def render_html(result: RunResult, title: str, junit_name: str, note: str = "") -> str:
    """The report page: counts, one row per test (skips with reasons), the two plots."""
    e = html.escape
    counts = ", ".join(f"{result.count(o)} {o}" for o in OUTCOMES)
    rows = "\n".join(
        f'<tr class="{c.outcome}"><td>{e(c.nodeid)}</td>'
        f'<td style="color:{_COLOURS[c.outcome]}"><b>{c.outcome}</b></td>'
        f"<td>{c.time_s:.2f}</td><td>{_measurements(c)}</td>"
        f"<td><pre>{e(c.message)}</pre></td></tr>"
        for c in result.cases
    )
    note_html = f"<p><b>{e(note)}</b></p>" if note else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;vertical-align:top}}
pre{{margin:0;white-space:pre-wrap}}</style>
</head><body>
<h1>{e(title)}</h1>
{note_html}<p>{len(result.cases)} tests: {e(counts)}.
JUnit XML: <a href="{e(junit_name)}">{e(junit_name)}</a></p>
<h2>Plots</h2>
<p><img src="{SNR_PNG}" alt="SNR per link"></p>
<p><img src="{DELIVERY_PNG}" alt="delivery"></p>
<h2>Tests</h2>
<table><tr><th>test</th><th>outcome</th><th>time, s</th><th>measurements</th><th>message</th></tr>
{rows}
</table>
</body></html>
"""


def write_report(junit_xml: Path, out_dir: Path, title: str = "HIL run", note: str = "") -> Path:
    """Write index.html, snr.png and delivery.png next to the JUnit XML; returns index.html.

    A missing or unreadable JUnit file (pytest stopped before writing it, or killed while
    writing) gives a page saying so, not a crash: the run's exit code is what gates.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(())
    if not junit_xml.exists():
        note = (note + " " if note else "") + f"pytest wrote no JUnit XML ({junit_xml.name})."
    else:
        try:
            result = parse_junit(junit_xml.read_bytes())
        except ReportError as exc:
            note = (note + " " if note else "") + f"{junit_xml.name} unreadable: {exc}"
    (out_dir / SNR_PNG).write_bytes(snr_png(result.cases))
    (out_dir / DELIVERY_PNG).write_bytes(delivery_png(result.cases))
    try:
        junit_name = junit_xml.relative_to(out_dir).as_posix()
    except ValueError:
        junit_name = junit_xml.as_posix()
    index = out_dir / "index.html"
    index.write_text(render_html(result, title, junit_name, note), encoding="utf-8")
    return index
