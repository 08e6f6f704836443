"""GBFS v3 geofencing_zones.json import and export.

GBFS knows MultiPolygons only and has no zone ids or kinds, so fleetgate writes them as extension
fields (underscore-prefixed, as the spec asks): _zone_id, _kind and, for circles, _circle with the
exact centre and radius next to the 64-gon every other consumer reads. Another publisher's file
has no _kind: its zones are "other" until the importer names their kinds (zones.assign_kinds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import shapely

from geofence.zones import InvalidZone, Rule, Zone

GBFS_VERSION = "3.0"
_ALLOW_ALL = Rule(ride_start_allowed=True, ride_end_allowed=True, ride_through_allowed=True)


def zones_to_gbfs(
    zones: Iterable[Zone],
    global_rules: Iterable[Rule],
    *,
    last_updated: datetime | str | None = None,
    ttl: int = 60,
    language: str = "en",
) -> dict[str, Any]:
    """Zones and global rules as a geofencing_zones.json document, the features in the order
    given (GBFS reads it as precedence: ZoneSet.to_gbfs passes its zones in precedence order).

    last_updated defaults to now (UTC). Shells are written counter-clockwise (the right-hand rule
    the schema asks for). If no global rule applies to every vehicle type, an allow-all rule is
    appended: it changes nothing for covered types (earlier rules win) and states fleetgate's
    default for the rest, since GBFS requires global_rules to cover all vehicle types.
    """
    if last_updated is None:
        last_updated = datetime.now(UTC)
    if isinstance(last_updated, datetime):
        last_updated = last_updated.isoformat(timespec="seconds")
    features = [_feature(z, language) for z in zones]
    global_rules = list(global_rules)
    if not any(r.vehicle_type_ids is None for r in global_rules):
        global_rules.append(_ALLOW_ALL)
    return {
        "last_updated": last_updated,
        "ttl": ttl,
        "version": GBFS_VERSION,
        "data": {
            "geofencing_zones": {"type": "FeatureCollection", "features": features},
            "global_rules": [r.to_gbfs() for r in global_rules],
        },
    }


def zones_from_gbfs(
    document: Mapping[str, Any], *, language: str | None = None
) -> tuple[list[Zone], list[Rule]]:
    """Zones (priority = position in the file) and global rules from a geofencing_zones.json
    document. Features without _zone_id get "gbfs-<position>". Raises InvalidZone."""
    version = str(document.get("version", ""))
    if not version.startswith("3."):
        raise InvalidZone(f"geofencing_zones.json version {version!r} is not GBFS 3.x")
    try:
        data = document["data"]
        features = data["geofencing_zones"]["features"]
        global_rules = [Rule.model_validate(_public(r)) for r in data["global_rules"]]
    except (KeyError, TypeError) as exc:
        raise InvalidZone(f"not a geofencing_zones.json document: missing {exc}") from None
    except ValueError as exc:
        raise InvalidZone(f"global_rules: {exc}") from None
    zones = []
    for position, feature in enumerate(features):
        props = feature.get("properties") or {}
        circle = props.get("_circle")
        row = {
            "id": props.get("_zone_id") or f"gbfs-{position}",
            "name": _pick_name(props.get("name"), language),
            "kind": props.get("_kind", "other"),
            "geometry": {"type": "Circle", **circle} if circle else feature.get("geometry"),
            "rules": [_public(r) for r in props.get("rules") or []],
            "priority": position,
            "start": props.get("start"),
            "end": props.get("end"),
        }
        zones.append(Zone.from_row(row))
    return zones, global_rules


def _feature(zone: Zone, language: str) -> dict[str, Any]:
    shape = shapely.orient_polygons(zone.shape, exterior_cw=False)
    if isinstance(shape, shapely.Polygon):
        shape = shapely.MultiPolygon([shape])
    coordinates = [
        [[list(map(float, p)) for p in ring.coords] for ring in (poly.exterior, *poly.interiors)]
        for poly in shape.geoms
    ]
    props: dict[str, Any] = {}
    if zone.name:
        props["name"] = [{"text": zone.name, "language": language}]
    if zone.start is not None:
        props["start"] = zone.start.isoformat()
    if zone.end is not None:
        props["end"] = zone.end.isoformat()
    if zone.rules:
        props["rules"] = [r.to_gbfs() for r in zone.rules]
    props["_zone_id"] = zone.id
    props["_kind"] = zone.kind.value
    if zone.is_circle:
        props["_circle"] = {
            "coordinates": list(zone.geometry.coordinates),
            "radius_m": zone.geometry.radius_m,
        }
    return {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": coordinates},
        "properties": props,
    }


def _pick_name(names: Any, language: str | None) -> str:
    if isinstance(names, str):  # GBFS 2.x style; harmless to accept
        return names
    if not names:
        return ""
    for n in names:
        if language is not None and n.get("language") == language:
            return n.get("text", "")
    return names[0].get("text", "")


def _public(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A rule without other publishers' underscore extension fields."""
    return {k: v for k, v in rule.items() if not k.startswith("_")}
