"""Device-reported alarms: a TCU's own tamper or crash event, passed on as an alarm.

The device event stays as it was reported (source `device`); the alarm is a second event
(source `alarm`, type `alarm.<type>`, its catalogue name) at the same time, carrying the
device's detail, so that a subscriber to alarms needs no knowledge of each TCU's vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from alarms.theft import AlarmEvent

# device event type -> alarm type (stored as its catalogue name). Only what the catalogue names;
# other device events (battery_removed, door_open, ...) stay device events.
DEVICE_ALARMS: dict[str, str] = {"tamper": "alarm.tamper", "crash": "alarm.crash"}


class _DeviceEvent(Protocol):
    vehicle: int
    time_ms: int
    type: str
    detail: dict[str, Any] | None
    source: str


def alarms_from_device_events(events: Iterable[_DeviceEvent]) -> list[AlarmEvent]:
    """One alarm per device-reported tamper or crash event (events of other sources, such as
    the alarms themselves, are never turned into alarms again)."""
    return [
        AlarmEvent(e.vehicle, e.time_ms, DEVICE_ALARMS[e.type], {"reported": e.detail or {}})
        for e in events
        if e.source == "device" and e.type in DEVICE_ALARMS
    ]
