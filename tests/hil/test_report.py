"""``hil run`` and its report: JUnit XML in, an HTML page with real PNG plots out.

The unit half writes a small JUnit XML by hand; the run half runs real pytest children (a tiny
suite of our own, and one acceptance test against the emulated target) and reads what a bench
engineer would open: index.html and the images it references.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hil.report import (
    DELIVERY_PNG,
    SNR_PNG,
    ReportError,
    delivery_png,
    delivery_property,
    parse_junit,
    snr_property,
    write_report,
)

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SMALL_JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
 <testcase classname="acc.t" name="test_join" time="12.5">
  <properties>
   <property name="join_s" value="9.1"/>
   <property name="snr_db:MTR-0001" value="14.5"/>
   <property name="snr_db:MTR-0002" value="6.25"/>
  </properties>
 </testcase>
 <testcase classname="acc.t" name="test_reads" time="30.0">
  <properties>
   <property name="delivery" value="[[0, 0, 0], [10, 6, 4], [20, 12, 12]]"/>
   <property name="delivered:MTR-0001" value="4"/>
  </properties>
  <failure message="AssertionError: 3 of 12 readings lost">trace</failure>
 </testcase>
 <testcase classname="acc.t" name="test_power" time="0.01">
  <skipped type="pytest.skip" message="target lacks feature meter-power">acc/t.py:9: x</skipped>
 </testcase>
 <testcase classname="acc.t" name="test_broken" time="0.2">
  <error message="failed on setup with &quot;OSError: no board&quot;">trace</error>
 </testcase>
</testsuite></testsuites>
"""


class _Page(HTMLParser):
    """The images and the table rows (cell texts) of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def read_page(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    return page


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk of a PNG (after checking the signature)."""
    assert data[:8] == PNG_SIGNATURE, data[:8]
    assert data[12:16] == b"IHDR", data[12:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_images(index: Path) -> _Page:
    """Every image the page references exists next to it and is a real, non-empty PNG."""
    page = read_page(index)
    assert sorted(page.images) == sorted([SNR_PNG, DELIVERY_PNG]), page.images
    for src in page.images:
        data = (index.parent / src).read_bytes()
        width, height = png_size(data)
        assert width >= 400 and height >= 200, (src, width, height)
        assert len(data) > 2000, (src, len(data))  # axes, labels: not a blank canvas
    return page


def outcomes_on_page(page: _Page) -> dict[str, str]:
    """test name -> outcome, from the page's table (header row skipped)."""
    return {row[0].rsplit("::", 1)[-1]: row[1] for row in page.rows[1:]}


def test_report_from_a_small_junit_xml(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(SMALL_JUNIT, encoding="utf-8")
    index = write_report(junit, tmp_path, title="bench 3")
    page = assert_images(index)
    assert outcomes_on_page(page) == {
        "test_join": "passed",
        "test_reads": "failed",
        "test_power": "skipped",
        "test_broken": "error",
    }
    rows = {row[0].rsplit("::", 1)[-1]: row for row in page.rows[1:]}
    assert rows["test_power"][-1] == "target lacks feature meter-power"  # the skip's reason
    assert "3 of 12 readings lost" in rows["test_reads"][-1]
    assert (
        "join_s = 9.1" in rows["test_join"][3] and "snr_db:MTR-0002 = 6.25" in rows["test_join"][3]
    )
    assert "delivery = 3 samples" in rows["test_reads"][3]
    text = index.read_text(encoding="utf-8")
    assert "4 tests: 1 passed, 1 failed, 1 error, 1 skipped" in text
    assert '<a href="junit.xml">' in text

    result = parse_junit(SMALL_JUNIT)
    join, reads = result.cases[0], result.cases[1]
    assert join.snr_db == {"MTR-0001": 14.5, "MTR-0002": 6.25}
    assert [(s.t_s, s.produced, s.delivered) for s in reads.delivery] == [
        (0.0, 0, 0),
        (10.0, 6, 4),
        (20.0, 12, 12),
    ]
    assert reads.delivered == {"MTR-0001": 4} and reads.time_s == 30.0


def test_plots_draw_the_measurements_not_a_placeholder(tmp_path: Path) -> None:
    """With data the plots differ from the 'nothing recorded' ones; per-meter counts are
    drawn when no test recorded a delivery curve."""
    empty = tmp_path / "empty"
    (tmp_path / "none.xml").write_text(
        '<testsuite><testcase classname="a" name="t" time="1"/></testsuite>', encoding="utf-8"
    )
    write_report(tmp_path / "none.xml", empty)
    full = tmp_path / "full"
    (tmp_path / "full.xml").write_text(SMALL_JUNIT, encoding="utf-8")
    write_report(tmp_path / "full.xml", full)
    for name in (SNR_PNG, DELIVERY_PNG):
        assert (empty / name).read_bytes() != (full / name).read_bytes(), name
    cases = parse_junit(SMALL_JUNIT).cases
    counts_only = [c for c in cases if not c.delivery] + [
        parse_junit(
            '<testsuite><testcase name="r"><properties>'
            '<property name="delivered:MTR-0009" value="7"/></properties></testcase></testsuite>'
        ).cases[0]
    ]
    bars = delivery_png(counts_only)
    assert png_size(bars) == png_size(delivery_png(cases))
    assert bars != delivery_png(cases) and bars != (empty / DELIVERY_PNG).read_bytes()


def test_property_helpers_round_trip_through_the_parser() -> None:
    name, value = snr_property("MTR-0004", 11)
    dname, dvalue = delivery_property([(0.5, 3, 1), (1.5, 6, 6)])
    root = ET.Element("testsuite")
    case = ET.SubElement(root, "testcase", name="t", time="0.1")
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name=name, value=str(value))
    ET.SubElement(props, "property", name=dname, value=dvalue)
    (parsed,) = parse_junit(ET.tostring(root)).cases
    assert parsed.snr_db == {"MTR-0004": 11.0}
    assert [(s.t_s, s.produced, s.delivered) for s in parsed.delivery] == [(0.5, 3, 1), (1.5, 6, 6)]


@pytest.mark.parametrize(
    ("xml", "says"),
    [
        ("<testsuite><testcase", "does not parse"),
        ("<html/>", "root is <html>"),
        ('<testsuite><testcase classname="c"/></testsuite>', "has no name"),
        ('<testsuite><testcase name="t" time="soon"/></testsuite>', "time: 'soon' is not a number"),
        (
            '<testsuite><testcase name="t"><properties><property name="snr_db:M1" value="nan"/>'
            "</properties></testcase></testsuite>",
            "snr_db:M1: 'nan' is not finite",
        ),
        (
            '<testsuite><testcase name="t"><properties><property name="snr_db:" value="3"/>'
            "</properties></testcase></testsuite>",
            "names no link",
        ),
        (
            '<testsuite><testcase name="t"><properties><property name="delivery" value="[[1, 2]]"/>'
            "</properties></testcase></testsuite>",
            "delivery[0] is not [t_s, produced, delivered]",
        ),
        (
            '<testsuite><testcase name="t"><properties><property name="delivery" value="{"/>'
            "</properties></testcase></testsuite>",
            "delivery is not JSON",
        ),
        (
            '<testsuite><testcase name="t"><properties><property name="delivered:M" value="2.5"/>'
            "</properties></testcase></testsuite>",
            "'2.5' is not a count",
        ),
    ],
)
def test_bad_junit_is_a_report_error_naming_what(xml: str, says: str) -> None:
    with pytest.raises(ReportError) as info:
        parse_junit(xml)
    assert says in str(info.value)


def test_no_junit_xml_gives_a_page_saying_so(tmp_path: Path) -> None:
    index = write_report(
        tmp_path / "junit.xml", tmp_path / "out", note="pytest exited with code 3."
    )
    text = index.read_text(encoding="utf-8")
    assert "pytest exited with code 3. pytest wrote no JUnit XML (junit.xml)." in text
    assert "0 tests" in text
    assert_images(index)


def hil_run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil", "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SMALL_SUITE = """
import json

import pytest

def test_measures(record_property):
    record_property("snr_db:MTR-0001", 12.0)
    record_property("delivery", json.dumps([[0, 0, 0], [5, 3, 2]]))

def test_fails():
    assert 1 + 1 == 3

@pytest.mark.skip(reason="no injector radio on this bench")
def test_skipped():
    pass
"""


def test_hil_run_of_a_suite_exits_with_pytests_code(tmp_path: Path) -> None:
    """Real pytest child: record_property reaches the report, the exit code is pytest's
    (1: a test failed; 0 once -k leaves only passing ones)."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_small.py").write_text(SMALL_SUITE, encoding="utf-8")
    failed = hil_run("--suite", str(suite), "--out", str(tmp_path / "a"), timeout=60)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    page = assert_images(tmp_path / "a" / "index.html")
    assert outcomes_on_page(page) == {
        "test_measures": "passed",
        "test_fails": "failed",
        "test_skipped": "skipped",
    }
    (case,) = [
        c for c in parse_junit((tmp_path / "a" / "junit.xml").read_bytes()).cases if c.snr_db
    ]
    assert case.snr_db == {"MTR-0001": 12.0} and len(case.delivery) == 2
    ok = hil_run(
        "--suite", str(suite), "--out", str(tmp_path / "b"), "-k", "measures", "--", "-q",
        timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert outcomes_on_page(read_page(tmp_path / "b" / "index.html")) == {"test_measures": "passed"}
    assert f"report: {tmp_path / 'b' / 'index.html'}" in ok.stdout


def test_hil_run_against_the_emulated_target(tmp_path: Path) -> None:
    """One real acceptance test against config/hil/emulated.yaml; the page names every test
    in the JUnit XML with its outcome, and its images are real PNGs."""
    out = tmp_path / "report"
    done = hil_run(
        "--hil-env", "config/hil/emulated.yaml", "--out", str(out),
        "-k", "test_meters_join_and_the_mesh_forms",
        timeout=170,
    )  # fmt: skip
    junit = out / "junit.xml"
    assert junit.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    cases = parse_junit(junit.read_bytes()).cases
    assert [c.name for c in cases] == ["test_meters_join_and_the_mesh_forms"]
    # The exit code is pytest's: 0 exactly when nothing failed.
    broken = any(c.outcome in ("failed", "error") for c in cases)
    assert done.returncode == (1 if broken else 0), (done.returncode, done.stdout[-3000:])
    page = assert_images(out / "index.html")
    assert outcomes_on_page(page) == {c.name: c.outcome for c in cases}
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "HIL run: emulated.yaml" in text


HANGING_SUITE = """
import time


def test_quick(record_property):
    record_property("snr_db:MTR-0002", 7.5)


def test_hangs():
    time.sleep(120)
"""


def test_hil_run_timeout_interrupts_pytest_and_still_reports(tmp_path: Path) -> None:
    """Past --timeout pytest is interrupted as by Ctrl-C: it writes the JUnit XML of what ran,
    the page says it was stopped, the exit code is pytest's 'interrupted' (2)."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_hang.py").write_text(HANGING_SUITE, encoding="utf-8")
    started = time.monotonic()
    done = hil_run(
        "--suite", str(suite), "--out", str(tmp_path / "r"), "--timeout", "3", timeout=60
    )
    assert time.monotonic() - started < 30, "the hanging test was not interrupted"
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    index = tmp_path / "r" / "index.html"
    assert "Stopped after --timeout 3 s. pytest exited with code 2." in index.read_text("utf-8")
    assert outcomes_on_page(assert_images(index)).get("test_quick") == "passed"


def test_hil_run_refuses_a_bad_timeout(tmp_path: Path) -> None:
    done = hil_run("--out", str(tmp_path / "r"), "--timeout", "-1", timeout=60)
    assert done.returncode == 2 and "the timeout must be more than 0 s" in done.stderr
    assert not (tmp_path / "r").exists()


def test_an_unreadable_junit_xml_gives_a_page_saying_so(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text("<testsuites><testsuite><testcase name=", encoding="utf-8")
    index = write_report(junit, tmp_path)
    text = index.read_text(encoding="utf-8")
    assert "junit.xml unreadable: JUnit XML does not parse" in text and "0 tests" in text
    assert_images(index)
