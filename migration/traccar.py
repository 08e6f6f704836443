"""Traccar's objects mapped to fleetgate's (sans-IO: lists of dicts in, records out).

The traps of a Traccar export, each handled here: speeds (and geofence speed limits) are knots;
geofence areas are WKT written latitude first (`POLYGON((lat lon, ...))`, `CIRCLE (lat lon, r)`)
and LINESTRING corridors have no zone equivalent; `attributes` carry batteryLevel (%),
odometer / totalDistance (m), ignition, blocked (the immobiliser), motion, power / battery (V);
`valid: false` is a position without a fix; uniqueId is the device id; category gives the type.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from itertools import repeat
from operator import is_not
from typing import Any

import numpy as np

from geofence import InvalidZone, Zone, assign_kinds
from migration.columns import TimeWindow, Verdicts, iso_times_ms, numbers, tristates
from migration.mapping import Mapping
from migration.records import (
    DEVICE_ID_INVALID,
    DUPLICATE_DEVICE,
    DUPLICATE_VEHICLE,
    INVALID_ZONE,
    UNKNOWN_DEVICE,
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

SOURCE = "traccar"
ZONE_ID_PREFIX = "traccar-"
_WKT = re.compile(r"^\s*([A-Za-z]+)\s*\((.*)\)\s*$", re.DOTALL)
_RING = re.compile(r"\(([^()]*)\)")


def map_devices(
    devices: Sequence[dict[str, Any]], mapping: Mapping, file: str = "devices.json"
) -> MappedRegistry:
    """Vehicles from Traccar devices. A device is rejected (with every device sharing its id or
    vehicle_ref) for an invalid or duplicate id or an unmapped category."""
    out = MappedRegistry(counts={"devices": len(devices)})
    by_device: dict[str, list[str]] = {}
    by_ref: dict[str, list[str]] = {}
    candidates: list[tuple[str, VehicleRecord]] = []
    for device in devices:
        source_id = str(device.get("id"))
        device_id = device.get(mapping.device_id)
        device_id = str(device_id) if type(device_id) in (int, str) else ""
        ref = device.get(mapping.vehicle_ref)
        ref = str(ref).strip() if type(ref) in (int, str) else ""
        category = device.get("category")
        vehicle_type = (
            mapping.traccar_categories.get(category) if isinstance(category, str) else None
        )
        if not is_device_id(device_id):
            _reject(out, file, source_id, mapping.device_id, DEVICE_ID_INVALID)
        elif not ref:
            _reject(out, file, source_id, mapping.vehicle_ref, "missing_field")
        elif vehicle_type is None:
            _reject(out, file, source_id, "category", UNKNOWN_VEHICLE_TYPE, repr(category))
        else:
            by_device.setdefault(device_id, []).append(source_id)
            by_ref.setdefault(ref, []).append(source_id)
            candidates.append((source_id, VehicleRecord(ref, device_id, vehicle_type, source_id)))
    for source_id, record in candidates:
        if len(by_device[record.device_id]) > 1:
            others = ", ".join(i for i in by_device[record.device_id] if i != source_id)
            _reject(out, file, source_id, mapping.device_id, DUPLICATE_DEVICE, f"as {others}")
        elif len(by_ref[record.vehicle_ref]) > 1:
            others = ", ".join(i for i in by_ref[record.vehicle_ref] if i != source_id)
            _reject(out, file, source_id, mapping.vehicle_ref, DUPLICATE_VEHICLE, f"as {others}")
        else:
            out.vehicles.append(record)
    return out


def _reject(out: MappedRegistry, file: str, record: str, field: str, reason: str, detail=""):
    out.rejected_devices[record] = reason
    out.problems.append(Problem(file, record, field, reason, detail))


# --- geofences ----------------------------------------------------------------------------------


def map_geofences(
    geofences: Sequence[dict[str, Any]], mapping: Mapping, file: str = "geofences.json"
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Zone rows (validated by the geofence core) from Traccar geofences, and the problems:
    unsupported_geometry for LINESTRING and other non-areas, the core's reason for the rest."""
    zones: list[Zone] = []
    problems: list[Problem] = []
    for geofence in geofences:
        record = str(geofence.get("id"))
        area = geofence.get("area")
        geometry = _geometry(area) if isinstance(area, str) else None
        if geometry is None or isinstance(geometry, str):
            kind = geometry or "not WKT"
            problems.append(Problem(file, record, "area", UNSUPPORTED_GEOMETRY, kind))
            continue
        row = {
            "id": f"{ZONE_ID_PREFIX}{record}",
            "name": str(geofence.get("name") or ""),
            "geometry": geometry,
            "rules": _rules(_attributes(geofence), mapping),
        }
        try:
            zones.append(Zone.from_row(row))
        except InvalidZone as exc:
            problems.append(Problem(file, record, "area", INVALID_ZONE, str(exc)))
    if mapping.zone_kinds and zones:
        known = {z.id for z in zones} | {z.name for z in zones}
        kinds = {k: v for k, v in mapping.zone_kinds.items() if k in known}
        zones = assign_kinds(zones, kinds)
    return [z.to_row() for z in zones], problems


def _rules(attributes: dict[str, Any], mapping: Mapping) -> list[dict[str, Any]]:
    limit = attributes.get("speedLimit")  # knots, like every Traccar speed
    # No limit where there is none, or none a vehicle could mean (beyond the decoder's 400 km/h).
    if type(limit) not in (int, float) or not 0 < limit * mapping.speed_factor() <= 400:
        return []
    kph = round(limit * mapping.speed_factor())
    return [
        {
            "ride_start_allowed": True,
            "ride_end_allowed": True,
            "ride_through_allowed": True,
            "maximum_speed_kph": kph,
        }
    ]


def _geometry(area: str) -> dict[str, Any] | str | None:
    """A GeoJSON-order geometry from Traccar's latitude-first WKT; the WKT type's name when it
    has no zone equivalent; None when it is not WKT at all."""
    match = _WKT.match(area)
    if not match:
        return None
    kind, body = match[1].upper(), match[2]
    try:
        if kind == "POLYGON":
            rings = [_positions(ring) for ring in _RING.findall(body)]
            return {"type": "Polygon", "coordinates": rings} if rings else None
        if kind == "CIRCLE":
            centre, radius = body.rsplit(",", 1)
            (lon_lat,) = _positions(centre)
            return {"type": "Circle", "coordinates": lon_lat, "radius_m": float(radius)}
    except ValueError:
        return None
    return kind  # LINESTRING (a corridor), POINT, ...


def _positions(text: str) -> list[list[float]]:
    """`lat lon, lat lon, ...` as [[lon, lat], ...]."""
    out = []
    for pair in text.split(","):
        lat, lon = pair.split()
        out.append([float(lon), float(lat)])
    return out


# --- positions ----------------------------------------------------------------------------------

# The source's name of each checked column, for the problem rows.
_FIELD_NAMES = {
    "lat": "latitude",
    "lon": "longitude",
    "soc_pct": "attributes.batteryLevel",
    "speed_kmh": "speed",
    "heading_deg": "course",
}


def map_positions(
    chunk: Sequence[dict[str, Any]],
    devices: dict[str, tuple[str, str]],
    rejected: dict[str, str],
    mapping: Mapping,
    window: TimeWindow,
    file: str,
) -> MappedPositions:
    """One chunk of Traccar positions as columns. `devices`: Traccar device id (as text) ->
    (device id, vehicle type) of the devices imported; `rejected`: Traccar device id -> the
    reason its vehicle was rejected (its positions are skipped for it). A position of a device
    in neither is unknown_device. Rejected rows are counted by reason (telemetry.decoder's)."""
    n = len(chunk)
    fields = _top_level(chunk, mapping)
    verdicts = Verdicts(n, file, fields["id"])
    owners = fields["deviceId"]
    if not set(map(type, owners)) <= {int, str}:
        owners = [o if type(o) in (int, str) else None for o in owners]
    device_ids = sorted({d for d, _ in devices.values()})
    slot = {d: i for i, d in enumerate(device_ids)}
    # Traccar's deviceId is a number; the records key it as text: look up both.
    index_of = {src: slot[d] for src, (d, _) in devices.items()}
    index_of.update({int(src): i for src, i in index_of.items() if src.isdigit()})
    device = np.fromiter(map(index_of.get, owners, repeat(-1)), np.int32, n)
    if (device < 0).any():
        texts = np.array([str(o) for o in owners], dtype=object)
        for source_id, reason in rejected.items():
            verdicts.reject(texts == source_id, reason, "deviceId", listed=False)
        verdicts.reject(device < 0, UNKNOWN_DEVICE, "deviceId")

    attributes = _Attributes(_attribute_dicts(fields["attributes"], verdicts))
    cols, valid = _measurements(fields, attributes, mapping, verdicts)
    cols.update(_power(attributes, device, device_ids, devices, mapping, verdicts))
    time_ms, received_ms = _times(chunk, fields, valid, mapping, verdicts)
    verdicts.check_ranges(cols, _FIELD_NAMES)
    power = f"attributes.{mapping.power}"
    verdicts.check_storable(cols, {**_FIELD_NAMES, "pack_v": power, "aux_v": power})
    verdicts.check_time(time_ms, window, mapping.time)
    cols["time_ms"] = time_ms
    cols["received_ms"] = received_ms
    skipped, problems = verdicts.tally()
    ok = verdicts.ok
    rows = PositionColumns(device_ids, device, cols)
    return MappedPositions(rows if ok.all() else rows.take(ok), skipped, problems)


# The top-level fields of a Position the mapping reads (and the mapping's time field).
_TOP_LEVEL = (
    "id",
    "deviceId",
    "attributes",
    "valid",
    "latitude",
    "longitude",
    "speed",
    "course",
    "serverTime",
)


def _top_level(chunk: Sequence[dict[str, Any]], mapping: Mapping) -> dict[str, list[Any]]:
    """Field name -> the chunk's values of it (None where missing), one pass per field. (One
    itemgetter per position and a transpose was measured slower: the tuples it allocates wake
    the cyclic garbage collector, which walks the chunk's dicts.)"""
    return {key: _values(chunk, key) for key in dict.fromkeys((*_TOP_LEVEL, mapping.time))}


def _values(dicts: Sequence[dict[str, Any]], key: str) -> list[Any]:
    """Each dict's value of key, None where missing (dict.get mapped in C, no Python frame per
    dict)."""
    return list(map(dict.get, dicts, repeat(key)))


def _attribute_dicts(raw: Sequence[Any], verdicts: Verdicts) -> Sequence[dict[str, Any]]:
    """The positions' attributes ({} where missing or null); one that is not an object is a
    wrong_type (its position is rejected) and reads as {}."""
    if set(map(type, raw)) <= {dict}:
        return raw
    attributes = [a or {} for a in raw]
    if not set(map(type, attributes)) <= {dict}:
        verdicts.reject(
            np.array([type(a) is not dict for a in attributes], bool), "wrong_type", "attributes"
        )
        attributes = [a if type(a) is dict else {} for a in attributes]
    return attributes


class _Attributes:
    """Columns of the positions' attributes; a name no position of the chunk has costs no pass
    (a tracker reports a handful of the attributes the mapping knows)."""

    def __init__(self, attributes: Sequence[dict[str, Any]]) -> None:
        self._attributes = attributes
        self._present: set[str] = set().union(*attributes)
        self._absent: list[None] = [None] * len(attributes)

    def __len__(self) -> int:
        return len(self._attributes)

    def values(self, name: str) -> Sequence[Any]:
        if name not in self._present:
            return self._absent
        return _values(self._attributes, name)


def _measurements(fields, attrs: _Attributes, mapping: Mapping, verdicts: Verdicts):
    valid = np.fromiter(map(is_not, fields["valid"], repeat(False)), bool, len(attrs))
    cols: dict[str, np.ndarray] = {}
    for name, values, field in (
        ("lat", fields["latitude"], "latitude"),
        ("lon", fields["longitude"], "longitude"),
        ("speed_kmh", fields["speed"], "speed"),
        ("heading_deg", fields["course"], "course"),
        ("soc_pct", attrs.values(mapping.soc), f"attributes.{mapping.soc}"),
    ):
        cols[name], wrong = numbers(values)
        verdicts.reject(wrong, "wrong_type", field)
    # No fix: Traccar repeats the last known coordinates; they are not this sample's position.
    cols["lat"][~valid] = np.nan
    cols["lon"][~valid] = np.nan
    with np.errstate(over="ignore"):  # a speed beyond float64 is out of range, checked later
        cols["speed_kmh"] *= mapping.speed_factor()
    odometer = np.full(len(attrs), np.nan)
    for name in reversed(mapping.odometer):  # the first name present wins
        values, wrong = numbers(attrs.values(name))
        verdicts.reject(wrong, "wrong_type", f"attributes.{name}")
        odometer = np.where(np.isnan(values), odometer, values)
    with np.errstate(over="ignore"):
        cols["odometer_m"] = odometer * mapping.distance_factor()
    for column, name in (
        ("ignition", mapping.ignition),
        ("immobilised", mapping.immobilised),
        ("charging", mapping.charging),
    ):
        cols[column], wrong = tristates(attrs.values(name))
        verdicts.reject(wrong, "wrong_type", f"attributes.{name}")
    return cols, valid


def _power(attrs: _Attributes, device, device_ids, devices, mapping: Mapping, verdicts: Verdicts):
    """`power` (V, the tracker's supply) into pack_v or aux_v by the vehicle's type."""
    volts, wrong = numbers(attrs.values(mapping.power))
    verdicts.reject(wrong, "wrong_type", f"attributes.{mapping.power}")
    type_of = {d: t for d, t in devices.values()}
    # per device slot (and -1, a device not imported), where its power reading goes
    target = np.array(
        [mapping.power_column(type_of[d]) for d in device_ids] + ["ignore"], dtype=object
    )[device]
    return {column: np.where(target == column, volts, np.nan) for column in ("pack_v", "aux_v")}


def _attributes(record: dict[str, Any]) -> dict[str, Any]:
    attributes = record.get("attributes")
    return attributes if type(attributes) is dict else {}


def _times(chunk, fields, valid: np.ndarray, mapping: Mapping, verdicts: Verdicts):
    """Sample time (the mapping's field; deviceTime for a position without a fix, whose fixTime
    is the last fix's) and the time Traccar received it (serverTime)."""
    if valid.all():
        chosen = fields[mapping.time]
    else:
        chosen = [
            t if ok else p.get("deviceTime", t)
            for p, t, ok in zip(chunk, fields[mapping.time], valid.tolist(), strict=True)
        ]
    time_ms, bad = iso_times_ms(chosen)
    missing = np.fromiter((v is None for v in chosen), bool, len(chunk))
    verdicts.reject(missing, "missing_field", mapping.time)
    verdicts.reject(bad, "wrong_type", mapping.time)
    received_ms, bad_received = iso_times_ms(fields["serverTime"])
    # serverTime is informative only: where it is missing, the sample's own time stands in.
    received_ms = np.where(bad_received, time_ms, received_ms)
    return time_ms, received_ms


def map_traccar(export: Any, mapping: Mapping) -> MappedSource:
    """A TraccarExport (migration.traccar_export) mapped: devices and geofences now, positions
    chunk by chunk as MappedSource.chunks() reads them."""
    registry = map_devices(export.devices, mapping, _file(export.origin, "devices.json"))
    zones, zone_problems = map_geofences(
        export.geofences, mapping, _file(export.origin, "geofences.json")
    )
    registry.zones = zones
    registry.problems.extend(zone_problems)
    registry.counts["geofences"] = len(export.geofences)
    registry.counts["groups"] = len(export.groups)

    def raw_chunks():
        for chunk in export.positions:
            yield chunk, getattr(chunk, "source", export.origin)

    def map_chunk(chunk, file, devices, rejected, window):
        return map_positions(chunk, devices, rejected, mapping, window, file)

    files = getattr(export.positions, "files", None)  # a folder's: mappable in other processes
    return MappedSource(
        source=SOURCE,
        origin=export.origin,
        registry=registry,
        raw_chunks=raw_chunks,
        map_chunk=map_chunk,
        vehicle_of_source_id={r.source_id: r for r in registry.vehicles},
        file_mapper=functools.partial(_map_file, mapping=mapping) if files else None,
        files=files,
    )


def _map_file(file, devices, rejected, window, *, mapping):
    from migration.traccar_export import read_and_map_file  # the IO edge, in a worker process

    return read_and_map_file(file, devices, rejected, mapping, window)


def _file(origin: str, name: str) -> str:
    return origin.rstrip("/") + "/" + name if "://" not in origin else f"{origin} ({name})"
