"""DLMS WRAPPER framing (IEC 62056-47): the 8-byte header that carries one APDU over UDP or TCP.

Kept apart from the session and the sockets because three parties need it: the client session
(to check who answered), the TCP link (to cut a byte stream into frames) and the emulated meter.
Header: version u16 (always 0x0001), source wPort u16, destination wPort u16, APDU length u16.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

WRAPPER_VERSION = 0x0001
HEADER_LEN = 8
MAX_APDU_LEN = 0xFFFF


class WrapperError(ValueError):
    """A frame that is not a well-formed WRAPPER frame; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class WrapperHeader:
    version: int
    source: int
    destination: int
    length: int


def parse_header(data: bytes) -> WrapperHeader:
    """Decode the first 8 bytes; raises WrapperError if they are too few or the version is wrong."""
    if len(data) < HEADER_LEN:
        raise WrapperError("short-header", f"{len(data)} bytes, a header needs {HEADER_LEN}")
    version, source, destination, length = struct.unpack_from(">HHHH", data)
    if version != WRAPPER_VERSION:
        raise WrapperError("bad-version", f"version 0x{version:04x}, expected 0x0001")
    return WrapperHeader(version, source, destination, length)


def parse_frame(frame: bytes) -> tuple[WrapperHeader, bytes]:
    """Split one complete datagram/frame into header and APDU, checking the length field."""
    header = parse_header(frame)
    body = frame[HEADER_LEN:]
    if len(body) != header.length:
        reason = "truncated" if len(body) < header.length else "trailing-bytes"
        raise WrapperError(reason, f"length field says {header.length}, frame carries {len(body)}")
    return header, bytes(body)


def build_frame(source: int, destination: int, apdu: bytes) -> bytes:
    """Wrap one APDU; raises ValueError if it cannot fit the 16-bit length field."""
    if len(apdu) > MAX_APDU_LEN:
        raise ValueError(f"APDU of {len(apdu)} bytes exceeds the WRAPPER maximum {MAX_APDU_LEN}")
    if not (0 <= source <= 0xFFFF and 0 <= destination <= 0xFFFF):
        raise ValueError("wPorts are 16-bit")
    return struct.pack(">HHHH", WRAPPER_VERSION, source, destination, len(apdu)) + apdu
