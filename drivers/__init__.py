"""Host-side radio drivers. Pick a backend by URL: ``open_radio("spinel+uart:///dev/ttyACM0")``.

Schemes in :func:`default_registry` (details and every option: docs/radio.md):

- ``spinel+uart:///dev/ttyACM0?baudrate=460800&rtscts=1[&timeout=1.0&retries=2]`` — an RCP board
  on a serial port (Spinel in HDLC-lite).
- ``spinel+spi:///dev/spidev0.0?speed_hz=1000000&int_gpio=N&reset_gpio=M`` — an RCP board on
  SPI (Spinel behind SPI transfer headers), data-ready and reset lines through sysfs GPIO.
- ``spinel+pty://?seed=1&channel=3`` — spawn a virtual RCP child process
  (``python -m hil rcp --pty --seed 1 --channel 3``) and drive it on its PTY exactly like a board.

In-process virtual RCPs (``spinel+loop://NAME``, ``spinel+spi://emulated/NAME``) are added to a
registry by ``hil.loop.register(registry, name, rcp)``; this package never imports ``hil``.
"""

from __future__ import annotations

from drivers.pty_spawn import SpawnedRcpTransport, rcp_command
from drivers.rcp_host import SpinelTransceiver
from drivers.spi import SpiTransport, parse_spi_url
from drivers.transceiver import Registry, Transceiver
from drivers.uart import SerialTransport, parse_uart_url

__all__ = ["default_registry", "open_radio"]


def _open_spinel_uart(url: str) -> Transceiver:
    opts = parse_uart_url(url)
    transport = SerialTransport(opts.port, baudrate=opts.baudrate, rtscts=opts.rtscts)
    return SpinelTransceiver(
        transport,
        name=opts.port,
        request_timeout=1.0 if opts.timeout is None else opts.timeout,
        retries=2 if opts.retries is None else opts.retries,
    )


def _open_spinel_spi(url: str) -> Transceiver:
    opts = parse_spi_url(url)
    return SpinelTransceiver(
        SpiTransport(opts),
        name=opts.device,
        request_timeout=1.0 if opts.timeout is None else opts.timeout,
        retries=2 if opts.retries is None else opts.retries,
    )


def _open_spinel_pty(url: str) -> Transceiver:
    return SpinelTransceiver(SpawnedRcpTransport(rcp_command(url)), name="virtual-rcp")


def default_registry() -> Registry:
    """A new registry with every backend this package ships (a fresh object each call: callers
    may add their own schemes to it without affecting anyone else)."""
    registry = Registry()
    registry.register("spinel+uart", _open_spinel_uart)
    registry.register("spinel+spi", _open_spinel_spi)
    registry.register("spinel+pty", _open_spinel_pty)
    return registry


def open_radio(url: str, registry: Registry | None = None) -> Transceiver:
    """The transceiver a URL names (not yet opened: ``await radio.open()``)."""
    return (registry or default_registry()).open_url(url)
