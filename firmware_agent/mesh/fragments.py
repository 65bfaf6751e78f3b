"""6LoWPAN fragmentation and reassembly (RFC 4944 §5.3, with RFC 6282 §2), sans-IO.

FRAG1 (dispatch 11000, 4 bytes: 11-bit datagram size, 16-bit tag) starts a datagram; FRAGN
(dispatch 11100, 5 bytes: the same plus an offset in 8-octet units) carries the rest. Sizes and
offsets count bytes of the *uncompressed* IPv6 datagram, while the first fragment carries the
*compressed* IPHC (+ UDP NHC) header. So the first fragment's cut is placed where the
uncompressed offset is a multiple of 8, and a receiver maps the first fragment back to
uncompressed bytes with :func:`firmware_agent.mesh.lowpan.header_sizes`.

:class:`Reassembler` returns the complete 6LoWPAN payload (the first fragment's compressed
header followed by all data, fragment headers removed): hand it to ``lowpan.decompress``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from firmware_agent.mesh.lowpan import LowpanError, header_sizes

DISPATCH_FRAG1 = 0b11000
DISPATCH_FRAGN = 0b11100
FRAG1_HEADER_LEN = 4
FRAGN_HEADER_LEN = 5
MAX_DATAGRAM_SIZE = 0x7FF  # 11 bits
DEFAULT_TIMEOUT_S = 60.0  # RFC 4944 §5.3: at most 60 s
DEFAULT_MAX_DATAGRAM = 1280  # the IPv6 minimum MTU, which 6LoWPAN must carry
DEFAULT_MAX_REASSEMBLIES = 8


class FragmentError(LowpanError):
    """A fragment that cannot be used; the message says which field or rule it broke."""


class DatagramTooLarge(FragmentError):
    """A datagram size above the configured limit (the reassembly is never started)."""


class ReassemblyLimit(FragmentError):
    """Too many datagrams are being reassembled at once; the new one is refused."""


class FragmentOverlap(FragmentError):
    """A fragment overlapping an earlier one with other bounds or bytes (RFC 4944 §5.3):
    the reassembly so far is discarded."""


@dataclass(frozen=True)
class FragmentHeader:
    size: int  # uncompressed datagram size
    tag: int
    offset: int | None  # None for FRAG1; FRAGN: in 8-octet units


def is_fragment(payload: bytes) -> bool:
    return bool(payload) and payload[0] >> 3 in (DISPATCH_FRAG1, DISPATCH_FRAGN)


def parse_header(payload: bytes) -> tuple[FragmentHeader, bytes]:
    """(the fragment header, the data after it)."""
    if not is_fragment(payload):
        dispatch = f"0x{payload[0]:02x}" if payload else "nothing"
        raise FragmentError(f"not a fragment: dispatch {dispatch}")
    first = payload[0] >> 3 == DISPATCH_FRAG1
    need = FRAG1_HEADER_LEN if first else FRAGN_HEADER_LEN
    if len(payload) < need:
        kind = "FRAG1" if first else "FRAGN"
        raise FragmentError(f"{kind} header truncated ({len(payload)} of {need} bytes)")
    (word, tag) = struct.unpack_from("!HH", payload)
    size = word & MAX_DATAGRAM_SIZE
    offset = None if first else payload[4]
    return FragmentHeader(size, tag, offset), payload[need:]


def frag1_header(size: int, tag: int) -> bytes:
    return struct.pack("!HH", DISPATCH_FRAG1 << 11 | size, tag)


def fragn_header(size: int, tag: int, offset_units: int) -> bytes:
    return struct.pack("!HHB", DISPATCH_FRAGN << 11 | size, tag, offset_units)


def fragment(
    lowpan_payload: bytes, datagram_size: int, tag: int, max_frame_payload: int
) -> list[bytes]:
    """The MAC payloads that carry ``lowpan_payload`` (IPHC or 0x41 dispatch onwards).

    ``datagram_size`` is the uncompressed IPv6 packet's size (40 + payload length); it must
    match what the compressed header stands for. A payload that fits one frame is returned as
    is, without a fragment header. Every fragment but the last carries a multiple of 8
    uncompressed bytes; the first one carries the whole compressed header."""
    if not 0 < datagram_size <= MAX_DATAGRAM_SIZE:
        raise FragmentError(f"datagram size {datagram_size} is not 1..{MAX_DATAGRAM_SIZE}")
    if not 0 <= tag <= 0xFFFF:
        raise FragmentError(f"datagram tag {tag} is not 0..65535")
    if max_frame_payload < FRAGN_HEADER_LEN + 8:
        raise FragmentError(
            f"frame payload room {max_frame_payload} is less than a FRAGN header + 8 bytes"
        )
    compressed, uncompressed = header_sizes(lowpan_payload)
    saved = uncompressed - compressed
    if len(lowpan_payload) + saved != datagram_size:
        raise FragmentError(
            f"datagram size {datagram_size} does not match the payload: its "
            f"{compressed}-byte header stands for {uncompressed} bytes, so the datagram is "
            f"{len(lowpan_payload) + saved} bytes"
        )
    if len(lowpan_payload) <= max_frame_payload:
        return [lowpan_payload]
    first = max_frame_payload - FRAG1_HEADER_LEN
    first -= (first + saved) % 8
    if first < compressed:
        raise FragmentError(
            f"the {compressed}-byte compressed header does not fit a first fragment of "
            f"{max_frame_payload - FRAG1_HEADER_LEN} bytes"
        )
    out = [frag1_header(datagram_size, tag) + lowpan_payload[:first]]
    chunk = (max_frame_payload - FRAGN_HEADER_LEN) // 8 * 8
    pos = first
    while pos < len(lowpan_payload):
        data = lowpan_payload[pos : pos + chunk]
        out.append(fragn_header(datagram_size, tag, (pos + saved) // 8) + data)
        pos += len(data)
    return out


@dataclass
class ReassemblyStats:
    fragments: int = 0  # fragments taken into a reassembly
    duplicates: int = 0  # the same fragment again (ignored)
    datagrams: int = 0  # datagrams completed
    timeouts: int = 0  # reassemblies dropped because they were not complete in time
    overlaps: int = 0  # reassemblies discarded for an overlapping or inconsistent fragment
    too_large: int = 0  # fragments of datagrams above the size limit
    over_limit: int = 0  # fragments refused because too many reassemblies were running
    malformed: int = 0  # fragments that did not parse


@dataclass(frozen=True)
class ExpiredReassembly:
    """A datagram that did not complete within the timeout (what was given up)."""

    src: bytes
    dst: bytes
    size: int
    tag: int
    started: float
    received: int  # uncompressed bytes that had arrived
    fragments: int


@dataclass
class _Partial:
    started: float
    first: bytes | None = None  # FRAG1 data (compressed header + first bytes)
    pieces: dict[int, bytes] = field(default_factory=dict)  # FRAGN data by byte offset
    spans: list[tuple[int, int]] = field(default_factory=list)  # uncompressed [start, end)
    received: int = 0


_Key = tuple[bytes, bytes, int, int]


class Reassembler:
    """Reassembly buffers keyed by (source MAC, destination MAC, size, tag), RFC 4944 §5.3."""

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_reassemblies: int = DEFAULT_MAX_REASSEMBLIES,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        if timeout_s <= 0 or max_reassemblies < 1 or not 0 < max_datagram <= MAX_DATAGRAM_SIZE:
            raise ValueError(
                f"bad reassembly limits: timeout {timeout_s} s, {max_reassemblies} at once, "
                f"datagrams up to {max_datagram} bytes"
            )
        self.timeout_s = timeout_s
        self.max_reassemblies = max_reassemblies
        self.max_datagram = max_datagram
        self.stats = ReassemblyStats()
        self._partials: dict[_Key, _Partial] = {}
        self._expired: list[ExpiredReassembly] = []

    @property
    def active(self) -> int:
        """How many datagrams are being reassembled."""
        return len(self._partials)

    def feed(self, src: bytes, dst: bytes, payload: bytes, now: float) -> bytes | None:
        """Take one fragment; the whole 6LoWPAN payload once the datagram is complete, else
        None. Raises a FragmentError subclass for a fragment it cannot use."""
        try:
            header, data = parse_header(payload)
            if header.size == 0:
                raise FragmentError("datagram size 0")
            if not data:
                raise FragmentError("fragment carries no data")
            if header.offset == 0:
                raise FragmentError("FRAGN with offset 0: the first fragment must be a FRAG1")
        except FragmentError:
            self.stats.malformed += 1
            raise
        if header.size > self.max_datagram:
            self.stats.too_large += 1
            raise DatagramTooLarge(
                f"datagram of {header.size} bytes exceeds the {self.max_datagram}-byte limit"
            )
        self._expire(now)
        key = (src, dst, header.size, header.tag)
        partial = self._partials.get(key)
        if partial is None:
            if len(self._partials) >= self.max_reassemblies:
                self.stats.over_limit += 1
                raise ReassemblyLimit(
                    f"{len(self._partials)} datagrams already being reassembled "
                    f"(limit {self.max_reassemblies}); tag {header.tag} refused"
                )
            partial = _Partial(now)
        start, end = self._span(header, data)
        if end > header.size:
            self._discard(key)
            raise FragmentOverlap(
                f"fragment covering bytes [{start}, {end}) runs past the "
                f"{header.size}-byte datagram (tag {header.tag})"
            )
        for s, e in partial.spans:
            if (s, e) == (start, end) and self._same(partial, header, data):
                self.stats.duplicates += 1
                return None
            if s < end and start < e:
                self._discard(key)
                raise FragmentOverlap(
                    f"fragment covering bytes [{start}, {end}) overlaps [{s}, {e}) of "
                    f"tag {header.tag}; reassembly discarded"
                )
        self._partials[key] = partial
        if header.offset is None:
            partial.first = data
        else:
            partial.pieces[start] = data
        partial.spans.append((start, end))
        partial.received += end - start
        self.stats.fragments += 1
        if partial.received < header.size:
            return None
        del self._partials[key]
        if partial.first is None:  # cannot happen: byte 0 is only ever covered by a FRAG1
            raise FragmentError(f"datagram tag {header.tag} complete without a first fragment")
        self.stats.datagrams += 1
        return partial.first + b"".join(partial.pieces[k] for k in sorted(partial.pieces))

    def expire(self, now: float) -> list[ExpiredReassembly]:
        """Drop reassemblies older than the timeout; report them (and any dropped during
        ``feed`` since the last call)."""
        self._expire(now)
        out, self._expired = self._expired, []
        return out

    def _span(self, header: FragmentHeader, data: bytes) -> tuple[int, int]:
        if header.offset is not None:
            return header.offset * 8, header.offset * 8 + len(data)
        try:
            compressed, uncompressed = header_sizes(data)
        except LowpanError as exc:
            self.stats.malformed += 1
            raise FragmentError(f"first fragment: {exc}") from None
        return 0, uncompressed + len(data) - compressed

    @staticmethod
    def _same(partial: _Partial, header: FragmentHeader, data: bytes) -> bool:
        if header.offset is None:
            return partial.first == data
        return partial.pieces.get(header.offset * 8) == data

    def _discard(self, key: _Key) -> None:
        self._partials.pop(key, None)
        self.stats.overlaps += 1

    def _expire(self, now: float) -> None:
        for key, partial in list(self._partials.items()):
            if now - partial.started >= self.timeout_s:
                del self._partials[key]
                self.stats.timeouts += 1
                src, dst, size, tag = key
                self._expired.append(
                    ExpiredReassembly(
                        src, dst, size, tag, partial.started, partial.received, len(partial.spans)
                    )
                )
