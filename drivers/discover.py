"""Find radio boards by udev properties, so config names a board, not a ``/dev/ttyACMx`` number.

ttyACM/ttyUSB numbers follow plug order and change across reboots and replugs; a board's USB
serial number (``ID_SERIAL_SHORT``) or its port (``ID_PATH``) does not. The match works like
labgrid's ``USBSerialPort``: every ``KEY: pattern`` pair must hold on the device itself, and a key
written ``@KEY`` must hold on one of its ancestors (the USB interface or USB device above the tty).
Patterns are shell globs (``fnmatch``), so ``ID_SERIAL_SHORT: "L11*"`` works.

Layers, as everywhere in this project:

- pure: :class:`UdevNode`, :class:`BoardCandidate` (built by :func:`candidate_from_udev`),
  :class:`BoardMatch` and :class:`HotplugTracker` take plain dicts and events, no I/O;
- edge: :func:`list_boards`, :func:`resolve` and :class:`BoardWatcher`/:func:`watch` read the
  udev database and the netlink monitor through pyudev.

pyudev is in the ``[gateway]`` extra; it is imported only when an edge function runs, so a laptop
install without it can still import this module (and gets :class:`DiscoveryUnavailable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import importlib
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from drivers.transceiver import RadioError

log = logging.getLogger(__name__)

#: The udev subsystems a radio board shows up in.
SUBSYSTEMS = ("tty", "spidev")
#: sysfs attributes read from each ancestor, so ``@idVendor``-style matches work without a udev db.
ANCESTOR_ATTRIBUTES = (
    "idVendor",
    "idProduct",
    "serial",
    "manufacturer",
    "product",
    "bInterfaceNumber",
    "interface",
    "busnum",
    "devnum",
    "devpath",
)


@dataclass(frozen=True)
class KnownRadio:
    """A USB id that RCP boards we support enumerate with (kept in step with the udev rules)."""

    vendor_id: str
    model_id: str
    label: str
    #: Only this USB interface carries the radio's UART (boards with several CDC ports).
    interface: str | None = None


KNOWN_USB_RADIOS: tuple[KnownRadio, ...] = (
    KnownRadio("10c4", "ea60", "Silicon Labs CP210x USB-UART bridge"),
    KnownRadio("1366", "0105", "SEGGER J-Link VCOM (Silicon Labs kit mainboard)"),
    KnownRadio("1366", "1024", "SEGGER J-Link OB VCOM (Silicon Labs kit)"),
    KnownRadio("0451", "bef3", "TI XDS110 LaunchPad, application UART", interface="00"),
    KnownRadio("1915", "cafe", "Nordic nRF52840 dongle, OpenThread RCP over USB CDC"),
    KnownRadio("0403", "6001", "FTDI FT232R USB-UART"),
    KnownRadio("0403", "6015", "FTDI FT-X (FT230X/FT231X) USB-UART"),
)


class DiscoveryError(RadioError):
    """Board discovery failed; the message says what was looked for and what was seen."""


class DiscoveryUnavailable(DiscoveryError):
    """pyudev (the ``[gateway]`` extra) is not installed or libudev cannot be loaded."""


class InvalidMatch(DiscoveryError, ValueError):
    """A udev match from config that cannot work (empty key, non-string value)."""


class NoBoardMatched(DiscoveryError):
    """No present board satisfies the match."""

    def __init__(self, match: BoardMatch, seen: Sequence[BoardCandidate]) -> None:
        listing = "\n".join(f"  {c.describe()}" for c in seen) or "  (no USB serial or spidev)"
        super().__init__(f"no radio board matches {match}; boards seen:\n{listing}")
        self.match = match
        self.seen = tuple(seen)


class SeveralBoardsMatched(DiscoveryError):
    """More than one present board satisfies the match: it must be narrowed."""

    def __init__(self, match: BoardMatch, matched: Sequence[BoardCandidate]) -> None:
        listing = "\n".join(f"  {c.describe()}" for c in matched)
        super().__init__(
            f"{len(matched)} radio boards match {match}; add a key (ID_SERIAL_SHORT, "
            f"ID_USB_INTERFACE_NUM or @ID_PATH) to pick one:\n{listing}"
        )
        self.match = match
        self.matched = tuple(matched)


# ---------------------------------------------------------------------------------------------
# pure records


@dataclass(frozen=True)
class UdevNode:
    """One device in the sysfs tree: its udev properties and the sysfs attributes we read."""

    sys_path: str
    subsystem: str | None
    properties: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, key: str) -> str | None:
        """A udev property, else a sysfs attribute of that name (labgrid's order)."""
        value = self.properties.get(key)
        return value if value is not None else self.attributes.get(key)


@dataclass(frozen=True)
class BoardCandidate:
    """A tty or spidev node that could be a radio board, with what identifies it."""

    device_node: str
    sys_path: str
    subsystem: str
    by_id: tuple[str, ...] = ()
    by_path: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    vendor_id: str | None = None
    model_id: str | None = None
    vendor: str | None = None
    model: str | None = None
    serial: str | None = None
    id_path: str | None = None
    interface_num: str | None = None
    driver: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    ancestors: tuple[UdevNode, ...] = ()

    @property
    def is_board(self) -> bool:
        """USB serial (ID_BUS=usb, a usb ancestor, or ttyACM/ttyUSB) or any spidev node."""
        if self.subsystem == "spidev":
            return True
        if self.subsystem != "tty":
            return False
        name = self.device_node.rsplit("/", 1)[-1]
        return (
            self.properties.get("ID_BUS") == "usb"
            or any(a.subsystem == "usb" for a in self.ancestors)
            or name.startswith(("ttyACM", "ttyUSB"))
        )

    def derived(self) -> dict[str, str]:
        """The identifying keys udev's usb_id would set, for hosts without a udev database."""
        pairs = {
            "ID_VENDOR_ID": self.vendor_id,
            "ID_MODEL_ID": self.model_id,
            "ID_SERIAL_SHORT": self.serial,
            "ID_USB_INTERFACE_NUM": self.interface_num,
            "ID_USB_DRIVER": self.driver,
        }
        return {k: v for k, v in pairs.items() if v is not None}

    def lookup(self, key: str) -> str | None:
        """A property of the device itself: udev's, then derived from sysfs."""
        value = self.properties.get(key)
        return value if value is not None else self.derived().get(key)

    def known_radio(self) -> KnownRadio | None:
        """The :data:`KNOWN_USB_RADIOS` entry this board's USB id and interface fit, if any."""
        for radio in KNOWN_USB_RADIOS:
            if (radio.vendor_id, radio.model_id) == (self.vendor_id, self.model_id) and (
                radio.interface is None or radio.interface == self.interface_num
            ):
                return radio
        return None

    def stable_path(self) -> str:
        """The name least likely to change: our udev symlink, then by-id, by-path, the node."""
        ours = [link for link in self.links if link.startswith("/dev/wisun-radio")]
        return (ours or list(self.by_id) or list(self.by_path) or [self.device_node])[0]

    def describe(self) -> str:
        """One line for listings and error messages."""
        ids = f"{self.vendor_id}:{self.model_id}" if self.vendor_id else self.subsystem
        parts = [self.device_node, ids]
        if self.vendor or self.model:
            parts.append(" ".join(p for p in (self.vendor, self.model) if p))
        if self.serial:
            parts.append(f"ID_SERIAL_SHORT={self.serial}")
        if self.interface_num:
            parts.append(f"if{self.interface_num}")
        if self.id_path:
            parts.append(f"ID_PATH={self.id_path}")
        if self.driver:
            parts.append(f"driver={self.driver}")
        return "  ".join(parts)


def _first(nodes: Iterable[UdevNode], *keys: str) -> str | None:
    for node in nodes:
        for key in keys:
            value = node.lookup(key)
            if value:
                return value
    return None


def _clean(text: str | None) -> str | None:
    return text.replace("_", " ") if text else text


def _unescape(text: str | None) -> str | None:
    """udev's ``*_ENC`` form (``Texas\\x20Instruments``) back to the device's own string."""
    if not text:
        return None
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), text).strip()


def candidate_from_udev(device: UdevNode, ancestors: Sequence[UdevNode] = ()) -> BoardCandidate:
    """Build a candidate from a device's udev data; udev's own properties win over sysfs.

    Raises :class:`DiscoveryError` for a device without ``DEVNAME`` (nothing to open).
    """
    props = device.properties
    node = props.get("DEVNAME")
    if not node:
        raise DiscoveryError(f"udev device {device.sys_path} has no DEVNAME (no /dev node)")
    if not node.startswith("/"):
        node = "/dev/" + node
    links = tuple(props.get("DEVLINKS", "").split())
    usb = [a for a in ancestors if a.subsystem == "usb"]
    iface = [a for a in usb if a.properties.get("DEVTYPE") == "usb_interface"]
    dev = [a for a in usb if a.properties.get("DEVTYPE") == "usb_device"] or usb
    driver = props.get("ID_USB_DRIVER") or _first(ancestors, "DRIVER")
    return BoardCandidate(
        device_node=node,
        sys_path=device.sys_path,
        subsystem=device.subsystem or props.get("SUBSYSTEM", ""),
        by_id=tuple(link for link in links if "/by-id/" in link),
        by_path=tuple(link for link in links if "/by-path/" in link),
        links=links,
        vendor_id=props.get("ID_VENDOR_ID")
        or props.get("ID_USB_VENDOR_ID")
        or _first(dev, "idVendor"),
        model_id=props.get("ID_MODEL_ID")
        or props.get("ID_USB_MODEL_ID")
        or _first(dev, "idProduct"),
        vendor=props.get("ID_VENDOR_FROM_DATABASE")
        or _unescape(props.get("ID_VENDOR_ENC"))
        or _clean(props.get("ID_VENDOR"))
        or _first(dev, "manufacturer"),
        model=props.get("ID_MODEL_FROM_DATABASE")
        or _unescape(props.get("ID_MODEL_ENC"))
        or _clean(props.get("ID_MODEL"))
        or _first(dev, "product"),
        serial=props.get("ID_SERIAL_SHORT")
        or props.get("ID_USB_SERIAL_SHORT")
        or _first(dev, "serial"),
        id_path=props.get("ID_PATH"),
        interface_num=props.get("ID_USB_INTERFACE_NUM") or _first(iface, "bInterfaceNumber"),
        driver=driver,
        properties=dict(props),
        ancestors=tuple(ancestors),
    )


def suggest_match(
    candidate: BoardCandidate, among: Sequence[BoardCandidate] = ()
) -> dict[str, str]:
    """A match that picks this board out of ``among`` (what to paste into config).

    The serial number first (it follows the board to any port); the interface number when the
    board has several ttys (XDS110); the port path when the board has no serial.
    """
    match: dict[str, str] = {}
    if candidate.serial:
        match["ID_SERIAL_SHORT"] = candidate.serial
    elif candidate.id_path:
        match["ID_PATH"] = candidate.id_path
    else:
        match["DEVNAME"] = candidate.device_node
    if len(BoardMatch(match).match(among)) > 1 and candidate.interface_num:
        match["ID_USB_INTERFACE_NUM"] = candidate.interface_num
    return match


# ---------------------------------------------------------------------------------------------
# the matcher


class BoardMatch:
    """``KEY: glob`` pairs that select one board; ``@KEY`` means "on an ancestor device"."""

    def __init__(self, properties: Mapping[str, str]) -> None:
        if not isinstance(properties, Mapping):
            raise InvalidMatch(
                f"a udev match must be a mapping of KEY: pattern, got {properties!r}"
            )
        for key, value in properties.items():
            if not isinstance(key, str) or not key.lstrip("@"):
                raise InvalidMatch(f"udev match key {key!r} must be a non-empty property name")
            if not isinstance(value, str):
                raise InvalidMatch(
                    f"udev match value for {key} must be a string (quote it in YAML), got {value!r}"
                )
        self.properties: dict[str, str] = dict(properties)

    def __str__(self) -> str:
        return "{" + ", ".join(f"{k}={v}" for k, v in self.properties.items()) + "}"

    def __repr__(self) -> str:
        return f"BoardMatch({self.properties!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoardMatch) and other.properties == self.properties

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.properties.items())))

    def matches(self, candidate: BoardCandidate) -> bool:
        """Whether every pair holds; a missing property never matches (not even ``*``)."""
        for key, pattern in self.properties.items():
            if key.startswith("@"):
                name = key[1:]
                if not any(_glob(a.lookup(name), pattern) for a in candidate.ancestors):
                    return False
            elif not _glob(candidate.lookup(key), pattern):
                return False
        return True

    def match(self, candidates: Iterable[BoardCandidate]) -> list[BoardCandidate]:
        """The boards (tty/spidev radio candidates only) that satisfy the match, in order."""
        return [c for c in candidates if c.is_board and self.matches(c)]

    def select(self, candidates: Iterable[BoardCandidate]) -> BoardCandidate:
        """The one matching board; else :class:`NoBoardMatched` or :class:`SeveralBoardsMatched`."""
        seen = [c for c in candidates if c.is_board]
        found = self.match(seen)
        if not found:
            raise NoBoardMatched(self, seen)
        if len(found) > 1:
            raise SeveralBoardsMatched(self, found)
        return found[0]


def _glob(value: str | None, pattern: str) -> bool:
    return value is not None and fnmatch.fnmatchcase(value, pattern)


# ---------------------------------------------------------------------------------------------
# hotplug, sans-IO


@dataclass(frozen=True)
class BoardAppeared:
    """A matching board was plugged in (or was present when tracking started)."""

    candidate: BoardCandidate
    #: Another matching board is present too: do not attach until the match is narrowed.
    ambiguous: bool = False

    @property
    def device_node(self) -> str:
        return self.candidate.device_node


@dataclass(frozen=True)
class BoardGone:
    """A tracked matching board was unplugged (its tty/spidev node went away)."""

    candidate: BoardCandidate

    @property
    def device_node(self) -> str:
        return self.candidate.device_node


HotplugEvent = BoardAppeared | BoardGone


class HotplugTracker:
    """Turns udev (action, candidate) events into "matched board appeared / gone" for one match.

    Removal is recognised by sysfs path, not by re-matching: a remove event's ancestors are
    already gone from sysfs, so an ``@ID_PATH`` match could not see them.
    """

    def __init__(self, match: BoardMatch) -> None:
        self.match = match
        self._present: dict[str, BoardCandidate] = {}

    @property
    def present(self) -> tuple[BoardCandidate, ...]:
        """Every matching board now present, in arrival order."""
        return tuple(self._present.values())

    @property
    def current(self) -> BoardCandidate | None:
        """The board to use: present and unambiguous, else None."""
        return next(iter(self._present.values())) if len(self._present) == 1 else None

    def seed(self, candidates: Iterable[BoardCandidate]) -> list[HotplugEvent]:
        """Start from an enumeration (:func:`list_boards`), as if each board was just added."""
        events: list[HotplugEvent] = []
        for candidate in candidates:
            events.extend(self.feed("add", candidate))
        return events

    def feed(self, action: str, candidate: BoardCandidate) -> list[HotplugEvent]:
        """One udev event; returns what changed for this match (often nothing).

        Actions other than add/change/bind/move/remove/unbind (e.g. online) change nothing.
        """
        if action in ("remove", "unbind"):
            return self._drop(candidate.sys_path)
        if action not in ("add", "change", "bind", "move"):
            return []
        events: list[HotplugEvent] = []
        if action == "move":
            old = candidate.properties.get("DEVPATH_OLD")
            if old:
                events.extend(self._drop("/sys" + old))
        fits = candidate.is_board and self.match.matches(candidate)
        if candidate.sys_path in self._present:
            if fits:
                self._present[candidate.sys_path] = candidate
                return events
            return events + self._drop(candidate.sys_path)
        if not fits:
            return events
        self._present[candidate.sys_path] = candidate
        events.append(BoardAppeared(candidate, ambiguous=len(self._present) > 1))
        return events

    def _drop(self, sys_path: str) -> list[HotplugEvent]:
        gone = self._present.pop(sys_path, None)
        return [] if gone is None else [BoardGone(gone)]


# ---------------------------------------------------------------------------------------------
# pure helper for the radio URL


def url_with_device(url: str, device_node: str) -> str:
    """The radio URL with its device path replaced (keeps scheme and query: baudrate, rtscts)."""
    parts = urlsplit(url)
    if parts.scheme not in ("spinel+uart", "spinel+spi"):
        raise InvalidMatch(
            f"a udev match needs a spinel+uart:// or spinel+spi:// radio URL, got {url!r}"
        )
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{device_node}{query}"


# ---------------------------------------------------------------------------------------------
# edge: pyudev


def _pyudev() -> ModuleType:
    try:
        return importlib.import_module("pyudev")
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise DiscoveryUnavailable(
            "board discovery needs pyudev: pip install 'wisun-gateway[gateway]' "
            f"(or apt install python3-pyudev): {exc}"
        ) from exc


def _context(context: Any | None) -> Any:
    pyudev = _pyudev()
    if context is not None:
        return context
    try:
        return pyudev.Context()
    except ImportError as exc:  # libudev.so missing
        raise DiscoveryUnavailable(f"libudev cannot be loaded: {exc}") from exc


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def _udev_node(device: Any, *, attributes: bool) -> UdevNode:
    props = {str(k): str(v) for k, v in device.properties.items()}
    attrs: dict[str, str] = {}
    if attributes:
        for name in ANCESTOR_ATTRIBUTES:
            with contextlib.suppress(Exception):  # vanished device or unreadable attribute
                value = _text(device.attributes.get(name))
                if value is not None:
                    attrs[name] = value
    return UdevNode(str(device.sys_path), device.subsystem, props, attrs)


def _ancestors(device: Any) -> list[UdevNode]:
    nodes: list[UdevNode] = []
    with contextlib.suppress(Exception):  # parents vanish under a remove event
        for ancestor in device.ancestors:
            nodes.append(_udev_node(ancestor, attributes=True))
    return nodes


def candidate_from_device(device: Any) -> BoardCandidate:
    """A :class:`BoardCandidate` from a pyudev ``Device`` (enumerated or from the monitor)."""
    return candidate_from_udev(_udev_node(device, attributes=False), _ancestors(device))


def list_boards(context: Any | None = None) -> list[BoardCandidate]:
    """Every USB serial tty and spidev node udev knows, sorted by device node."""
    ctx = _context(context)
    found: list[BoardCandidate] = []
    for subsystem in SUBSYSTEMS:
        for device in ctx.list_devices(subsystem=subsystem):
            if device.device_node is None:
                continue
            try:
                candidate = candidate_from_device(device)
            except DiscoveryError as exc:
                log.debug("skipping %s: %s", device.sys_path, exc)
                continue
            if candidate.is_board:
                found.append(candidate)
    return sorted(found, key=lambda c: c.device_node)


def resolve(match: BoardMatch, context: Any | None = None) -> str:
    """The device node of the one board the match selects now (for a spinel+uart/spi URL)."""
    return match.select(list_boards(context)).device_node


HotplugCallback = Callable[[HotplugEvent], None]


class BoardWatcher:
    """A udev netlink monitor on the asyncio loop feeding a :class:`HotplugTracker`.

    ``start()`` opens the monitor *before* enumerating, so a board plugged in between the two is
    not missed; present boards are reported through the callback as :class:`BoardAppeared`.
    A callback that raises is logged and does not stop the watch.
    """

    def __init__(
        self, match: BoardMatch, callback: HotplugCallback, *, context: Any | None = None
    ) -> None:
        self.tracker = HotplugTracker(match)
        self._callback = callback
        self._given_context = context
        self._monitor: Any | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1

    @property
    def running(self) -> bool:
        return self._monitor is not None

    def fileno(self) -> int:
        """The netlink socket (-1 when stopped)."""
        return self._fd

    def start(self) -> None:
        """Open the monitor, register it with the running loop, report present boards."""
        if self._monitor is not None:
            return
        pyudev = _pyudev()
        context = _context(self._given_context)
        self._loop = asyncio.get_running_loop()
        try:
            monitor = pyudev.Monitor.from_netlink(context)
            for subsystem in SUBSYSTEMS:
                monitor.filter_by(subsystem)
            monitor.start()
        except (OSError, ValueError) as exc:
            raise DiscoveryError(f"cannot open the udev netlink monitor: {exc}") from exc
        self._monitor = monitor
        self._fd = monitor.fileno()
        self._loop.add_reader(self._fd, self._on_readable)
        self._deliver(self.tracker.seed(list_boards(context)))

    def close(self) -> None:
        """Unregister and release the netlink socket (idempotent)."""
        if self._monitor is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        # pyudev has no close(): dropping the last reference unrefs the libudev monitor,
        # which closes the socket.
        self._monitor = None
        self._fd = -1

    def _on_readable(self) -> None:
        monitor = self._monitor
        while monitor is not None:
            try:
                device = monitor.poll(timeout=0)
            except (OSError, ValueError) as exc:  # a malformed netlink message
                log.warning("udev monitor: %s", exc)
                return
            if device is None:
                return
            try:
                candidate = candidate_from_device(device)
            except DiscoveryError as exc:
                log.debug("udev %s event ignored: %s", device.action, exc)
                continue
            self._deliver(self.tracker.feed(str(device.action), candidate))
            monitor = self._monitor

    def _deliver(self, events: Iterable[HotplugEvent]) -> None:
        for event in events:
            try:
                self._callback(event)
            except Exception:
                log.exception("hotplug callback failed on %s", event)


async def watch(
    match: BoardMatch, callback: HotplugCallback, *, context: Any | None = None
) -> None:
    """Report matching boards appearing and going until cancelled (run it as a task)."""
    watcher = BoardWatcher(match, callback, context=context)
    watcher.start()
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        watcher.close()


def format_boards(candidates: Sequence[BoardCandidate]) -> str:
    """A human listing with the match to paste into config for each board."""
    if not candidates:
        return "no USB serial or spidev boards found"
    lines = []
    for c in candidates:
        known = c.known_radio()
        lines.append(c.describe() + (f"  [{known.label}]" if known else ""))
        lines.append(f"    stable path: {c.stable_path()}")
        pairs = ", ".join(f"{k}: {v!r}" for k, v in suggest_match(c, candidates).items())
        lines.append(f"    match: {{{pairs}}}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m drivers.discover``: list candidate boards; exit 1 when pyudev is missing."""
    del argv
    try:
        boards = list_boards()
    except DiscoveryUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(format_boards(boards))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
