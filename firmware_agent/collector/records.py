"""The head end's reading record, and normalisation of raw COSEM values into it.

A meter hands back integers with a scaler and a unit per register; the head end (seed 002 schema)
wants named fields in fixed units (vltg in kV, kw/kva in kW/kVA). That translation lives here, away
from gurux and sockets, so it can be tested on plain lists and reused for pushes later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import obis as codes
from .obis import UNIT_A, UNIT_NONE, UNIT_PERCENT, UNIT_V, UNIT_VA, UNIT_W

# OBIS -> (head-end field, unit the value must be in after the scaler, factor to the field's unit)
HEAD_END_FIELDS: dict[str, tuple[str, int, float]] = {
    codes.VOLTAGE_L1: ("vltg", UNIT_V, 1e-3),
    codes.CURRENT_L1: ("crrnt", UNIT_A, 1.0),
    codes.POWER_FACTOR: ("pf", UNIT_NONE, 1.0),
    codes.ACTIVE_POWER_IMPORT: ("kw", UNIT_W, 1e-3),
    codes.APPARENT_POWER: ("kva", UNIT_VA, 1e-3),
    codes.LOAD_PERCENT: ("load", UNIT_PERCENT, 1.0),
}


class RecordError(ValueError):
    """Values that cannot become a reading (wrong row shape, non-numeric cell, no clock column)."""


def iso_utc(t: float | datetime) -> str:
    """ISO-8601 UTC with a Z and no sub-second part beyond what the time has."""
    dt = t.astimezone(UTC) if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    return dt.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Column:
    """One value source of a record: which object/attribute, and its scaler_unit."""

    obis: str
    class_id: int = codes.IC_REGISTER
    attribute: int = 2
    scaler: int = 0
    unit: int = UNIT_NONE


@dataclass(frozen=True)
class Reading:
    """One record for the head end; ``values`` holds every OBIS value in its register's unit
    (after the scaler), the named fields the seed 002 subset in head-end units."""

    device_id: str
    time: str
    arrival_time: str
    source: str
    load: int | None = None
    crrnt: float | None = None
    pf: float | None = None
    kva: float | None = None
    kw: float | None = None
    vltg: float | None = None
    values: dict[str, float] = field(default_factory=dict)

    @property
    def key_parts(self) -> tuple[str, str, str]:
        """(meter, OBIS of the profile or register, capture time)."""
        return (self.device_id, self.source, self.time)

    @property
    def natural_key(self) -> str:
        """``meter|OBIS|capture time``: the spool's and head end's dedup key (a string, as the spool
        stores it). '|' cannot occur in an OBIS code or an ISO time."""
        return "|".join(self.key_parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "arrival_time": self.arrival_time,
            "device_id": self.device_id,
            "load": self.load,
            "crrnt": self.crrnt,
            "pf": self.pf,
            "kva": self.kva,
            "kw": self.kw,
            "vltg": self.vltg,
            "source": self.source,
            "values": dict(self.values),
        }


def scale(raw: object, scaler: int) -> float:
    """raw x 10^scaler, rounded to the scaler's resolution so 2301e-1 is 230.1, not 230.1000..2."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise RecordError(f"value {raw!r} is not numeric")
    if isinstance(raw, float):
        return raw * 10.0**scaler
    return round(raw * 10.0**scaler, max(0, -scaler))


def _fields(values: dict[str, float], units: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code, (name, unit, factor) in HEAD_END_FIELDS.items():
        if code in values and units.get(code) == unit:
            v = values[code] * factor
            out[name] = round(v) if name == "load" else round(v, 9)
    return out


def reading_from_row(
    device_id: str,
    profile: str,
    columns: Sequence[Column],
    row: Sequence[object],
    arrival: float | datetime,
) -> Reading:
    """A profile row (as the session returns it: datetimes for clock cells, raw numbers else)."""
    if len(row) != len(columns):
        raise RecordError(f"row of {len(row)} cells for {len(columns)} capture objects")
    captured: datetime | None = None
    values: dict[str, float] = {}
    units: dict[str, int] = {}
    for col, cell in zip(columns, row, strict=True):
        if col.class_id == codes.IC_CLOCK:
            if not isinstance(cell, datetime):
                raise RecordError(f"clock cell {cell!r} is not a date-time")
            captured = cell
            continue
        values[col.obis] = scale(cell, col.scaler)
        units[col.obis] = col.unit
    if captured is None:
        raise RecordError(f"profile {profile} has no clock column")
    return Reading(
        device_id=device_id,
        time=iso_utc(captured),
        arrival_time=iso_utc(arrival),
        source=profile,
        values=values,
        **_fields(values, units),
    )


def reading_from_register(
    device_id: str,
    column: Column,
    raw: object,
    time: float | datetime,
    arrival: float | datetime,
) -> Reading:
    """An instantaneous register read, stamped with the meter's clock at the read."""
    value = scale(raw, column.scaler)
    values = {column.obis: value}
    return Reading(
        device_id=device_id,
        time=iso_utc(time),
        arrival_time=iso_utc(arrival),
        source=column.obis,
        values=values,
        **_fields(values, {column.obis: column.unit}),
    )


def reading_from_values(
    device_id: str,
    source: str,
    cells: Sequence[tuple[Column, object]],
    time: float | datetime,
    arrival: float | datetime,
) -> Reading:
    """Several registers read at one moment (instantaneous values) as one record."""
    values: dict[str, float] = {}
    units: dict[str, int] = {}
    for column, raw in cells:
        values[column.obis] = scale(raw, column.scaler)
        units[column.obis] = column.unit
    return Reading(
        device_id=device_id,
        time=iso_utc(time),
        arrival_time=iso_utc(arrival),
        source=source,
        values=values,
        **_fields(values, units),
    )


ALARM_MAC_FAIL = "mac-fail"
ALARM_CLOCK_DRIFT = "clock-drift"
ALARM_MALFORMED = "malformed-payload"


@dataclass(frozen=True)
class Alarm:
    """One alarm record for the head end, spooled at Priority.ALARM: the one schema for what a
    meter pushes (last gasp, power restored, tamper: ``code``, ``push_setup``, ``invoke_id`` set)
    and what the gateway raises itself about a meter (MAC Fail, clock drift: those are None)."""

    device_id: str
    event: str
    time: str  # when it happened (UTC ISO): the meter's word for a push, else the gateway's
    arrival_time: str
    description: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    code: int | None = None  # the meter's event code (standard event log), for pushes
    push_setup: str | None = None  # the push setup object that sent it
    invoke_id: int | None = None  # the DataNotification's invoke id

    @property
    def natural_key(self) -> str:
        """``meter|alarm:event|time``: a push repeated by the meter (or by two paths) collapses."""
        return f"{self.device_id}|alarm:{self.event}|{self.time}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "alarm",
            "event": self.event,
            "device_id": self.device_id,
            "time": self.time,
            "arrival_time": self.arrival_time,
            "code": self.code,
            "description": self.description,
            "push_setup": self.push_setup,
            "invoke_id": self.invoke_id,
            "values": dict(self.values),
        }
