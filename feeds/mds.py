"""MDS 2.0 Provider documents from plain data: vehicles, vehicle status, trips, telemetry and
events, with fleetgate's states and events mapped to MDS vehicle states and event types in one
table (EVENT_MAP, STATE_MAP; docs/feeds.md shows both).

MDS is per mode: cars follow the car-share mode, every two-wheeler the micromobility mode, and
the allowed (vehicle_state, event_type) pairs differ between them, hence a column per mode.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from feeds.rides import Ride

MDS_VERSION = "2.0.0"
MDS_MEDIA_TYPE = "application/vnd.mds+json;version=2.0"
MICROMOBILITY = "micromobility"
CAR_SHARE = "car-share"
RECENT_EVENTS_SPAN = timedelta(weeks=2)  # /events/recent serves at most two weeks back
NEAR_REALTIME_TTL_MS = 30_000
_HOUR = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2})$")

# vehicle_overview.status -> MDS vehicle_state (the same in both modes).
STATE_MAP = {
    "available": "available",
    "low_battery": "non_operational",
    "immobilised": "non_operational",
    "on_trip": "on_trip",
    "offline": "non_contactable",
    None: "removed",  # registered, never reported: not in the public right of way
}

# (source, fleetgate event) -> {mode: (vehicle_state, MDS event_type)}; a mode missing from an
# entry does not publish that event (MDS allows no such pair in that mode).
EVENT_MAP: dict[tuple[str, str], dict[str, tuple[str, str]]] = {
    ("command", "unlock"): {
        MICROMOBILITY: ("on_trip", "trip_start"),
        CAR_SHARE: ("on_trip", "trip_start"),
    },
    ("command", "lock"): {
        MICROMOBILITY: ("available", "trip_end"),
        CAR_SHARE: ("available", "trip_end"),
    },
    ("command", "immobilise"): {
        MICROMOBILITY: ("non_operational", "maintenance"),
        CAR_SHARE: ("non_operational", "service_end"),
    },
    ("command", "mobilise"): {
        MICROMOBILITY: ("available", "maintenance"),
        CAR_SHARE: ("available", "service_start"),
    },
    ("battery", "battery_low"): {MICROMOBILITY: ("non_operational", "battery_low")},
    ("battery", "charging_start"): {CAR_SHARE: ("stopped", "charging_start")},
    ("battery", "charging_end"): {
        MICROMOBILITY: ("available", "battery_charged"),
        CAR_SHARE: ("stopped", "charging_end"),
    },
    ("battery", "pack_swapped"): {MICROMOBILITY: ("available", "battery_charged")},
    ("geofence", "left_operating_area"): {MICROMOBILITY: ("elsewhere", "unspecified")},
    # Presence events of issue 20 (source 'vehicle'), where the database stores them.
    ("vehicle", "vehicle.comms_lost"): {
        MICROMOBILITY: ("non_contactable", "comms_lost"),
        CAR_SHARE: ("non_contactable", "comms_lost"),
    },
}
TRIP_EVENTS = frozenset({"trip_start", "trip_end"})
# What vehicles/status says happened last when it describes the current state itself.
_STATE_EVENT = {
    MICROMOBILITY: {"non_contactable": "comms_lost", None: "located"},
    CAR_SHARE: {"non_contactable": "comms_lost", None: "comms_restored"},
}


class BadHour(ValueError):
    """An hour parameter that is not YYYY-MM-DDTHH (UTC)."""


def parse_hour(text: str | None, name: str) -> datetime:
    """`2026-12-06T09` as the UTC hour it names."""
    match = _HOUR.match(text or "")
    if match is None:
        raise BadHour(f"{name} must be a UTC hour YYYY-MM-DDTHH, not {text!r}")
    try:
        return datetime(*map(int, match.groups()), tzinfo=UTC)
    except ValueError as exc:
        raise BadHour(f"{name} {text!r} is not a real hour: {exc}") from None


def mds_mode(form_factor: str) -> str:
    return CAR_SHARE if form_factor == "car" else MICROMOBILITY


def ms(t: datetime | float) -> int:
    if isinstance(t, datetime):
        return int(t.timestamp() * 1000)
    return int(round(t * 1000))


def _percent(soc: float | None) -> int | None:
    if soc is None or not math.isfinite(soc):
        return None
    return int(min(100, max(0, round(soc))))


def gps(lat: float, lon: float, speed_kmh=None, heading=None) -> dict[str, Any]:
    """An MDS GPS object (note `lng`, and speed in m/s)."""
    point: dict[str, Any] = {"lat": round(lat, 7), "lng": round(lon, 7)}
    if speed_kmh is not None and math.isfinite(speed_kmh):
        point["speed"] = round(speed_kmh / 3.6, 2)
    if heading is not None and math.isfinite(heading):
        point["heading"] = round(float(heading), 1)
    return point


@dataclass(frozen=True)
class MdsProvider:
    """Builds the MDS objects of one provider. Vehicles get a stable device_id (UUIDv5 of the
    provider and the vehicle's reference): the agency is trusted with it, the public is not."""

    provider_id: str

    @property
    def _namespace(self) -> uuid.UUID:
        return uuid.UUID(self.provider_id)

    def device_id(self, vehicle_ref: str) -> str:
        return str(uuid.uuid5(self._namespace, f"vehicle:{vehicle_ref}"))

    def derived_id(self, kind: str, *parts: object) -> str:
        return str(uuid.uuid5(self._namespace, ":".join([kind, *map(str, parts)])))

    def vehicle(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """row: vehicle_ref, form_factor, propulsion_type, battery_capacity_wh, max_speed_kmh."""
        item: dict[str, Any] = {
            "device_id": self.device_id(row["vehicle_ref"]),
            "provider_id": self.provider_id,
            "vehicle_id": row["vehicle_ref"],
            "vehicle_type": row["form_factor"],
            "propulsion_types": [row["propulsion_type"]],
        }
        if row.get("battery_capacity_wh"):
            item["battery_capacity"] = int(round(row["battery_capacity_wh"]))
        if row.get("max_speed_kmh"):
            item["maximum_speed"] = int(round(row["max_speed_kmh"] / 3.6))
        return item

    def telemetry(self, row: Mapping[str, Any], trip_ids: Sequence[str] | None) -> dict[str, Any]:
        """row: vehicle, vehicle_ref, time (epoch s), lat, lon, speed_kmh, heading_deg, soc_pct."""
        item: dict[str, Any] = {
            "device_id": self.device_id(row["vehicle_ref"]),
            "provider_id": self.provider_id,
            "telemetry_id": self.derived_id("telemetry", row["vehicle"], ms(row["time"])),
            "timestamp": ms(row["time"]),
            "trip_ids": list(trip_ids) if trip_ids else None,
            "journey_id": None,
            "location": gps(row["lat"], row["lon"], row.get("speed_kmh"), row.get("heading_deg")),
        }
        battery = _percent(row.get("soc_pct"))
        if battery is not None:
            item["battery_percent"] = battery
        return item

    def event(
        self,
        row: Mapping[str, Any],
        mode: str,
        trip_id: str | None,
    ) -> dict[str, Any] | None:
        """row: id, source, type, vehicle_ref, time (epoch s), lat, lon, soc_pct. None when the
        event has no MDS counterpart in this mode, or a trip event has no ride."""
        mapped = EVENT_MAP.get((row["source"], row["type"]), {}).get(mode)
        if mapped is None or row.get("lat") is None:
            return None
        state, event_type = mapped
        if event_type in TRIP_EVENTS and trip_id is None:
            return None
        item = self._event(row, state, [event_type], f"{row['source']}:{row['id']}")
        if trip_id is not None:
            item["trip_ids"] = [trip_id]
        return item

    def state_event(self, row: Mapping[str, Any], mode: str) -> dict[str, Any]:
        """The vehicle's current state as the event that put it there (vehicles/status)."""
        state = STATE_MAP.get(row.get("status"), "removed")
        event_type = _STATE_EVENT[mode].get(state, _STATE_EVENT[mode][None])
        return self._event(row, state, [event_type], f"state:{row['vehicle']}:{row['time']}")

    def _event(self, row, state: str, types: list[str], key: str) -> dict[str, Any]:
        item = {
            "device_id": self.device_id(row["vehicle_ref"]),
            "provider_id": self.provider_id,
            "event_id": self.derived_id("event", key),
            "vehicle_state": state,
            "event_types": types,
            "timestamp": ms(row["time"]),
            "location": gps(row["lat"], row["lon"]),
        }
        battery = _percent(row.get("soc_pct"))
        if battery is not None:
            item["battery_percent"] = battery
        return item

    def vehicle_status(self, row: Mapping[str, Any], mode: str) -> dict[str, Any]:
        """row: the vehicle's latest state (vehicle, vehicle_ref, status, time, lat, lon, ...)."""
        return {
            "device_id": self.device_id(row["vehicle_ref"]),
            "provider_id": self.provider_id,
            "last_event": self.state_event(row, mode),
            "last_telemetry": self.telemetry(row, row.get("trip_ids")),
        }

    def trip(
        self,
        ride: Ride,
        vehicle_ref: str,
        mode: str,
        start: Mapping[str, Any],
        end: Mapping[str, Any],
        distance_m: float,
    ) -> dict[str, Any]:
        """A closed ride; start/end: the fixes nearest its start and end (lat, lon)."""
        assert ride.end_time is not None
        return {
            "provider_id": self.provider_id,
            "device_id": self.device_id(vehicle_ref),
            "trip_id": ride.trip_id,
            "trip_type": ["private"] if mode == CAR_SHARE else ["rider"],
            "start_time": ms(ride.start_time),
            "end_time": ms(ride.end_time),
            "start_location": gps(start["lat"], start["lon"]),
            "end_location": gps(end["lat"], end["lon"]),
            "duration": max(0, int(round(ride.end_time - ride.start_time))),
            "distance": max(0, int(round(distance_m))),
        }


def envelope(key: str, items: list, **extra: Any) -> dict[str, Any]:
    return {"version": MDS_VERSION, **extra, key: items}
