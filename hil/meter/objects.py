"""The emulated meter's COSEM object directory: which objects exist and how each attribute reads.

Each object answers ``get(attribute, selection, now)`` with the A-XDR bytes of the value, or raises
``AccessError`` carrying the Data-Access-Result. ``set(attribute, value, now)`` and
``action(method, params, now)`` are the write and method seams (SET-/ACTION-Request-Normal): by
default an object refuses both, as a meter refuses what an interface class does not define. The DLMS
server stays a pure protocol machine and later object kinds (image transfer, push setup, schedules)
slot in as more classes here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from firmware_agent.collector import obis
from firmware_agent.collector.obis import (
    UNIT_A,
    UNIT_NONE,
    UNIT_PERCENT,
    UNIT_V,
    UNIT_VA,
    UNIT_W,
    UNIT_WH,
    obis_to_bytes,
)

from . import axdr
from .model import MeterModel, Sample

# Data-Access-Result (IEC 62056-5-3).
SUCCESS = 0
HARDWARE_FAULT = 1
TEMPORARY_FAILURE = 2
READ_WRITE_DENIED = 3
OBJECT_UNDEFINED = 4
OBJECT_CLASS_INCONSISTENT = 9
OBJECT_UNAVAILABLE = 11
TYPE_UNMATCHED = 12
SCOPE_OF_ACCESS_VIOLATED = 13
DATA_BLOCK_UNAVAILABLE = 14
LONG_GET_ABORTED = 15
NO_LONG_GET_IN_PROGRESS = 16
DATA_BLOCK_NUMBER_INVALID = 19
OTHER_REASON = 250


# Action-Result (IEC 62056-5-3) uses the same numbers for the codes the emulator returns.
ACTION_SUCCESS = SUCCESS
LONG_ACTION_ABORTED = 15
NO_LONG_ACTION_IN_PROGRESS = 16


class AccessError(Exception):
    """A read, write or method call that the meter answers with a Data-Access-Result (or, for
    ACTION, an Action-Result: the codes share their numbers) instead of data."""

    def __init__(self, result: int, detail: str) -> None:
        self.result = result
        self.detail = detail
        super().__init__(f"data-access-result {result}: {detail}")


@dataclass(frozen=True)
class Selection:
    """Selective access as received: selector and its still-encoded parameter."""

    selector: int
    parameters: axdr.Value


class CosemObject:
    """Base: attribute 1 (logical_name) is common to every interface class."""

    class_id: int = 0

    def __init__(self, logical_name: str) -> None:
        self.logical_name = logical_name
        self.ln_bytes = obis_to_bytes(logical_name)

    def get(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        if selection is not None and not self.selective(attribute):
            raise AccessError(
                SCOPE_OF_ACCESS_VIOLATED, f"attribute {attribute} takes no selective access"
            )
        if attribute == 1:
            return axdr.octets(self.ln_bytes)
        return self.read(attribute, selection, now)

    def selective(self, attribute: int) -> bool:
        return False

    def set(self, attribute: int, value: axdr.Value, now: float) -> None:
        """Write one attribute (SET-Request-Normal). The base refuses: attributes are read-only
        unless an interface class says otherwise, and logical_name never changes."""
        what = f"IC {self.class_id} {self.logical_name} attribute {attribute} is read-only"
        raise AccessError(READ_WRITE_DENIED, what)

    def action(self, method: int, params: axdr.Value | None, now: float) -> bytes | None:
        """Invoke one method (ACTION-Request-Normal); returns A-XDR return data or None.
        The base has no methods, so every call is refused with object-unavailable."""
        what = f"IC {self.class_id} {self.logical_name} has no method {method}"
        raise AccessError(OBJECT_UNAVAILABLE, what)

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        what = f"IC {self.class_id} {self.logical_name} has no attribute {attribute}"
        raise AccessError(READ_WRITE_DENIED, what)


@dataclass(frozen=True)
class RegisterSpec:
    """How one register quantity is held: scaler, unit, A-XDR type and which Sample field."""

    obis: str
    scaler: int
    unit: int
    encode: Callable[[int], bytes]
    quantity: Callable[[Sample], float]

    def raw(self, sample: Sample) -> int:
        return round(self.quantity(sample) / 10.0**self.scaler)


REGISTERS: tuple[RegisterSpec, ...] = (
    RegisterSpec(obis.ACTIVE_ENERGY_IMPORT, 0, UNIT_WH, axdr.u32, lambda s: s.energy_wh),
    RegisterSpec(obis.VOLTAGE_L1, -1, UNIT_V, axdr.u16, lambda s: s.vltg_kv * 1000.0),
    RegisterSpec(obis.CURRENT_L1, -2, UNIT_A, axdr.u16, lambda s: s.crrnt_a),
    RegisterSpec(obis.POWER_FACTOR, -3, UNIT_NONE, axdr.i16, lambda s: s.pf),
    RegisterSpec(obis.ACTIVE_POWER_IMPORT, 0, UNIT_W, axdr.i32, lambda s: s.kw * 1000.0),
    RegisterSpec(obis.APPARENT_POWER, 0, UNIT_VA, axdr.u32, lambda s: s.kva * 1000.0),
    RegisterSpec(obis.LOAD_PERCENT, 0, UNIT_PERCENT, axdr.u16, lambda s: s.load),
)


class RegisterObject(CosemObject):
    """IC 3: value (attr 2) from the model's instantaneous sample, scaler_unit (attr 3)."""

    class_id = obis.IC_REGISTER

    def __init__(self, spec: RegisterSpec, model: MeterModel) -> None:
        super().__init__(spec.obis)
        self.spec = spec
        self.model = model

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        if attribute == 2:
            return self.spec.encode(self.spec.raw(self.model.instant(now)))
        if attribute == 3:
            return axdr.structure(axdr.i8(self.spec.scaler), axdr.enum(self.spec.unit))
        return super().read(attribute, selection, now)


class ClockObject(CosemObject):
    """IC 8: time (attr 2) in UTC, time_zone 0, status OK, enabled DST off, crystal clock base."""

    class_id = obis.IC_CLOCK

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        values = {
            2: lambda: axdr.octets(axdr.datetime_bytes(now)),
            3: lambda: axdr.i16(0),
            4: lambda: axdr.u8(0),
            8: lambda: axdr.boolean(False),
            9: lambda: axdr.enum(1),
        }
        if attribute in values:
            return values[attribute]()
        return super().read(attribute, selection, now)


class DataObject(CosemObject):
    """IC 1: a constant value (attr 2), already encoded."""

    class_id = obis.IC_DATA

    def __init__(self, logical_name: str, value: bytes) -> None:
        super().__init__(logical_name)
        self.value = value

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        if attribute == 2:
            return self.value
        return super().read(attribute, selection, now)


class CounterObject(CosemObject):
    """IC 1 whose value (attr 2, double-long-unsigned) is read live from a callback: the
    invocation counter 0.0.43.1.0.255 (the highest client counter the meter has accepted), so the
    gateway can resynchronise after a meter-side reset without a separate management channel."""

    class_id = obis.IC_DATA

    def __init__(self, logical_name: str, value: Callable[[], int]) -> None:
        super().__init__(logical_name)
        self._value = value

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        if attribute == 2:
            return axdr.u32(self._value() & 0xFFFFFFFF)
        return super().read(attribute, selection, now)


class AssociationLnObject(CosemObject):
    """IC 15 "current association" 0.0.40.0.0.255. The attributes a client reads to see how it
    is associated come from the server (per client, so through a callback); method 1
    (reply_to_HLS_authentication) is served by the DLMS server itself, because it is a step of
    the association state machine rather than of the object model."""

    class_id = 15

    def __init__(
        self, logical_name: str, status: Callable[[], tuple[bytes, bytes | None, int]]
    ) -> None:
        super().__init__(logical_name)
        self._status = status

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        context, mechanism, state = self._status()
        if attribute == 4:
            return _oid(context)
        if attribute == 6:
            return axdr.null() if mechanism is None else _oid(mechanism)
        if attribute == 8:
            return axdr.enum(state)
        return super().read(attribute, selection, now)


def _oid(ber: bytes) -> bytes:
    """An object identifier attribute as its BER content octets (gurux reads it as octets)."""
    return axdr.octets(ber)


@dataclass(frozen=True)
class Column:
    """One capture object of a profile and how to take its value from a row's Sample."""

    class_id: int
    obis: str
    attribute: int
    value: Callable[[Sample], bytes]

    def definition(self) -> bytes:
        return axdr.structure(
            axdr.u16(self.class_id),
            axdr.octets(obis_to_bytes(self.obis)),
            axdr.i8(self.attribute),
            axdr.u16(0),
        )


def _clock_column(s: Sample) -> bytes:
    return axdr.octets(axdr.datetime_bytes(s.time))


def _register_column(spec: RegisterSpec) -> Column:
    return Column(obis.IC_REGISTER, spec.obis, 2, lambda s: spec.encode(spec.raw(s)))


class ProfileGenericObject(CosemObject):
    """IC 7 load profile: buffer (attr 2, whole, by range on the clock, or by entry), capture
    objects (3), capture period (4), sort method (5), sort object (6), entries (7, 8)."""

    class_id = obis.IC_PROFILE_GENERIC

    def __init__(self, logical_name: str, model: MeterModel, columns: Iterable[Column]) -> None:
        super().__init__(logical_name)
        self.model = model
        self.columns = tuple(columns)

    def selective(self, attribute: int) -> bool:
        return attribute == 2

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        if attribute == 2:
            return self._buffer(selection, now)
        if attribute == 3:
            return axdr.array([c.definition() for c in self.columns])
        if attribute == 4:
            return axdr.u32(round(self.model.profile_period_s))
        if attribute == 5:
            return axdr.enum(1)  # fifo
        if attribute == 6:
            return self.columns[0].definition()
        if attribute in (7, 8):
            return axdr.u32(self.model.profile_depth)
        return super().read(attribute, selection, now)

    def _buffer(self, selection: Selection | None, now: float) -> bytes:
        columns = self.columns
        if selection is None:
            rows = self.model.rows_by_entry(1, 0, now)
        elif selection.selector == 1:
            rows, columns = self._by_range(selection.parameters, now)
        elif selection.selector == 2:
            rows, columns = self._by_entry(selection.parameters, now)
        else:
            raise AccessError(SCOPE_OF_ACCESS_VIOLATED, f"selector {selection.selector} unknown")
        return axdr.array([axdr.structure(*(c.value(r) for c in columns)) for r in rows])

    def _by_range(self, params: axdr.Value, now: float) -> tuple[list[Sample], tuple[Column, ...]]:
        items = _items(params, 4, "range descriptor")
        restricting = _items(items[0], 4, "restricting object")
        class_id, ln, attr = restricting[0].value, restricting[1].value, restricting[2].value
        if (class_id, ln, attr) != (obis.IC_CLOCK, obis_to_bytes(obis.CLOCK), 2):
            raise AccessError(OTHER_REASON, "only the clock (IC 8, attr 2) can restrict a range")
        start = _instant(items[1], "from_value")
        end = _instant(items[2], "to_value")
        return self.model.rows_between(start, end, now), self._select(items[3])

    def _by_entry(self, params: axdr.Value, now: float) -> tuple[list[Sample], tuple[Column, ...]]:
        items = _items(params, 4, "entry descriptor")
        nums = [i.value for i in items]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in nums):
            raise AccessError(TYPE_UNMATCHED, "entry descriptor fields must be integers")
        first, last, col_first, col_last = (int(n) for n in nums)  # type: ignore[arg-type]
        cols = self.columns
        col_hi = len(cols) if col_last == 0 else min(col_last, len(cols))
        chosen = cols[max(col_first, 1) - 1 : col_hi]
        return self.model.rows_by_entry(first, last, now), chosen

    def _select(self, selected: axdr.Value) -> tuple[Column, ...]:
        if selected.tag != axdr.ARRAY or not isinstance(selected.value, list):
            raise AccessError(TYPE_UNMATCHED, "selected_values must be an array")
        if not selected.value:
            return self.columns
        chosen: list[Column] = []
        for item in selected.value:
            fields = _items(item, 4, "selected value")
            key = (fields[0].value, fields[1].value, fields[2].value)
            match = [
                c for c in self.columns if (c.class_id, obis_to_bytes(c.obis), c.attribute) == key
            ]
            if not match:
                raise AccessError(OTHER_REASON, f"column {key!r} is not captured by this profile")
            chosen.append(match[0])
        return tuple(chosen)


def _items(v: axdr.Value, n: int, what: str) -> list[axdr.Value]:
    if v.tag != axdr.STRUCTURE or not isinstance(v.value, list) or len(v.value) != n:
        raise AccessError(TYPE_UNMATCHED, f"{what} must be a structure of {n}")
    return v.value


def _instant(v: axdr.Value, what: str) -> float:
    if v.tag in (axdr.OCTET_STRING, axdr.DATE_TIME) and isinstance(v.value, bytes):
        try:
            return axdr.parse_datetime_bytes(v.value)
        except axdr.AxdrError as exc:
            raise AccessError(TYPE_UNMATCHED, f"{what}: {exc}") from None
    raise AccessError(TYPE_UNMATCHED, f"{what} must be a date-time")


def load_profile_columns() -> tuple[Column, ...]:
    by_obis = {spec.obis: spec for spec in REGISTERS}
    order = (
        obis.ACTIVE_ENERGY_IMPORT,
        obis.VOLTAGE_L1,
        obis.CURRENT_L1,
        obis.POWER_FACTOR,
        obis.ACTIVE_POWER_IMPORT,
        obis.APPARENT_POWER,
        obis.LOAD_PERCENT,
    )
    return (
        Column(obis.IC_CLOCK, obis.CLOCK, 2, _clock_column),
        *(_register_column(by_obis[o]) for o in order),
    )


def build_directory(model: MeterModel) -> dict[str, CosemObject]:
    """The standard emulated meter: clock, identity, instantaneous registers, load profile."""
    objects: list[CosemObject] = [
        ClockObject(obis.CLOCK),
        DataObject(obis.DEVICE_ID, axdr.octets(model.meter_id.encode())),
        DataObject(obis.LOGICAL_DEVICE_NAME, axdr.octets(f"EMU{model.meter_id}".encode())),
        *(RegisterObject(spec, model) for spec in REGISTERS),
        ProfileGenericObject(obis.LOAD_PROFILE, model, load_profile_columns()),
    ]
    return {o.logical_name: o for o in objects}
