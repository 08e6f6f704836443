"""Alarms core (sans-IO): theft (movement while locked) and the device-reported alarms (tamper,
crash), as events for the events table. Plain arrays and dicts in, events and state out."""

from alarms.device import DEVICE_ALARMS, alarms_from_device_events
from alarms.theft import (
    ALARM_SOURCE,
    MOVED_WHILE_LOCKED,
    STATE_FORMAT,
    AlarmEvent,
    TheftDetector,
    TheftPolicy,
    TheftResult,
)

__all__ = [
    "ALARM_SOURCE",
    "DEVICE_ALARMS",
    "MOVED_WHILE_LOCKED",
    "STATE_FORMAT",
    "AlarmEvent",
    "TheftDetector",
    "TheftPolicy",
    "TheftResult",
    "alarms_from_device_events",
]
