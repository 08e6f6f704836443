"""GBFS v3.0 files from plain data: discovery (gbfs.json, gbfs_versions.json, manifest.json),
system_information, vehicle_types, vehicle_status, station_information, station_status,
system_pricing_plans, system_alerts, and the envelope around geofencing_zones.

vehicle_status works on columns: 50,000 vehicles are masked, hashed and formatted in one pass
(benchmarks/feeds.py). Every file validates against the official schemas (tests/feeds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from feeds.fleet import FleetState, public_vehicle_ids, rentable
from feeds.system import FeedSystem
from telemetry.vehicle_types import VehicleType

GBFS_VERSION = "3.0"
# Files that change with the fleet get the system's ttl; the rest change when an operator edits
# settings, zones or types, and may be cached for longer.
STATIC_TTL_S = 300
MOTORISED = frozenset(
    {
        "electric",
        "electric_assist",
        "combustion",
        "combustion_diesel",
        "hybrid",
        "plug_in_hybrid",
        "hydrogen_fuel_cell",
    }
)
FILES = (
    "gbfs",
    "gbfs_versions",
    "system_information",
    "vehicle_types",
    "vehicle_status",
    "station_information",
    "station_status",
    "geofencing_zones",
    "system_pricing_plans",
    "system_alerts",
)


@dataclass(frozen=True, slots=True)
class Station:
    """A station zone as GBFS publishes it: its id, name, a point riders walk to (the area's
    representative point) and the area itself (a GeoJSON MultiPolygon), if any."""

    station_id: str
    name: str
    lat: float
    lon: float
    area: dict[str, Any] | None = None


def rfc3339(t: datetime | float) -> str:
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, UTC)
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class GbfsFeeds:
    """Builds one system's files. `now` (a datetime) is each file's last_updated."""

    def __init__(
        self,
        system: FeedSystem,
        vehicle_types: Mapping[str, VehicleType],
        *,
        has_stations: bool = False,
    ) -> None:
        self.system = system
        self.vehicle_types = dict(vehicle_types)
        self.has_stations = has_stations
        self._max_range = {t.id: t.max_range_meters for t in self.vehicle_types.values()}
        self._motorised = {
            t.id for t in self.vehicle_types.values() if t.propulsion_type in MOTORISED
        }

    def envelope(self, data: dict[str, Any], now: datetime, ttl: int) -> dict[str, Any]:
        return {"last_updated": rfc3339(now), "ttl": ttl, "version": GBFS_VERSION, "data": data}

    def published_files(self) -> list[str]:
        """The files this system publishes (no stations: no station files; no plans or alerts
        configured: none of those)."""
        names = list(FILES)
        if not self.has_stations:
            names = [n for n in names if not n.startswith("station_")]
        if not self.system.pricing_plans:
            names.remove("system_pricing_plans")
        if not self.system.alerts:
            names.remove("system_alerts")
        return names

    def discovery(self, now: datetime) -> dict[str, Any]:
        feeds = [{"name": n, "url": self.system.url_of(n)} for n in self.published_files()]
        return self.envelope({"feeds": feeds}, now, STATIC_TTL_S)

    def versions(self, now: datetime) -> dict[str, Any]:
        data = {"versions": [{"version": GBFS_VERSION, "url": self.system.url_of("gbfs")}]}
        return self.envelope(data, now, STATIC_TTL_S)

    def system_information(self, now: datetime, manifest_url: str | None = None) -> dict:
        s = self.system
        data: dict[str, Any] = {
            "system_id": s.system_id,
            "languages": list(s.languages),
            "name": s.text(s.name),
            "operator": s.text(s.operator),
            "opening_hours": s.opening_hours,
            "feed_contact_email": s.feed_contact_email,
            "timezone": s.timezone,
        }
        if s.url:
            data["url"] = s.url
        if s.email:
            data["email"] = s.email
        if manifest_url:
            data["manifest_url"] = manifest_url
        return self.envelope(data, now, STATIC_TTL_S)

    def vehicle_types_file(self, now: datetime) -> dict[str, Any]:
        types = []
        for t in self.vehicle_types.values():
            if t.id in self._motorised and t.max_range_meters is None:
                continue  # GBFS requires a motorised type's range; unknown: not published
            item: dict[str, Any] = {
                "vehicle_type_id": t.id,
                "form_factor": t.form_factor,
                "propulsion_type": t.propulsion_type,
                "name": self.system.text(t.name),
            }
            if t.max_range_meters is not None:
                item["max_range_meters"] = float(t.max_range_meters)
            if t.max_speed_kmh is not None:
                item["max_permitted_speed"] = int(t.max_speed_kmh)
            types.append(item)
        return self.envelope({"vehicle_types": types}, now, STATIC_TTL_S)

    def publishable_types(self) -> set[str]:
        return {
            t.id
            for t in self.vehicle_types.values()
            if t.id not in self._motorised or t.max_range_meters is not None
        }

    def vehicle_status(self, fleet: FleetState, now: datetime) -> dict[str, Any]:
        """The rentable vehicles, each under its rotating public id; nothing else about them."""
        shown = rentable(fleet) & np.isin(
            fleet.vehicle_type.astype(str), list(self.publishable_types())
        )
        f = fleet.take(shown)
        ids = public_vehicle_ids(self.system.id_secret, f.vehicle, f.rotation)
        ranges = _ranges(f, self._max_range)
        reported = _rfc3339_column(f.last_reported)
        lat = np.round(f.lat, 6).tolist()
        lon = np.round(f.lon, 6).tolist()
        disabled = (f.status == "low_battery").tolist()
        vehicles = []
        for vid, la, lo, vt, rng, rep, dis, st in zip(
            ids, lat, lon, f.vehicle_type.tolist(), ranges, reported, disabled, f.station_id
        ):
            item = {
                "vehicle_id": vid,
                "lat": la,
                "lon": lo,
                "is_reserved": False,
                "is_disabled": dis,
                "vehicle_type_id": vt,
            }
            if rng is not None:
                item["current_range_meters"] = rng
            if rep is not None:
                item["last_reported"] = rep
            if st is not None:
                item["station_id"] = st
            vehicles.append(item)
        return self.envelope({"vehicles": vehicles}, now, self.system.ttl_s)

    def station_information(self, stations: Sequence[Station], now: datetime) -> dict:
        items = []
        for st in stations:
            item: dict[str, Any] = {
                "station_id": st.station_id,
                "name": self.system.text(st.name or st.station_id),
                "lat": round(st.lat, 6),
                "lon": round(st.lon, 6),
                "is_virtual_station": True,  # a zone to park in, not a dock
            }
            if st.area is not None:
                item["station_area"] = st.area
            items.append(item)
        return self.envelope({"stations": items}, now, STATIC_TTL_S)

    def station_status(self, stations: Sequence[Station], fleet: FleetState, now: datetime):
        """Rentable vehicles counted per station zone, in total and by type."""
        shown = fleet.take(rentable(fleet))
        at = shown.station_id.astype(object)
        here = np.array([s is not None for s in at], dtype=bool)
        by_station = Counter(at[here].tolist())
        by_type = Counter(zip(at[here].tolist(), shown.vehicle_type[here].tolist()))
        disabled = Counter(at[here & (shown.status == "low_battery")].tolist())
        stamp = rfc3339(now)
        items = []
        for st in stations:
            items.append(
                {
                    "station_id": st.station_id,
                    "num_vehicles_available": by_station.get(st.station_id, 0),
                    "num_vehicles_disabled": disabled.get(st.station_id, 0),
                    "vehicle_types_available": [
                        {"vehicle_type_id": t, "count": by_type.get((st.station_id, t), 0)}
                        for t in sorted(self.publishable_types())
                    ],
                    "is_installed": True,
                    "is_renting": True,
                    "is_returning": True,
                    "last_reported": stamp,
                }
            )
        return self.envelope({"stations": items}, now, self.system.ttl_s)

    def geofencing_zones(self, document: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """The geofence core's geofencing_zones.json (geofence.gbfs) in this feed's envelope."""
        return self.envelope(dict(document["data"]), now, STATIC_TTL_S)

    def pricing_plans(self, now: datetime) -> dict[str, Any]:
        plans = [self._localised(p, ("name", "description")) for p in self.system.pricing_plans]
        for plan in plans:
            plan.setdefault("is_taxable", False)
            plan.setdefault("description", self.system.text(""))
        return self.envelope({"plans": plans}, now, STATIC_TTL_S)

    def alerts(self, now: datetime) -> dict[str, Any]:
        alerts = [self._localised(a, ("summary", "description")) for a in self.system.alerts]
        return self.envelope({"alerts": alerts}, now, self.system.ttl_s)

    def _localised(self, item: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
        """Plain strings in the operator's settings become GBFS localised strings."""
        out = dict(item)
        for key in keys:
            if isinstance(out.get(key), str):
                out[key] = self.system.text(out[key])
        return out


def manifest(systems: Sequence[FeedSystem], now: datetime) -> dict[str, Any]:
    """manifest.json: every system this deployment serves, with its discovery URL."""
    datasets = [
        {"system_id": s.system_id, "versions": [{"version": GBFS_VERSION, "url": s.url_of("gbfs")}]}
        for s in systems
    ]
    return {
        "last_updated": rfc3339(now),
        "ttl": STATIC_TTL_S,
        "version": GBFS_VERSION,
        "data": {"datasets": datasets},
    }


def _ranges(f: FleetState, max_range: Mapping[str, float | None]) -> list[float | None]:
    """The battery core's estimate; where it has none yet, the type's full range scaled by the
    state of charge; else nothing."""
    full = np.array([max_range.get(t) or np.nan for t in f.vehicle_type.tolist()], dtype=float)
    estimate = np.where(np.isnan(f.range_m), full * f.soc_pct / 100.0, f.range_m)
    estimate = np.round(np.clip(estimate, 0.0, None), 0)
    return [None if np.isnan(x) else x for x in estimate.tolist()]


def _rfc3339_column(seconds: np.ndarray) -> list[str | None]:
    known = ~np.isnan(seconds)
    text = np.datetime_as_string(
        np.where(known, seconds, 0).astype("datetime64[s]"), unit="s", timezone="UTC"
    )
    return [t if k else None for t, k in zip(text.tolist(), known.tolist())]
