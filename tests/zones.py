"""Zones on a straight track for the geofence in the running gateway: points metres east of an
origin, square zones across the track, rides along it, writing zones and reading the events and
state the gateway stored; and GBFS geofencing_zones documents as another publisher writes them."""

from __future__ import annotations

import math

import psycopg

from geofence import Zone
from telemetry.store import TelemetryStore

LAT0, LON0 = 52.50, 13.40
M_PER_DEG_LAT = 111_195.0
M_PER_DEG_LON = M_PER_DEG_LAT * math.cos(math.radians(LAT0))


def at(east_m: float, north_m: float = 0.0) -> tuple[float, float]:
    return LAT0 + north_m / M_PER_DEG_LAT, LON0 + east_m / M_PER_DEG_LON


def square(zone_id: str, west_m: float, east_m: float, **kw) -> dict:
    """A square zone from west_m to east_m (and as tall, centred on the track) as a zones row."""
    half = (east_m - west_m) / 2
    ring = [
        at(west_m, -half),
        at(east_m, -half),
        at(east_m, half),
        at(west_m, half),
        at(west_m, -half),
    ]
    geometry = {"type": "Polygon", "coordinates": [[[lon, lat] for lat, lon in ring]]}
    return Zone.from_row({"id": zone_id, "geometry": geometry, **kw}).to_row()


def drive(t0: int, east_from: float, east_to: float, step_m: float = 5.0, speed_kmh=18.0):
    """Samples one second apart along the track, eastwards."""
    n = int((east_to - east_from) / step_m) + 1
    out = []
    for k in range(n):
        lat, lon = at(east_from + k * step_m)
        out.append({"t": t0 + k * 1000, "lat": lat, "lon": lon, "speed_kmh": speed_kmh})
    return out


async def geofence_events(dsn: str) -> list[tuple[int, str, list | None]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT (extract(epoch FROM time) * 1000)::bigint, type, detail->'zones' "
            "FROM events WHERE source = 'geofence' ORDER BY time, type"
        )
        return [
            (int(t), typ, None if zones is None else [z["id"] for z in zones])
            for t, typ, zones in await cur.fetchall()
        ]


async def zones_in_state(dsn: str, vehicle: int) -> list[str] | None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT geofence->'zones' FROM vehicle_state WHERE vehicle = %s", (vehicle,)
            )
        ).fetchone()
        return None if row is None else row[0]


async def put_zones(dsn: str, rows: list[dict]) -> None:
    store = await TelemetryStore.open(dsn)
    try:
        await store.put_zones(rows)
    finally:
        await store.close()


def gbfs_doc(*features) -> dict:
    return {
        "last_updated": "2026-11-23T08:00:00Z",
        "ttl": 60,
        "version": "3.0",
        "data": {
            "geofencing_zones": {"type": "FeatureCollection", "features": list(features)},
            "global_rules": [
                {"ride_start_allowed": True, "ride_end_allowed": True, "ride_through_allowed": True}
            ],
        },
    }


async def geofence_events_of(dsn: str, vehicle: int) -> list[tuple[int, str]]:
    """(time in ms, type) of one vehicle's geofence events, in time order."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT (extract(epoch FROM time) * 1000)::bigint, type FROM events "
            "WHERE source = 'geofence' AND vehicle = %s ORDER BY time, type",
            (vehicle,),
        )
        return [(int(t), typ) for t, typ in await cur.fetchall()]
