"""The frames an emulated meter pushes on its own: last gasp, power restored, tamper.

Sans-IO: ``PushSource.frame(event, at)`` returns one WRAPPER frame; the edge (a UDP socket towards
the gateway's push port, or the mesh node) sends it. The body is the collector's documented layout
(``firmware_agent/collector/push.py``, our push setup 0.0.25.9.0.255's object list), so the
gateway turns it into an alarm, and gurux's client parses it too (``getData(frame, reply, notify)``
returns the four values):

    DataNotification (0x0F)
        long-invoke-id-and-priority  u32: bit 31 priority high, bits 0..23 the invoke id
        date-time                    A-XDR octet-string without tag: length 12 + COSEM date-time
        notification-body            structure {
            octet-string  push setup logical name 0.0.25.9.0.255
            octet-string  device id (ASCII), as 0.0.96.1.0.255 holds it
            octet-string  meter clock at the event (12 bytes)
            long-unsigned event code (standard event log 0.0.96.11.0.255)
        }

An EventNotificationRequest (0xC2) carrying the event code object's value is built as well, for
head ends that expect the older service.
"""

from __future__ import annotations

from enum import IntEnum

from firmware_agent.collector import obis
from firmware_agent.collector.obis import obis_to_bytes
from firmware_agent.collector.wrapper import build_frame

from . import axdr
from .objects import CosemObject, Selection

DATA_NOTIFICATION = 0x0F
EVENT_NOTIFICATION_REQUEST = 0xC2
PUSH_SETUP = "0.0.25.9.0.255"
EVENT_CODE_OBJECT = "0.0.96.11.0.255"
IC_PUSH_SETUP = 40
PRIORITY_HIGH = 0x8000_0000
INVOKE_ID_MASK = 0x00FF_FFFF


class MeterEvent(IntEnum):
    """Standard event log codes (as DSMR/IDIS number them) the collector maps to alarms."""

    POWER_DOWN = 1  # last gasp
    POWER_UP = 2  # power restored
    TERMINAL_COVER_REMOVED = 40  # tamper
    STRONG_DC_FIELD = 42  # tamper
    METER_COVER_REMOVED = 44  # tamper


def data_notification(
    device_id: str, event: int, at: float, invoke_id: int, *, priority_high: bool = True
) -> bytes:
    """The DataNotification APDU of one event at meter time ``at`` (UNIX seconds)."""
    if not 0 <= event <= 0xFFFF:
        raise ValueError(f"event code {event} does not fit long-unsigned")
    stamp = axdr.datetime_bytes(at)
    head = (invoke_id & INVOKE_ID_MASK) | (PRIORITY_HIGH if priority_high else 0)
    body = axdr.structure(
        axdr.octets(obis_to_bytes(PUSH_SETUP)),
        axdr.octets(device_id.encode("ascii")),
        axdr.octets(stamp),
        axdr.u16(event),
    )
    return bytes([DATA_NOTIFICATION]) + head.to_bytes(4, "big") + bytes([len(stamp)]) + stamp + body


def event_notification(event: int, at: float) -> bytes:
    """EventNotificationRequest: time present, IC 1 0.0.96.11.0.255 attribute 2 = event code."""
    stamp = axdr.datetime_bytes(at)
    return (
        bytes([EVENT_NOTIFICATION_REQUEST, 0x01, len(stamp)])
        + stamp
        + obis.IC_DATA.to_bytes(2, "big")
        + obis_to_bytes(EVENT_CODE_OBJECT)
        + bytes([2])
        + axdr.u16(event)
    )


class PushSource:
    """One meter's pushes: keeps its invoke-id counter, wraps each APDU for the gateway."""

    def __init__(self, device_id: str, *, server_wport: int = 1, client_wport: int = 16) -> None:
        self.device_id = device_id
        self.server_wport = server_wport
        self.client_wport = client_wport
        self.invoke_id = 0
        self.sent = 0

    def frame(self, event: int, at: float) -> bytes:
        """The WRAPPER frame of a DataNotification for ``event`` at meter time ``at``."""
        self.invoke_id = (self.invoke_id + 1) & INVOKE_ID_MASK
        self.sent += 1
        apdu = data_notification(self.device_id, event, at, self.invoke_id)
        return build_frame(self.server_wport, self.client_wport, apdu)

    def event_frame(self, event: int, at: float) -> bytes:
        """The same event as an EventNotificationRequest."""
        self.sent += 1
        return build_frame(self.server_wport, self.client_wport, event_notification(event, at))

    def last_gasp(self, at: float) -> bytes:
        return self.frame(MeterEvent.POWER_DOWN, at)

    def power_restored(self, at: float) -> bytes:
        return self.frame(MeterEvent.POWER_UP, at)

    def tamper(self, at: float, event: int = MeterEvent.METER_COVER_REMOVED) -> bytes:
        return self.frame(event, at)


# What the notification body carries, in order: (class id, logical name, attribute).
PUSH_OBJECTS: tuple[tuple[int, str, int], ...] = (
    (IC_PUSH_SETUP, PUSH_SETUP, 1),
    (obis.IC_DATA, obis.DEVICE_ID, 2),
    (obis.IC_CLOCK, obis.CLOCK, 2),
    (obis.IC_DATA, EVENT_CODE_OBJECT, 2),
)


class PushSetupObject(CosemObject):
    """IC 40 push setup 0.0.25.9.0.255: its push_object_list (attr 2) says what the body holds,
    so a client can map a notification's values to objects (gurux: ``parsePushObjects``);
    send_destination_and_method (attr 3) names where pushes go."""

    class_id = IC_PUSH_SETUP

    def __init__(self, destination: str = "", *, logical_name: str = PUSH_SETUP) -> None:
        super().__init__(logical_name)
        self.destination = destination

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        if attribute == 2:
            return axdr.array(
                [
                    axdr.structure(
                        axdr.u16(ic), axdr.octets(obis_to_bytes(ln)), axdr.i8(attr), axdr.u16(0)
                    )
                    for ic, ln, attr in PUSH_OBJECTS
                ]
            )
        if attribute == 3:  # transport UDP (1), destination, message type A-XDR (0)
            return axdr.structure(
                axdr.enum(1), axdr.octets(self.destination.encode()), axdr.enum(0)
            )
        return super().read(attribute, selection, now)
