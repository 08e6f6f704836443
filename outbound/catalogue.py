"""The outbound event types (docs/webhooks.md): which stored events are announced, under which
name. A stored type that already is a catalogue name (presence, alarms, trips) is announced as it
is, whatever its source; geofence, battery and command events are renamed by the tables below."""

from __future__ import annotations

from collections.abc import Mapping

CATALOGUE: Mapping[str, str] = {
    "command.finished": "a command reached a final state",
    "command.late_result": "the device answered after the command had timed out",
    "vehicle.online": "the vehicle is heard again after being offline",
    "vehicle.offline": "silence past the presence timeout",
    "vehicle.comms_lost": "a longer silence",
    "geofence.zone_enter": "the vehicle entered a zone",
    "geofence.zone_exit": "the vehicle left a zone",
    "geofence.left_operating_area": "the vehicle left the operating area",
    "geofence.speeding_in_zone": "an episode of speeding in a slow zone",
    "geofence.ride_through_forbidden": "riding through a no-ride zone",
    "battery.low": "state of charge below the low threshold",
    "battery.aux_drain": "the auxiliary battery is at risk",
    "battery.parked_drain": "the pack drains abnormally while parked",
    "battery.charging_started": "charging started",
    "battery.charging_ended": "charging ended",
    "battery.charging_fault": "a charging fault",
    "battery.pack_swapped": "the pack was swapped",
    "battery.health_low": "the pack's health fell below its threshold",
    "alarm.moved_while_locked": "movement while locked",
    "alarm.tamper": "a tamper alarm the device reported",
    "alarm.crash": "a crash the device reported",
    "trip.started": "a ride started",
    "trip.ended": "a ride ended",
    "trip.updated": "a late upload changed an ended trip's figures",
}

# (source, stored type) -> catalogue name, for the stored types that are not catalogue names.
_RENAMED: Mapping[tuple[str, str], str] = {
    ("geofence", "zone_enter"): "geofence.zone_enter",
    ("geofence", "zone_exit"): "geofence.zone_exit",
    ("geofence", "left_operating_area"): "geofence.left_operating_area",
    ("geofence", "speeding_in_zone"): "geofence.speeding_in_zone",
    ("geofence", "ride_through_forbidden"): "geofence.ride_through_forbidden",
    ("battery", "battery_low"): "battery.low",
    ("battery", "aux_battery_at_risk"): "battery.aux_drain",
    ("battery", "abnormal_parked_drain"): "battery.parked_drain",
    ("battery", "charging_start"): "battery.charging_started",
    ("battery", "charging_end"): "battery.charging_ended",
    ("battery", "charging_fault"): "battery.charging_fault",
    ("battery", "pack_swapped"): "battery.pack_swapped",
    ("battery", "battery_health_low"): "battery.health_low",
}

# The command states a command ends in (commands.CommandState's terminal ones).
_FINAL_COMMAND_STATES = frozenset({"succeeded", "failed", "timed_out", "expired", "cancelled"})
LATE_RESULT = "late_result"


class UnknownEventType(ValueError):
    """Event types that are not in the catalogue (the message lists the catalogue)."""

    def __init__(self, unknown: list[str]) -> None:
        self.unknown = unknown
        super().__init__(
            f"unknown event type(s) {', '.join(unknown)}; the catalogue: {', '.join(CATALOGUE)}"
        )


def outbound_type(source: str, stored_type: str, detail: Mapping | None = None) -> str | None:
    """The catalogue name a stored event is announced under, or None if it is not announced.

    Command events are command_history rows: stored_type is "command_" + the state entered and
    detail has from_state, to_state and reason (as /v1/events shows them)."""
    if stored_type in CATALOGUE:
        return stored_type
    if source == "command":
        detail = detail or {}
        if detail.get("reason") == LATE_RESULT:
            return "command.late_result"
        to_state = detail.get("to_state")
        if to_state in _FINAL_COMMAND_STATES and detail.get("from_state") != to_state:
            return "command.finished"
        return None
    return _RENAMED.get((source, stored_type))


def check_types(types: list[str]) -> list[str]:
    """The types, deduplicated and in catalogue order; UnknownEventType for any other name."""
    unknown = sorted({t for t in types if t not in CATALOGUE})
    if unknown:
        raise UnknownEventType(unknown)
    wanted = set(types)
    return [t for t in CATALOGUE if t in wanted]
