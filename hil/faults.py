"""Fault-injection hooks of a HIL target: what a test may do to the world, not to the gateway.

A test never reaches into the emulator: it asks its target's :class:`TargetFaults` (the
``target_faults`` fixture) to power a meter off, fade a link, switch an interferer on, reset the
radio or put garbage on its serial line. On the emulated target these requests travel as one
JSON line each over a UNIX socket to the virtual RCP process (``hil rcp --control PATH``), whose
:class:`FaultWorld` applies them to its medium; on real boards the environment's power-control
command and the kernel's USB unbind do what they can, and the rest is :class:`FaultUnsupported`
(the test skips with that reason).

The command codec (:func:`parse_command`, :func:`encode_command`) and :class:`FaultWorld` are
sans-IO; :func:`serve_control` and the clients are the thin edges.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hil.medium import Interferer, Medium
    from hil.population import EmulatedMeter
    from hil.rcp import VirtualRcp

OPS = ("power", "fade", "interferer", "reset", "garbage", "unplug", "ping")
#: Where the emulated interferer sits and how loud it is: next to the gateway, far above a
#: meter's signal, so every link of the gateway drowns while it is on.
INTERFERER_POSITION = (5.0, 0.0)
INTERFERER_DBM = 10.0
MAX_GARBAGE = 65_536


class FaultError(Exception):
    """A fault request that cannot be applied; the message names what was wrong."""


class FaultUnsupported(FaultError):
    """The target has no way to inject this fault (a test then skips with this reason)."""


@dataclass(frozen=True)
class FaultCommand:
    """One request: ``op`` and its arguments (meter id, on/off, dB, byte count)."""

    op: str
    meter: str | None = None
    on: bool | None = None
    db: float | None = None
    count: int | None = None
    peer: str | None = None  # fade: the link's other end, a meter (None: the gateway's radio)


def _field(doc: dict[str, Any], key: str, kind: type, op: str) -> Any:
    if key not in doc:
        raise FaultError(f"fault {op!r} needs {key!r}")
    value = doc[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FaultError(f"fault {op!r}: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def parse_command(line: bytes) -> FaultCommand:
    """One JSON line → a checked command; :class:`FaultError` names the bad part."""
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FaultError(f"fault request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FaultError("fault request must be a JSON object")
    op = doc.get("op")
    if op not in OPS:
        raise FaultError(f"unknown fault op {op!r}; known: {', '.join(OPS)}")
    if op == "power":
        return FaultCommand(op, meter=_field(doc, "meter", str, op), on=_field(doc, "on", bool, op))
    if op == "fade":
        db = _field(doc, "db", float, op)
        if not 0.0 <= db <= 200.0:
            raise FaultError(f"fault 'fade': db must be within 0..200, got {db}")
        peer = _field(doc, "peer", str, op) if doc.get("peer") is not None else None
        return FaultCommand(op, meter=_field(doc, "meter", str, op), db=db, peer=peer)
    if op == "interferer":
        return FaultCommand(op, on=_field(doc, "on", bool, op))
    if op == "garbage":
        count = _field(doc, "count", int, op)
        if not 1 <= count <= MAX_GARBAGE:
            raise FaultError(f"fault 'garbage': count must be within 1..{MAX_GARBAGE}")
        return FaultCommand(op, count=count)
    return FaultCommand(op)


def encode_command(command: FaultCommand) -> bytes:
    doc = {k: v for k, v in command.__dict__.items() if v is not None}
    return json.dumps(doc).encode() + b"\n"


@dataclass
class FaultWorld:
    """The emulated world as fault hooks see it: the medium, the RCP, the meters by id."""

    medium: Medium
    rcp: VirtualRcp
    meters: dict[str, EmulatedMeter]
    garbage_seed: int = 0
    #: ``unplug``: the board goes away (the RCP process ends, its PTY with it); the host's
    #: driver then finds a fresh one, as after a USB replug. Set by whoever serves the world.
    on_unplug: Callable[[], None] | None = None
    _interferer: Interferer | None = field(default=None, init=False)
    applied: list[FaultCommand] = field(default_factory=list, init=False)

    def _meter(self, meter_id: str | None) -> EmulatedMeter:
        if meter_id not in self.meters:
            raise FaultError(f"no emulated meter {meter_id!r}; have {', '.join(self.meters)}")
        return self.meters[meter_id]

    def apply(self, command: FaultCommand) -> None:
        """Apply one command now (on the caller's event loop)."""
        if command.op == "power":
            self._meter(command.meter).node.set_power(bool(command.on))
        elif command.op == "fade":
            meter = self._meter(command.meter)
            other = self.rcp if command.peer is None else self._meter(command.peer).node
            self.medium.set_link_fade(other, meter.node, float(command.db or 0.0))
        elif command.op == "interferer":
            self._switch_interferer(bool(command.on))
        elif command.op == "reset":
            self.rcp.reboot()
        elif command.op == "garbage":
            self.rcp.inject_to_host(self._garbage(int(command.count or 0)))
        elif command.op == "unplug":
            if self.on_unplug is None:
                raise FaultUnsupported("this virtual RCP cannot be unplugged (no one serves it)")
            self.on_unplug()
        self.applied.append(command)

    def _switch_interferer(self, on: bool) -> None:
        if self._interferer is None:
            if not on:
                return
            channel = self.medium.channel(self.rcp)
            self._interferer = self.medium.add_interferer(
                INTERFERER_POSITION, INTERFERER_DBM, (channel,), on=True
            )
            return
        self._interferer.switch(on)

    def _garbage(self, count: int) -> bytes:
        """Line noise without HDLC flags (0x7E), so the host's decoder must resynchronise."""
        self.garbage_seed += 1
        out = bytearray()
        state = self.garbage_seed * 2654435761 & 0xFFFFFFFF
        while len(out) < count:
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            byte = (state >> 16) & 0xFF
            out.append(0x55 if byte == 0x7E else byte)
        return bytes(out)

    def handle_line(self, line: bytes) -> bytes:
        """One request line → one reply line (``{"ok": true}`` or the error)."""
        try:
            self.apply(parse_command(line))
        except (FaultError, ValueError) as exc:
            return json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n"
        return b'{"ok": true}\n'


async def serve_control(path: Path, world: FaultWorld) -> asyncio.AbstractServer:
    """Serve ``world`` on a UNIX socket at ``path`` (owner-only): one reply per request line."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(world.handle_line(line))
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    path.unlink(missing_ok=True)  # a socket left by an RCP that was unplugged (killed)
    server = await asyncio.start_unix_server(client, path=str(path))
    os.chmod(path, 0o600)
    return server


# --- the test's side ------------------------------------------------------------------------


class TargetFaults(Protocol):
    """What a test may do to its target's world. Unavailable faults raise FaultUnsupported."""

    def power(self, meter_id: str, on: bool) -> None: ...
    def fade(self, meter_id: str, db: float, peer: str | None = None) -> None: ...
    def interferer(self, on: bool) -> None: ...
    def reset_radio(self) -> None: ...
    def serial_garbage(self, count: int) -> None: ...
    def unplug(self, seconds: float) -> None: ...


class EmulatedFaults:
    """The emulated target's hooks: requests over the virtual RCP's control socket."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _send(self, command: FaultCommand) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(encode_command(command))
                reply = sock.makefile("rb").readline()
        except OSError as exc:
            raise FaultError(f"fault control {self.path}: {exc}") from None
        try:
            doc = json.loads(reply)
        except json.JSONDecodeError:
            raise FaultError(f"fault control {self.path}: bad reply {reply!r}") from None
        if not doc.get("ok"):
            raise FaultError(str(doc.get("error", doc)))

    def ready(self) -> bool:
        """Whether the virtual RCP serves its control socket (it starts with the agent's radio)."""
        try:
            self._send(FaultCommand("ping"))
        except FaultError:
            return False
        return True

    def power(self, meter_id: str, on: bool) -> None:
        self._send(FaultCommand("power", meter=meter_id, on=on))

    def fade(self, meter_id: str, db: float, peer: str | None = None) -> None:
        """Extra loss on the link of ``meter_id`` with the gateway's radio (or with ``peer``)."""
        self._send(FaultCommand("fade", meter=meter_id, db=float(db), peer=peer))

    def interferer(self, on: bool) -> None:
        self._send(FaultCommand("interferer", on=on))

    def reset_radio(self) -> None:
        self._send(FaultCommand("reset"))

    def serial_garbage(self, count: int) -> None:
        self._send(FaultCommand("garbage", count=count))

    def unplug(self, seconds: float) -> None:
        """The radio goes away and comes back: the virtual RCP process ends (its PTY with it)
        and the host's driver spawns a fresh one, as a board replugged after ``seconds`` (the
        driver's own reconnect pace decides the emulated gap)."""
        del seconds
        self._send(FaultCommand("unplug"))


@dataclass(frozen=True)
class BoardFaults:
    """A bench's hooks: the env's power-control command per board (``{state}`` becomes on/off)
    and USB unbind of the gateway radio through sysfs. The air itself cannot be faded here."""

    target: str
    power_commands: dict[str, str] = field(default_factory=dict)  # board or meter id → command
    radio_usb_path: str | None = None  # sysfs USB device name, e.g. "1-1.2"
    sysfs: Path = Path("/sys/bus/usb/drivers/usb")

    def _unsupported(self, what: str) -> FaultUnsupported:
        return FaultUnsupported(f"target {self.target!r} cannot {what}")

    def power(self, meter_id: str, on: bool) -> None:
        command = self.power_commands.get(meter_id)
        if command is None:
            raise self._unsupported(f"power {meter_id} (no power_command for it)")
        argv = [a.replace("{state}", "on" if on else "off") for a in shlex.split(command)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise FaultError(f"power command {argv} exited {done.returncode}: {done.stderr[-500:]}")

    def fade(self, meter_id: str, db: float, peer: str | None = None) -> None:
        raise self._unsupported("fade a link over the air")

    def interferer(self, on: bool) -> None:
        raise self._unsupported("switch an interferer")

    def reset_radio(self) -> None:
        """USB unbind then bind of the radio board: the host sees it vanish and come back."""
        self.unplug(0.0)

    def unplug(self, seconds: float) -> None:
        """USB unbind, ``seconds`` away, then bind: the kernel's view of a replug."""
        if self.radio_usb_path is None:
            raise self._unsupported("unplug the radio (no usb_path for it)")
        for action in ("unbind", "bind"):
            try:
                (self.sysfs / action).write_text(self.radio_usb_path)
            except OSError as exc:
                raise FaultError(f"USB {action} of {self.radio_usb_path}: {exc}") from None
            if action == "unbind" and seconds > 0:
                time.sleep(seconds)

    def serial_garbage(self, count: int) -> None:
        raise self._unsupported("put garbage on the radio's serial line")
