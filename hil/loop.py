"""In-process virtual RCPs reachable by URL: ``spinel+loop://NAME`` and ``spinel+spi://emulated/NAME``.

A :class:`LoopHub` is installed into one :class:`~drivers.transceiver.Registry` (no module-level
state: two registries never share names). ``register(registry, "gw", rcp)`` makes the RCP
reachable as

- ``spinel+loop://gw[?timeout=0.5&retries=2]`` — the production Spinel host over HDLC-lite on an
  in-memory byte pipe (:class:`LoopByteTransport`): the same bytes a UART would carry;
- ``spinel+spi://emulated/gw[?small_packet=32&align_allowance=16&crc=1&timeout=..]`` — the
  production SPI transport over an :class:`~hil.spidev_emu.EmulatedSpiDev` and its emulated
  data-ready line. Other ``spinel+spi`` URLs go to the backend registered before (real spidev).

One RCP serves one host link at a time, as a board does: opening a second link to the same name
takes the RCP's output over.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlsplit

from drivers.framing import HdlcFrameTransport
from drivers.rcp_host import SpinelTransceiver
from drivers.spi import SpiOptions, SpiTransport, parse_spi_url
from drivers.transceiver import BackendFactory, RadioError, Registry, Transceiver
from hil.rcp import VirtualRcp
from hil.spidev_emu import EmulatedSpiDev

LOOP_SCHEME = "spinel+loop"
SPI_SCHEME = "spinel+spi"
EMULATED_HOST = "emulated"


class LoopByteTransport:
    """An in-memory byte pipe to a :class:`VirtualRcp`'s HDLC-lite edge (a ``ByteTransport``)."""

    def __init__(self, rcp: VirtualRcp, name: str) -> None:
        self.rcp = rcp
        self.name = name
        self._chunks: list[bytes] = []
        self._ready = asyncio.Event()
        self._error: RadioError | None = None
        self._open = False

    async def open(self) -> None:
        self._open = True
        self.rcp.set_output_listener(self._on_output)
        self._on_output()  # anything the board said before we listened

    def _on_output(self) -> None:
        data = self.rcp.take_output()
        if data and self._error is None:
            self._chunks.append(data)
            self._ready.set()

    async def read(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if not self._open:
                raise RadioError(f"loop radio {self.name!r} is not open")
            self._ready.clear()
            await self._ready.wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if not self._open:
            raise RadioError(f"loop radio {self.name!r} is not open")
        self.rcp.feed(data)

    def unplug(self) -> None:
        """Fault injection: the link vanishes as an unplugged board's would."""
        self._fail(RadioError(f"loop radio {self.name!r} vanished: unplugged"))

    def _fail(self, error: RadioError) -> None:
        if self._error is None:
            self._error = error
        self.rcp.set_output_listener(None)
        self._ready.set()

    def close(self) -> None:
        self._fail(RadioError(f"loop radio {self.name!r} closed"))

    async def wait_closed(self) -> None:
        return None


class LoopHub:
    """The named in-process RCPs of one registry, and the backends that reach them."""

    def __init__(self, registry: Registry) -> None:
        self._rcps: dict[str, VirtualRcp] = {}
        self._spidevs: dict[str, EmulatedSpiDev] = {}
        self._links: dict[str, LoopByteTransport] = {}
        previous = registry.factory(SPI_SCHEME)
        self._hardware_spi: BackendFactory | None = previous
        registry.register(LOOP_SCHEME, self)
        registry.register(SPI_SCHEME, self.open_spi)

    def add(self, name: str, rcp: VirtualRcp) -> None:
        if not name or "/" in name or "?" in name:
            raise ValueError(f"bad loop radio name {name!r}")
        self._rcps[name] = rcp
        self._spidevs[name] = EmulatedSpiDev(rcp)

    def names(self) -> list[str]:
        return sorted(self._rcps)

    def spidev(self, name: str) -> EmulatedSpiDev:
        """The emulated spidev behind ``spinel+spi://emulated/NAME`` (fault knobs live there)."""
        return self._spidevs[self._known(name, f"spinel+spi://emulated/{name}")]

    def link(self, name: str) -> LoopByteTransport | None:
        """The byte pipe of the last ``spinel+loop://NAME`` radio (to unplug it in a test)."""
        return self._links.get(name)

    def _known(self, name: str, url: str) -> str:
        if name not in self._rcps:
            known = ", ".join(self.names()) or "none"
            raise RadioError(
                f"radio URL {url!r}: no in-process RCP named {name!r} (known: {known})"
            )
        return name

    def __call__(self, url: str) -> Transceiver:
        """``spinel+loop://NAME[?timeout=&retries=]``."""
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            raise RadioError(
                f"radio URL {url!r}: spinel+loop takes a name only, e.g. spinel+loop://gw"
            )
        name = self._known(parts.netloc, url)
        timeout, retries = 1.0, 2
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            try:
                if key == "timeout":
                    timeout = float(value)
                elif key == "retries":
                    retries = int(value)
                else:
                    raise RadioError(
                        f"unknown option {key!r} in radio URL {url!r}; known: timeout, retries"
                    )
            except ValueError:
                raise RadioError(
                    f"option {key}={value!r} in radio URL {url!r} is not a number"
                ) from None
        link = LoopByteTransport(self._rcps[name], name)
        self._links[name] = link
        return SpinelTransceiver(
            HdlcFrameTransport(link),
            name=f"loop:{name}",
            request_timeout=timeout,
            retries=retries,
        )

    def open_spi(self, url: str) -> Transceiver:
        """``spinel+spi://emulated/NAME?...``; any other ``spinel+spi`` URL goes to hardware."""
        parts = urlsplit(url)
        if parts.netloc != EMULATED_HOST:
            if self._hardware_spi is None:
                raise RadioError(f"radio URL {url!r}: no hardware SPI backend registered")
            return self._hardware_spi(url)
        name = self._known(parts.path.strip("/"), url)
        opts = parse_spi_url(f"spinel+spi:///emulated/{name}?{parts.query}")
        dev = self._spidevs[name]

        def open_device(_opts: SpiOptions) -> EmulatedSpiDev:
            return dev.open(asyncio.get_running_loop())

        transport = SpiTransport(
            SpiOptions(
                device=f"emulated/{name}",
                speed_hz=opts.speed_hz,
                mode=opts.mode,
                int_gpio=0,  # the emulated data-ready line
                align_allowance=opts.align_allowance,
                small_packet=opts.small_packet,
                crc=opts.crc,
            ),
            open_device=open_device,
            open_int_line=lambda _n: dev.int_line,
        )
        return SpinelTransceiver(
            transport,
            name=f"spi-emulated:{name}",
            request_timeout=1.0 if opts.timeout is None else opts.timeout,
            retries=2 if opts.retries is None else opts.retries,
        )


def register(registry: Registry, name: str, rcp: VirtualRcp) -> LoopHub:
    """Make ``rcp`` reachable as ``spinel+loop://NAME`` and ``spinel+spi://emulated/NAME`` through
    ``registry`` (installing a :class:`LoopHub` there on first use); returns the hub."""
    existing = registry.factory(LOOP_SCHEME)
    hub = existing if isinstance(existing, LoopHub) else LoopHub(registry)
    hub.add(name, rcp)
    return hub
