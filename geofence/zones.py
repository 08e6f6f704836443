"""Zones as operators define them: a GeoJSON polygon, multipolygon or circle, GBFS v3 rules, a kind.

Geometry is validated when a Zone is built and rejected with the reason (shapely's validity check
plus the GeoJSON rules shapely would silently paper over); it is never repaired.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
import shapely
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from geofence._geo import MAX_CIRCLE_LAT, MAX_CIRCLE_RADIUS_M, circle_frame, circle_ring


class InvalidZone(ValueError):
    """A zone (or zone set) that cannot be used as given; the message names the zone and why."""


class ZoneKind(StrEnum):
    """What a zone is for. Rules decide what is allowed; the kind is for people and for
    'left the operating area', which is defined by kind, not by rules."""

    OPERATING_AREA = "operating_area"
    NO_PARKING = "no_parking"
    SLOW = "slow"
    NO_RIDE = "no_ride"
    STATION = "station"
    OTHER = "other"


class Rule(BaseModel):
    """One GBFS v3 geofencing rule (`rules[]` / `global_rules[]` of geofencing_zones.json)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vehicle_type_ids: tuple[str, ...] | None = None  # None: applies to every vehicle type
    ride_start_allowed: bool
    ride_end_allowed: bool
    ride_through_allowed: bool
    maximum_speed_kph: int | None = Field(default=None, ge=0)
    station_parking: bool | None = None

    def applies_to(self, vehicle_type: str) -> bool:
        # fleetgate's vehicle types ('ebike', 'car') are matched to GBFS vehicle_type_ids verbatim.
        return self.vehicle_type_ids is None or vehicle_type in self.vehicle_type_ids

    def to_gbfs(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class PolygonGeometry(BaseModel):
    """GeoJSON Polygon: [shell, hole, ...], each ring a closed list of [lon, lat] positions."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["Polygon"]
    coordinates: tuple[tuple[tuple[float, ...], ...], ...]


class MultiPolygonGeometry(BaseModel):
    """GeoJSON MultiPolygon: a list of Polygon coordinate arrays."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["MultiPolygon"]
    coordinates: tuple[tuple[tuple[tuple[float, ...], ...], ...], ...]


class CircleGeometry(BaseModel):
    """A circle: centre [lon, lat] (GeoJSON order) and radius in metres.

    Membership is exact against geofence._geo.circle_d2 (a local equirectangular distance), not a
    polygon approximation; GBFS export writes a 64-gon because GBFS knows only MultiPolygons.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["Circle"]
    coordinates: tuple[float, float]
    radius_m: float


Geometry = Annotated[
    PolygonGeometry | MultiPolygonGeometry | CircleGeometry, Field(discriminator="type")
]


class Zone(BaseModel):
    """One geofencing zone. Among overlapping zones the lower `priority` wins (ties: lower id), as
    the earlier polygon does in a GBFS file; `start`/`end` bound when the zone exists at all."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    name: str = ""
    kind: ZoneKind = ZoneKind.OTHER
    geometry: Geometry
    rules: tuple[Rule, ...] = ()
    priority: int = 0
    start: datetime | None = None
    end: datetime | None = None

    _shape: Any = PrivateAttr(default=None)

    @field_validator("geometry", "rules", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        # Database rows may hand jsonb columns over as text.
        return json.loads(value) if isinstance(value, str | bytes) else value

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(
                "start/end must carry a time zone (RFC 3339), e.g. 2026-05-01T00:00:00Z"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Zone:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"zone {self.id!r}: end {self.end} is not after start {self.start}")
        try:
            self._shape = _shape_of(self.geometry)
        except ValueError as exc:
            raise ValueError(f"zone {self.id!r}: {exc}") from None
        return self

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Zone:
        """A zone from a database row or any mapping (columns other than Zone's fields, such as
        updated_at, are ignored); raises InvalidZone with the reason."""
        try:
            return cls.model_validate({k: row[k] for k in cls.model_fields if k in row})
        except ValidationError as exc:
            raise InvalidZone(_reason(row.get("id"), exc)) from None

    def to_row(self) -> dict[str, Any]:
        """JSON-able mapping that from_row() reads back (the zones table's columns). Rules leave
        out fields they do not set, as GBFS does."""
        row = self.model_dump(mode="json")
        row["rules"] = [r.model_dump(mode="json", exclude_none=True) for r in self.rules]
        return row

    @property
    def is_circle(self) -> bool:
        return isinstance(self.geometry, CircleGeometry)

    @property
    def shape(self) -> shapely.Polygon | shapely.MultiPolygon:
        """The shapely geometry; for a circle its 64-gon (for maps and export, not membership)."""
        return self._shape

    @property
    def start_ms(self) -> int | None:
        return None if self.start is None else round(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int | None:
        return None if self.end is None else round(self.end.timestamp() * 1000)


def assign_kinds(zones: list[Zone], kinds: Mapping[str, str]) -> list[Zone]:
    """The zones with the kinds `kinds` gives them: zone id or name -> kind. A key is an id if
    some zone has that id, else a name (every zone of that name). A GBFS file has no kinds, so an
    import says which of its zones is the operating area this way. Raises InvalidZone for a kind
    that does not exist, a key that matches no zone, or a zone given two kinds; nothing else."""
    allowed = {k.value for k in ZoneKind}
    by_id = {z.id: i for i, z in enumerate(zones)}
    chosen: dict[int, tuple[str, str]] = {}  # zone position -> (key, kind)
    for key, kind in kinds.items():
        if kind not in allowed:
            raise InvalidZone(
                f"kind {kind!r} for {key!r} is not one of {', '.join(k.value for k in ZoneKind)}"
            )
        matched = (
            [by_id[key]] if key in by_id else [i for i, z in enumerate(zones) if z.name == key]
        )
        if not matched:
            names = sorted({z.name for z in zones if z.name})
            raise InvalidZone(
                f"no zone has the id or name {key!r} (names: "
                f"{', '.join(map(repr, names[:10])) or 'none'}"
                f"{', ...' if len(names) > 10 else ''})"
            )
        for i in matched:
            if i in chosen and chosen[i][1] != kind:
                raise InvalidZone(
                    f"zone {zones[i].id!r} is given two kinds: {chosen[i][1]!r} "
                    f"(by {chosen[i][0]!r}) and {kind!r} (by {key!r})"
                )
            chosen[i] = (key, kind)
    return [
        z.model_copy(update={"kind": ZoneKind(chosen[i][1])}) if i in chosen else z
        for i, z in enumerate(zones)
    ]


def _reason(zone_id: Any, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ").removeprefix(f"zone {zone_id!r}: ")
        parts.append(f"{where}: {msg}" if where else msg)
    return f"zone {zone_id!r} rejected: " + "; ".join(parts)


def _shape_of(geometry: PolygonGeometry | MultiPolygonGeometry | CircleGeometry):
    if isinstance(geometry, CircleGeometry):
        return _circle_shape(geometry)
    if isinstance(geometry, PolygonGeometry):
        shape = _polygon(geometry.coordinates, "")
    else:
        if not geometry.coordinates:
            raise ValueError("MultiPolygon has no polygons")
        shape = shapely.MultiPolygon(
            [_polygon(p, f"polygon {i}: ") for i, p in enumerate(geometry.coordinates)]
        )
    _check_valid_area(shape)
    return shape


def _circle_shape(geometry: CircleGeometry) -> shapely.Polygon:
    """The circle's 64-gon, once its centre and radius are ones the flat frame measures well."""
    lon0, lat0 = geometry.coordinates
    _check_position((lon0, lat0), "circle centre")
    if not (math.isfinite(geometry.radius_m) and geometry.radius_m > 0):
        raise ValueError(f"circle radius_m must be a finite number > 0, got {geometry.radius_m}")
    if geometry.radius_m > MAX_CIRCLE_RADIUS_M:
        raise ValueError(
            f"circle radius_m {geometry.radius_m} exceeds"
            f" {MAX_CIRCLE_RADIUS_M:.0f} m; make so large an area a polygon"
        )
    if abs(lat0) > MAX_CIRCLE_LAT:
        raise ValueError(f"circle centre latitude {lat0} is beyond ±{MAX_CIRCLE_LAT}°")
    kx, _ = circle_frame(lon0, lat0)
    if abs(lon0) + geometry.radius_m / kx > 180.0:
        raise ValueError("circle crosses the antimeridian, which fleetgate does not support")
    return shapely.Polygon(circle_ring(lon0, lat0, geometry.radius_m))


def _check_valid_area(shape: shapely.Polygon | shapely.MultiPolygon) -> None:
    reason = shapely.is_valid_reason(shape)
    if reason != "Valid Geometry":
        # GEOS says e.g. "Self-intersection[13.4 52.5]"; name the coordinates the GeoJSON way.
        where = re.fullmatch(r"(.*)\[(\S+) (\S+)\]", reason)
        if where:
            reason = f"{where[1]} at [{where[2]}, {where[3]}] (lon, lat)"
        raise ValueError(f"invalid geometry: {reason}; zones are rejected, not repaired")
    if not shape.area > 0:
        raise ValueError("geometry has no area")


def _polygon(rings: tuple, where: str) -> shapely.Polygon:
    if not rings:
        raise ValueError(f"{where}polygon has no rings")
    arrays = []
    for i, ring in enumerate(rings):
        label = f"{where}ring {i}" + (" (shell)" if i == 0 else " (hole)")
        if len(ring) < 4:
            raise ValueError(f"{label} has {len(ring)} positions; a closed ring needs at least 4")
        for k, pos in enumerate(ring):
            if len(pos) < 2:
                raise ValueError(f"{label} position {k} has fewer than 2 numbers")
            _check_position(pos, f"{label} position {k}")
        if tuple(ring[0][:2]) != tuple(ring[-1][:2]):
            raise ValueError(
                f"{label} is not closed: first position {list(ring[0][:2])} differs"
                f" from last {list(ring[-1][:2])}"
            )
        arrays.append(np.asarray([p[:2] for p in ring], dtype=np.float64))
    return shapely.Polygon(arrays[0], arrays[1:])


def _check_position(pos, label: str) -> None:
    lon, lat = pos[0], pos[1]
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise ValueError(f"{label} is not finite: [{lon}, {lat}]")
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ValueError(
            f"{label} [{lon}, {lat}] is outside lon -180..180 / lat -90..90"
            " (GeoJSON order is [lon, lat])"
        )
