"""The mapping file (TOML, `--mapping`): which source field becomes which fleetgate field, in
which unit, which source category or form factor becomes which vehicle type, and which zone gets
which kind. Every key is optional; DEFAULT holds what applies without a file
(docs/migration.md, "Mapping file"). Parsed from text: reading the file is the shell's job."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

# Unit conversions to fleetgate's units (km/h, m, %, V).
SPEED_UNITS = {"knots": 1.852, "kmh": 1.0, "mps": 3.6, "mph": 1.609344}
DISTANCE_UNITS = {"m": 1.0, "km": 1000.0, "mi": 1609.344}
# Where a Traccar `power` reading (the tracker's supply voltage) goes: on a car the tracker hangs
# on the 12 V battery (aux_v), on a two-wheeler on the traction pack (pack_v).
POWER_TARGETS = ("pack_v", "aux_v", "ignore")
ZONE_KINDS = ("operating_area", "no_parking", "slow", "no_ride", "station", "other")

# Traccar's device categories (its web app's list) to the vehicle types every fleetgate knows.
TRACCAR_CATEGORIES = {
    "bicycle": "ebike",
    "scooter": "scooter",
    "motorcycle": "moped",
    "car": "car",
    "van": "car",
    "pickup": "car",
}
# GBFS form factors (v3; v2.3's deprecated "scooter" too) to vehicle types.
GBFS_FORM_FACTORS = {
    "bicycle": "ebike",
    "cargo_bicycle": "cargo_ebike",
    "scooter": "scooter",
    "scooter_standing": "scooter",
    "scooter_seated": "scooter",
    "moped": "moped",
    "car": "car",
}
# CSV vehicle_type values people write for the same types (matched case-insensitively).
CSV_TYPES = {
    "ebike": "ebike",
    "e-bike": "ebike",
    "bicycle": "ebike",
    "cargo_ebike": "cargo_ebike",
    "cargo bike": "cargo_ebike",
    "scooter": "scooter",
    "e-scooter": "scooter",
    "moped": "moped",
    "car": "car",
}


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Mapping:
    """The rules a mapper applies. Field names are the source's, values fleetgate's."""

    # Traccar
    vehicle_ref: str = "name"  # the device field that becomes vehicle_ref: name | uniqueId | id
    device_id: str = "uniqueId"  # the device field that becomes the device id
    time: str = "fixTime"  # a position's time (deviceTime is used when valid is false)
    speed_unit: str = "knots"
    distance_unit: str = "m"
    soc: str = "batteryLevel"  # attribute, %
    odometer: tuple[str, ...] = ("odometer", "totalDistance")  # attributes, first present wins
    ignition: str = "ignition"
    immobilised: str = "blocked"
    charging: str = "charge"
    power: str = "power"  # attribute, V
    power_to: dict[str, str] = field(default_factory=lambda: {"car": "aux_v", "*": "pack_v"})
    # vehicle types: source value -> fleetgate type id
    traccar_categories: dict[str, str] = field(default_factory=lambda: dict(TRACCAR_CATEGORIES))
    gbfs_form_factors: dict[str, str] = field(default_factory=lambda: dict(GBFS_FORM_FACTORS))
    gbfs_vehicle_types: dict[str, str] = field(default_factory=dict)  # vehicle_type_id -> type
    csv_types: dict[str, str] = field(default_factory=lambda: dict(CSV_TYPES))
    # CSV column names: fleetgate field -> the file's column
    csv_columns: dict[str, str] = field(
        default_factory=lambda: {f: f for f in ("vehicle_ref", "device_id", "vehicle_type")}
    )
    # zones: id or name -> kind (geofence.assign_kinds); GBFS stations' circle radius
    zone_kinds: dict[str, str] = field(default_factory=dict)
    station_radius_m: float = 30.0

    def speed_factor(self) -> float:
        return SPEED_UNITS[self.speed_unit]

    def distance_factor(self) -> float:
        return DISTANCE_UNITS[self.distance_unit]

    def power_column(self, vehicle_type: str) -> str:
        return self.power_to.get(vehicle_type, self.power_to.get("*", "ignore"))

    def described(self, source: str) -> dict[str, Any]:
        """The mapping applied to a source, for the report: its fields (source field ->
        fleetgate field, with the unit conversion), its vehicle types and the zone kinds."""
        fields = {"traccar": self._traccar_fields, "gbfs": self._gbfs_fields}.get(
            source, lambda: {column: field for field, column in self.csv_columns.items()}
        )()
        types = {
            "traccar": self.traccar_categories,
            "gbfs": {**self.gbfs_form_factors, **self.gbfs_vehicle_types},
            "csv": self.csv_types,
        }.get(source, {})
        return {"fields": fields, "vehicle_types": types, "zone_kinds": self.zone_kinds}

    def _traccar_fields(self) -> dict[str, str]:
        speed = SPEED_UNITS[self.speed_unit]
        distance = DISTANCE_UNITS[self.distance_unit]
        return {
            f"device.{self.device_id}": "device_id",
            f"device.{self.vehicle_ref}": "vehicle_ref",
            "device.category": "vehicle_type (vehicle_types below)",
            f"position.{self.time}": "time (deviceTime when valid is false)",
            "position.serverTime": "received_at",
            "position.latitude/longitude": "lat/lon (none when valid is false)",
            "position.speed": f"speed_kmh = speed × {speed} ({self.speed_unit})",
            "position.course": "heading_deg",
            f"attributes.{self.soc}": "soc_pct (%)",
            "attributes." + "|".join(self.odometer): f"odometer_m = value × {distance}",
            f"attributes.{self.ignition}": "ignition",
            f"attributes.{self.immobilised}": "immobilised",
            f"attributes.{self.charging}": "charging",
            f"attributes.{self.power}": "V to "
            + ", ".join(f"{k}: {v}" for k, v in self.power_to.items()),
            "attributes.motion, attributes.battery, altitude, accuracy": "not stored",
            "geofence.area": "zone geometry (WKT latitude first, swapped to lon/lat)",
            "geofence.attributes.speedLimit": f"rule maximum_speed_kph = value × {speed}",
        }

    def _gbfs_fields(self) -> dict[str, str]:
        return {
            "vehicle.vehicle_id (2.3: bike_id)": "vehicle_ref and device_id",
            "vehicle.vehicle_type_id": "vehicle_type (through its form_factor, below)",
            "vehicle.lat/lon": "lat/lon",
            "vehicle.last_reported": "time (2.3: POSIX seconds; 3.0: RFC 3339)",
            "vehicle.current_fuel_percent": "soc_pct = value × 100",
            "geofencing_zones (2.3: ride_allowed)": "zones (ride_start_allowed, ride_end_allowed)",
            "station_information": f"zones of kind station (station_area, else a circle of "
            f"{self.station_radius_m:g} m)",
        }


DEFAULT = Mapping()

# TOML layout: section -> key -> (Mapping attribute, kind of value)
_SCALARS = {
    ("traccar", "vehicle_ref"): ("vehicle_ref", ("name", "uniqueId", "id")),
    ("traccar", "device_id"): ("device_id", ("uniqueId", "id", "name", "phone")),
    ("traccar", "time"): ("time", ("fixTime", "deviceTime", "serverTime")),
    ("traccar", "soc"): ("soc", None),
    ("traccar", "ignition"): ("ignition", None),
    ("traccar", "immobilised"): ("immobilised", None),
    ("traccar", "charging"): ("charging", None),
    ("traccar", "power"): ("power", None),
    ("units", "speed"): ("speed_unit", tuple(SPEED_UNITS)),
    ("units", "distance"): ("distance_unit", tuple(DISTANCE_UNITS)),
}
_TABLES = {
    ("vehicle_types", "traccar"): "traccar_categories",
    ("vehicle_types", "gbfs_form_factor"): "gbfs_form_factors",
    ("vehicle_types", "gbfs_vehicle_type_id"): "gbfs_vehicle_types",
    ("vehicle_types", "csv"): "csv_types",
    ("csv", "columns"): "csv_columns",
    ("traccar", "power_to"): "power_to",
}


def parse_mapping(text: str, source: str = "mapping file") -> Mapping:
    """The mapping a TOML text describes over DEFAULT; tables add to (and override entries of)
    the default tables. MappingError names the bad key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{source}: {exc}") from None
    known = {s for s, _ in _SCALARS} | {s for s, _ in _TABLES} | {"zones"}
    for section in doc:
        if section not in known:
            raise MappingError(f"{source}: unknown section [{section}]")
    changes = _scalars(doc, source)
    odometer = doc.get("traccar", {}).get("odometer")
    if odometer is not None:
        names = [odometer] if isinstance(odometer, str) else odometer
        if not names or not all(isinstance(n, str) for n in names):
            raise MappingError(f"{source}: traccar.odometer must be a name or a list of names")
        changes["odometer"] = tuple(names)
    for (section, key), attr in _TABLES.items():
        table = doc.get(section, {}).get(key)
        if table is None:
            continue
        _check_table(table, f"{section}.{key}", source)
        changes[attr] = {**getattr(DEFAULT, attr), **table}
    for target in changes.get("power_to", {}).values():
        if target not in POWER_TARGETS:
            raise MappingError(f"{source}: traccar.power_to: {target!r} is not {POWER_TARGETS}")
    changes.update(_zone_section(doc.get("zones", {}), source))
    return replace(DEFAULT, **changes)


def _scalars(doc: dict[str, Any], source: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for (section, key), (attr, allowed) in _SCALARS.items():
        value = doc.get(section, {}).get(key)
        if value is None:
            continue
        if not isinstance(value, str) or (allowed and value not in allowed):
            raise MappingError(
                f"{source}: {section}.{key} = {value!r}; expected "
                + (" | ".join(allowed) if allowed else "a field name")
            )
        changes[attr] = value
    return changes


def _zone_section(zones: dict[str, Any], source: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    kinds = zones.get("kinds")
    if kinds is not None:
        _check_table(kinds, "zones.kinds", source)
        bad = {k: v for k, v in kinds.items() if v not in ZONE_KINDS}
        if bad:
            raise MappingError(f"{source}: zones.kinds {bad}: kinds are {', '.join(ZONE_KINDS)}")
        changes["zone_kinds"] = dict(kinds)
    radius = zones.get("station_radius_m")
    if radius is not None:
        if not isinstance(radius, int | float) or not radius > 0:
            raise MappingError(f"{source}: zones.station_radius_m must be a number > 0")
        changes["station_radius_m"] = float(radius)
    return changes


def _check_table(table: Any, name: str, source: str) -> None:
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise MappingError(f"{source}: [{name}] must map names to text")
