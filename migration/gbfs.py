"""GBFS v2.3 and v3.0 feeds mapped to fleetgate's records (sans-IO: parsed documents in).

vehicle_types gives each vehicle its type by form factor (or by vehicle_type_id, mapping file);
vehicle_status (free_bike_status in 2.3) gives the vehicles, each one position (its last
report) and its fuel/charge; geofencing_zones gives zones (v2.3's ride_allowed becomes v3's
ride_start/ride_end_allowed, rule vehicle_type_ids become fleetgate types); station_information
gives a zone of kind station per station (its station_area, else a circle). A GBFS vehicle has
no separate tracker: its vehicle_id is the vehicle_ref and the device id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from geofence import InvalidZone, Zone, assign_kinds
from migration.columns import TimeWindow, Verdicts, iso_times_ms, numbers
from migration.mapping import Mapping
from migration.records import (
    DEVICE_ID_INVALID,
    DUPLICATE_DEVICE,
    INVALID_ZONE,
    UNKNOWN_VEHICLE_TYPE,
    UNSUPPORTED_GEOMETRY,
    MappedPositions,
    MappedRegistry,
    PositionColumns,
    Problem,
    VehicleRecord,
)
from migration.sources import MappedSource
from telemetry.topics import is_device_id

SOURCE = "gbfs"
FEEDS = ("vehicle_types", "vehicle_status", "station_information", "geofencing_zones")


@dataclass
class GbfsFeeds:
    """The parsed documents of one GBFS system by feed name (free_bike_status filed as
    vehicle_status), and where each came from (file or URL)."""

    documents: dict[str, dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)
    origin: str = ""

    def version(self, feed: str) -> str:
        return str(self.documents.get(feed, {}).get("version", ""))

    def data(self, feed: str) -> dict[str, Any]:
        data = self.documents.get(feed, {}).get("data")
        return data if isinstance(data, dict) else {}


def map_gbfs(feeds: GbfsFeeds, mapping: Mapping) -> MappedSource:
    registry = MappedRegistry()
    types = _vehicle_types(feeds, mapping)
    vehicles = _vehicles(feeds)
    status_file = feeds.files.get("vehicle_status", feeds.origin)
    by_id: dict[str, VehicleRecord] = {}
    for vehicle in vehicles:
        _vehicle(vehicle, types, mapping, status_file, registry, by_id)
    zones, zone_problems = _zones(feeds, types, mapping)
    registry.zones = zones
    registry.problems.extend(zone_problems)
    registry.counts = {
        "vehicle_types": len(_listed(feeds, "vehicle_types", "vehicle_types")),
        "vehicles": len(vehicles),
        "stations": len(_listed(feeds, "station_information", "stations")),
        "geofencing_zones": len(_features(feeds)),
    }
    received_ms = _last_updated_ms(feeds.documents.get("vehicle_status", {}))

    def raw_chunks():
        if vehicles:
            yield vehicles, status_file

    def map_chunk(chunk, file, devices, rejected, window):
        return _positions(chunk, file, devices, rejected, window, received_ms)

    return MappedSource(
        source=SOURCE,
        origin=feeds.origin,
        registry=registry,
        raw_chunks=raw_chunks,
        map_chunk=map_chunk if vehicles else None,
        vehicle_of_source_id=by_id,
    )


def _vehicle(vehicle, types, mapping, file, registry: MappedRegistry, by_id) -> None:
    vehicle_id = vehicle.get("vehicle_id", vehicle.get("bike_id"))
    record = str(vehicle_id)
    type_id = vehicle.get("vehicle_type_id")
    vehicle_type = types.get(type_id) if type_id is not None else None
    problem = None
    if not isinstance(vehicle_id, str) or not is_device_id(vehicle_id):
        problem = ("vehicle_id", DEVICE_ID_INVALID, "")
    elif vehicle_type is None:
        problem = ("vehicle_type_id", UNKNOWN_VEHICLE_TYPE, repr(type_id))
    elif record in by_id:
        problem = ("vehicle_id", DUPLICATE_DEVICE, "")
        registry.vehicles.remove(by_id.pop(record))
        registry.rejected_devices[record] = DUPLICATE_DEVICE
    if problem is not None:
        field_name, reason, detail = problem
        registry.rejected_devices[record] = reason
        registry.problems.append(Problem(file, record, field_name, reason, detail))
        return
    by_id[record] = VehicleRecord(record, record, vehicle_type, record)
    registry.vehicles.append(by_id[record])


def _vehicle_types(feeds: GbfsFeeds, mapping: Mapping) -> dict[str, str]:
    """GBFS vehicle_type_id -> fleetgate type, by the mapping file's ids, else form factor."""
    out = {}
    for t in _listed(feeds, "vehicle_types", "vehicle_types"):
        type_id = t.get("vehicle_type_id")
        chosen = mapping.gbfs_vehicle_types.get(type_id) or mapping.gbfs_form_factors.get(
            t.get("form_factor")
        )
        if isinstance(type_id, str) and chosen:
            out[type_id] = chosen
    return out


def _listed(feeds: GbfsFeeds, feed: str, key: str) -> list[dict[str, Any]]:
    """The objects of a feed's list (garbage in the place of the list or an entry is left out)."""
    items = feeds.data(feed).get(key)
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _vehicles(feeds: GbfsFeeds) -> list[dict[str, Any]]:
    data = feeds.data("vehicle_status")
    vehicles = data.get("vehicles", data.get("bikes"))
    return [v for v in vehicles if isinstance(v, dict)] if isinstance(vehicles, list) else []


def _last_updated_ms(document: dict[str, Any]) -> int | None:
    value = document.get("last_updated")
    if isinstance(value, int):  # 2.3: POSIX seconds
        return value * 1000
    if isinstance(value, str):  # 3.0: RFC 3339
        ms, bad = iso_times_ms([value])
        return None if bad[0] else int(ms[0])
    return None


def _positions(chunk, file, devices, rejected, window: TimeWindow, received_ms) -> MappedPositions:
    """One position per vehicle: where and when it last reported, its charge."""
    n = len(chunk)
    ids = [v.get("vehicle_id", v.get("bike_id")) for v in chunk]
    verdicts = Verdicts(n, file, ids)
    device_ids = sorted({d for d, _ in devices.values()})
    slot = {d: i for i, d in enumerate(device_ids)}
    owners = [str(i) for i in ids]
    device = np.fromiter((slot.get(devices[o][0], -1) if o in devices else -1 for o in owners),
                         np.int32, n)  # fmt: skip
    for owner_reason in {rejected[o] for o in owners if o in rejected}:
        mask = np.array([rejected.get(o) == owner_reason for o in owners], bool)
        verdicts.reject(mask, owner_reason, "vehicle_id", listed=False)
    cols: dict[str, np.ndarray] = {}
    for name, key in (("lat", "lat"), ("lon", "lon"), ("soc_pct", "current_fuel_percent")):
        cols[name], wrong = numbers([v.get(key) for v in chunk])
        verdicts.reject(wrong, "wrong_type", key)
    with np.errstate(over="ignore"):  # beyond float64: out of range, checked below
        cols["soc_pct"] *= 100.0  # GBFS: a fraction 0..1
    time_ms = np.zeros(n, np.int64)
    for i, v in enumerate(chunk):
        reported = v.get("last_reported")
        if isinstance(reported, int):
            time_ms[i] = reported * 1000
        elif isinstance(reported, str):
            ms, bad = iso_times_ms([reported])
            time_ms[i] = -1 if bad[0] else ms[0]
        else:
            time_ms[i] = -1 if received_ms is None else received_ms
    verdicts.reject(time_ms < 0, "missing_field", "last_reported")
    for name in ("speed_kmh", "heading_deg", "pack_v", "aux_v", "pack_a", "odometer_m"):
        cols[name] = np.full(n, np.nan)
    names = {"lat": "lat", "lon": "lon", "soc_pct": "current_fuel_percent"}
    verdicts.check_ranges(cols, {**names, "speed_kmh": "-", "heading_deg": "-"})
    verdicts.check_time(time_ms, window, "last_reported")
    cols["time_ms"] = time_ms
    cols["received_ms"] = np.full(n, received_ms, np.int64) if received_ms else time_ms.copy()
    skipped, problems = verdicts.tally()
    ok = verdicts.ok
    rows = PositionColumns(device_ids, device, cols)
    return MappedPositions(rows if ok.all() else rows.take(ok), skipped, problems)


# --- zones --------------------------------------------------------------------------------------


def _features(feeds: GbfsFeeds) -> list[dict[str, Any]]:
    zones = feeds.data("geofencing_zones").get("geofencing_zones") or {}
    features = zones.get("features") if isinstance(zones, dict) else None
    return [f for f in features or [] if isinstance(f, dict)]


def _zones(feeds: GbfsFeeds, types: dict[str, str], mapping: Mapping):
    zones: list[Zone] = []
    problems: list[Problem] = []
    v2 = feeds.version("geofencing_zones").startswith("2.")
    file = feeds.files.get("geofencing_zones", feeds.origin)
    for position, feature in enumerate(_features(feeds)):
        props = feature.get("properties") or {}
        row = {
            "id": props.get("_zone_id") or f"gbfs-{position}",
            "name": _text(props.get("name")),
            "kind": props.get("_kind", "other"),
            "geometry": feature.get("geometry"),
            "rules": [_rule(r, v2, types) for r in props.get("rules") or [] if isinstance(r, dict)],
            "priority": position,
            "start": _when(props.get("start")),
            "end": _when(props.get("end")),
        }
        _add_zone(row, file, str(position), zones, problems)
    station_file = feeds.files.get("station_information", feeds.origin)
    for station in _listed(feeds, "station_information", "stations"):
        row = _station_zone(station, mapping)
        if row is None:
            problems.append(
                Problem(station_file, str(station.get("station_id")), "lat", "missing_field")
            )
            continue
        _add_zone(row, station_file, str(station.get("station_id")), zones, problems)
    if mapping.zone_kinds and zones:
        known = {z.id for z in zones} | {z.name for z in zones}
        zones = assign_kinds(zones, {k: v for k, v in mapping.zone_kinds.items() if k in known})
    return [z.to_row() for z in zones], problems


def _add_zone(row, file: str, record: str, zones: list[Zone], problems: list[Problem]) -> None:
    geometry = row.get("geometry")
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind not in ("Polygon", "MultiPolygon", "Circle"):
        problems.append(Problem(file, record, "geometry", UNSUPPORTED_GEOMETRY, str(kind)))
        return
    try:
        zones.append(Zone.from_row(row))
    except InvalidZone as exc:
        problems.append(Problem(file, record, "geometry", INVALID_ZONE, str(exc)))


def _rule(rule: dict[str, Any], v2: bool, types: dict[str, str]) -> dict[str, Any]:
    """A v3 rule with fleetgate's vehicle types (2.3's ride_allowed split in two)."""
    out = {k: v for k, v in rule.items() if not k.startswith("_")}
    ids = out.pop("vehicle_type_id", None) if v2 else out.get("vehicle_type_ids")
    if v2 and "ride_allowed" in out:
        allowed = out.pop("ride_allowed")
        out["ride_start_allowed"] = out["ride_end_allowed"] = allowed
    if ids is not None:
        out["vehicle_type_ids"] = sorted({types.get(i, i) for i in ids})
    return out


def _station_zone(station: dict[str, Any], mapping: Mapping) -> dict[str, Any] | None:
    area = station.get("station_area")
    if isinstance(area, dict):
        geometry = area
    elif type(station.get("lat")) in (int, float) and type(station.get("lon")) in (int, float):
        geometry = {
            "type": "Circle",
            "coordinates": [station["lon"], station["lat"]],
            "radius_m": mapping.station_radius_m,
        }
    else:
        return None
    return {
        "id": f"gbfs-station-{station.get('station_id')}",
        "name": _text(station.get("name")),
        "kind": "station",
        "geometry": geometry,
    }


def _text(value: Any) -> str:
    """2.3's plain string or 3.0's localized [{"text", "language"}, ...] (the first)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return str(value[0].get("text", ""))
    return ""


def _when(value: Any) -> Any:
    if isinstance(value, int):  # 2.3: POSIX seconds
        return datetime.fromtimestamp(value, UTC).isoformat()
    return value
