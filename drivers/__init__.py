"""Host-side radio drivers. Pick a backend by URL: ``open_radio("spinel+uart:///dev/ttyACM0")``.

Schemes in :func:`default_registry`:

- ``spinel+uart:///dev/ttyACM0?baudrate=460800&rtscts=1[&timeout=1.0&retries=2]`` — an RCP board
  on a serial port.
- ``spinel+pty://?seed=1&channel=3`` — spawn a virtual RCP child process
  (``python -m hil rcp --pty --seed 1 --channel 3``) and drive it on its PTY exactly like a board.
"""

from __future__ import annotations

from drivers.pty_spawn import SpawnedRcpTransport, rcp_command
from drivers.spinel_radio import SpinelTransceiver
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


def _open_spinel_pty(url: str) -> Transceiver:
    return SpinelTransceiver(SpawnedRcpTransport(rcp_command(url)), name="virtual-rcp")


def default_registry() -> Registry:
    """A registry with every backend this package ships."""
    registry = Registry()
    registry.register("spinel+uart", _open_spinel_uart)
    registry.register("spinel+pty", _open_spinel_pty)
    return registry


def open_radio(url: str) -> Transceiver:
    """The transceiver a URL names (not yet opened: ``await radio.open()``)."""
    return default_registry().open_url(url)
