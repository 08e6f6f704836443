"""Geofence core: zones, GBFS-style rules and a vectorised point-in-zone engine (sans-IO).

Zone / ZoneSet (models, precedence, rule resolution), ZoneIndex.locate (exact membership, shapely
contains_xy semantics), ZoneTracker (enter/exit with hysteresis, violations, speed caps, state).
"""

from geofence.gbfs import GBFS_VERSION, zones_from_gbfs, zones_to_gbfs
from geofence.index import Membership, ZoneIndex
from geofence.tracker import (
    EVENT_SOURCE,
    LEFT_OPERATING_AREA,
    RIDE_THROUGH_FORBIDDEN,
    SPEEDING_IN_ZONE,
    ZONE_ENTER,
    ZONE_EXIT,
    GeofenceEvent,
    Hysteresis,
    SpeedCapChange,
    TrackResult,
    ViolationPolicy,
    ZoneTracker,
)
from geofence.zones import (
    CircleGeometry,
    InvalidZone,
    MultiPolygonGeometry,
    PolygonGeometry,
    Rule,
    Zone,
    ZoneKind,
    assign_kinds,
)
from geofence.zoneset import EffectiveRules, ZoneSet

__all__ = [
    "EVENT_SOURCE",
    "GBFS_VERSION",
    "LEFT_OPERATING_AREA",
    "RIDE_THROUGH_FORBIDDEN",
    "SPEEDING_IN_ZONE",
    "ZONE_ENTER",
    "ZONE_EXIT",
    "CircleGeometry",
    "EffectiveRules",
    "GeofenceEvent",
    "Hysteresis",
    "InvalidZone",
    "Membership",
    "MultiPolygonGeometry",
    "PolygonGeometry",
    "Rule",
    "SpeedCapChange",
    "TrackResult",
    "ViolationPolicy",
    "Zone",
    "ZoneIndex",
    "ZoneKind",
    "ZoneSet",
    "ZoneTracker",
    "assign_kinds",
    "zones_from_gbfs",
    "zones_to_gbfs",
]
