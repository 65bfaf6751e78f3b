"""Spinel frames, constants and the datatype packer (sans-IO).

Spinel (OpenThread's host↔co-processor protocol, draft-rquattle-spinel-unified) is a header byte,
a packed-uint command, for property commands a packed-uint property id, then a value encoded by a
D-Bus-like format string. Everything here is pure: bytes in, records out, and a typed
:class:`SpinelError` naming what was wrong when the bytes do not parse.

The STREAM_RAW layouts follow OpenThread's RCP (``src/ncp/ncp_base_radio.cpp``) exactly, so this
codec talks to real boards and to our virtual RCP alike.

Speed: every radio frame goes through :func:`encode`, :func:`decode_frame` and the STREAM_RAW
decoder, so those take direct paths (one-byte packed ints, precompiled ``struct`` layouts) and
fall back to the general datatype code for anything unusual, which also names what was wrong.
Parsed format strings are cached.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeAlias

# --- header -----------------------------------------------------------------------------------

HEADER_FLAG = 0x80
HEADER_FLAG_MASK = 0xC0
TID_MAX = 15
PACKED_UINT_MAX = 2_097_151


class SpinelError(Exception):
    """Bytes that are not a valid Spinel frame or value; the message names the problem."""


class Cmd(enum.IntEnum):
    NOOP = 0
    RESET = 1
    PROP_VALUE_GET = 2
    PROP_VALUE_SET = 3
    PROP_VALUE_INSERT = 4
    PROP_VALUE_REMOVE = 5
    PROP_VALUE_IS = 6
    PROP_VALUE_INSERTED = 7
    PROP_VALUE_REMOVED = 8


#: Commands whose payload starts with a property id.
PROP_COMMANDS = frozenset(range(Cmd.PROP_VALUE_GET, Cmd.PROP_VALUE_REMOVED + 1))


class Prop(enum.IntEnum):
    LAST_STATUS = 0
    PROTOCOL_VERSION = 1
    NCP_VERSION = 2
    INTERFACE_TYPE = 3
    VENDOR_ID = 4
    CAPS = 5
    INTERFACE_COUNT = 6
    POWER_STATE = 7
    HWADDR = 8
    PHY_ENABLED = 32
    PHY_CHAN = 33
    PHY_CHAN_SUPPORTED = 34
    PHY_FREQ = 35
    PHY_CCA_THRESHOLD = 36
    PHY_TX_POWER = 37
    PHY_RSSI = 38
    PHY_RX_SENSITIVITY = 39
    MAC_SCAN_STATE = 48
    MAC_SCAN_MASK = 49
    MAC_SCAN_PERIOD = 50
    MAC_15_4_LADDR = 52
    MAC_15_4_SADDR = 53
    MAC_15_4_PANID = 54
    MAC_RAW_STREAM_ENABLED = 55
    MAC_PROMISCUOUS_MODE = 56
    MAC_ENERGY_SCAN_RESULT = 57
    STREAM_RAW = 113


#: First and last property ids of the vendor range; our own properties live here, announced in CAPS.
PROP_VENDOR_BEGIN = 15360
PROP_VENDOR_END = 16383


class Status(enum.IntEnum):
    OK = 0
    FAILURE = 1
    UNIMPLEMENTED = 2
    INVALID_ARGUMENT = 3
    INVALID_STATE = 4
    INVALID_COMMAND = 5
    INVALID_INTERFACE = 6
    INTERNAL_ERROR = 7
    SECURITY_ERROR = 8
    PARSE_ERROR = 9
    IN_PROGRESS = 10
    NOMEM = 11
    BUSY = 12
    PROP_NOT_FOUND = 13
    DROPPED = 14
    EMPTY = 15
    CMD_TOO_BIG = 16
    NO_ACK = 17
    CCA_FAILURE = 18
    ALREADY = 19
    ITEM_NOT_FOUND = 20
    INVALID_COMMAND_FOR_PROP = 21
    RESET_POWER_ON = 112
    RESET_EXTERNAL = 113
    RESET_SOFTWARE = 114
    RESET_FAULT = 115
    RESET_CRASH = 116
    RESET_ASSERT = 117
    RESET_OTHER = 118
    RESET_UNKNOWN = 119
    RESET_WATCHDOG = 120


RESET_STATUS_BEGIN = 112
RESET_STATUS_END = 128  # exclusive


def is_reset_status(status: int) -> bool:
    """Whether a LAST_STATUS value is one of the RESET_* notifications a board sends on boot."""
    return RESET_STATUS_BEGIN <= status < RESET_STATUS_END


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"STATUS_{status}"


def prop_name(prop: int) -> str:
    try:
        return Prop(prop).name
    except ValueError:
        return f"PROP_{prop}"


class Cap(enum.IntEnum):
    """Capability numbers (values of the CAPS property)."""

    COUNTERS = 5
    WRITABLE_RAW_STREAM = 8
    IEEE_802_15_4_2006 = 17
    IEEE_802_15_4_2011 = 18
    IEEE_802_15_4_915MHZ_OQPSK = 25
    CONFIG_RADIO = 34
    RCP_API_VERSION = 64
    MAC_RAW = 513


class ScanState(enum.IntEnum):
    IDLE = 0
    BEACON = 1
    ENERGY = 2


class InterfaceType(enum.IntEnum):
    BOOTLOADER = 0
    ZIGBEE_IP = 2
    THREAD = 3


# Metadata flags in a received STREAM_RAW frame.
MD_FLAG_TX = 0x0001
MD_FLAG_BAD_FCS = 0x0004
MD_FLAG_DUPE = 0x0008
MD_FLAG_ACKED_FP = 0x0010
MD_FLAG_ACKED_SEC = 0x0020

NOISE_FLOOR_UNKNOWN = -128

# --- packed unsigned integers -----------------------------------------------------------------


#: The packed form of 0..127 (one byte each): commands, most property ids, small values.
_ONE_BYTE_UINTS = tuple(bytes((value,)) for value in range(0x80))


def pack_uint(value: int) -> bytes:
    """EXI-style packed unsigned int: 7-bit groups, little-endian, top bit = more follows."""
    if 0 <= value < 0x80:
        return _ONE_BYTE_UINTS[value]
    if not 0 <= value <= PACKED_UINT_MAX:
        raise SpinelError(f"packed uint {value} out of range 0..{PACKED_UINT_MAX}")
    out = bytearray()
    while True:
        group = value & 0x7F
        value >>= 7
        if value:
            out.append(group | 0x80)
        else:
            out.append(group)
            return bytes(out)


def unpack_uint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a packed uint at ``offset``; returns (value, next offset)."""
    value = 0
    for i in range(3):
        pos = offset + i
        if pos >= len(data):
            raise SpinelError(f"packed uint truncated at offset {pos}")
        byte = data[pos]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + 1
    raise SpinelError(f"packed uint at offset {offset} longer than 3 bytes")


# --- frames -----------------------------------------------------------------------------------


@dataclass(slots=True)  # hot path: built per frame; frozen would triple the cost
class SpinelFrame:
    """One decoded Spinel frame. ``prop`` is None for commands without a property (NOOP, RESET)."""

    tid: int
    command: int
    prop: int | None = None
    payload: bytes = b""
    iid: int = 0

    def describe(self) -> str:
        cmd = (
            Cmd(self.command).name if self.command in Cmd._value2member_map_ else str(self.command)
        )
        prop = "" if self.prop is None else f" {prop_name(self.prop)}"
        return f"iid={self.iid} tid={self.tid} {cmd}{prop} {self.payload.hex()}"


def make_header(tid: int, iid: int = 0) -> int:
    if not 0 <= tid <= TID_MAX:
        raise SpinelError(f"TID {tid} out of range 0..{TID_MAX}")
    if not 0 <= iid <= 3:
        raise SpinelError(f"interface id {iid} out of range 0..3")
    return HEADER_FLAG | (iid << 4) | tid


def encode_frame(frame: SpinelFrame) -> bytes:
    return _encode(frame.tid, frame.iid, frame.command, frame.prop, frame.payload)


def encode(tid: int, command: int, prop: int | None = None, payload: bytes = b"") -> bytes:
    """Shorthand for ``encode_frame(SpinelFrame(...))`` on interface 0 (without building the
    record: this runs for every frame the host sends)."""
    return _encode(tid, 0, command, prop, payload)


def _encode(tid: int, iid: int, command: int, prop: int | None, payload: bytes) -> bytes:
    # The common frame (property command, one-byte property id) in one step.
    if (
        prop is not None
        and 0 <= prop < 0x80
        and command in PROP_COMMANDS
        and 0 <= tid <= TID_MAX
        and 0 <= iid <= 3
    ):
        return bytes((HEADER_FLAG | (iid << 4) | tid, command, prop)) + payload
    header = bytes((make_header(tid, iid),))
    if command in PROP_COMMANDS:
        command_bytes = pack_uint(command)
        if prop is None:
            raise SpinelError(f"command {command} needs a property id")
        return b"".join((header, command_bytes, pack_uint(prop), payload))
    return b"".join((header, pack_uint(command), payload))


def decode_frame(data: bytes) -> SpinelFrame:
    if not data:
        raise SpinelError("empty Spinel frame")
    header = data[0]
    if header & HEADER_FLAG_MASK != HEADER_FLAG:
        raise SpinelError(f"header byte {header:02X} lacks the 10xxxxxx flag bits")
    size = len(data)
    # One-byte packed ints (every command, most property ids) without the general decoder.
    if size > 1 and data[1] < 0x80:
        command, pos = data[1], 2
    else:
        command, pos = unpack_uint(data, 1)
    prop: int | None = None
    if command in PROP_COMMANDS:
        if pos < size and data[pos] < 0x80:
            prop, pos = data[pos], pos + 1
        else:
            prop, pos = unpack_uint(data, pos)
    return SpinelFrame(header & 0x0F, command, prop, bytes(data[pos:]), (header >> 4) & 3)


# --- datatypes --------------------------------------------------------------------------------

Value: TypeAlias = "int | bool | bytes | str | tuple[Value, ...] | list[Value]"

_FIXED: dict[str, str] = {
    "C": "<B",
    "c": "<b",
    "S": "<H",
    "s": "<h",
    "L": "<I",
    "l": "<i",
    "X": "<Q",
    "x": "<q",
}
_PRIMITIVES = frozenset("bCcSsLlXxiEe6dDU")
_STRUCTS: dict[str, struct.Struct] = {kind: struct.Struct(code) for kind, code in _FIXED.items()}
_U16 = struct.Struct("<H")
_SIZED = {"E": 8, "e": 6, "6": 16}


@dataclass(frozen=True)
class _Node:
    kind: str  # a primitive letter, "t" (struct) or "A" (array)
    children: tuple[_Node, ...] = ()


@lru_cache(maxsize=256)
def _parse_format(fmt: str) -> tuple[_Node, ...]:
    """The parse tree of a format string (cached: a few formats are used over and over)."""
    nodes, pos = _parse_seq(fmt, 0, nested=False)
    if pos != len(fmt):
        raise SpinelError(f"format {fmt!r}: unexpected ')' at {pos}")
    return nodes


def _parse_seq(fmt: str, pos: int, *, nested: bool) -> tuple[tuple[_Node, ...], int]:
    nodes: list[_Node] = []
    while pos < len(fmt):
        ch = fmt[pos]
        if ch == ")":
            if not nested:
                break
            return tuple(nodes), pos
        if ch in "tA":
            if pos + 1 >= len(fmt) or fmt[pos + 1] != "(":
                raise SpinelError(f"format {fmt!r}: {ch} at {pos} must be followed by '('")
            children, end = _parse_seq(fmt, pos + 2, nested=True)
            if end >= len(fmt) or fmt[end] != ")":
                raise SpinelError(f"format {fmt!r}: unclosed {ch}( at {pos}")
            nodes.append(_Node(ch, children))
            pos = end + 1
            continue
        if ch not in _PRIMITIVES:
            raise SpinelError(f"format {fmt!r}: unknown datatype {ch!r} at {pos}")
        nodes.append(_Node(ch))
        pos += 1
    if nested:
        raise SpinelError(f"format {fmt!r}: missing ')'")
    return tuple(nodes), pos


def pack(fmt: str, *values: Value) -> bytes:
    """Encode ``values`` by a Spinel format string (e.g. ``pack("Cc", 11, -70)``)."""
    return _pack_seq(_parse_format(fmt), list(values), fmt)


def _pack_seq(nodes: tuple[_Node, ...], values: list[Value], fmt: str) -> bytes:
    if len(values) != len(nodes):
        raise SpinelError(f"format {fmt!r} takes {len(nodes)} value(s), got {len(values)}")
    return b"".join(_pack_one(n, v, fmt) for n, v in zip(nodes, values, strict=True))


def _pack_one(node: _Node, value: Value, fmt: str) -> bytes:
    kind = node.kind
    try:
        if kind in _FIXED:
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpinelError(f"{kind} needs an int, got {value!r}")
            return _STRUCTS[kind].pack(value)
        if kind == "b":
            if not isinstance(value, bool | int) or value not in (0, 1):
                raise SpinelError(f"b needs a bool, got {value!r}")
            return b"\x01" if value else b"\x00"
        if kind == "i":
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpinelError(f"i needs an int, got {value!r}")
            return pack_uint(value)
        if kind in _SIZED:
            size = _SIZED[kind]
            if not isinstance(value, bytes | bytearray) or len(value) != size:
                raise SpinelError(f"{kind} needs {size} bytes, got {value!r}")
            return bytes(value)
        if kind == "d":
            if not isinstance(value, bytes | bytearray):
                raise SpinelError(f"d needs bytes, got {value!r}")
            return _U16.pack(len(value)) + bytes(value)
        if kind == "D":
            if not isinstance(value, bytes | bytearray):
                raise SpinelError(f"D needs bytes, got {value!r}")
            return bytes(value)
        if kind == "U":
            if not isinstance(value, str) or "\x00" in value:
                raise SpinelError(f"U needs a string without NUL, got {value!r}")
            return value.encode("utf-8") + b"\x00"
        if kind == "t":
            if not isinstance(value, tuple):
                raise SpinelError(f"t(...) needs a tuple, got {value!r}")
            body = _pack_seq(node.children, list(value), fmt)
            return _U16.pack(len(body)) + body
        if kind == "A":
            if not isinstance(value, list | tuple):
                raise SpinelError(f"A(...) needs a list, got {value!r}")
            single = len(node.children) == 1
            parts = []
            for item in value:
                items: list[Value] = [item] if single else list(_as_tuple(item, fmt))
                parts.append(_pack_seq(node.children, items, fmt))
            return b"".join(parts)
    except struct.error as exc:
        raise SpinelError(f"{kind} cannot hold {value!r}: {exc}") from None
    raise SpinelError(f"format {fmt!r}: unknown datatype {kind!r}")  # pragma: no cover


def _as_tuple(item: Value, fmt: str) -> tuple[Value, ...]:
    if not isinstance(item, tuple):
        raise SpinelError(f"format {fmt!r}: array items must be tuples, got {item!r}")
    return item


def unpack(fmt: str, data: bytes) -> tuple[Value, ...]:
    """Decode ``data`` by a Spinel format string; trailing bytes are ignored (Spinel lets later
    versions append fields). Raises :class:`SpinelError` naming the field that did not fit."""
    values, _ = _unpack_seq(_parse_format(fmt), bytes(data), 0, len(data), fmt)
    return values


def unpack_prefix(fmt: str, data: bytes) -> tuple[tuple[Value, ...], int]:
    """Like :func:`unpack`, also returning how many bytes were consumed."""
    return _unpack_seq(_parse_format(fmt), bytes(data), 0, len(data), fmt)


def _need(data: bytes, pos: int, size: int, end: int, kind: str) -> None:
    if pos + size > end:
        raise SpinelError(f"{kind} at offset {pos} needs {size} byte(s), {end - pos} left")


def _unpack_seq(
    nodes: tuple[_Node, ...], data: bytes, pos: int, end: int, fmt: str
) -> tuple[tuple[Value, ...], int]:
    out: list[Value] = []
    for node in nodes:
        value, pos = _unpack_one(node, data, pos, end, fmt)
        out.append(value)
    return tuple(out), pos


def _unpack_one(node: _Node, data: bytes, pos: int, end: int, fmt: str) -> tuple[Value, int]:
    kind = node.kind
    fixed = _STRUCTS.get(kind)
    if fixed is not None:
        size = fixed.size
        _need(data, pos, size, end, kind)
        return fixed.unpack_from(data, pos)[0], pos + size
    if kind == "b":
        _need(data, pos, 1, end, kind)
        if data[pos] > 1:
            raise SpinelError(f"b at offset {pos} is {data[pos]:#04x}, not 0 or 1")
        return data[pos] == 1, pos + 1
    if kind == "i":
        value, nxt = unpack_uint(data[:end], pos)
        return value, nxt
    if kind in _SIZED:
        size = _SIZED[kind]
        _need(data, pos, size, end, kind)
        return data[pos : pos + size], pos + size
    if kind == "d":
        _need(data, pos, 2, end, "d length")
        (length,) = _U16.unpack_from(data, pos)
        _need(data, pos + 2, length, end, "d data")
        return data[pos + 2 : pos + 2 + length], pos + 2 + length
    if kind == "D":
        return data[pos:end], end
    if kind == "U":
        nul = data.find(b"\x00", pos, end)
        if nul < 0:
            raise SpinelError(f"U at offset {pos} has no NUL terminator")
        try:
            return data[pos:nul].decode("utf-8"), nul + 1
        except UnicodeDecodeError as exc:
            raise SpinelError(f"U at offset {pos} is not UTF-8: {exc}") from None
    if kind == "t":
        _need(data, pos, 2, end, "t length")
        (length,) = _U16.unpack_from(data, pos)
        _need(data, pos + 2, length, end, "t body")
        inner_end = pos + 2 + length
        values, _ = _unpack_seq(node.children, data, pos + 2, inner_end, fmt)
        return values, inner_end
    if kind == "A":
        items: list[Value] = []
        single = len(node.children) == 1
        while pos < end:
            values, nxt = _unpack_seq(node.children, data, pos, end, fmt)
            if nxt == pos:
                raise SpinelError(f"format {fmt!r}: array item of zero length at {pos}")
            items.append(values[0] if single else values)
            pos = nxt
        return items, pos
    raise SpinelError(f"format {fmt!r}: unknown datatype {kind!r}")  # pragma: no cover


# --- STREAM_RAW -------------------------------------------------------------------------------

#: Received-frame layout (also the ack frame inside a transmit-done reply).
RX_FRAME_FORMAT = "dccSt(CCX)t(i)t(CL)"


@dataclass(slots=True)  # hot path: built per frame; frozen would triple the cost
class RawRxFrame:
    """A STREAM_RAW received frame as OpenThread's RCP packs it."""

    psdu: bytes
    rssi_dbm: int
    noise_floor_dbm: int = NOISE_FLOOR_UNKNOWN
    flags: int = 0
    channel: int = 0
    lqi: int = 0
    timestamp_us: int = 0
    rx_error: int = 0
    ack_key_id: int = 0
    ack_frame_counter: int = 0


def encode_rx_frame(frame: RawRxFrame) -> bytes:
    return pack(
        RX_FRAME_FORMAT,
        frame.psdu,
        frame.rssi_dbm,
        frame.noise_floor_dbm,
        frame.flags,
        (frame.channel, frame.lqi, frame.timestamp_us),
        (frame.rx_error,),
        (frame.ack_key_id, frame.ack_frame_counter),
    )


def _int(value: Value) -> int:
    if isinstance(value, int):
        return int(value)
    raise SpinelError(f"expected an integer field, got {value!r}")


def _bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    raise SpinelError(f"expected a data field, got {value!r}")


def _tuple(value: Value) -> tuple[Value, ...]:
    if isinstance(value, tuple):
        return value
    raise SpinelError(f"expected a struct, got {value!r}")


_RX_LEVELS = struct.Struct("<bbH")  # c RSSI, c noise floor, S flags
_RX_PHY = struct.Struct("<BBQ")  # channel, LQI, timestamp
_RX_MAC = struct.Struct("<BI")  # ack key id, ack frame counter


def decode_rx_frame_prefix(data: bytes) -> tuple[RawRxFrame, int]:
    """Decode the received-frame layout; returns the frame and the bytes it took.

    The leading ``d c c S`` are required; the three structs are optional (older RCPs omit the
    trailing ones), and each struct may carry more fields than we read."""
    return _decode_rx_frame_direct(data) or _decode_rx_frame_general(data)


def _decode_rx_frame_direct(data: bytes) -> tuple[RawRxFrame, int] | None:
    """The received-frame layout read with fixed ``struct`` layouts, for the well-formed frames
    every RCP sends (a one-byte rx error); None for anything else, which the general decoder
    then reads or rejects with a precise error."""
    end = len(data)
    if end < 6:
        return None
    start = 2 + (data[0] | data[1] << 8)
    pos = start + 4
    if pos > end:
        return None
    rssi, noise, flags = _RX_LEVELS.unpack_from(data, start)
    channel = lqi = timestamp = rx_error = key_id = counter = 0
    if pos < end:
        if pos + 2 > end:
            return None
        body = pos + 2
        pos = body + (data[pos] | data[pos + 1] << 8)
        if pos - body < _RX_PHY.size or pos > end:
            return None
        channel, lqi, timestamp = _RX_PHY.unpack_from(data, body)
        if pos < end:
            if pos + 2 > end:
                return None
            body = pos + 2
            pos = body + (data[pos] | data[pos + 1] << 8)
            if pos == body or pos > end or data[body] >= 0x80:
                return None
            rx_error = data[body]
            if pos < end:
                if pos + 2 > end:
                    return None
                body = pos + 2
                pos = body + (data[pos] | data[pos + 1] << 8)
                if pos - body < _RX_MAC.size or pos > end:
                    return None
                key_id, counter = _RX_MAC.unpack_from(data, body)
    psdu = bytes(data[2:start])
    frame = RawRxFrame(psdu, rssi, noise, flags, channel, lqi, timestamp, rx_error, key_id, counter)
    return frame, pos


def _decode_rx_frame_general(data: bytes) -> tuple[RawRxFrame, int]:
    head, pos = unpack_prefix("dccS", data)
    psdu, rssi, noise, flags = _bytes(head[0]), _int(head[1]), _int(head[2]), _int(head[3])
    channel = lqi = timestamp = rx_error = key_id = counter = 0
    if pos < len(data):
        (phy,), used = unpack_prefix("t(CCX)", data[pos:])
        channel, lqi, timestamp = (_int(v) for v in _tuple(phy))
        pos += used
    if pos < len(data):
        (vendor,), used = unpack_prefix("t(i)", data[pos:])
        rx_error = _int(_tuple(vendor)[0])
        pos += used
    if pos < len(data):
        (mac,), used = unpack_prefix("t(CL)", data[pos:])
        key_id, counter = (_int(v) for v in _tuple(mac))
        pos += used
    return (
        RawRxFrame(psdu, rssi, noise, flags, channel, lqi, timestamp, rx_error, key_id, counter),
        pos,
    )


def decode_rx_frame(data: bytes) -> RawRxFrame:
    return decode_rx_frame_prefix(data)[0]


@dataclass(frozen=True)
class RawTxRequest:
    """The value of a SET STREAM_RAW from the host: the PSDU and its required channel.

    OpenThread accepts further optional fields (CSMA, retries, delays, power); we send none and
    the virtual RCP reads and ignores any it gets."""

    psdu: bytes
    channel: int


def encode_tx_request(req: RawTxRequest) -> bytes:
    return pack("dC", req.psdu, req.channel)


def decode_tx_request(data: bytes) -> RawTxRequest:
    psdu, channel = unpack("dC", data)
    return RawTxRequest(_bytes(psdu), _int(channel))


@dataclass(frozen=True)
class TxDone:
    """OpenThread's transmit-done reply: ``IS LAST_STATUS`` with the request's TID carrying the
    status, frame-pending and header-updated flags and, on success, the ack frame (an empty PSDU
    when no ack was requested)."""

    status: int
    frame_pending: bool = False
    header_updated: bool = False
    ack: RawRxFrame | None = None


def encode_tx_done(done: TxDone) -> bytes:
    out = pack("ibb", done.status, done.frame_pending, done.header_updated)
    if done.status == Status.OK:
        out += encode_rx_frame(done.ack or RawRxFrame(psdu=b"", rssi_dbm=0))
    return out


def decode_tx_done(data: bytes) -> TxDone:
    """Decode a transmit-done LAST_STATUS value. A bare status (a board refusing the request,
    e.g. INVALID_STATE) decodes too, with the flags false."""
    status, pos = unpack_uint(data, 0)
    if pos >= len(data):
        return TxDone(status)
    (fp, hu), used = unpack_prefix("bb", data[pos:])
    pos += used
    ack: RawRxFrame | None = None
    if status == Status.OK and pos < len(data):
        ack = decode_rx_frame(data[pos:])
    return TxDone(status, bool(fp), bool(hu), ack)
