"""pcap files of 802.15.4 frames that Wireshark/tshark open without warnings.

Two link types:

- 195 ``IEEE802_15_4_WITHFCS`` (format ``"wpan"``): the PSDU as on the air, 2-byte FCS included.
- 283 ``IEEE802_15_4_TAP`` (format ``"tap"``): the same PSDU behind a TAP header whose TLVs carry
  what the radio knew about the frame: FCS type, RSSI, channel (number + page), LQI and the
  radio's start-of-frame time. Layout per the IEEE 802.15.4 TAP link type specification
  (github.com/jkcko/ieee802.15.4-tap) as Wireshark's ``wpan-tap`` dissector reads it: header
  ``version=0, reserved=0, length (u16, header + TLVs)``, then TLVs ``type (u16), length (u16,
  unpadded), value`` zero-padded to 4 bytes; everything little-endian.

The encoders are pure functions; :class:`PcapWriter` is the thin I/O edge that appends records
to a stream and stops (logging once) when a size cap is reached, so a capture left running on a
gateway cannot fill its disk.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

LINKTYPE_IEEE802_15_4_WITHFCS = 195
LINKTYPE_IEEE802_15_4_TAP = 283
#: Capture format names (the ``radio.capture_format`` config key) → pcap link type.
FORMATS = {"wpan": LINKTYPE_IEEE802_15_4_WITHFCS, "tap": LINKTYPE_IEEE802_15_4_TAP}

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
SNAPLEN = 65535
FILE_HEADER_LEN = 24
RECORD_HEADER_LEN = 16

# TAP TLV types (Wireshark: ieee802154_info_type_t).
TLV_FCS_TYPE = 0
TLV_RSS = 1
TLV_CHANNEL_ASSIGNMENT = 3
TLV_SOF_TIMESTAMP = 5
TLV_LQI = 10
FCS_TYPE_NONE = 0
FCS_TYPE_16_BIT = 1
FCS_TYPE_32_BIT = 2

#: IEEE 802.15.4-2015 channel page 9: SUN PHYs (Wi-SUN's FSK channels), as Wireshark names it.
CHANNEL_PAGE_SUN = 9


class PcapError(ValueError):
    """A value that cannot be put in a capture record (the message names which)."""


@dataclass(frozen=True)
class FrameInfo:
    """What the radio knew about one frame; only the TAP link type records it."""

    rssi_dbm: float | None = None
    lqi: int | None = None
    channel: int | None = None
    channel_page: int = CHANNEL_PAGE_SUN
    sof_ns: int | None = None  # start of frame on the radio's own clock, nanoseconds


def linktype_for(fmt: str) -> int:
    """The link type for a format name (``"wpan"`` or ``"tap"``)."""
    try:
        return FORMATS[fmt]
    except KeyError:
        known = ", ".join(repr(f) for f in FORMATS)
        raise PcapError(f"unknown capture format {fmt!r}; known: {known}") from None


def file_header(linktype: int, snaplen: int = SNAPLEN) -> bytes:
    """The 24-byte classic pcap global header."""
    return struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype)


def record(timestamp: float, data: bytes) -> bytes:
    """One pcap record: header (seconds, microseconds, lengths) and the packet bytes."""
    if not math.isfinite(timestamp) or timestamp < 0:
        raise PcapError(f"capture timestamp must be a non-negative number, got {timestamp!r}")
    seconds = int(timestamp)
    micros = round((timestamp - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    if seconds > 0xFFFFFFFF:
        raise PcapError(f"capture timestamp {timestamp} does not fit a classic pcap record")
    return struct.pack("<IIII", seconds, micros, len(data), len(data)) + data


def tap_tlv(tlv_type: int, value: bytes) -> bytes:
    """One TAP TLV: the length field counts the value, the padding makes it 4-byte aligned."""
    return struct.pack("<HH", tlv_type, len(value)) + value + bytes(-len(value) % 4)


def tap_header(info: FrameInfo, fcs_type: int = FCS_TYPE_16_BIT) -> bytes:
    """The TAP header with the TLVs ``info`` has values for (always the FCS type)."""
    tlvs = [tap_tlv(TLV_FCS_TYPE, bytes((fcs_type,)))]
    if info.rssi_dbm is not None:
        if not math.isfinite(info.rssi_dbm):
            raise PcapError(f"RSSI must be a finite number of dBm, got {info.rssi_dbm!r}")
        tlvs.append(tap_tlv(TLV_RSS, struct.pack("<f", info.rssi_dbm)))
    if info.channel is not None:
        _check("channel", info.channel, 0xFFFF)
        _check("channel page", info.channel_page, 0xFF)
        tlvs.append(
            tap_tlv(TLV_CHANNEL_ASSIGNMENT, struct.pack("<HB", info.channel, info.channel_page))
        )
    if info.sof_ns is not None:
        _check("start-of-frame time (ns)", info.sof_ns, 0xFFFFFFFFFFFFFFFF)
        tlvs.append(tap_tlv(TLV_SOF_TIMESTAMP, struct.pack("<Q", info.sof_ns)))
    if info.lqi is not None:
        _check("LQI", info.lqi, 0xFF)
        tlvs.append(tap_tlv(TLV_LQI, bytes((info.lqi,))))
    body = b"".join(tlvs)
    return struct.pack("<BBH", 0, 0, 4 + len(body)) + body


def _check(what: str, value: int, high: int) -> None:
    if not 0 <= value <= high:
        raise PcapError(f"{what} must be between 0 and {high}, got {value}")


def packet(linktype: int, psdu: bytes, info: FrameInfo | None = None) -> bytes:
    """The packet bytes of one frame for ``linktype`` (TAP: header + PSDU; 195: the PSDU)."""
    if linktype == LINKTYPE_IEEE802_15_4_TAP:
        return tap_header(info or FrameInfo()) + psdu
    if linktype == LINKTYPE_IEEE802_15_4_WITHFCS:
        return psdu
    raise PcapError(f"unsupported link type {linktype}; known: 195 (wpan), 283 (tap)")


class PcapWriter:
    """Appends frames to a classic pcap stream, flushed per record so a capture is readable
    while it runs. With ``max_bytes`` it stops before the file would grow past the cap, logs
    that once, and counts what it dropped; the file stays a valid pcap."""

    def __init__(
        self,
        stream: BinaryIO,
        linktype: int = LINKTYPE_IEEE802_15_4_WITHFCS,
        *,
        max_bytes: int | None = None,
        name: str = "capture",
        owns_stream: bool = False,
    ) -> None:
        packet(linktype, b"")  # refuse an unsupported link type up front
        if max_bytes is not None and max_bytes < FILE_HEADER_LEN:
            raise PcapError(
                f"capture size cap must be at least {FILE_HEADER_LEN} bytes, got {max_bytes}"
            )
        self.linktype = linktype
        self.max_bytes = max_bytes
        self.name = name
        self.records = 0
        self.dropped = 0
        self.bytes_written = 0
        self.full = False  # stopped for good: the cap was reached or the file failed
        self._stream = stream
        self._owns = owns_stream
        self._emit(file_header(linktype))

    @classmethod
    def open(cls, path: Path, fmt: str = "wpan", *, max_bytes: int | None = None) -> PcapWriter:
        """Create (truncate) ``path`` and write its header; :meth:`close` closes the file."""
        linktype = linktype_for(fmt)
        stream = Path(path).open("wb")  # noqa: SIM115 - owned by the writer until close()
        try:
            return cls(stream, linktype, max_bytes=max_bytes, name=str(path), owns_stream=True)
        except BaseException:
            stream.close()
            raise

    def write(self, timestamp: float, psdu: bytes, info: FrameInfo | None = None) -> bool:
        """Append one frame (``info`` is used by the TAP link type). False if the cap stopped it."""
        data = record(timestamp, packet(self.linktype, psdu, info))
        if self.full or (
            self.max_bytes is not None and self.bytes_written + len(data) > self.max_bytes
        ):
            if not self.full:
                self.full = True
                log.warning(
                    "%s: capture reached its size cap of %d bytes after %d frames; "
                    "later frames are not written",
                    self.name,
                    self.max_bytes,
                    self.records,
                )
            self.dropped += 1
            return False
        try:
            self._emit(data)
        except OSError as exc:  # disk full, file removed under us...: stop, keep the radio going
            self.full = True
            self.dropped += 1
            log.error("%s: capture stopped, cannot write: %s", self.name, exc)
            return False
        self.records += 1
        return True

    def _emit(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()
        self.bytes_written += len(data)

    def close(self) -> None:
        """Flush; close the stream if this writer opened it."""
        if self._stream.closed:
            return
        try:
            self._stream.flush()
            if self._owns:
                self._stream.close()
        except OSError as exc:
            log.error("%s: closing the capture failed: %s", self.name, exc)
