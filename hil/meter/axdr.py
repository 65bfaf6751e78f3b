"""A-XDR encoding of COSEM ``Data`` (IEC 62056-6-2 / Green Book) for the emulated meter.

Encoders are small functions that return the tagged bytes of one value, so a reply is built by
composition (``structure(u32(1), octets(b"x"))``). The decoder returns ``Value`` trees that keep the
wire type, because a server must tell ``octet-string`` from ``date-time`` when it checks a request.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

NULL = 0
ARRAY = 1
STRUCTURE = 2
BOOLEAN = 3
BIT_STRING = 4
DOUBLE_LONG = 5
DOUBLE_LONG_UNSIGNED = 6
OCTET_STRING = 9
VISIBLE_STRING = 10
UTF8_STRING = 12
INTEGER = 15
LONG = 16
UNSIGNED = 17
LONG_UNSIGNED = 18
LONG64 = 20
LONG64_UNSIGNED = 21
ENUM = 22
FLOAT32 = 23
FLOAT64 = 24
DATE_TIME = 25

_FIXED: dict[int, str] = {
    BOOLEAN: ">?",
    DOUBLE_LONG: ">i",
    DOUBLE_LONG_UNSIGNED: ">I",
    INTEGER: ">b",
    LONG: ">h",
    UNSIGNED: ">B",
    LONG_UNSIGNED: ">H",
    LONG64: ">q",
    LONG64_UNSIGNED: ">Q",
    ENUM: ">B",
    FLOAT32: ">f",
    FLOAT64: ">d",
}
MAX_DEPTH = 16

Scalar = int | float | bool | bytes | str | None


class AxdrError(ValueError):
    """Bytes that are not valid A-XDR data; names the offset and what was wrong."""


@dataclass(frozen=True)
class Value:
    """One decoded value: its A-XDR type tag and Python value (a list of Value for containers)."""

    tag: int
    value: Scalar | list[Value]


# ---------------------------------------------------------------------------------- encoding


def length(n: int) -> bytes:
    """BER-style length used by A-XDR for arrays, structures and strings."""
    if n < 0:
        raise ValueError("negative length")
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _fixed(tag: int, v: int | float | bool) -> bytes:
    try:
        return bytes([tag]) + struct.pack(_FIXED[tag], v)
    except struct.error as exc:
        raise ValueError(f"{v!r} does not fit type {tag}: {exc}") from None


def null() -> bytes:
    return bytes([NULL])


def boolean(v: bool) -> bytes:
    return _fixed(BOOLEAN, v)


def i8(v: int) -> bytes:
    return _fixed(INTEGER, v)


def i16(v: int) -> bytes:
    return _fixed(LONG, v)


def i32(v: int) -> bytes:
    return _fixed(DOUBLE_LONG, v)


def u8(v: int) -> bytes:
    return _fixed(UNSIGNED, v)


def u16(v: int) -> bytes:
    return _fixed(LONG_UNSIGNED, v)


def u32(v: int) -> bytes:
    return _fixed(DOUBLE_LONG_UNSIGNED, v)


def i64(v: int) -> bytes:
    return _fixed(LONG64, v)


def u64(v: int) -> bytes:
    return _fixed(LONG64_UNSIGNED, v)


def enum(v: int) -> bytes:
    return _fixed(ENUM, v)


def f32(v: float) -> bytes:
    return _fixed(FLOAT32, v)


def f64(v: float) -> bytes:
    return _fixed(FLOAT64, v)


def octets(v: bytes) -> bytes:
    return bytes([OCTET_STRING]) + length(len(v)) + v


def visible(v: str) -> bytes:
    raw = v.encode("ascii")
    return bytes([VISIBLE_STRING]) + length(len(raw)) + raw


def structure(*items: bytes) -> bytes:
    return bytes([STRUCTURE]) + length(len(items)) + b"".join(items)


def array(items: list[bytes]) -> bytes:
    return bytes([ARRAY]) + length(len(items)) + b"".join(items)


# ---------------------------------------------------------------------------------- date-time


def datetime_bytes(ts: float) -> bytes:
    """The 12-byte COSEM date-time of a UNIX time, stated in UTC (deviation 0, status 0)."""
    dt = datetime.fromtimestamp(ts, UTC)
    hundredths = dt.microsecond // 10_000
    return struct.pack(
        ">HBBBBBBBhB",
        dt.year,
        dt.month,
        dt.day,
        dt.isoweekday(),
        dt.hour,
        dt.minute,
        dt.second,
        hundredths,
        0,
        0,
    )


def parse_datetime_bytes(raw: bytes) -> float:
    """UNIX time of a fully specified 12-byte COSEM date-time.

    Deviation follows the Blue Book sign (minutes to add to local time to get UTC, as gurux
    writes it by default); 0x8000 ("not specified") is read as UTC. Wildcards other than day of
    week and hundredths are refused, since a range bound must be one instant.
    """
    if len(raw) != 12:
        raise AxdrError(f"date-time is 12 bytes, got {len(raw)}")
    year, month, day, _dow, hour, minute, second, hundredths, deviation, _status = struct.unpack(
        ">HBBBBBBBhB", raw
    )
    if year == 0xFFFF or month > 12 or day > 31 or hour > 23 or minute > 59 or second > 59:
        raise AxdrError(f"date-time {raw.hex()} has wildcards or out-of-range fields")
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise AxdrError(f"date-time {raw.hex()} is not a calendar date: {exc}") from None
    fraction = 0.0 if hundredths == 0xFF or hundredths > 99 else hundredths / 100
    offset = 0 if deviation == -0x8000 else deviation
    if not -720 <= offset <= 720:
        raise AxdrError(f"date-time deviation {offset} min is outside -720..720")
    return (local + timedelta(minutes=offset)).timestamp() + fraction


# ---------------------------------------------------------------------------------- decoding


def _read_length(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise AxdrError(f"length missing at offset {pos}")
    first = buf[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0 or count > 4:
        raise AxdrError(f"length form 0x{first:02x} at offset {pos - 1} is not supported")
    if pos + count > len(buf):
        raise AxdrError(f"length at offset {pos - 1} is truncated")
    return int.from_bytes(buf[pos : pos + count], "big"), pos + count


def decode(buf: bytes, pos: int = 0, depth: int = 0) -> tuple[Value, int]:
    """Decode one value starting at ``pos``; returns it and the offset after it."""
    if depth > MAX_DEPTH:
        raise AxdrError(f"data nested deeper than {MAX_DEPTH}")
    if pos >= len(buf):
        raise AxdrError(f"data type tag missing at offset {pos}")
    tag = buf[pos]
    pos += 1
    if tag == NULL:
        return Value(tag, None), pos
    if tag in (ARRAY, STRUCTURE):
        count, pos = _read_length(buf, pos)
        if count > len(buf) - pos:
            raise AxdrError(f"container of {count} items cannot fit in {len(buf) - pos} bytes")
        items: list[Value] = []
        for _ in range(count):
            item, pos = decode(buf, pos, depth + 1)
            items.append(item)
        return Value(tag, items), pos
    if tag in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING):
        n, pos = _read_length(buf, pos)
        if pos + n > len(buf):
            raise AxdrError(f"string of {n} bytes at offset {pos} is truncated")
        raw = buf[pos : pos + n]
        if tag == OCTET_STRING:
            return Value(tag, bytes(raw)), pos + n
        try:
            text = raw.decode("ascii" if tag == VISIBLE_STRING else "utf-8")
        except UnicodeDecodeError as exc:
            raise AxdrError(f"string at offset {pos} is not valid text: {exc}") from None
        return Value(tag, text), pos + n
    if tag == DATE_TIME:
        if pos + 12 > len(buf):
            raise AxdrError(f"date-time at offset {pos} is truncated")
        return Value(tag, bytes(buf[pos : pos + 12])), pos + 12
    fmt = _FIXED.get(tag)
    if fmt is None:
        raise AxdrError(f"data type {tag} at offset {pos - 1} is not supported")
    size = struct.calcsize(fmt)
    if pos + size > len(buf):
        raise AxdrError(f"value of type {tag} at offset {pos} is truncated")
    (v,) = struct.unpack_from(fmt, buf, pos)
    return Value(tag, v), pos + size


def decode_all(buf: bytes) -> Value:
    """Decode exactly one value that fills ``buf``."""
    value, end = decode(buf)
    if end != len(buf):
        raise AxdrError(f"{len(buf) - end} trailing bytes after the data")
    return value
