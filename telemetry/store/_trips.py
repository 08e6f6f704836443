"""The trips table: rides opened and closed in the ingest batch's transaction, measured afterwards
from their stored samples, each change announced in the events table in its own transaction.

Lifecycle: 'open' (trip.started, with the batch that reported the unlock) -> 'closing' (with the
batch that reported the lock) -> 'ended' (measured: figures stored, trip.ended). Samples of a
closed trip's interval that arrive later mark it `stale`; measuring it again stores the new
figures and, if any figure changed, announces trip.updated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from psycopg import AsyncCursor

# (vehicle, time_ms, lat, lon): a ride boundary as the trips core reports it.
Boundary = tuple[int, int, float | None, float | None]

# The figures the measurer stores, in this order (the columns of trips after the boundaries).
FIGURE_COLUMNS = (
    "start_lat",
    "start_lon",
    "end_lat",
    "end_lon",
    "distance_m",
    "distance_source",
    "gps_distance_m",
    "duration_s",
    "energy_wh",
    "energy_source",
    "soc_start_pct",
    "soc_end_pct",
    "max_speed_kmh",
    "fixes_used",
    "fixes_rejected",
    "zones_visited",
    "end_zone",
    "parking_allowed",
    "ended_outside_operating_area",
    "speeding_episodes",
    "unlock_command",
    "lock_command",
)

_BOUNDARIES = (
    "unnest(%s::int4[], %s::timestamptz[], %s::float8[], %s::float8[]) AS b(vehicle, t, lat, lon)"
)

# A vehicle has at most one open trip (trips_open_idx): a start while one is open is dropped.
_START = f"""
WITH ins AS (
  INSERT INTO trips (vehicle, status, started_at, start_lat, start_lon)
  SELECT b.vehicle, 'open', b.t, b.lat, b.lon FROM {_BOUNDARIES}
  JOIN vehicles v ON v.id = b.vehicle
  ON CONFLICT DO NOTHING
  RETURNING id, vehicle, started_at, start_lat, start_lon
)
INSERT INTO events (time, vehicle, source, type, detail)
SELECT started_at, vehicle, 'trip', 'trip.started',
       jsonb_build_object('trip_id', id, 'started_at', started_at,
                          'start', CASE WHEN start_lat IS NOT NULL
                                   THEN jsonb_build_object('lat', start_lat, 'lon', start_lon) END)
FROM ins
ON CONFLICT (vehicle, time, type, source) DO NOTHING
RETURNING source"""

_END = f"""
UPDATE trips t SET status = 'closing', ended_at = b.t, end_lat = b.lat, end_lon = b.lon
FROM {_BOUNDARIES}
WHERE t.vehicle = b.vehicle AND t.status = 'open' AND t.started_at < b.t"""

# Samples of a closed trip's interval in this batch, or of the hour before it (a late upload,
# which may move its start: _LOAD): measure it again. Run before
# vehicle_state takes the batch: a closed trip ends at or before the vehicle's newest stored
# sample, so only a vehicle with a sample not newer than that can have one in a closed trip, and a
# live batch probes no trip at all.
_MARK_STALE = """
UPDATE trips t SET stale = true
FROM (SELECT vehicle, min(time) AS lo, max(time) AS hi FROM positions_staging GROUP BY vehicle) s
JOIN vehicle_state vs ON vs.vehicle = s.vehicle AND s.lo <= vs.time
WHERE t.vehicle = s.vehicle AND t.ended_at >= s.lo
  AND t.started_at <= s.hi + interval '3600 seconds'
  AND t.status <> 'open' AND NOT t.stale"""

_CLAIM = """
SELECT t.id, t.vehicle, v.vehicle_ref, v.vehicle_type, t.status, t.revision,
       (extract(epoch FROM t.started_at) * 1000)::bigint AS started_ms,
       (extract(epoch FROM t.ended_at) * 1000)::bigint AS ended_ms,
       t.started_at, t.ended_at, {figures}
FROM trips t JOIN vehicles v ON v.id = t.vehicle
WHERE t.status = 'closing' OR t.stale
ORDER BY t.id LIMIT %s
FOR UPDATE OF t SKIP LOCKED""".format(figures=", ".join(f"t.{c}" for c in FIGURE_COLUMNS))

# One statement loads every claimed trip (in the order given, `k`): its start moved back where
# a buffered upload sent newest first showed the ride unlocked before its unlock sample arrived
# (the trip opened at the first sample the gateway saw, later than the ride began: the start
# moves to the first of the unlocked samples stored since the vehicle was last reported locked,
# at most an hour before, and never into the trip before it); then, over [that start, end], the
# stored samples as one array per column, the speeding episodes, and the rental's commands that
# made the ride: the newest succeeded unlock (lock) of the vehicle finished up to 5 minutes
# before the ride's start (end) and not after it plus 30 seconds.
_LOAD = """
SELECT c.k, e.earlier, s.time_ms, s.lat, s.lon, s.speed_kmh, s.soc_pct, s.pack_v, s.pack_a,
       s.odometer_m, s.flags,
       (SELECT count(*) FROM events ev WHERE ev.vehicle = c.vehicle AND ev.source = 'geofence'
          AND ev.type = 'speeding_in_zone' AND ev.time >= r.lo AND ev.time <= c.ended_at),
       (SELECT id FROM commands m WHERE m.vehicle = c.vehicle AND m.type = 'unlock'
          AND m.state = 'succeeded'
          AND m.finished_at BETWEEN r.lo - interval '5 minutes' AND r.lo + interval '30 seconds'
        ORDER BY m.finished_at DESC LIMIT 1),
       (SELECT id FROM commands m WHERE m.vehicle = c.vehicle AND m.type = 'lock'
          AND m.state = 'succeeded'
          AND m.finished_at BETWEEN c.ended_at - interval '5 minutes'
                                AND c.ended_at + interval '30 seconds'
        ORDER BY m.finished_at DESC LIMIT 1)
FROM unnest(%s::int8[], %s::int4[], %s::timestamptz[], %s::timestamptz[])
     WITH ORDINALITY AS c(id, vehicle, started_at, ended_at, k)
CROSS JOIN LATERAL (
  SELECT min(p.time) AS earlier FROM positions p
  WHERE p.vehicle = c.vehicle AND p.locked = false
    AND p.time < c.started_at AND p.time >= c.started_at - interval '3600 seconds'
    AND p.time > coalesce((SELECT max(q.time) FROM positions q
                           WHERE q.vehicle = c.vehicle AND q.locked AND q.time < c.started_at
                             AND q.time >= c.started_at - interval '3600 seconds'),
                          '-infinity')
    AND p.time > coalesce((SELECT max(t.ended_at) FROM trips t
                           WHERE t.vehicle = c.vehicle AND t.id <> c.id
                             AND t.ended_at <= c.started_at), '-infinity')) e
CROSS JOIN LATERAL (SELECT coalesce(e.earlier, c.started_at) AS lo) r
CROSS JOIN LATERAL (
  SELECT array_agg((extract(epoch FROM p.time) * 1000)::bigint ORDER BY p.time) AS time_ms,
         array_agg(p.lat ORDER BY p.time) AS lat, array_agg(p.lon ORDER BY p.time) AS lon,
         array_agg(p.speed_kmh ORDER BY p.time) AS speed_kmh,
         array_agg(p.soc_pct ORDER BY p.time) AS soc_pct,
         array_agg(p.pack_v ORDER BY p.time) AS pack_v,
         array_agg(p.pack_a ORDER BY p.time) AS pack_a,
         array_agg(p.odometer_m ORDER BY p.time) AS odometer_m,
         array_agg(p.flags ORDER BY p.time) AS flags
  FROM positions p WHERE p.vehicle = c.vehicle AND p.time >= r.lo AND p.time <= c.ended_at) s
ORDER BY c.k"""

# Each figure's array type in the batch's UPDATE: reals go as float8 and are rounded on
# assignment, as a single row's parameter was; zones_visited (text[] per trip) goes as its JSON.
_FIGURE_ARRAYS = {
    **dict.fromkeys(
        ("start_lat", "start_lon", "end_lat", "end_lon", "distance_m", "gps_distance_m"),
        "float8[]",
    ),
    **dict.fromkeys(
        ("duration_s", "energy_wh", "soc_start_pct", "soc_end_pct", "max_speed_kmh"), "float8[]"
    ),
    **dict.fromkeys(("distance_source", "energy_source", "end_zone"), "text[]"),
    **dict.fromkeys(("fixes_used", "fixes_rejected", "speeding_episodes"), "int8[]"),
    **dict.fromkeys(("parking_allowed", "ended_outside_operating_area"), "bool[]"),
    **dict.fromkeys(("unlock_command", "lock_command"), "uuid[]"),
    "zones_visited": "text[]",
}
assert set(_FIGURE_ARRAYS) == set(FIGURE_COLUMNS)


def _set_figure(c: str) -> str:
    if c == "zones_visited":
        return (
            "zones_visited = CASE WHEN f.zones_visited IS NULL THEN NULL "
            "ELSE ARRAY(SELECT jsonb_array_elements_text(f.zones_visited::jsonb)) END"
        )
    return f"{c} = f.{c}"


# Every measured trip of the batch in one statement.
_UPDATE = (
    "UPDATE trips t SET status = 'ended', stale = false, revision = f.revision, "
    "measured_at = now(), started_at = f.started_at, "
    + ", ".join(_set_figure(c) for c in FIGURE_COLUMNS)
    + " FROM unnest(%s::int8[], %s::int4[], %s::timestamptz[], "
    + ", ".join(f"%s::{_FIGURE_ARRAYS[c]}" for c in FIGURE_COLUMNS)
    + ") AS f(id, revision, started_at, "
    + ", ".join(FIGURE_COLUMNS)
    + ") WHERE t.id = f.id"
)

_ANNOUNCE = """
INSERT INTO events (time, vehicle, source, type, detail)
SELECT a.time, a.vehicle, 'trip', a.type, a.detail::jsonb
FROM unnest(%s::timestamptz[], %s::int4[], %s::text[], %s::text[])
     WITH ORDINALITY AS a(time, vehicle, type, detail, k)
ORDER BY a.k
ON CONFLICT (vehicle, time, type, source) DO NOTHING"""


@dataclass(frozen=True, slots=True)
class TripToMeasure:
    """A closed trip with its stored samples, as the measurer is given it."""

    id: int
    vehicle: int
    vehicle_ref: str
    vehicle_type: str
    started_ms: int
    ended_ms: int
    samples: dict[str, np.ndarray]  # time_ms, lat, lon, speed_kmh, soc_pct, pack_v, ...
    speeding_episodes: int


@dataclass(frozen=True, slots=True)
class MeasuredTrip:
    id: int
    vehicle: int
    announced: str | None  # "ended", "updated" or None (measured again, nothing changed)
    error: str | None = None  # measure() raised: the trip waits, untouched, for the next round


_SAMPLE_NAMES = (
    "time_ms",
    "lat",
    "lon",
    "speed_kmh",
    "soc_pct",
    "pack_v",
    "pack_a",
    "odometer_m",
    "flags",
)


async def write_boundaries(
    cur: AsyncCursor, starts: Sequence[Boundary], ends: Sequence[Boundary]
) -> int:
    """Open and close trips, in time order per vehicle (a buffered upload can hold several
    rides of one vehicle); returns the trip.started events inserted."""
    announced = 0
    rounds = _rounds(starts, ends)
    for kind, boundaries in rounds:
        params = (
            [b[0] for b in boundaries],
            [_utc(b[1]) for b in boundaries],
            [b[2] for b in boundaries],
            [b[3] for b in boundaries],
        )
        if kind == "start":
            await cur.execute(_START, params)
            announced += len(await cur.fetchall())
        else:
            await cur.execute(_END, params)
    return announced


def _rounds(
    starts: Sequence[Boundary], ends: Sequence[Boundary]
) -> list[tuple[str, list[Boundary]]]:
    """The boundaries as statements to run in order: the k-th boundary of every vehicle in round
    k (a vehicle's boundaries alternate between start and end), ends before starts in a round."""
    by_vehicle: dict[int, list[tuple[int, str, Boundary]]] = {}
    for kind, items in (("start", starts), ("end", ends)):
        for b in items:
            by_vehicle.setdefault(b[0], []).append((b[1], kind, b))
    rounds: list[dict[str, list[Boundary]]] = []
    for items in by_vehicle.values():
        for k, (_, kind, b) in enumerate(sorted(items, key=lambda x: x[0])):
            while len(rounds) <= k:
                rounds.append({"end": [], "start": []})
            rounds[k][kind].append(b)
    return [(kind, r[kind]) for r in rounds for kind in ("end", "start") if r[kind]]


async def mark_stale(cur: AsyncCursor) -> None:
    """In a batch's transaction, after its samples are in positions_staging and before
    vehicle_state is updated with them."""
    await cur.execute(_MARK_STALE)


async def measure_pending(
    cur: AsyncCursor,
    measure: Callable[[TripToMeasure], dict[str, Any]],
    limit: int,
) -> list[MeasuredTrip]:
    """Measure the closed trips not measured yet and the stale ones (up to `limit`, skipping any
    another process is measuring), store their figures and announce them, all in the caller's
    transaction. measure() returns the FIGURE_COLUMNS it knows (the others are taken as None).
    Four statements whatever the number of trips: claim, load, update, announce."""
    await cur.execute(_CLAIM, (limit,))
    names = [d.name for d in cur.description]
    claimed = [dict(zip(names, r)) for r in await cur.fetchall()]
    if not claimed:
        return []
    trips = await _load(cur, claimed)
    done, updates, announcements = [], [], []
    for row, (trip, commands) in zip(claimed, trips):
        # One trip at a time, then the event loop's turn: a round of 50 measured in one go held
        # the gateway's loop for ~10-15 ms, and the commands waiting on it showed it (sequential
        # p99 15 -> 25-30 ms in benchmarks/commands.py) where per-trip statements had yielded.
        await asyncio.sleep(0)
        figures = {c: None for c in FIGURE_COLUMNS}
        try:
            figures.update(measure(trip))
        except Exception as exc:  # one trip the measurer fails on must not hold up the others
            done.append(
                MeasuredTrip(row["id"], row["vehicle"], None, f"{type(exc).__name__}: {exc}")
            )
            continue
        figures["unlock_command"], figures["lock_command"] = commands
        old = {c: row[c] for c in FIGURE_COLUMNS}
        changed = [c for c in FIGURE_COLUMNS if not _same(old[c], figures[c])]
        if row.get("moved_start"):
            changed.insert(0, "started_at")
        first = row["status"] == "closing"
        announced = "ended" if first else ("updated" if changed else None)
        revision = row["revision"] + (1 if announced else 0)
        updates.append((row["id"], revision, row["started_at"], figures))
        if announced is not None:
            detail = billing_detail(row, figures, revision)
            if announced == "updated":
                detail["changed"] = changed
            when = row["ended_at"] if first else datetime.now(UTC)
            announcements.append((when, row["vehicle"], f"trip.{announced}", detail))
        done.append(MeasuredTrip(row["id"], row["vehicle"], announced))
    if updates:
        await cur.execute(_UPDATE, _update_columns(updates))
    if announcements:
        when, vehicles, types, details = zip(*announcements)
        await cur.execute(
            _ANNOUNCE,
            (list(when), list(vehicles), list(types), [orjson.dumps(d).decode() for d in details]),
        )
    return done


def _update_columns(updates: list[tuple[int, int, datetime, dict[str, Any]]]) -> list[list]:
    """_UPDATE's parameters: one array per column, a trip per position."""
    columns = [[u[0] for u in updates], [u[1] for u in updates], [u[2] for u in updates]]
    for c in FIGURE_COLUMNS:
        values = [u[3][c] for u in updates]
        if c == "zones_visited":
            values = [None if v is None else orjson.dumps(list(v)).decode() for v in values]
        columns.append(values)
    return columns


def billing_detail(row: dict[str, Any], figures: dict[str, Any], revision: int) -> dict[str, Any]:
    """What trip.ended and trip.updated carry: everything billing needs to price the ride."""

    def place(lat: float | None, lon: float | None) -> dict[str, float] | None:
        return None if lat is None or lon is None else {"lat": lat, "lon": lon}

    commands = {"unlock": figures["unlock_command"], "lock": figures["lock_command"]}
    return {
        "trip_id": row["id"],
        "revision": revision,
        "vehicle_ref": row["vehicle_ref"],
        "vehicle_type": row["vehicle_type"],
        "started_at": row["started_at"].isoformat(),
        "ended_at": row["ended_at"].isoformat(),
        "duration_s": figures["duration_s"],
        "distance_m": figures["distance_m"],
        "distance_source": figures["distance_source"],
        "energy_wh": figures["energy_wh"],
        "energy_source": figures["energy_source"],
        "soc_start_pct": figures["soc_start_pct"],
        "soc_end_pct": figures["soc_end_pct"],
        "start": place(figures["start_lat"], figures["start_lon"]),
        "end": place(figures["end_lat"], figures["end_lon"]),
        "zones_visited": figures["zones_visited"],
        "end_zone": figures["end_zone"],
        "parking_allowed": figures["parking_allowed"],
        "flags": {
            "ended_outside_operating_area": figures["ended_outside_operating_area"],
            "speeding_episodes": figures["speeding_episodes"],
            "parked_where_not_allowed": figures["parking_allowed"] is False,
        },
        "commands": {k: None if v is None else str(v) for k, v in commands.items()},
    }


async def _load(
    cur: AsyncCursor, claimed: list[dict[str, Any]]
) -> list[tuple[TripToMeasure, tuple[Any, Any]]]:
    """Each claimed trip's samples, speeding episodes and (unlock, lock) commands, in one
    statement; a start moved back where unlocked samples before it arrived late (each row is
    updated in place: started_at, started_ms, moved_start)."""
    await cur.execute(
        _LOAD,
        (
            [r["id"] for r in claimed],
            [r["vehicle"] for r in claimed],
            [r["started_at"] for r in claimed],
            [r["ended_at"] for r in claimed],
        ),
    )
    out = []
    for row, found in zip(claimed, await cur.fetchall()):
        earlier, columns = found[1], found[2 : 2 + len(_SAMPLE_NAMES)]
        speeding, unlock_command, lock_command = found[2 + len(_SAMPLE_NAMES) :]
        if earlier is not None and earlier < row["started_at"]:
            row["started_at"] = earlier
            row["started_ms"] = round(earlier.timestamp() * 1000)
            row["moved_start"] = True
        samples = {}
        for name, col in zip(_SAMPLE_NAMES, columns):
            col = col or []
            if name == "time_ms":
                samples[name] = np.array(col, dtype=np.int64)
            elif name == "flags":
                samples[name] = np.array([0 if x is None else x for x in col], dtype=np.int16)
            else:
                samples[name] = np.array(
                    [np.nan if x is None else x for x in col], dtype=np.float64
                )
        trip = TripToMeasure(
            row["id"],
            row["vehicle"],
            row["vehicle_ref"],
            row["vehicle_type"],
            int(row["started_ms"]),
            int(row["ended_ms"]),
            samples,
            int(speeding),
        )
        out.append((trip, (unlock_command, lock_command)))
    return out


def _same(a: Any, b: Any) -> bool:
    """Stored and measured figures compared as stored (real columns hold float32)."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
    if isinstance(a, list) or isinstance(b, list):
        return list(a or []) == list(b or []) and (a is None) == (b is None)
    return (str(a) if a is not None else None) == (str(b) if b is not None else None)


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(ms: float) -> datetime:
    return _UNIX_EPOCH + timedelta(milliseconds=ms)
