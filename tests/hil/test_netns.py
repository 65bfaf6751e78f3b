"""hil.netns: addresses on a private loopback are reachable inside and absent outside."""

from __future__ import annotations

import socket
import sys

import pytest

from hil.netns import NetnsError, run_in_netns, setup_script

PROBE = """
import socket, sys
srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
srv.bind(("fd00:7a:99::5", 4059))
cli = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
cli.sendto(b"ping", ("fd00:7a:99::5", 4059))
data, addr = srv.recvfrom(64)
print(data.decode(), addr[0])
"""


def test_a_private_loopback_address_is_reachable_inside() -> None:
    done = run_in_netns([sys.executable, "-c", PROBE], ["fd00:7a:99::5"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ping", "fd00:7a:99::5"]


def test_the_address_does_not_exist_outside() -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with sock, pytest.raises(OSError):
        sock.bind(("fd00:7a:99::5", 4059))


def test_bad_addresses_are_named() -> None:
    with pytest.raises(NetnsError, match="'fd00::zz' is not an IP address"):
        setup_script(["fd00::zz"])
    assert "ip addr add 127.0.0.9/32 dev lo" in setup_script(["127.0.0.9"])
