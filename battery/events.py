"""Battery events (plain data for the events table) and their type names; MDS 2.0 names where
MDS has one (battery_low, charging_start, charging_end)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EVENT_SOURCE = "battery"

BATTERY_LOW = "battery_low"  # MDS
CHARGING_START = "charging_start"  # MDS
CHARGING_END = "charging_end"  # MDS
CHARGING_FAULT = "charging_fault"
PACK_SWAPPED = "pack_swapped"
BATTERY_HEALTH_LOW = "battery_health_low"
AUX_BATTERY_AT_RISK = "aux_battery_at_risk"
ABNORMAL_PARKED_DRAIN = "abnormal_parked_drain"

EVENT_TYPES = (
    BATTERY_LOW,
    CHARGING_START,
    CHARGING_END,
    CHARGING_FAULT,
    PACK_SWAPPED,
    BATTERY_HEALTH_LOW,
    AUX_BATTERY_AT_RISK,
    ABNORMAL_PARKED_DRAIN,
)


@dataclass(frozen=True, slots=True)
class BatteryEvent:
    """One event for the events table, unique on (vehicle, time_ms, type, source). Field names
    match telemetry.batch.DeviceEvent, so the store inserts both alike."""

    vehicle: int
    time_ms: int
    type: str
    detail: dict[str, Any]
    source: str = EVENT_SOURCE
