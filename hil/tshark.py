"""tshark as the judge of our captures: one place that knows how to ask it.

Every capture test wants the same things: checksums validated (tshark skips them by default),
strict RPL source-route checks, the FCS trusted, port 4059 left as data (Wireshark has no DLMS
dissector and its STUN heuristic would claim the port), and stderr read for damage that tshark
reports without failing. Keeping those settings here means a test cannot forget one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PREFERENCES = (
    ("udp.check_checksum", "TRUE"),
    ("ipv6.perform_strict_rpl_srh_rfc_checking", "TRUE"),
    ("wpan.802154_fcs_ok", "TRUE"),
)

#: Display filter for every frame tshark finds fault with.
PROBLEMS = "_ws.malformed || _ws.expert.severity >= warning || wpan.fcs_ok == 0"

_DAMAGE = ("cut short", "appears to be damaged")


class TsharkError(RuntimeError):
    """tshark failed, or said the capture file itself is damaged."""


def available() -> bool:
    return shutil.which("tshark") is not None


def run(pcap: Path, *args: str) -> str:
    """tshark's output for ``pcap`` read with the house preferences plus ``args``."""
    command = ["tshark", "-r", str(pcap)]
    for name, value in PREFERENCES:
        command += ["-o", f"{name}:{value}"]
    command += ["-d", "udp.port==4059,data", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TsharkError(f"tshark exited {result.returncode} on {pcap}: {result.stderr.strip()}")
    damage = [line for line in result.stderr.splitlines() if any(d in line for d in _DAMAGE)]
    if damage:
        raise TsharkError(f"tshark says {pcap} is damaged: {damage[0]}")
    return result.stdout


def fields(pcap: Path, *names: str, display_filter: str | None = None) -> list[list[str]]:
    """One row per frame with the named fields ('' where a frame has none)."""
    args = ["-T", "fields", "-E", "separator=|"]
    for name in names:
        args += ["-e", name]
    if display_filter is not None:
        args += ["-Y", display_filter]
    return [line.split("|") for line in run(pcap, *args).splitlines()]


def problems(pcap: Path) -> str:
    """tshark's one-line summaries of every frame it flags (malformed, expert warnings or
    errors, bad FCS); empty when the capture is clean."""
    return run(pcap, "-Y", PROBLEMS)
