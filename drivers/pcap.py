"""pcap writer for 802.15.4 captures (link type 195: 802.15.4 with FCS), for tshark/Wireshark."""

from __future__ import annotations

import struct
from typing import BinaryIO

LINKTYPE_IEEE802_15_4_WITHFCS = 195


class PcapWriter:
    """Appends PSDUs (FCS included) to a classic pcap stream with microsecond timestamps."""

    def __init__(self, stream: BinaryIO, linktype: int = LINKTYPE_IEEE802_15_4_WITHFCS) -> None:
        self._stream = stream
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))

    def write(self, timestamp: float, psdu: bytes) -> None:
        seconds = int(timestamp)
        micros = round((timestamp - seconds) * 1_000_000)
        if micros == 1_000_000:
            seconds, micros = seconds + 1, 0
        self._stream.write(struct.pack("<IIII", seconds, micros, len(psdu), len(psdu)) + psdu)
        self._stream.flush()
