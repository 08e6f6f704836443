"""The feeds' reads: the fleet's latest state, vehicle types, stations, rides with their fixes,
telemetry and events by time. SQL over the store's pool; the feeds core turns rows into files."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import shapely
from psycopg.rows import dict_row

from feeds import (
    FleetState,
    Ride,
    RideCommand,
    Station,
    TripFigures,
    rides_from_commands,
    rides_preferring_trips,
)
from geofence import InvalidZone, ZoneSet
from telemetry.earth import haversine_m
from telemetry.store import TelemetryStore

# A ride longer than this is not looked for (an unlock this old with no lock is a lost lock).
MAX_RIDE = timedelta(hours=24)

# rotation: the newest succeeded lock or unlock command of the vehicle and its odometer in
# whole metres. Every rental starts with an unlock, and every ride moves the odometer, so the
# public id changes with each trip, even one that no command began (a key fob, a rider's hand).
_FLEET = """
SELECT o.vehicle, o.vehicle_type, o.status, o.lat, o.lon, o.range_m, o.soc_pct,
       extract(epoch FROM o.time)::float8 AS last_reported,
       coalesce((SELECT max(c.seq) FROM commands c
                  WHERE c.vehicle = o.vehicle AND c.type IN ('lock', 'unlock')
                    AND c.state = 'succeeded'), 0)::text
         || ':' || coalesce(floor(o.odometer_m)::bigint::text, '') AS rotation,
       (SELECT z FROM unnest(o.zones) AS z WHERE z = ANY(%s) LIMIT 1) AS station_id
FROM vehicle_overview o
ORDER BY o.vehicle
"""


async def fleet_state(store: TelemetryStore, station_ids: Sequence[str]) -> FleetState:
    async with store.connection() as conn:
        cur = await conn.execute(_FLEET, [list(station_ids)])
        rows = await cur.fetchall()
    return fleet_from_tuples(rows)


def fleet_from_tuples(rows: Sequence[tuple]) -> FleetState:
    """FleetState from _FLEET's rows (columns in its order), without a dict per row."""
    n = len(rows)
    cols = list(zip(*rows)) if n else [()] * 10

    def floats(values) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def objects(values) -> np.ndarray:
        out = np.empty(n, dtype=object)
        out[:] = list(values)
        return out

    return FleetState(
        vehicle=np.array(cols[0], dtype=np.int64),
        vehicle_type=objects(cols[1]),
        status=objects(cols[2]),
        lat=floats(cols[3]),
        lon=floats(cols[4]),
        range_m=floats(cols[5]),
        soc_pct=floats(cols[6]),
        last_reported=floats(cols[7]),
        rotation=objects(cols[8]),
        station_id=objects(cols[9]),
        reserved=np.zeros(n, dtype=bool),
    )


async def zones_and_stations(
    store: TelemetryStore, language: str
) -> tuple[dict[str, Any], list[Station]]:
    """The zone set as the geofence core's geofencing_zones.json, and its station zones."""
    rows = await store.load_zones()
    try:
        zoneset = ZoneSet.from_rows(rows.rows, global_rules=rows.global_rules, version=rows.version)
    except InvalidZone:  # only a zone edited by hand in SQL: publish none rather than fail
        zoneset = ZoneSet.from_rows([])
    document = zoneset.to_gbfs(language=language)
    stations = []
    for feature in document["data"]["geofencing_zones"]["features"]:
        props = feature["properties"]
        if props.get("_kind") != "station":
            continue
        point = shapely.geometry.shape(feature["geometry"]).representative_point()
        names = props.get("name") or []
        name = names[0]["text"] if names else props["_zone_id"]
        stations.append(Station(props["_zone_id"], name, point.y, point.x, feature["geometry"]))
    return document, stations


# --- MDS -----------------------------------------------------------------------------------

_VEHICLE_COLUMNS = """
SELECT v.id AS vehicle, v.vehicle_ref, t.form_factor, t.propulsion_type,
       t.battery_nominal_ah * t.battery_nominal_v AS battery_capacity_wh, t.max_speed_kmh
FROM vehicles v JOIN vehicle_types t ON t.id = v.vehicle_type
"""
_VEHICLES = _VEHICLE_COLUMNS + "WHERE v.vehicle_ref > %s ORDER BY v.vehicle_ref LIMIT %s"

_STATUSES = """
SELECT o.vehicle, o.vehicle_ref, t.form_factor, o.status,
       extract(epoch FROM coalesce(o.time, o.updated_at, now()))::float8 AS time,
       o.lat, o.lon, o.speed_kmh, o.heading_deg, o.soc_pct,
       (SELECT CASE WHEN c.type = 'unlock' THEN c.id::text END FROM commands c
         WHERE c.vehicle = o.vehicle AND c.type IN ('lock', 'unlock') AND c.state = 'succeeded'
         ORDER BY c.seq DESC LIMIT 1) AS open_trip
FROM vehicle_overview o JOIN vehicle_types t ON t.id = o.vehicle_type
"""
_STATUS_PAGE = _STATUSES + (
    "WHERE o.vehicle_ref > %s AND o.lat IS NOT NULL ORDER BY o.vehicle_ref LIMIT %s"
)


async def mds_vehicles(store: TelemetryStore, after: str, limit: int) -> list[dict]:
    return await _rows(store, _VEHICLES, [after, limit])


async def mds_statuses(store: TelemetryStore, after: str, limit: int) -> list[dict]:
    return await _rows(store, _STATUS_PAGE, [after, limit])


async def mds_vehicle(store: TelemetryStore, vehicle_ref: str) -> dict | None:
    rows = await _rows(store, _VEHICLE_COLUMNS + "WHERE v.vehicle_ref = %s", [vehicle_ref])
    return rows[0] if rows else None


async def mds_status(store: TelemetryStore, vehicle_ref: str) -> dict | None:
    rows = await _rows(
        store, _STATUSES + "WHERE o.vehicle_ref = %s AND o.lat IS NOT NULL", [vehicle_ref]
    )
    return rows[0] if rows else None


async def all_vehicle_refs(store: TelemetryStore) -> list[str]:
    return [r["vehicle_ref"] for r in await _rows(store, "SELECT vehicle_ref FROM vehicles", [])]


_RIDE_COMMANDS = """
SELECT vehicle, id::text AS command_id, type, seq,
       extract(epoch FROM coalesce(device_t, finished_at))::float8 AS time
FROM commands
WHERE type IN ('lock', 'unlock') AND state = 'succeeded'
  AND finished_at >= %s AND finished_at < %s
"""


_TRIPS = """
SELECT id, vehicle, unlock_command::text AS unlock_command,
       extract(epoch FROM started_at)::float8 AS start_time,
       extract(epoch FROM ended_at)::float8 AS end_time,
       status, start_lat, start_lon, end_lat, end_lon, distance_m
FROM trips
WHERE started_at >= %(earliest)s AND started_at < %(end)s
  AND (ended_at IS NULL OR ended_at >= %(start)s)
"""

# A trip no command began has no command id; MDS wants a UUID all the same, the same one each
# time it is asked for.
_TRIP_ID_NAMESPACE = uuid.UUID("6f1f3d0e-4f5c-5a52-9d43-0d1b8f0e7a11")


def _trip_ride(row: dict[str, Any]) -> Ride:
    trip_id = row["unlock_command"] or str(uuid.uuid5(_TRIP_ID_NAMESPACE, str(row["id"])))
    measured = row["status"] == "ended" and None not in (
        row["start_lat"],
        row["start_lon"],
        row["end_lat"],
        row["end_lon"],
        row["distance_m"],
    )
    figures = (
        TripFigures(
            row["start_lat"], row["start_lon"], row["end_lat"], row["end_lon"], row["distance_m"]
        )
        if measured
        else None
    )
    return Ride(
        row["vehicle"],
        trip_id,
        row["start_time"],
        row["end_time"],
        None,
        figures,
        named=row["unlock_command"] is not None,
    )


async def rides_between(store: TelemetryStore, start: datetime, end: datetime) -> list[Ride]:
    """The rides that touch [start, end): the trip entity's, and unlock→lock rides from the
    commands of [start - MAX_RIDE, end) where no trip covers them (feeds.rides has the rule).
    The one place rides come from."""
    rows = await _rows(store, _RIDE_COMMANDS, [start - MAX_RIDE, end])
    commands = [RideCommand(**r) for r in rows]
    trips = await _rows(store, _TRIPS, {"earliest": start - MAX_RIDE, "start": start, "end": end})
    lo, hi = start.timestamp(), end.timestamp()
    return [
        r
        for r in rides_preferring_trips(map(_trip_ride, trips), rides_from_commands(commands))
        if r.start_time < hi and (r.end_time is None or r.end_time >= lo)
    ]


_RIDE_FIXES = """
(SELECT extract(epoch FROM time)::float8 AS time, lat, lon FROM positions
  WHERE vehicle = %(v)s AND time <= to_timestamp(%(s)s) AND lat IS NOT NULL AND flags = 0
  ORDER BY time DESC LIMIT 1)
UNION ALL
(SELECT extract(epoch FROM time)::float8, lat, lon FROM positions
  WHERE vehicle = %(v)s AND time > to_timestamp(%(s)s) AND time <= to_timestamp(%(e)s)
    AND lat IS NOT NULL AND flags = 0
  ORDER BY time)
"""


async def ride_track(store: TelemetryStore, ride: Ride) -> list[tuple[float, float, float]]:
    """The ride's fixes (time, lat, lon): the last one before it began, then those during it."""
    async with store.connection() as conn:
        cur = await conn.execute(
            _RIDE_FIXES, {"v": ride.vehicle, "s": ride.start_time, "e": ride.end_time}
        )
        return [tuple(r) for r in await cur.fetchall()]


def track_distance_m(track: Sequence[tuple[float, float, float]]) -> float:
    if len(track) < 2:
        return 0.0
    lat = np.array([p[1] for p in track])
    lon = np.array([p[2] for p in track])
    return float(np.sum(haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])))


async def vehicle_refs(store: TelemetryStore, vehicles: Sequence[int]) -> dict[int, dict]:
    rows = await _rows(
        store,
        "SELECT v.id AS vehicle, v.vehicle_ref, t.form_factor FROM vehicles v "
        "JOIN vehicle_types t ON t.id = v.vehicle_type WHERE v.id = ANY(%s)",
        [list(vehicles)],
    )
    return {r["vehicle"]: r for r in rows}


_TELEMETRY = """
SELECT p.vehicle, v.vehicle_ref, t.form_factor, extract(epoch FROM p.time)::float8 AS time,
       (extract(epoch FROM p.time) * 1000000)::bigint AS time_us,
       p.lat, p.lon, p.speed_kmh, p.heading_deg, p.soc_pct
FROM positions p JOIN vehicles v ON v.id = p.vehicle JOIN vehicle_types t ON t.id = v.vehicle_type
WHERE p.time >= %s AND p.time < %s AND p.lat IS NOT NULL AND p.flags = 0
  AND (p.time, p.vehicle) > (timestamptz 'epoch' + %s * interval '1 microsecond', %s)
ORDER BY p.time, p.vehicle LIMIT %s
"""


async def telemetry_between(
    store: TelemetryStore, start: datetime, end: datetime, after: tuple[int, int], limit: int
) -> list[dict]:
    """A page of the plausible fixes of [start, end), after (time in µs since the epoch,
    vehicle): whole microseconds, so that a page's last row is never read again."""
    return await _rows(store, _TELEMETRY, [start, end, after[0], after[1], limit])


# Events and the succeeded vehicle commands (their ids share one sequence, migration 0013),
# each with the vehicle's newest plausible fix at that time (else its latest state's).
_EVENTS = """
SELECT u.id, u.source, u.type, u.vehicle, v.vehicle_ref, t.form_factor,
       extract(epoch FROM u.time)::float8 AS time,
       coalesce(f.lat, s.lat) AS lat, coalesce(f.lon, s.lon) AS lon,
       coalesce(f.soc_pct, s.soc_pct) AS soc_pct, u.command_id
FROM (
    SELECT e.id, e.source, e.type, e.vehicle, e.time, NULL::text AS command_id
      FROM events e WHERE e.time >= %(s)s AND e.time < %(e)s AND e.id > %(after)s
    UNION ALL
    SELECT h.id, 'command', c.type, c.vehicle, h.at, c.id::text
      FROM command_history h JOIN commands c ON c.id = h.command_id
     WHERE h.to_state = 'succeeded' AND h.from_state IS DISTINCT FROM 'succeeded'
       AND c.type IN ('lock', 'unlock', 'immobilise', 'mobilise')
       AND h.at >= %(s)s AND h.at < %(e)s AND h.id > %(after)s
) u
JOIN vehicles v ON v.id = u.vehicle
JOIN vehicle_types t ON t.id = v.vehicle_type
LEFT JOIN vehicle_state s ON s.vehicle = u.vehicle
LEFT JOIN LATERAL (
    SELECT p.lat, p.lon, p.soc_pct FROM positions p
     WHERE p.vehicle = u.vehicle AND p.time <= u.time AND p.lat IS NOT NULL AND p.flags = 0
     ORDER BY p.time DESC LIMIT 1) f ON true
ORDER BY u.id LIMIT %(limit)s
"""


async def events_between(
    store: TelemetryStore, start: datetime, end: datetime, after: int, limit: int
) -> list[dict]:
    return await _rows(store, _EVENTS, {"s": start, "e": end, "after": after, "limit": limit})


async def _rows(store: TelemetryStore, query: str, params) -> list[dict]:
    async with store.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, params)
        return await cur.fetchall()
