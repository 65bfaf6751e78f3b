"""RPL control messages (RFC 6550 §6): DIS, DIO, DAO, DAO-ACK as dataclasses, sans-IO.

The gateway is the DODAG root in non-storing mode (MOP 1): it sends DIOs, nodes send it DAOs
listing their parents in Transit Information options (with the parent address, as §6.7.8
requires in non-storing mode), and it answers DAO-ACKs. :func:`encode_rpl` / :func:`decode_rpl`
turn these into ICMPv6 type 155 messages whose checksum covers the IPv6 pseudo-header (give the
*final* destination when the packet carries a source route).

Options RPL defines but this codec does not model (metric containers, route information,
solicited information, target descriptors...) and options of unknown type are skipped and
reported in the message's ``unknown_options``; a known option with a bad length is an RplError.
Pad1/PadN are accepted anywhere and never reported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from firmware_agent.mesh.ipv6 import PacketError, decode_icmpv6, encode_icmpv6

ICMPV6_RPL = 155
CODE_DIS = 0x00
CODE_DIO = 0x01
CODE_DAO = 0x02
CODE_DAO_ACK = 0x03

MOP_NO_DOWNWARD = 0
MOP_NON_STORING = 1
MOP_STORING = 2
MOP_STORING_MULTICAST = 3

OPT_PAD1 = 0x00
OPT_PADN = 0x01
OPT_DAG_METRIC_CONTAINER = 0x02
OPT_ROUTE_INFORMATION = 0x03
OPT_DODAG_CONFIGURATION = 0x04
OPT_RPL_TARGET = 0x05
OPT_TRANSIT_INFORMATION = 0x06
OPT_SOLICITED_INFORMATION = 0x07
OPT_PREFIX_INFORMATION = 0x08
OPT_TARGET_DESCRIPTOR = 0x09

#: ff02::1a, where DIOs and DIS go (RFC 6550 §20.19).
ALL_RPL_NODES = bytes.fromhex("ff02000000000000000000000000001a")

DEFAULT_MIN_HOP_RANK_INCREASE = 256
INFINITE_RANK = 0xFFFF
INFINITE_LIFETIME = 0xFF  # Path Lifetime / Default Lifetime value meaning "forever"
NO_PATH_LIFETIME = 0x00  # a Transit with lifetime 0 removes the path (No-Path DAO)
OCP_OF0 = 0
OCP_MRHOF = 1


class RplError(PacketError):
    """An RPL message that does not parse or cannot be encoded; the message says which field."""


# --- rank (RFC 6550 §3.5) -----------------------------------------------------------------------


def dag_rank(rank: int, min_hop_rank_increase: int = DEFAULT_MIN_HOP_RANK_INCREASE) -> int:
    """DAGRank(rank) = floor(rank / MinHopRankIncrease): the integer part that orders nodes."""
    if min_hop_rank_increase <= 0:
        raise RplError(f"MinHopRankIncrease must be positive, got {min_hop_rank_increase}")
    return rank // min_hop_rank_increase


def root_rank(min_hop_rank_increase: int = DEFAULT_MIN_HOP_RANK_INCREASE) -> int:
    """ROOT_RANK: the rank the DODAG root advertises (DAGRank 1)."""
    return min_hop_rank_increase


def is_lesser_rank(
    a: int, b: int, min_hop_rank_increase: int = DEFAULT_MIN_HOP_RANK_INCREASE
) -> bool:
    """True when rank ``a`` is closer to the root than ``b`` (compared as DAGRanks)."""
    return dag_rank(a, min_hop_rank_increase) < dag_rank(b, min_hop_rank_increase)


def add_rank(rank: int, increase: int) -> int:
    """``rank + increase``, saturating at INFINITE_RANK (a rank is 16 bits)."""
    return min(INFINITE_RANK, rank + increase)


# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnknownOption:
    """An option this codec skipped: its type and its data (without type and length)."""

    option_type: int
    data: bytes


@dataclass(frozen=True)
class DodagConfig:
    """DODAG Configuration option (0x04, §6.7.6). Defaults: RFC 6550 §17, OCP MRHOF."""

    authentication: bool = False
    path_control_size: int = 0
    dio_interval_doublings: int = 20
    dio_interval_min: int = 3
    dio_redundancy: int = 10
    max_rank_increase: int = 7 * DEFAULT_MIN_HOP_RANK_INCREASE
    min_hop_rank_increase: int = DEFAULT_MIN_HOP_RANK_INCREASE
    ocp: int = OCP_MRHOF
    default_lifetime: int = 120
    lifetime_unit: int = 60

    def lifetime_s(self, lifetime: int) -> float | None:
        """A Path/Default Lifetime in seconds; None for 0xFF (infinite)."""
        return None if lifetime == INFINITE_LIFETIME else float(lifetime * self.lifetime_unit)


@dataclass(frozen=True)
class PrefixInfo:
    """Prefix Information option (0x08, §6.7.10): the prefix nodes autoconfigure from."""

    prefix: bytes  # 16 bytes
    prefix_length: int = 64
    on_link: bool = False  # L
    autonomous: bool = True  # A
    router_address: bool = False  # R: prefix is the sender's full address
    valid_lifetime: int = 0xFFFFFFFF
    preferred_lifetime: int = 0xFFFFFFFF


@dataclass(frozen=True)
class Target:
    """RPL Target option (0x05, §6.7.7): an address (prefix length 128) or prefix reached."""

    prefix: bytes  # 16 bytes; bits past prefix_length are zero
    prefix_length: int = 128


@dataclass(frozen=True)
class Transit:
    """Transit Information option (0x06, §6.7.8). In non-storing mode ``parent`` is the
    address of one of the target's parents; a node with several parents sends one each."""

    path_sequence: int
    path_lifetime: int
    parent: bytes | None = None
    path_control: int = 0
    external: bool = False  # E


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dis:
    """DODAG Information Solicitation (§6.2): asks neighbours for DIOs."""

    unknown_options: tuple[UnknownOption, ...] = ()


@dataclass(frozen=True)
class Dio:
    """DODAG Information Object (§6.3): the root's (and routers') announcement."""

    instance_id: int
    version: int
    rank: int
    dodag_id: bytes  # 16 bytes: the root's global address
    grounded: bool = True
    mop: int = MOP_NON_STORING
    preference: int = 0
    dtsn: int = 0
    config: DodagConfig | None = None
    prefixes: tuple[PrefixInfo, ...] = ()
    unknown_options: tuple[UnknownOption, ...] = ()


@dataclass(frozen=True)
class Dao:
    """Destination Advertisement Object (§6.4). ``options`` keeps the wire order: one or more
    Targets followed by the Transits that apply to them, possibly repeated (§9.4)."""

    instance_id: int
    sequence: int
    options: tuple[Target | Transit, ...] = ()
    dodag_id: bytes | None = None  # present: the D flag is set
    expect_ack: bool = True  # K
    unknown_options: tuple[UnknownOption, ...] = ()

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(o for o in self.options if isinstance(o, Target))

    @property
    def transits(self) -> tuple[Transit, ...]:
        return tuple(o for o in self.options if isinstance(o, Transit))

    def groups(self) -> list[tuple[tuple[Target, ...], tuple[Transit, ...]]]:
        """(targets, the transits that follow them) for each group, in order."""
        out: list[tuple[tuple[Target, ...], tuple[Transit, ...]]] = []
        targets: list[Target] = []
        transits: list[Transit] = []
        for opt in self.options:
            if isinstance(opt, Target):
                if transits:
                    out.append((tuple(targets), tuple(transits)))
                    targets, transits = [], []
                targets.append(opt)
            else:
                transits.append(opt)
        if targets or transits:
            out.append((tuple(targets), tuple(transits)))
        return out


@dataclass(frozen=True)
class DaoAck:
    """DAO-ACK (§6.5). Status 0 accepts; 128 and above reject."""

    instance_id: int
    sequence: int
    status: int = 0
    dodag_id: bytes | None = None
    unknown_options: tuple[UnknownOption, ...] = ()


RplMessage = Dis | Dio | Dao | DaoAck


# --- encoding -----------------------------------------------------------------------------------


def _u8(what: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise RplError(f"{what} must be 0..255, got {value}")
    return value


def _u16(what: str, value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise RplError(f"{what} must be 0..65535, got {value}")
    return value


def _addr(what: str, value: bytes) -> bytes:
    if len(value) != 16:
        raise RplError(f"{what} must be a 16-byte IPv6 address, got {len(value)} bytes")
    return value


def _option(option_type: int, data: bytes) -> bytes:
    if len(data) > 0xFF:
        raise RplError(f"option 0x{option_type:02x} data too long ({len(data)} bytes)")
    return bytes((_u8("option type", option_type), len(data))) + data


def _encode_config(c: DodagConfig) -> bytes:
    if not 0 <= c.path_control_size <= 7:
        raise RplError(f"Path Control Size must be 0..7, got {c.path_control_size}")
    data = struct.pack(
        "!BBBBHHHBBH",
        c.authentication << 3 | c.path_control_size,
        _u8("DIOIntervalDoublings", c.dio_interval_doublings),
        _u8("DIOIntervalMin", c.dio_interval_min),
        _u8("DIORedundancyConstant", c.dio_redundancy),
        _u16("MaxRankIncrease", c.max_rank_increase),
        _u16("MinHopRankIncrease", c.min_hop_rank_increase),
        _u16("OCP", c.ocp),
        0,
        _u8("Default Lifetime", c.default_lifetime),
        _u16("Lifetime Unit", c.lifetime_unit),
    )
    return _option(OPT_DODAG_CONFIGURATION, data)


def _encode_prefix(p: PrefixInfo) -> bytes:
    if not 0 <= p.prefix_length <= 128:
        raise RplError(f"prefix length must be 0..128, got {p.prefix_length}")
    for what, value in (("valid", p.valid_lifetime), ("preferred", p.preferred_lifetime)):
        if not 0 <= value <= 0xFFFFFFFF:
            raise RplError(f"{what} lifetime must fit 32 bits, got {value}")
    flags = p.on_link << 7 | p.autonomous << 6 | p.router_address << 5
    data = struct.pack(
        "!BBIII", p.prefix_length, flags, p.valid_lifetime, p.preferred_lifetime, 0
    ) + _addr("prefix", p.prefix)
    return _option(OPT_PREFIX_INFORMATION, data)


def _prefix_octets(length: int) -> int:
    return (length + 7) // 8


def _encode_target(t: Target) -> bytes:
    if not 0 <= t.prefix_length <= 128:
        raise RplError(f"target prefix length must be 0..128, got {t.prefix_length}")
    prefix = _addr("target", t.prefix)
    if int.from_bytes(prefix, "big") & ((1 << (128 - t.prefix_length)) - 1):
        raise RplError(f"target has bits set past its prefix length {t.prefix_length}")
    octets = _prefix_octets(t.prefix_length)
    return _option(OPT_RPL_TARGET, bytes((0, t.prefix_length)) + prefix[:octets])


def _encode_transit(t: Transit) -> bytes:
    data = bytes(
        (
            t.external << 7,
            _u8("Path Control", t.path_control),
            _u8("Path Sequence", t.path_sequence),
            _u8("Path Lifetime", t.path_lifetime),
        )
    )
    if t.parent is not None:
        data += _addr("transit parent", t.parent)
    return _option(OPT_TRANSIT_INFORMATION, data)


def _encode_unknown(options: tuple[UnknownOption, ...]) -> bytes:
    out = bytearray()
    for opt in options:
        if opt.option_type == OPT_PAD1:
            raise RplError("Pad1 cannot be carried as an unknown option")
        out += _option(opt.option_type, opt.data)
    return bytes(out)


def encode_body(msg: RplMessage) -> tuple[int, bytes]:
    """(ICMPv6 code, message body after the ICMPv6 header) for ``msg``."""
    if isinstance(msg, Dis):
        return CODE_DIS, b"\x00\x00" + _encode_unknown(msg.unknown_options)
    if isinstance(msg, Dio):
        for what, value, high in (("MOP", msg.mop, 7), ("Prf", msg.preference, 7)):
            if not 0 <= value <= high:
                raise RplError(f"{what} must be 0..{high}, got {value}")
        body = bytearray(
            struct.pack(
                "!BBHBBBB",
                _u8("RPLInstanceID", msg.instance_id),
                _u8("Version", msg.version),
                _u16("Rank", msg.rank),
                msg.grounded << 7 | msg.mop << 3 | msg.preference,
                _u8("DTSN", msg.dtsn),
                0,
                0,
            )
        )
        body += _addr("DODAGID", msg.dodag_id)
        if msg.config is not None:
            body += _encode_config(msg.config)
        for prefix in msg.prefixes:
            body += _encode_prefix(prefix)
        return CODE_DIO, bytes(body) + _encode_unknown(msg.unknown_options)
    if isinstance(msg, Dao):
        flags = msg.expect_ack << 7 | (msg.dodag_id is not None) << 6
        body = bytearray(
            (_u8("RPLInstanceID", msg.instance_id), flags, 0, _u8("DAOSequence", msg.sequence))
        )
        if msg.dodag_id is not None:
            body += _addr("DODAGID", msg.dodag_id)
        for opt in msg.options:
            body += _encode_target(opt) if isinstance(opt, Target) else _encode_transit(opt)
        return CODE_DAO, bytes(body) + _encode_unknown(msg.unknown_options)
    body = bytearray(
        (
            _u8("RPLInstanceID", msg.instance_id),
            (msg.dodag_id is not None) << 7,
            _u8("DAOSequence", msg.sequence),
            _u8("Status", msg.status),
        )
    )
    if msg.dodag_id is not None:
        body += _addr("DODAGID", msg.dodag_id)
    return CODE_DAO_ACK, bytes(body) + _encode_unknown(msg.unknown_options)


def encode_rpl(src: bytes, dst: bytes, msg: RplMessage) -> bytes:
    """The ICMPv6 message (type 155) carrying ``msg``; ``dst`` is the final destination."""
    code, body = encode_body(msg)
    return encode_icmpv6(src, dst, ICMPV6_RPL, code, body)


# --- decoding -----------------------------------------------------------------------------------

_NAMES = {
    OPT_DODAG_CONFIGURATION: "DODAG Configuration",
    OPT_RPL_TARGET: "RPL Target",
    OPT_TRANSIT_INFORMATION: "Transit Information",
    OPT_PREFIX_INFORMATION: "Prefix Information",
}


def _split_options(
    data: bytes, known: frozenset[int]
) -> tuple[list[tuple[int, bytes]], tuple[UnknownOption, ...]]:
    """(known options in order as (type, data), skipped options). Pads vanish."""
    found: list[tuple[int, bytes]] = []
    skipped: list[UnknownOption] = []
    pos = 0
    while pos < len(data):
        opt_type = data[pos]
        if opt_type == OPT_PAD1:
            pos += 1
            continue
        if pos + 2 > len(data):
            raise RplError(f"option 0x{opt_type:02x} at offset {pos} has no length byte")
        length = data[pos + 1]
        end = pos + 2 + length
        if end > len(data):
            raise RplError(
                f"option 0x{opt_type:02x} at offset {pos} says {length} bytes, "
                f"{len(data) - pos - 2} present"
            )
        value = data[pos + 2 : end]
        if opt_type in known:
            found.append((opt_type, value))
        elif opt_type != OPT_PADN:
            skipped.append(UnknownOption(opt_type, value))
        pos = end
    return found, tuple(skipped)


def _need_length(opt_type: int, value: bytes, *lengths: int) -> None:
    if len(value) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise RplError(f"{_NAMES[opt_type]} option length {len(value)}, expected {want}")


def _decode_config(value: bytes) -> DodagConfig:
    _need_length(OPT_DODAG_CONFIGURATION, value, 14)
    flags, dbl, imin, red, maxinc, minhop, ocp, _r, deflife, unit = struct.unpack(
        "!BBBBHHHBBH", value
    )
    return DodagConfig(
        bool(flags & 0x08), flags & 7, dbl, imin, red, maxinc, minhop, ocp, deflife, unit
    )


def _decode_prefix(value: bytes) -> PrefixInfo:
    _need_length(OPT_PREFIX_INFORMATION, value, 30)
    length, flags, valid, preferred, _r = struct.unpack_from("!BBIII", value)
    if length > 128:
        raise RplError(f"Prefix Information prefix length {length} exceeds 128")
    return PrefixInfo(
        value[14:30],
        length,
        bool(flags & 0x80),
        bool(flags & 0x40),
        bool(flags & 0x20),
        valid,
        preferred,
    )


def _decode_target(value: bytes) -> Target:
    if len(value) < 2:
        raise RplError(f"RPL Target option length {len(value)}, expected at least 2")
    length = value[1]
    if length > 128:
        raise RplError(f"RPL Target prefix length {length} exceeds 128")
    prefix = value[2:]
    if not _prefix_octets(length) <= len(prefix) <= 16:
        raise RplError(f"RPL Target with prefix length {length} carries {len(prefix)} prefix bytes")
    raw = int.from_bytes(prefix.ljust(16, b"\0"), "big")
    masked = raw & ~((1 << (128 - length)) - 1) & ((1 << 128) - 1)
    return Target(masked.to_bytes(16, "big"), length)


def _decode_transit(value: bytes) -> Transit:
    _need_length(OPT_TRANSIT_INFORMATION, value, 4, 20)
    flags, control, sequence, lifetime = value[:4]
    parent = value[4:] if len(value) == 20 else None
    return Transit(sequence, lifetime, parent, control, bool(flags & 0x80))


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise RplError(f"{what} truncated: {len(body)} bytes, needs {n}")


def decode_body(code: int, body: bytes) -> RplMessage:
    """The RPL message in an ICMPv6 type 155 body (after type, code and checksum)."""
    if code & 0x80:
        raise RplError(f"secured RPL messages (code 0x{code:02x}) are not supported")
    if code == CODE_DIS:
        _need(body, 2, "DIS")
        _, unknown = _split_options(body[2:], frozenset())
        return Dis(unknown)
    if code == CODE_DIO:
        _need(body, 24, "DIO")
        instance, version, rank, gmp, dtsn = struct.unpack_from("!BBHBB", body)
        found, unknown = _split_options(
            body[24:], frozenset((OPT_DODAG_CONFIGURATION, OPT_PREFIX_INFORMATION))
        )
        configs = [_decode_config(v) for t, v in found if t == OPT_DODAG_CONFIGURATION]
        if len(configs) > 1:
            raise RplError(f"DIO carries {len(configs)} DODAG Configuration options")
        return Dio(
            instance,
            version,
            rank,
            body[8:24],
            grounded=bool(gmp & 0x80),
            mop=(gmp >> 3) & 7,
            preference=gmp & 7,
            dtsn=dtsn,
            config=configs[0] if configs else None,
            prefixes=tuple(_decode_prefix(v) for t, v in found if t == OPT_PREFIX_INFORMATION),
            unknown_options=unknown,
        )
    if code == CODE_DAO:
        _need(body, 4, "DAO")
        instance, flags, _r, sequence = body[:4]
        dodag_id = None
        pos = 4
        if flags & 0x40:
            _need(body, 20, "DAO with the D flag")
            dodag_id, pos = body[4:20], 20
        found, unknown = _split_options(
            body[pos:], frozenset((OPT_RPL_TARGET, OPT_TRANSIT_INFORMATION))
        )
        options = tuple(
            _decode_target(v) if t == OPT_RPL_TARGET else _decode_transit(v) for t, v in found
        )
        return Dao(instance, sequence, options, dodag_id, bool(flags & 0x80), unknown)
    if code == CODE_DAO_ACK:
        _need(body, 4, "DAO-ACK")
        instance, flags, sequence, status = body[:4]
        dodag_id = None
        pos = 4
        if flags & 0x80:
            _need(body, 20, "DAO-ACK with the D flag")
            dodag_id, pos = body[4:20], 20
        _, unknown = _split_options(body[pos:], frozenset())
        return DaoAck(instance, sequence, status, dodag_id, unknown)
    raise RplError(f"unsupported RPL message code 0x{code:02x}")


def decode_rpl(src: bytes, dst: bytes, data: bytes) -> RplMessage:
    """The RPL message in an ICMPv6 message, checksum verified (``dst`` = final destination)."""
    icmp_type, code, body = decode_icmpv6(src, dst, data)
    if icmp_type != ICMPV6_RPL:
        raise RplError(f"ICMPv6 type {icmp_type} is not RPL ({ICMPV6_RPL})")
    return decode_body(code, body)
