"""The one interface the mesh layer drives a radio through, and the URL registry that picks a
backend (like pyserial's ``serial_for_url``).

Frames are PSDUs as they are on the air: the 802.15.4 MPDU including its 2-byte FCS. On transmit
the radio (real or virtual) computes the FCS itself; on receive the FCS bytes are as received.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


class RadioError(Exception):
    """A radio operation failed; the message says which and why."""


class RadioTimeout(RadioError):
    """The board did not answer in time."""


class TxStatus(enum.Enum):
    ACKED = "acked"
    NO_ACK = "no_ack"
    CCA_FAILURE = "cca_failure"
    SENT = "sent"  # broadcast or no ack requested: sent, nothing to wait for
    FAILED = "failed"


@dataclass(frozen=True)
class TxResult:
    status: TxStatus
    ack_psdu: bytes | None = None
    # How the ack was received: a link's quality is measured on its acks too, which during
    # downward traffic are most of what is heard from a neighbour.
    ack_rssi_dbm: int | None = None
    ack_lqi: int | None = None


@dataclass(slots=True)  # hot path: built per frame; frozen would triple the cost
class RxFrame:
    psdu: bytes
    rssi_dbm: int
    lqi: int
    channel: int
    timestamp_us: int
    noise_floor_dbm: int | None = None  # real RCPs report none (-128 on the wire)


@dataclass(frozen=True)
class RadioInfo:
    protocol_version: tuple[int, int]
    ncp_version: str
    hwaddr: bytes  # EUI-64, 8 bytes
    caps: tuple[int, ...]


class Transceiver(ABC):
    """An 802.15.4 radio the host runs the MAC for (an RCP). All methods are coroutines."""

    @abstractmethod
    async def open(self) -> RadioInfo:
        """Open the transport, reset the board, and learn what it is."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def set_channel(self, channel: int) -> None: ...

    @abstractmethod
    async def set_tx_power(self, dbm: int) -> None: ...

    @abstractmethod
    async def enable_raw_stream(self, enabled: bool = True) -> None: ...

    @abstractmethod
    async def transmit(self, psdu: bytes) -> TxResult: ...

    @abstractmethod
    async def receive(self, timeout: float | None = None) -> RxFrame | None:
        """The next received frame, or None when ``timeout`` seconds pass first."""

    @abstractmethod
    async def energy_scan(self, channels: list[int], duration_ms: int) -> dict[int, int]:
        """Max energy (dBm) seen on each channel."""

    @abstractmethod
    async def sample_rssi(self) -> int:
        """Instantaneous RSSI (dBm) on the current channel: the idle noise floor when quiet."""


BackendFactory = Callable[[str], Transceiver]


class Registry:
    """URL scheme → backend factory. The default registry is built by ``default_registry()``."""

    def __init__(self) -> None:
        self._factories: dict[str, BackendFactory] = {}

    def register(self, scheme: str, factory: BackendFactory) -> None:
        """Add or replace the backend for ``scheme`` (a wrapper can delegate to the old one,
        see :meth:`factory`)."""
        self._factories[scheme] = factory

    def factory(self, scheme: str) -> BackendFactory | None:
        """The backend registered for ``scheme``, if any."""
        return self._factories.get(scheme)

    def schemes(self) -> list[str]:
        return sorted(self._factories)

    def open_url(self, url: str) -> Transceiver:
        scheme = urlsplit(url).scheme
        try:
            factory = self._factories[scheme]
        except KeyError:
            known = ", ".join(f"{s}://" for s in self.schemes())
            raise RadioError(
                f"unknown radio URL scheme {scheme!r} in {url!r}; known: {known}"
            ) from None
        return factory(url)
