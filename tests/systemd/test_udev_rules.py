"""The shipped udev rules: well-formed, in step with drivers.discover, and doing what they say.

Debian 12 ships systemd 252, whose udevadm has no ``verify`` (added in 253), and this container has
no udevadm at all; so besides running ``udevadm verify`` where it exists, the test parses every
rule and runs the file through a small evaluator of the subset of udev semantics it uses, against
udev data shaped like real boards (tests/drivers/udev_boards.json).
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drivers.discover import KNOWN_USB_RADIOS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "systemd" / "60-wisun-radio.rules"
UNIT = ROOT / "systemd" / "firmware-agent.service"
FIXTURES = json.loads((ROOT / "tests" / "drivers" / "udev_boards.json").read_text())["boards"]

# udev.rules(7): keys that only match, keys that only assign, keys that do either.
MATCH_ONLY = {
    "ACTION",
    "DEVPATH",
    "KERNEL",
    "KERNELS",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "DRIVER",
    "DRIVERS",
    "ATTRS",
    "TAGS",
    "TEST",
    "PROGRAM",
    "RESULT",
    "CONST",
}
BOTH = {"ENV", "ATTR", "SYSCTL", "TAG", "SYMLINK", "NAME"}
ASSIGN_ONLY = {"OWNER", "GROUP", "MODE", "SECLABEL", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS"}
KNOWN = MATCH_ONLY | BOTH | ASSIGN_ONLY
PAIR = re.compile(
    r"\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]*)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)"
    r'\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*(?P<sep>,|$)'
)


@dataclass
class Pair:
    key: str
    attr: str | None
    op: str
    value: str

    @property
    def is_match(self) -> bool:
        return self.op in ("==", "!=")


@dataclass
class Rule:
    line: int
    pairs: list[Pair] = field(default_factory=list)


def parse(text: str) -> list[Rule]:
    """Every non-comment line (with backslash continuations) as KEY op "value" pairs, or fail."""
    rules: list[Rule] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rule, pos = Rule(start), 0
        while pos < len(line):
            m = PAIR.match(line, pos)
            assert m is not None, f"line {start}: cannot parse at {line[pos:]!r}"
            rule.pairs.append(Pair(m["key"], m["attr"], m["op"], m["value"]))
            pos = m.end()
            if m["sep"] == "":
                assert not line[pos:].strip(), f"line {start}: trailing text {line[pos:]!r}"
                break
        rules.append(rule)
    assert not pending, "file ends inside a continued line"
    return rules


def test_every_rule_parses_with_known_keys_and_fitting_operators() -> None:
    rules = parse(RULES.read_text())
    assert len(rules) >= 10
    for rule in rules:
        for p in rule.pairs:
            assert p.key in KNOWN, f"line {rule.line}: unknown key {p.key}"
            if p.is_match:
                assert p.key in MATCH_ONLY | BOTH, f"line {rule.line}: {p.key} cannot match"
            else:
                assert p.key in ASSIGN_ONLY | BOTH, f"line {rule.line}: {p.key} cannot assign"
            if p.key in ("ATTRS", "ATTR", "ENV"):
                assert p.attr, f"line {rule.line}: {p.key} needs {{name}}"
        if any(p.key == "LABEL" for p in rule.pairs):
            assert len(rule.pairs) == 1, f"line {rule.line}: LABEL stands alone"


def test_gotos_jump_forward_to_existing_labels() -> None:
    rules = parse(RULES.read_text())
    labels = {p.value: i for i, r in enumerate(rules) for p in r.pairs if p.key == "LABEL"}
    for i, rule in enumerate(rules):
        for p in rule.pairs:
            if p.key == "GOTO":
                assert p.value in labels, f"line {rule.line}: no LABEL {p.value}"
                assert labels[p.value] > i, f"line {rule.line}: udev only jumps forward"


def test_group_is_the_units_group_and_ordering_is_after_60_serial() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    groups = {p.value for r in parse(RULES.read_text()) for p in r.pairs if p.key == "GROUP"}
    assert groups == {unit["Service"]["Group"]}
    assert "60-serial.rules" < RULES.name < "70-", "usb_id properties must be set before us"


def test_usb_ids_match_drivers_discover_known_radios() -> None:
    in_rules: set[tuple[str, str, str | None]] = set()
    for rule in parse(RULES.read_text()):
        attrs = {p.attr: p.value for p in rule.pairs if p.key == "ATTRS" and p.op == "=="}
        if "idVendor" not in attrs:
            continue
        env = {p.attr: p.value for p in rule.pairs if p.key == "ENV" and p.op == "=="}
        for product in attrs["idProduct"].split("|"):
            in_rules.add((attrs["idVendor"], product, env.get("ID_USB_INTERFACE_NUM")))
    known = {(r.vendor_id, r.model_id, r.interface) for r in KNOWN_USB_RADIOS}
    assert in_rules == known


# --- a small evaluator of the udev subset the file uses ---------------------------------------


def _glob(value: str | None, pattern: str) -> bool:
    """udev patterns: shell globs, '|' separates alternatives; a missing value is ''."""
    return any(fnmatch.fnmatchcase(value or "", alt) for alt in pattern.split("|"))


def _node_holds(node: dict[str, Any], pairs: list[Pair]) -> bool:
    for p in pairs:
        if p.key == "SUBSYSTEMS":
            value = node["subsystem"]
        elif p.key == "KERNELS":
            value = node["sys_path"].rsplit("/", 1)[1]
        elif p.key == "DRIVERS":
            value = node["properties"].get("DRIVER")
        else:  # ATTRS: an absent attribute never matches
            if p.attr not in node["attributes"]:
                return False
            value = node["attributes"][p.attr]
        if _glob(value, p.value) != (p.op == "=="):
            return False
    return True


def run_rules(entry: dict[str, Any], action: str = "add") -> dict[str, Any]:
    """What the rules file does to one device: final env, GROUP, MODE, SYMLINKs."""
    device = entry["device"]
    env = dict(device["properties"])
    kernel = device["sys_path"].rsplit("/", 1)[1]
    chain = [device, *entry["ancestors"]]
    out: dict[str, Any] = {"env": env, "GROUP": None, "MODE": None, "SYMLINK": []}
    rules = parse(RULES.read_text())
    i = 0
    while i < len(rules):
        pairs = rules[i].pairs
        i += 1
        device_checks = [
            p for p in pairs if p.is_match and p.key in ("ACTION", "SUBSYSTEM", "KERNEL", "ENV")
        ]
        parent_checks = [
            p
            for p in pairs
            if p.is_match and p.key in ("SUBSYSTEMS", "KERNELS", "DRIVERS", "ATTRS")
        ]
        ok = True
        for p in device_checks:
            value = {"ACTION": action, "SUBSYSTEM": device["subsystem"], "KERNEL": kernel}.get(
                p.key, env.get(p.attr or "")
            )
            ok = ok and _glob(value, p.value) == (p.op == "==")
        # all parent keys of one rule must hold on the same device of the chain
        if ok and parent_checks:
            ok = any(_node_holds(node, parent_checks) for node in chain)
        if not ok:
            continue
        for p in pairs:
            if p.is_match or p.key == "LABEL":
                continue
            value = re.sub(r"\$env\{([^}]*)\}", lambda m: env.get(m[1], ""), p.value)
            value = value.replace("%k", kernel)
            if p.key == "ENV":
                env[p.attr or ""] = value
            elif p.key == "SYMLINK":
                out["SYMLINK"].append(value)
            elif p.key in ("GROUP", "MODE"):
                out[p.key] = value
            elif p.key == "GOTO":
                i = next(
                    j
                    for j, r in enumerate(rules)
                    if r.pairs[0].value == value and r.pairs[0].key == "LABEL"
                )
    return out


@pytest.mark.parametrize(
    ("name", "symlink"),
    [
        ("cp210x", "wisun-radio-9a4c3f1e2b7de81190b3a1c2d4e5f607"),
        ("xds110_if00", "wisun-radio-L4100A7B"),
        ("nrf52840_dongle", "wisun-radio-F4CE36E1A2B3C4D5"),
        ("rpi_spidev0_0", "wisun-radio-spidev0.0"),
    ],
)
def test_radio_boards_get_the_group_and_a_stable_name(name: str, symlink: str) -> None:
    result = run_rules(FIXTURES[name])
    assert result["GROUP"] == "firmware-agent" and result["MODE"] == "0660"
    assert result["SYMLINK"] == [symlink]
    assert result["env"]["WISUN_RADIO"] == "1"
    if name != "rpi_spidev0_0":
        assert result["env"]["ID_MM_DEVICE_IGNORE"] == "1"


@pytest.mark.parametrize("name", ["xds110_if03", "ttyS0"])
def test_other_ttys_are_left_alone(name: str) -> None:
    result = run_rules(FIXTURES[name])
    assert result == {
        "env": FIXTURES[name]["device"]["properties"],
        "GROUP": None,
        "MODE": None,
        "SYMLINK": [],
    }


def test_unknown_usb_serial_and_remove_events_are_left_alone() -> None:
    entry = json.loads(json.dumps(FIXTURES["cp210x"]))
    for node in entry["ancestors"]:
        if node["attributes"].get("idVendor") == "10c4":
            node["attributes"]["idVendor"] = "1a86"  # a CH340, not one of ours
    assert run_rules(entry)["GROUP"] is None
    assert run_rules(FIXTURES["cp210x"], action="remove")["GROUP"] is None
    assert run_rules(FIXTURES["cp210x"], action="change")["GROUP"] == "firmware-agent"


def _udevadm_verify_help() -> str | None:
    """``udevadm verify --help`` text, or None where the verb does not exist (systemd < 253)."""
    if shutil.which("udevadm") is None:
        return None
    probe = subprocess.run(
        ["udevadm", "verify", "--help"], capture_output=True, text=True, check=False
    )
    return probe.stdout if probe.returncode == 0 else None


@pytest.mark.skipif(
    _udevadm_verify_help() is None,
    reason="no `udevadm verify` here (needs systemd >= 253; Debian 12 has 252)",
)
def test_udevadm_verify_is_clean() -> None:
    style = ["--no-style"] if "--no-style" in (_udevadm_verify_help() or "") else []
    result = subprocess.run(
        ["udevadm", "verify", *style, str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
