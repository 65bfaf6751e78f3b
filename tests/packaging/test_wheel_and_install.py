"""The wheel a field laptop installs: built offline, installed into a fresh venv with the base
dependencies only (no gateway extras, no dev tools), and hes-diag runs there.

Offline, because CI and this rig have no package index: the wheel is built with
``pip wheel --no-deps --no-build-isolation`` from a copy of the sources (the shared checkout
stays free of build/), and the dependencies come from this test venv, repacked as wheels from
their installed files (RECORD). pip's real resolver then installs the project's wheel with
``--no-index --find-links``: a base requirement that drifted into an extra, or a module that
imports a gateway-only package at import time, fails here as it would on a laptop.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE")
PACKAGES = ("firmware_agent", "drivers", "hil")
GATEWAY_ONLY = ("spidev", "pyudev")
DEV_ONLY = ("pytest", "hypothesis", "mypy")

packaging_requirements = pytest.importorskip(
    "packaging.requirements", reason="packaging (a pytest dependency) is needed to read markers"
)
pytest.importorskip(
    "wheel", reason="the wheel package (dev extra) is needed for an offline bdist_wheel"
)


def _copy_sources(dest: Path) -> Path:
    src = dest / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(
            ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return src


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    out = work / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(_copy_sources(work))],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("wisun_gateway-*.whl")
    return wheel


def _metadata(wheel: Path) -> tuple[dict[str, list[str]], list[str], str]:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        msg = Parser().parsestr(zf.read(meta).decode())
        fields = {k: msg.get_all(k) or [] for k in ("Requires-Dist", "Requires-Python", "Name")}
        return fields, names, zf.read(entry).decode()


def test_wheel_metadata_keeps_gateway_and_dev_packages_in_extras(built_wheel: Path) -> None:
    fields, names, entry_points = _metadata(built_wheel)
    assert fields["Requires-Python"] == [">=3.11"]
    base = {
        packaging_requirements.Requirement(r).name.lower()
        for r in fields["Requires-Dist"]
        if "extra ==" not in r
    }
    assert {"pyserial", "rich", "pyyaml", "cryptography", "paho-mqtt"} <= base
    assert base.isdisjoint(GATEWAY_ONLY + DEV_ONLY), base
    gateway = [r for r in fields["Requires-Dist"] if 'extra == "gateway"' in r]
    assert {packaging_requirements.Requirement(r).name for r in gateway} >= set(GATEWAY_ONLY)
    for script in ("firmware-agent", "hes-diag", "hil"):
        assert f"{script} = " in entry_points
    assert not any(n.startswith("tests/") for n in names), "tests must not ship"
    for pkg in PACKAGES:
        assert f"{pkg}/py.typed" in names


# --- repack the base dependency closure from this venv ------------------------------------------


def _closure(requirements: list[str]) -> list[md.Distribution]:
    """Installed distributions the base requirements need, recursively (markers evaluated)."""
    seen: dict[str, md.Distribution] = {}
    todo = [packaging_requirements.Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = md.distribution(req.name)
        seen[key] = dist
        todo.extend(packaging_requirements.Requirement(r) for r in dist.requires or [])
    return list(seen.values())


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _repack(dist: md.Distribution, out: Path) -> Path:
    """An installed distribution back into a wheel: its site-packages files and dist-info."""
    files = [
        f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in str(f)
    ]
    info = next(str(f).split("/")[0] for f in files if ".dist-info/" in str(f))
    wheel_file = dist.read_text("WHEEL") or ""
    tags = [
        ln.split(":", 1)[1].strip().split("-")
        for ln in wheel_file.splitlines()
        if ln.startswith("Tag:")
    ]
    # several tags (py2-none-any, py3-none-any) compress to one name part: py2.py3-none-any
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))
    name = dist.metadata["Name"].replace("-", "_").replace(".", "_")
    target = out / f"{name}-{dist.version}-{tag}.whl"
    skip = {f"{info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    record: list[str] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            arc = str(f)
            path = Path(str(dist.locate_file(f)))
            if arc in skip or not path.is_file():
                continue
            data = path.read_bytes()
            zf.writestr(arc, data)
            record.append(_record_line(arc, data))
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return target


@pytest.fixture(scope="module")
def dependency_wheels(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of the base requirements and the gateway extra, repacked from this venv."""
    links = tmp_path_factory.mktemp("wheels")
    fields, _, _ = _metadata(built_wheel)
    wanted = [r for r in fields["Requires-Dist"] if "extra ==" not in r]
    wanted += [r.split(";")[0] for r in fields["Requires-Dist"] if 'extra == "gateway"' in r]
    for dist in _closure(wanted):
        _repack(dist, links)
    return links


def _offline_pip_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}


@pytest.fixture(scope="module")
def laptop_venv(
    built_wheel: Path, dependency_wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("laptop") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
         "--disable-pip-version-check", "--find-links", str(dependency_wheels), str(built_wheel)],
        capture_output=True, text=True, check=False, timeout=300, env=_offline_pip_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield venv


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # Outside the checkout, so the sources there cannot stand in for the installed package.
    return subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=60, cwd=venv,
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv)},
    )  # fmt: skip


def test_fresh_venv_has_no_gateway_extras_and_a_consistent_install(laptop_venv: Path) -> None:
    py = str(laptop_venv / "bin" / "python")
    for module in GATEWAY_ONLY + DEV_ONLY:
        probe = _run(laptop_venv, py, "-c", f"import {module}")
        assert probe.returncode != 0, f"{module} should not be installed on a laptop"
    check = _run(laptop_venv, py, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout
    where = _run(laptop_venv, py, "-c", "import firmware_agent; print(firmware_agent.__file__)")
    assert str(laptop_venv) in where.stdout, where


def test_console_scripts_run_on_the_laptop_install(laptop_venv: Path) -> None:
    bin_dir = laptop_venv / "bin"
    diag = _run(laptop_venv, str(bin_dir / "hes-diag"), "--help")
    assert diag.returncode == 0, diag.stderr
    assert "--check-snr" in diag.stdout
    version = _run(laptop_venv, str(bin_dir / "firmware-agent"), "--version")
    assert version.returncode == 0 and "0." in version.stdout + version.stderr, version
    example = ROOT / "config" / "gateway.example.yaml"
    checked = _run(laptop_venv, str(bin_dir / "firmware-agent"), "check-config", str(example))
    # the example names certificate files of a real gateway: a clear config error, exit 2
    assert checked.returncode == 2, checked
    assert "gateway.example.yaml" in checked.stderr


# --- scripts/install.sh into a staging root ------------------------------------------------------

INSTALL = ROOT / "scripts" / "install.sh"


def _install(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(INSTALL), "--destdir", str(stage), "--python", sys.executable, *args],
        capture_output=True, text=True, check=False, timeout=300, env=_offline_pip_env(),
    )  # fmt: skip


def test_install_script_stages_a_gateway_and_upgrades_without_touching_config(
    tmp_path: Path, built_wheel: Path, dependency_wheels: Path
) -> None:
    stage = tmp_path / "stage"
    pip_args = ("--pip-args", f"--no-index --find-links {dependency_wheels}")
    first = _install(stage, "--wheel", str(built_wheel), *pip_args)
    assert first.returncode == 0, first.stderr
    lib, systemd = "usr/local/lib", ROOT / "systemd"
    files = {
        f"{lib}/systemd/system/firmware-agent.service": systemd / "firmware-agent.service",
        f"{lib}/sysusers.d/firmware-agent.conf": systemd / "sysusers.d/firmware-agent.conf",
        f"{lib}/tmpfiles.d/firmware-agent.conf": systemd / "tmpfiles.d/firmware-agent.conf",
        "etc/udev/rules.d/60-wisun-radio.rules": systemd / "60-wisun-radio.rules",
        "etc/firmware-agent/gateway.yaml": ROOT / "config/gateway.example.yaml",
        "usr/local/share/doc/firmware-agent/overview.md": ROOT / "docs/overview.md",
    }
    for rel, source in files.items():
        assert (stage / rel).read_bytes() == source.read_bytes(), rel
    assert stat.S_IMODE((stage / "etc/firmware-agent/gateway.yaml").stat().st_mode) == 0o640
    link = stage / "opt/firmware-agent/venv"
    first_target = os.readlink(link)
    assert first_target.startswith("venvs/") and first_target.endswith("-0.1.0")
    # the gateway extras are in the gateway's venv (unlike the laptop's)
    probe = _run(link, str(link / "bin" / "python"), "-c", "import spidev, pyudev")
    assert probe.returncode == 0, probe.stderr

    config = stage / "etc/firmware-agent/gateway.yaml"
    config.write_text("# edited by the operator\n")
    time.sleep(1.1)  # a new venv name (they carry the time to the second)
    second = _install(stage, "--wheel", str(built_wheel), *pip_args)
    assert second.returncode == 0, second.stderr
    assert "keeping /etc/firmware-agent/gateway.yaml" in second.stdout
    assert config.read_text() == "# edited by the operator\n"
    second_target = os.readlink(link)
    assert second_target != first_target
    assert sorted(p.name for p in (stage / "opt/firmware-agent/venvs").iterdir()) == sorted(
        [first_target.split("/")[1], second_target.split("/")[1]]
    ), "the previous venv stays for a rollback"
    version = _run(link, str(link / "bin" / "firmware-agent"), "--version")
    assert version.returncode == 0, version.stderr


def test_install_script_refuses_bad_usage_and_a_failed_pip_leaves_the_link_alone(
    tmp_path: Path, dependency_wheels: Path
) -> None:
    bad = _install(tmp_path / "s", "--frobnicate")
    assert bad.returncode == 2 and "unknown option --frobnicate" in bad.stderr
    enable = _install(tmp_path / "s", "--enable")
    assert enable.returncode == 1 and "not with --destdir" in enable.stderr
    missing = _install(tmp_path / "s", "--wheel", str(tmp_path / "nope.whl"))
    assert missing.returncode == 1 and "no wheel at" in missing.stderr
    # from the source tree with an empty index: pip fails, nothing half-made is left
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = _install(tmp_path / "s", "--pip-args", f"--no-index --find-links {empty}")
    assert failed.returncode == 1 and "pip could not install" in failed.stderr
    assert not (tmp_path / "s/opt/firmware-agent/venv").exists()
    assert list((tmp_path / "s/opt/firmware-agent/venvs").iterdir()) == []
