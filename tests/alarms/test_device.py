"""Device-reported tamper and crash events are passed on as alarms."""

from alarms import alarms_from_device_events
from telemetry.batch import DeviceEvent


def test_tamper_and_crash_become_alarms_and_other_device_events_do_not():
    events = [
        DeviceEvent(1, 1000, "tamper", {"sensor": "lock_cable"}),
        DeviceEvent(2, 2000, "crash", None),
        DeviceEvent(3, 3000, "battery_removed", None),
        DeviceEvent(4, 4000, "crash", None, source="alarm"),  # never an alarm of an alarm
    ]
    alarms = alarms_from_device_events(events)
    assert [(a.vehicle, a.time_ms, a.type, a.source) for a in alarms] == [
        (1, 1000, "alarm.tamper", "alarm"),
        (2, 2000, "alarm.crash", "alarm"),
    ]
    assert alarms[0].detail == {"reported": {"sensor": "lock_cable"}}
