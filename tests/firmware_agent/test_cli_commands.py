"""The firmware-agent command: check-config, run's config-error path, usage, version, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firmware_agent.cli import EXIT_CONFIG, EXIT_OK, EXIT_SECURITY, main

CONFIG = """\
gateway:
  id: gw-1
radio:
  url: spinel+loop://r0
uplink:
  broker_url: mqtts://127.0.0.1:8883
  tls: {ca_file: pki/ca.crt, cert_file: pki/gw.crt, key_file: pki/gw.key}
spool:
  path: spool.sqlite
meters:
  - {id: M1, transport: mesh, address: "02:00:00:00:00:00:00:01"}
  - {id: M2, transport: mesh, address: "02:00:00:00:00:00:00:02"}
  - {id: M3, transport: tcp, address: 127.0.0.1}
"""
PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
OK_LINE = (
    "ok: gateway gw-1, radio spinel+loop://r0, broker mqtts://127.0.0.1:8883, "
    "3 meters (2 mesh, 1 tcp)\n"
)


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    pki = tmp_path / "pki"
    pki.mkdir(exist_ok=True)
    for name in ("ca.crt", "gw.crt", "gw.key"):
        (pki / name).write_text(PEM)
    (pki / "gw.key").chmod(0o600)
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def agent_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as systemd runs it."""
    script = Path(sys.executable).parent / "firmware-agent"
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    return subprocess.run(
        [str(script), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd
    )


# ---- check-config as a real process -----------------------------------------------------------


def test_check_config_ok_exits_0_with_a_summary(tmp_path: Path) -> None:
    done = agent_cli("check-config", write_config(tmp_path), cwd=tmp_path.parent)
    assert (done.returncode, done.stdout, done.stderr) == (0, OK_LINE, "")


def test_check_config_error_exits_2_with_the_message_on_stderr(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.replace("spinel+loop://r0", "tcp://radio"))
    done = agent_cli("check-config", path)
    assert done.returncode == EXIT_CONFIG
    assert done.stdout == ""
    assert done.stderr == (
        f"firmware-agent: {path}: radio.url (line 4): radio URL 'tcp://radio' must start with "
        "one of spinel+uart://, spinel+spi://, spinel+pty://, spinel+loop://\n"
    )


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.replace("  id: gw-1", "  id: gw-1\n  colour: red"))
    done = subprocess.run(
        [sys.executable, "-m", "firmware_agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_CONFIG
    assert "gateway.colour (line 3): unknown key 'colour'" in done.stderr


# ---- check-config in process (fast) -----------------------------------------------------------


def test_check_config_key_readable_by_others_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    (tmp_path / "pki" / "gw.key").chmod(0o644)
    assert main(["check-config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "uplink.tls.key_file (line 7): " in err
    assert "is readable by group/others (mode 0644); chmod 600 it" in err


def test_check_config_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["check-config", str(missing)]) == EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"firmware-agent: {missing}: cannot read {missing}: file not found\n"
    )


def test_check_config_malformed_yaml_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "gateway: {id: x\nradio: 1\n")
    assert main(["check-config", str(path)]) == EXIT_CONFIG
    assert "line 2: not valid YAML" in capsys.readouterr().err


def test_check_config_ok_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write_config(tmp_path))]) == EXIT_OK
    assert capsys.readouterr().out == OK_LINE


# ---- run: configuration errors never reach the agent ------------------------------------------

RUN_PROBE = """\
import sys
from firmware_agent.cli import main
code = main(sys.argv[1:])
print("agent imported" if "firmware_agent.agent" in sys.modules else "agent not imported")
sys.exit(code)
"""


def run_probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_PROBE, *args], capture_output=True, text=True, timeout=60
    )


def test_run_with_a_bad_config_exits_2_without_touching_the_agent(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.replace("mqtts://127.0.0.1:8883", "mqtt://127.0.0.1:1883"))
    done = run_probe("run", "--config", str(path), "--log-json")
    assert done.returncode == EXIT_CONFIG
    assert done.stdout == "agent not imported\n"
    assert f"firmware-agent: {path}: uplink.broker_url (line 6): plain " in done.stderr
    assert "is refused" in done.stderr


def test_run_with_an_insecure_key_exits_3_without_touching_the_agent(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "pki" / "gw.key").chmod(0o640)
    done = run_probe("run", "--config", str(path), "--duration", "1")
    assert done.returncode == EXIT_SECURITY
    assert done.stdout == "agent not imported\n"
    assert "uplink.tls.key_file (line 7): " in done.stderr and "chmod 600 it" in done.stderr


# ---- usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run"], "the following arguments are required: --config"),
        (["run", "--config", "x.yaml", "--duration", "-1"], "must be a positive number of seconds"),
        (["run", "--config", "x.yaml", "--duration", "soon"], "not a number of seconds: 'soon'"),
        (["run", "--config", "x.yaml", "--log-level", "LOUD"], "expected one of DEBUG, INFO"),
        (["check-config"], "the following arguments are required: FILE"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: firmware-agent")
    assert complaint in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("firmware-agent ") and out.strip().split()[-1][0].isdigit()


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "check-config" in out and "run" in out
    assert main(["run", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for option in ("--config", "--log-json", "--log-level", "--live", "--duration"):
        assert option in out
