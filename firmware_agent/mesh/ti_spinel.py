"""TI Wi-SUN NCP properties (ti-wisunfantund's Spinel dialect), sans-IO.

A TI LaunchPad running the Wi-SUN FAN border router as an NCP speaks OpenThread's Spinel framing,
but reuses property ids OpenThread gives other meanings (DODAG_ROUTE is OpenThread's
IPV6_LL_ADDR, 0x60). So a host must first know it is talking to a TI Wi-SUN NCP — the identity
check below — before it reads any of these. Checked against TI's NCP firmware
(``ncp_base_mtd.cpp`` in the SimpleLink SDK) and wfantund (``SpinelNCPInstance.cpp``):

- NUM_CONNECTED_DEVICES (0x65): ``S``, the DAO targets the RPL root holds.
- CONNECTED_DEVICES (0x66): read page by page with repeated GETs. Each value is a block header
  byte (bit 7: last block, low bits: block index counting from 0) and that block's IPv6
  addresses, 16 bytes each (TI's firmware puts 2 in a block). An empty list is ``80``.
- DODAG_ROUTE_DEST (0x5F): SET a 16-byte IPv6 address, then GET DODAG_ROUTE (0x60): a path cost
  byte (one per hop) then the path's addresses from the border router to the destination. No
  route: cost 0 and the destination alone.
- STREAM_NET (0x72): ``dD``, one IPv6 packet (and optional metadata, empty from TI).
- PHY_NUM_NBRS (0x26, OpenThread's PHY_RSSI): ``C``, the border router's radio neighbours; it
  also rewinds PHY_NBR_METRICS (0x27), whose GETs then return one neighbour each: ``E`` EUI-64,
  ``S`` RSL in, ``S`` RSL out, both as (dBm + 174) × 8 (nanostack's EWMA; 0x7FFF: not yet known).
- Identity: NCP_VERSION starts ``TIWISUNFAN/``, INTERFACE_TYPE is 4 (TI's Wi-SUN value),
  PROTOCOL_VERSION is a string (``Wi-SUNFAN/1.0``), not OpenThread's two integers.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from drivers.spinel import Cap, SpinelError, pack, unpack, unpack_uint
from firmware_agent.mesh.ipv6 import PacketError, eui64_from_address, format_address

PROP_NET_IF_UP = 0x41
PROP_NET_STACK_UP = 0x42
PROP_NET_ROLE = 0x43
PROP_PHY_NUM_NBRS = 0x26
PROP_PHY_NBR_METRICS = 0x27
PROP_DODAG_ROUTE_DEST = 0x5F
PROP_DODAG_ROUTE = 0x60
PROP_NUM_CONNECTED_DEVICES = 0x65
PROP_CONNECTED_DEVICES = 0x66
PROP_STREAM_NET = 0x72

#: INTERFACE_TYPE of TI's Wi-SUN NCP (TI's spinel.h calls it PROTOCOL_TYPE_THREAD = 4).
INTERFACE_TYPE_WISUN = 4
#: OpenThread's INTERFACE_TYPE of a Thread NCP or RCP.
INTERFACE_TYPE_OPENTHREAD = 3
#: How TI's firmware names its stack at the start of NCP_VERSION.
TI_STACK_NAME = "TIWISUNFAN"
#: Bit 7 of a CONNECTED_DEVICES block header: this is the last block.
LAST_BLOCK = 0x80
#: Addresses per CONNECTED_DEVICES block in TI's firmware (any count decodes).
TI_BLOCK_SIZE = 2

ADDRESS_LEN = 16


class TiValueError(SpinelError):
    """A TI property value that does not parse; the message names the property and the fault."""


# --- identity ---------------------------------------------------------------------------------


class NcpKind(enum.StrEnum):
    TI_WISUN_NCP = "ti-wisun-ncp"
    RCP = "rcp"  # an OpenThread-style radio co-processor: use our own stack on it
    OTHER = "other"


@dataclass(frozen=True)
class NcpIdentity:
    """What the board says it is."""

    ncp_version: str
    interface_type: int
    caps: tuple[int, ...] | None = None  # None: not asked or refused

    @property
    def kind(self) -> NcpKind:
        return classify(self)


def classify(identity: NcpIdentity) -> NcpKind:
    """TI's NCP by its stack name and interface type; an RCP by OpenThread's raw-MAC caps."""
    if (
        identity.ncp_version.upper().startswith(TI_STACK_NAME + "/")
        and identity.interface_type == INTERFACE_TYPE_WISUN
    ):
        return NcpKind.TI_WISUN_NCP
    caps = set(identity.caps or ())
    if caps & {Cap.MAC_RAW, Cap.RCP_API_VERSION}:
        return NcpKind.RCP
    return NcpKind.OTHER


def describe_protocol_version(value: bytes) -> str:
    """PROTOCOL_VERSION as text whichever dialect sent it: TI's string, OpenThread's ``ii``."""
    nul = value.find(b"\x00")
    if nul > 0:
        text = value[:nul]
        if all(0x20 <= b < 0x7F for b in text):
            return text.decode("ascii")
    try:
        major, pos = unpack_uint(value, 0)
        minor, _ = unpack_uint(value, pos)
    except SpinelError:
        return value.hex()
    return f"{major}.{minor}"


# --- NUM_CONNECTED_DEVICES --------------------------------------------------------------------


def encode_num_connected(count: int) -> bytes:
    try:
        return pack("S", count)
    except SpinelError as exc:
        raise TiValueError(f"NUM_CONNECTED_DEVICES: {exc}") from None


def decode_num_connected(value: bytes) -> int:
    if len(value) < 2:
        raise TiValueError(
            f"NUM_CONNECTED_DEVICES: {len(value)} byte(s), need a u16 ({value.hex()})"
        )
    (count,) = unpack("S", value)
    assert isinstance(count, int)
    return count


# --- CONNECTED_DEVICES ------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicesBlock:
    """One page of CONNECTED_DEVICES."""

    index: int  # 0..127, counting from the first page of this listing
    last: bool
    addresses: tuple[bytes, ...]


def encode_devices_block(block: DevicesBlock) -> bytes:
    if not 0 <= block.index < LAST_BLOCK:
        raise TiValueError(f"CONNECTED_DEVICES: block index {block.index} out of range 0..127")
    for addr in block.addresses:
        _check_address("CONNECTED_DEVICES", addr)
    header = block.index | (LAST_BLOCK if block.last else 0)
    return bytes((header,)) + b"".join(block.addresses)


def decode_devices_block(value: bytes) -> DevicesBlock:
    if not value:
        raise TiValueError("CONNECTED_DEVICES: empty value, no block header")
    body = value[1:]
    if len(body) % ADDRESS_LEN:
        raise TiValueError(
            f"CONNECTED_DEVICES: {len(body)} bytes after the block header, "
            f"not a whole number of 16-byte addresses ({value.hex()})"
        )
    addresses = tuple(body[i : i + ADDRESS_LEN] for i in range(0, len(body), ADDRESS_LEN))
    return DevicesBlock(value[0] & 0x7F, bool(value[0] & LAST_BLOCK), addresses)


def split_into_blocks(
    addresses: Sequence[bytes], block_size: int = TI_BLOCK_SIZE
) -> list[DevicesBlock]:
    """The pages a board sends for ``addresses`` (one empty last page for none)."""
    if block_size < 1:
        raise ValueError(f"block size must be >= 1, got {block_size}")
    chunks = [tuple(addresses[i : i + block_size]) for i in range(0, len(addresses), block_size)]
    if not chunks:
        return [DevicesBlock(0, True, ())]
    if len(chunks) > LAST_BLOCK:
        raise TiValueError(f"CONNECTED_DEVICES: {len(chunks)} blocks exceed 128 block indexes")
    return [DevicesBlock(i, i == len(chunks) - 1, chunk) for i, chunk in enumerate(chunks)]


class DevicePager:
    """Collects one CONNECTED_DEVICES listing from its pages; a page out of sequence (a board
    that restarted its listing, or one we lost) is an error, and the next listing starts over."""

    def __init__(self, max_blocks: int = LAST_BLOCK) -> None:
        self.max_blocks = max_blocks
        self._addresses: list[bytes] = []
        self._expected = 0

    @property
    def pages_read(self) -> int:
        return self._expected

    def feed(self, block: DevicesBlock) -> tuple[bytes, ...] | None:
        """The whole list after the last page; None while more pages are due."""
        if block.index != self._expected:
            expected = self._expected
            self.reset()
            raise TiValueError(
                f"CONNECTED_DEVICES: block {block.index} arrived where block {expected} was due"
            )
        self._addresses.extend(block.addresses)
        self._expected += 1
        if block.last:
            done = tuple(dict.fromkeys(self._addresses))
            self.reset()
            return done
        if self._expected >= self.max_blocks:
            self.reset()
            raise TiValueError(f"CONNECTED_DEVICES: no last block after {self.max_blocks} blocks")
        return None

    def reset(self) -> None:
        self._addresses = []
        self._expected = 0


# --- DODAG_ROUTE ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DodagRoute:
    """A DODAG_ROUTE value: the border router's path to ``target``."""

    path_cost: int
    addresses: tuple[bytes, ...]  # border router first, the destination last

    @property
    def target(self) -> bytes:
        return self.addresses[-1]

    @property
    def has_route(self) -> bool:
        """TI answers cost 0 with the destination alone when it knows no route."""
        return len(self.addresses) >= 2


def encode_dodag_route(route: DodagRoute) -> bytes:
    if not 0 <= route.path_cost <= 0xFF:
        raise TiValueError(f"DODAG_ROUTE: path cost {route.path_cost} out of range 0..255")
    if not route.addresses:
        raise TiValueError("DODAG_ROUTE: a route names at least its destination")
    for addr in route.addresses:
        _check_address("DODAG_ROUTE", addr)
    return bytes((route.path_cost,)) + b"".join(route.addresses)


def decode_dodag_route(value: bytes) -> DodagRoute:
    """Addresses are counted from the value's length (the cost is a sum of link costs, one per
    hop on TI's stack, so it is reported but not trusted as a count)."""
    if not value:
        raise TiValueError("DODAG_ROUTE: empty value")
    body = value[1:]
    if not body or len(body) % ADDRESS_LEN:
        raise TiValueError(
            f"DODAG_ROUTE: {len(body)} bytes after the path cost, need one or more 16-byte "
            f"addresses ({value.hex()})"
        )
    addresses = tuple(body[i : i + ADDRESS_LEN] for i in range(0, len(body), ADDRESS_LEN))
    if len(set(addresses)) != len(addresses):
        raise TiValueError(
            "DODAG_ROUTE: an address repeats in the path (a loop): "
            + " ".join(format_address(a) for a in addresses)
        )
    return DodagRoute(value[0], addresses)


def encode_route_dest(address: bytes) -> bytes:
    _check_address("DODAG_ROUTE_DEST", address)
    return bytes(address)


def decode_route_dest(value: bytes) -> bytes:
    if len(value) < ADDRESS_LEN:
        raise TiValueError(f"DODAG_ROUTE_DEST: {len(value)} bytes, need a 16-byte address")
    return value[:ADDRESS_LEN]


# --- neighbour metrics ------------------------------------------------------------------------

#: nanostack's "RSL not measured yet" (RSL_UNITITIALIZED); 0xFFFF is treated the same.
RSL_UNKNOWN = 0x7FFF


@dataclass(frozen=True)
class NeighbourMetrics:
    """One PHY_NBR_METRICS value: a radio neighbour of the border router and its RSLs."""

    eui64: bytes
    rsl_in_dbm: float | None  # what we hear from it
    rsl_out_dbm: float | None  # what it reports hearing from us (its RSL IE)


def rsl_dbm(raw: int) -> float | None:
    return None if raw in (RSL_UNKNOWN, 0xFFFF) else raw / 8 - 174


def rsl_raw(dbm: float | None) -> int:
    if dbm is None:
        return RSL_UNKNOWN
    raw = round((dbm + 174) * 8)
    if not 0 <= raw < RSL_UNKNOWN:
        raise TiValueError(f"PHY_NBR_METRICS: RSL {dbm} dBm out of range")
    return raw


def encode_nbr_metrics(metrics: NeighbourMetrics) -> bytes:
    if len(metrics.eui64) != 8:
        raise TiValueError(f"PHY_NBR_METRICS: an EUI-64 is 8 bytes, got {metrics.eui64!r}")
    return pack("ESS", metrics.eui64, rsl_raw(metrics.rsl_in_dbm), rsl_raw(metrics.rsl_out_dbm))


def decode_nbr_metrics(value: bytes) -> NeighbourMetrics:
    if len(value) < 12:
        raise TiValueError(
            f"PHY_NBR_METRICS: {len(value)} bytes, need 12 (EUI-64, RSL in, RSL out): {value.hex()}"
        )
    eui64, raw_in, raw_out = unpack("ESS", value)
    assert isinstance(eui64, bytes) and isinstance(raw_in, int) and isinstance(raw_out, int)
    return NeighbourMetrics(eui64, rsl_dbm(raw_in), rsl_dbm(raw_out))


def decode_num_nbrs(value: bytes) -> int:
    if not value:
        raise TiValueError("PHY_NUM_NBRS: empty value")
    return value[0]


# --- STREAM_NET -------------------------------------------------------------------------------


def encode_stream_net(packet: bytes) -> bytes:
    """A SET STREAM_NET value: the IPv6 packet with its length (no metadata, as wfantund)."""
    try:
        return pack("d", packet)
    except SpinelError as exc:
        raise TiValueError(f"STREAM_NET: {exc}") from None


def decode_stream_net(value: bytes) -> bytes:
    """The IPv6 packet of an IS STREAM_NET (the metadata after it is ignored)."""
    try:
        (packet,) = unpack("d", value)
    except SpinelError as exc:
        raise TiValueError(f"STREAM_NET: {exc}") from None
    assert isinstance(packet, bytes)
    return packet


# --- parents ----------------------------------------------------------------------------------


def parents_from_routes(routes: Iterable[DodagRoute], root: bytes) -> dict[bytes, list[bytes]]:
    """Each node's parent (the hop before it on its path), by EUI-64, for ``ParentSync``.

    A node's own route decides its parent; a node seen only inside other nodes' paths takes the
    hop before it there. A path must start at the border router ``root``. TI reports one path
    per node, so each node has one parent (its preferred one)."""
    own: dict[bytes, bytes] = {}
    seen: dict[bytes, bytes] = {}
    for route in routes:
        if not route.has_route:
            continue
        try:
            hops = [eui64_from_address(a) for a in route.addresses]
        except PacketError as exc:  # pragma: no cover - decode checks lengths
            raise TiValueError(f"DODAG_ROUTE: {exc}") from None
        if hops[0] != root:
            raise TiValueError(
                f"DODAG_ROUTE to {format_address(route.target)} starts at "
                f"{format_address(route.addresses[0])}, not at the border router {root.hex()}"
            )
        own[hops[-1]] = hops[-2]
        for parent, child in pairwise(hops):
            seen.setdefault(child, parent)
    merged = {**seen, **own}
    return {node: [parent] for node, parent in merged.items() if node != root}


def addresses_by_node(addresses: Iterable[bytes]) -> Mapping[bytes, bytes]:
    """EUI-64 → IPv6 address for the connected devices (their IIDs come from EUI-64s)."""
    return {eui64_from_address(a): a for a in addresses}


def _check_address(what: str, addr: bytes) -> None:
    if not isinstance(addr, bytes | bytearray) or len(addr) != ADDRESS_LEN:
        raise TiValueError(f"{what}: an IPv6 address is 16 bytes, got {addr!r}")
