"""Structural check of xDLMS response APDUs before gurux reads them.

gurux's ``getData`` takes a GET-Response whose data is cut short as complete and hands back None
(or the part of a list it managed to read), so a truncated reply would become a reading of
nothing. This module walks the A-XDR of GET/SET/ACTION responses far enough to know that each
one is whole: every Data value ends exactly where the APDU (or the reassembled block transfer)
ends. It decodes nothing for use; gurux still does that. Sans-IO, no gurux.
"""

from __future__ import annotations

GET_RESPONSE = 0xC4
SET_RESPONSE = 0xC5
ACTION_RESPONSE = 0xC7

MAX_DEPTH = 32

# A-XDR data tags with a fixed content size.
_FIXED: dict[int, int] = {
    0: 0,  # null-data
    3: 1,  # boolean
    5: 4,  # double-long
    6: 4,  # double-long-unsigned
    13: 1,  # bcd
    15: 1,  # integer
    16: 2,  # long
    17: 1,  # unsigned
    18: 2,  # long-unsigned
    20: 8,  # long64
    21: 8,  # long64-unsigned
    22: 1,  # enum
    23: 4,  # float32
    24: 8,  # float64
    25: 12,  # date-time
    26: 5,  # date
    27: 4,  # time
    255: 0,  # dont-care
}
_ARRAY, _STRUCTURE, _BIT_STRING, _COMPACT_ARRAY = 1, 2, 4, 19
_COUNTED = {9, 10, 12}  # octet-string, visible-string, utf8-string


class ApduShapeError(ValueError):
    """The APDU is cut short or carries bytes after its end; ``reason`` is a stable name."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def _need(buf: bytes, pos: int, n: int, what: str) -> None:
    if pos + n > len(buf):
        raise ApduShapeError(
            "truncated", f"{what} needs {n} byte(s) at offset {pos}, has {len(buf) - pos}"
        )


def axdr_length(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after) of an A-XDR length at ``pos``."""
    _need(buf, pos, 1, "length")
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if not 1 <= count <= 4:
        raise ApduShapeError("bad-length", f"length form 0x{first:02x} at offset {pos}")
    _need(buf, pos + 1, count, "length")
    return int.from_bytes(buf[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def data_end(buf: bytes, pos: int = 0, depth: int = 0) -> int:
    """Where the A-XDR Data value starting at ``pos`` ends; ApduShapeError if it does not."""
    if depth > MAX_DEPTH:
        raise ApduShapeError("too-deep", f"data nested deeper than {MAX_DEPTH} at offset {pos}")
    _need(buf, pos, 1, "data tag")
    tag = buf[pos]
    pos += 1
    if tag in _FIXED:
        _need(buf, pos, _FIXED[tag], f"data type {tag}")
        return pos + _FIXED[tag]
    if tag in (_ARRAY, _STRUCTURE):
        count, pos = axdr_length(buf, pos)
        for _ in range(count):
            pos = data_end(buf, pos, depth + 1)
        return pos
    if tag in _COUNTED:
        n, pos = axdr_length(buf, pos)
        _need(buf, pos, n, f"data type {tag} of {n} bytes")
        return pos + n
    if tag == _BIT_STRING:
        bits, pos = axdr_length(buf, pos)
        n = (bits + 7) // 8
        _need(buf, pos, n, f"bit-string of {bits} bits")
        return pos + n
    if tag == _COMPACT_ARRAY:
        pos = _type_description_end(buf, pos, depth + 1)
        n, pos = axdr_length(buf, pos)
        _need(buf, pos, n, f"compact-array contents of {n} bytes")
        return pos + n
    raise ApduShapeError("unknown-type", f"A-XDR data type {tag} at offset {pos - 1}")


def _type_description_end(buf: bytes, pos: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise ApduShapeError("too-deep", f"type description deeper than {MAX_DEPTH}")
    _need(buf, pos, 1, "type description")
    tag = buf[pos]
    pos += 1
    if tag == _ARRAY:
        _need(buf, pos, 2, "compact array count")
        return _type_description_end(buf, pos + 2, depth + 1)
    if tag == _STRUCTURE:
        count, pos = axdr_length(buf, pos)
        for _ in range(count):
            pos = _type_description_end(buf, pos, depth + 1)
        return pos
    return pos


def whole_data(buf: bytes, pos: int, what: str) -> None:
    """``buf[pos:]`` is exactly one Data value."""
    end = data_end(buf, pos)
    if end != len(buf):
        raise ApduShapeError("trailing-bytes", f"{len(buf) - end} byte(s) after the {what}")


def _get_data_result(apdu: bytes, pos: int, what: str) -> None:
    """Get-Data-Result: 00 Data | 01 data-access-result, filling the rest of the APDU."""
    _need(apdu, pos, 1, f"{what} choice")
    if apdu[pos] == 0:
        whole_data(apdu, pos + 1, what)
    elif apdu[pos] == 1:
        _need(apdu, pos + 1, 1, "data-access-result")
        if pos + 2 != len(apdu):
            raise ApduShapeError("trailing-bytes", f"bytes after the data-access-result of {what}")
    else:
        raise ApduShapeError("bad-choice", f"{what} choice {apdu[pos]}")


class ResponseShape:
    """Checks the response APDUs of one exchange, reassembling block-transfer data to check it
    whole at the last block. Other APDUs (AARE, exceptions, ...) are gurux's to judge."""

    def __init__(self) -> None:
        self._blocks = bytearray()

    def check(self, apdu: bytes) -> None:
        if not apdu or apdu[0] not in (GET_RESPONSE, SET_RESPONSE, ACTION_RESPONSE):
            return
        _need(apdu, 0, 3, "response header")
        tag, kind = apdu[0], apdu[1]
        if tag == GET_RESPONSE and kind == 1:
            _get_data_result(apdu, 3, "GET-Response-Normal")
        elif tag == GET_RESPONSE and kind == 2:
            self._block(apdu)
        elif tag == GET_RESPONSE and kind == 3:
            count, pos = axdr_length(apdu, 3)
            for _ in range(count):
                _need(apdu, pos, 1, "GET-Response-With-List choice")
                if apdu[pos] == 0:
                    pos = data_end(apdu, pos + 1)
                else:
                    _need(apdu, pos + 1, 1, "data-access-result")
                    pos += 2
            if pos != len(apdu):
                raise ApduShapeError("trailing-bytes", "after GET-Response-With-List")
        elif tag == SET_RESPONSE and kind == 1:
            if len(apdu) != 4:
                raise ApduShapeError("bad-size", f"SET-Response-Normal of {len(apdu)} bytes, not 4")
        elif tag == ACTION_RESPONSE and kind == 1:
            _need(apdu, 3, 2, "action-result and return-parameters flag")
            if apdu[4] == 0:
                if len(apdu) != 5:
                    raise ApduShapeError("trailing-bytes", "after ACTION-Response-Normal")
            elif apdu[4] == 1:
                _get_data_result(apdu, 5, "ACTION-Response-Normal return parameters")
            else:
                raise ApduShapeError("bad-choice", f"return-parameters flag {apdu[4]}")

    def _block(self, apdu: bytes) -> None:
        _need(apdu, 3, 6, "DataBlock-G header")
        last = apdu[3] != 0
        if apdu[8] == 1:  # data-access-result: the transfer ends here
            _need(apdu, 9, 1, "data-access-result")
            return
        if apdu[8] != 0:
            raise ApduShapeError("bad-choice", f"DataBlock-G result choice {apdu[8]}")
        n, pos = axdr_length(apdu, 9)
        if pos + n != len(apdu):
            raise ApduShapeError(
                "truncated" if pos + n > len(apdu) else "trailing-bytes",
                f"raw-data says {n} bytes, the block carries {len(apdu) - pos}",
            )
        self._blocks += apdu[pos:]
        if last:
            whole_data(bytes(self._blocks), 0, "block-transfer data")


# ---------------------------------------------------------------------------------- stale replies

AARQ, AARE, RLRQ, RLRE = 0x60, 0x61, 0x62, 0x63
GET_REQUEST, SET_REQUEST, ACTION_REQUEST = 0xC0, 0xC1, 0xC3
EXCEPTION_RESPONSE = 0xD8
CONFIRMED_SERVICE_ERROR = 0x0E

RESPONSE_TO: dict[int, int] = {
    AARQ: AARE,
    RLRQ: RLRE,
    GET_REQUEST: GET_RESPONSE,
    SET_REQUEST: SET_RESPONSE,
    ACTION_REQUEST: ACTION_RESPONSE,
}
"""Request APDU tag -> the one response tag that can answer it."""

RESPONSE_TAGS = frozenset(RESPONSE_TO.values())
_INVOKED = frozenset({GET_REQUEST, SET_REQUEST, ACTION_REQUEST})
_NAMES = {
    AARE: "AARE",
    RLRE: "RLRE",
    GET_RESPONSE: "GET-Response",
    SET_RESPONSE: "SET-Response",
    ACTION_RESPONSE: "ACTION-Response",
}


def invoke_id(apdu: bytes) -> int | None:
    """The invoke-id (low 4 bits of invoke-id-and-priority) of a GET/SET/ACTION request or
    response APDU, or None for APDUs that carry none (or are too short to)."""
    if len(apdu) < 3 or apdu[0] not in (_INVOKED | {GET_RESPONSE, SET_RESPONSE, ACTION_RESPONSE}):
        return None
    return apdu[2] & 0x0F


def stale_reason(request: bytes, reply: bytes) -> str | None:
    """Why the plain ``reply`` APDU answers some other request than the plain ``request`` APDU
    (a late reply to an earlier, timed-out request arriving over the mesh), or None when it may
    be the answer. Only well-formed replies of a known response type can be stale: anything
    else (garbage, exception-response, confirmed-service-error, which name no request) is left
    for the caller to judge, so garbage still ends a read and is quarantined."""
    if not request or not reply or reply[0] not in RESPONSE_TAGS:
        return None
    expected = RESPONSE_TO.get(request[0])
    if expected is None:
        return None
    if reply[0] != expected:
        return f"{_NAMES[reply[0]]} where the request expects {_NAMES[expected]}"
    want, got = invoke_id(request), invoke_id(reply)
    if want is not None and got is not None and want != got:
        return f"{_NAMES[reply[0]]} for invoke-id {got}, the request carries {want}"
    return None
