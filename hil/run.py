"""``hil run``: the acceptance suite against one environment, then the report.

pytest runs in a child process (the same interpreter) so a crash or a hung fixture of the suite
cannot take the report down with it, and the rig's pytest plugin loads exactly as in CI. The
exit code is pytest's, so a CI job or a bench script can gate on it.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hil.report import write_report

ACCEPTANCE = Path("tests/hil/acceptance")
CHECKOUT = Path(__file__).resolve().parent.parent  # the source tree hil/ was loaded from
JUNIT_NAME = "junit.xml"
GRACE_S = 60.0  # for the suite's fixtures to tear down (agents, broker) after an interrupt


@dataclass(frozen=True)
class RunOptions:
    env: Path | None
    out: Path
    suite: Path | None = None
    keyword: str | None = None
    extra: tuple[str, ...] = ()
    timeout_s: float | None = None


def default_suite(cwd: Path) -> Path:
    """The acceptance suite of the checkout in ``cwd``, else of the one ``hil`` runs from.

    (An installed wheel has no tests: then the bench passes ``--suite``.)"""
    for root in (cwd, CHECKOUT):
        if (root / ACCEPTANCE).is_dir():
            return root / ACCEPTANCE
    return cwd / ACCEPTANCE  # pytest names the missing path and exits 4


def pytest_argv(options: RunOptions, cwd: Path) -> list[str]:
    """The child pytest's command line (xunit1: pytest keeps record_property quiet there)."""
    suite = options.suite if options.suite is not None else default_suite(cwd)
    argv = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider"]
    argv += ["--junitxml", str(options.out / JUNIT_NAME), "-o", "junit_family=xunit1"]
    if options.env is not None:
        argv += ["--hil-env", str(options.env)]
    if options.keyword:
        argv += ["-k", options.keyword]
    argv += list(options.extra)
    return argv


def run(options: RunOptions, cwd: Path | None = None) -> int:
    """Run the suite, write ``OUT/index.html`` with its plots; return pytest's exit code."""
    cwd = (cwd or Path.cwd()).resolve()
    # The child runs in ``cwd``; the report is written from here: both must see the same paths.
    options = replace(
        options,
        out=options.out.resolve(),
        env=None if options.env is None else options.env.resolve(),
        suite=None if options.suite is None else options.suite.resolve(),
    )
    options.out.mkdir(parents=True, exist_ok=True)
    junit = options.out / JUNIT_NAME
    junit.unlink(missing_ok=True)  # a stale file from an earlier run must not be reported
    proc = subprocess.Popen(pytest_argv(options, cwd), cwd=cwd)
    timed_out = _wait(proc, options.timeout_s)
    code = proc.returncode
    env_name = options.env.name if options.env is not None else "emulated (default)"
    note = "" if code in (0, 1, 5) else f"pytest exited with code {code}."
    if timed_out:
        note = f"Stopped after --timeout {options.timeout_s:g} s. {note}"
    index = write_report(junit, options.out, title=f"HIL run: {env_name}", note=note)
    print(f"report: {index}", flush=True)
    return code


def _wait(proc: subprocess.Popen[bytes], timeout_s: float | None) -> bool:
    """Wait for pytest; True if it ran past ``timeout_s`` and was interrupted.

    Interrupting is SIGINT, as a Ctrl-C: pytest then tears its fixtures down (agent processes,
    the broker) and still writes the JUnit XML of what ran. A Ctrl-C at the terminal reaches
    pytest by itself, so here it only means: keep waiting for that. Killed only past a grace.
    """
    timed_out = False
    try:
        proc.wait(timeout_s)
        return False
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.send_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pass
    try:
        proc.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return timed_out


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be more than 0 s")
    return value


def add_parser_args(parser: argparse.ArgumentParser) -> None:
    """The ``hil run`` options (kept here so the CLI module only wires the subcommand)."""
    parser.add_argument("--hil-env", type=Path, default=None, help="environment file")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    parser.add_argument(
        "--suite", type=Path, default=None, help=f"tests to run (default: {ACCEPTANCE})"
    )
    parser.add_argument(
        "--timeout",
        dest="timeout_s",
        type=_seconds,
        default=None,
        help="interrupt the suite after this many seconds (the report shows what ran)",
    )
    parser.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="further pytest options after --, e.g. -- -x -v",
    )


def options_from(ns: argparse.Namespace, extra: Sequence[str] = ()) -> RunOptions:
    """RunOptions from the parsed ``hil run`` arguments."""
    passed = list(getattr(ns, "pytest_args", None) or [])
    if passed[:1] == ["--"]:
        passed = passed[1:]
    return RunOptions(
        env=ns.hil_env,
        out=ns.out,
        suite=ns.suite,
        keyword=ns.keyword,
        extra=(*passed, *extra),
        timeout_s=getattr(ns, "timeout_s", None),
    )


def cmd_run(ns: argparse.Namespace) -> int:
    """The ``hil run`` subcommand."""
    return run(options_from(ns))
