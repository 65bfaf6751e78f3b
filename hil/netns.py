"""Run a command in a network namespace of its own, with extra addresses on its loopback.

Why: a gateway beside wsbrd reaches meters at their mesh IPv6 addresses through the kernel. A
test needs many such addresses to be real and local without touching the host's network, and
only ``::1`` is loopback in the host namespace. A fresh namespace (``unshare --net``, as root)
has its own ``lo``: every address put there is reachable from inside and from nowhere else, so
nothing leaves the machine. Everything the command starts (broker, dbus-daemon, agent) lives in
the namespace with it, and ends with it.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


class NetnsError(RuntimeError):
    """The namespace cannot be made here (not root, no ``unshare``/``ip``); says which."""


def _check_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise NetnsError(f"{text!r} is not an IP address") from None


def setup_script(addresses: Sequence[str]) -> str:
    """The shell lines that bring ``lo`` up with ``addresses`` (IPv6 without DAD, so they can
    be bound at once)."""
    lines = ["set -e", "ip link set lo up"]
    for text in addresses:
        addr = _check_address(text)
        if ":" in addr:
            lines.append(f"ip -6 addr add {addr}/128 dev lo nodad")
        else:
            lines.append(f"ip addr add {addr}/32 dev lo")
    return "\n".join(lines)


def run_in_netns(
    argv: Sequence[str],
    addresses: Sequence[str] = (),
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a new network namespace whose ``lo`` carries ``addresses``; its
    output is captured. Raises :class:`NetnsError` when namespaces are not available."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise NetnsError(f"{tool} not found (Debian packages util-linux and iproute2)")
    script = setup_script(addresses) + "\nexec " + shlex.join(argv)
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        cwd=cwd,
        check=False,
    )
    if done.returncode != 0 and "unshare failed" in done.stderr:
        raise NetnsError(f"cannot create a network namespace: {done.stderr.strip()}")
    return done
