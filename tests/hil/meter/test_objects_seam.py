"""The write/method seam of the emulated meter's COSEM objects: defaults refuse with the DLMS
result a meter gives, subclasses override, and the live counter / association objects read back."""

from __future__ import annotations

import random

import pytest

from firmware_agent.collector import obis
from hil.meter import axdr
from hil.meter.model import MeterModel
from hil.meter.objects import (
    OBJECT_UNAVAILABLE,
    READ_WRITE_DENIED,
    AccessError,
    AssociationLnObject,
    ClockObject,
    CosemObject,
    CounterObject,
    build_directory,
)

NOW = 1_700_000_000.0


def test_default_set_and_action_refuse_with_named_results() -> None:
    directory = build_directory(MeterModel("M1", random.Random(1)))
    reg = directory[obis.ACTIVE_ENERGY_IMPORT]
    with pytest.raises(AccessError) as set_err:
        reg.set(2, axdr.decode_all(axdr.u32(5)), NOW)
    assert set_err.value.result == READ_WRITE_DENIED
    assert "attribute 2 is read-only" in set_err.value.detail
    with pytest.raises(AccessError) as act_err:
        ClockObject(obis.CLOCK).action(1, None, NOW)
    assert act_err.value.result == OBJECT_UNAVAILABLE
    assert "no method 1" in act_err.value.detail


class _Toggle(CosemObject):
    class_id = 1

    def __init__(self) -> None:
        super().__init__("0.0.96.99.0.255")
        self.state = 0

    def read(self, attribute: int, selection: object, now: float) -> bytes:  # type: ignore[override]
        if attribute == 2:
            return axdr.u8(self.state)
        return super().read(attribute, None, now)

    def set(self, attribute: int, value: axdr.Value, now: float) -> None:
        if attribute != 2 or not isinstance(value.value, int):
            super().set(attribute, value, now)
            return
        self.state = value.value

    def action(self, method: int, params: axdr.Value | None, now: float) -> bytes | None:
        if method == 1:
            self.state ^= 1
            return axdr.u8(self.state)
        return super().action(method, params, now)


def test_subclass_overrides_set_and_action() -> None:
    t = _Toggle()
    t.set(2, axdr.decode_all(axdr.u8(7)), NOW)
    assert t.get(2, None, NOW) == axdr.u8(7)
    assert t.action(1, None, NOW) == axdr.u8(6)
    with pytest.raises(AccessError):
        t.action(2, None, NOW)


def test_counter_and_association_objects_read_live_values() -> None:
    box = [41]
    c = CounterObject("0.0.43.1.0.255", lambda: box[0])
    assert c.get(2, None, NOW) == axdr.u32(41)
    box[0] = 99
    assert axdr.decode_all(c.get(2, None, NOW)).value == 99
    ctx = bytes.fromhex("60857405080103")
    a = AssociationLnObject("0.0.40.0.0.255", lambda: (ctx, None, 2))
    assert a.class_id == 15
    assert a.get(4, None, NOW) == axdr.octets(ctx)
    assert a.get(6, None, NOW) == axdr.null()
    assert a.get(8, None, NOW) == axdr.enum(2)


def test_server_dispatches_set_and_action_to_objects() -> None:
    """SET-/ACTION-Request-Normal reach the object's set/action; refusals come back as results."""
    from firmware_agent.clock import ManualClock
    from firmware_agent.collector.session import DlmsSession
    from firmware_agent.collector.wrapper import build_frame, parse_frame
    from hil.meter.dlms_server import MeterServer

    model = MeterModel("M1", random.Random(1))
    toggle = _Toggle()
    directory = build_directory(model)
    directory[toggle.logical_name] = toggle
    server = MeterServer(model, ManualClock(NOW), objects=directory)
    s = DlmsSession()
    ex = s.associate()
    ex.feed(server.handle(ex.request) or b"")
    head = bytes([0, 1]) + bytes([0, 0, 96, 99, 0, 255])

    def ask(apdu: bytes) -> bytes:
        return parse_frame(server.handle(build_frame(16, 1, apdu)) or b"")[1]

    assert ask(b"\xc1\x01\xc1" + head + b"\x02\x00" + axdr.u8(5)) == b"\xc5\x01\xc1\x00"
    assert toggle.state == 5
    assert ask(b"\xc3\x01\xc1" + head + b"\x01\x00") == b"\xc7\x01\xc1\x00\x01\x00" + axdr.u8(4)
    assert ask(b"\xc3\x01\xc1" + head + b"\x02\x00") == bytes(
        [0xC7, 1, 0xC1, OBJECT_UNAVAILABLE, 0]
    )
    clock_set = b"\xc1\x01\xc1" + bytes([0, 8, 0, 0, 1, 0, 0, 255]) + b"\x02\x00" + axdr.u8(1)
    assert ask(clock_set) == bytes([0xC5, 1, 0xC1, READ_WRITE_DENIED])
    assert server.counters["sets"] == 1 and server.counters["actions"] == 1
