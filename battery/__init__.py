"""Battery-health core (sans-IO): state of charge, range, state of health, resistance, cycles,
charging sessions and the cars' 12 V battery, vectorised over the fleet's telemetry batches.
BatteryCore.update(batch) -> BatteryUpdate; export_state / restore carry it over restarts."""

from battery.config import DEFAULT_TYPES, BatteryPolicy, BatteryType, battery_types
from battery.core import COLUMNS, BatteryCore, BatteryEstimates, BatteryUpdate
from battery.events import (
    ABNORMAL_PARKED_DRAIN,
    AUX_BATTERY_AT_RISK,
    BATTERY_HEALTH_LOW,
    BATTERY_LOW,
    CHARGING_END,
    CHARGING_FAULT,
    CHARGING_START,
    EVENT_SOURCE,
    EVENT_TYPES,
    PACK_SWAPPED,
    BatteryEvent,
)
from battery.ocv import NMC, OcvCurve

__all__ = [
    "ABNORMAL_PARKED_DRAIN",
    "AUX_BATTERY_AT_RISK",
    "BATTERY_HEALTH_LOW",
    "BATTERY_LOW",
    "CHARGING_END",
    "CHARGING_FAULT",
    "CHARGING_START",
    "COLUMNS",
    "DEFAULT_TYPES",
    "battery_types",
    "EVENT_SOURCE",
    "EVENT_TYPES",
    "NMC",
    "PACK_SWAPPED",
    "BatteryCore",
    "BatteryEstimates",
    "BatteryEvent",
    "BatteryPolicy",
    "BatteryType",
    "BatteryUpdate",
    "OcvCurve",
]
