"""The trips table: rides opened and closed in the ingest batch's transaction, measured afterwards
from their stored samples, each change announced in the events table in its own transaction.

Lifecycle: 'open' (trip.started, with the batch that reported the unlock) -> 'closing' (with the
batch that reported the lock) -> 'ended' (measured: figures stored, trip.ended). Samples of a
closed trip's interval that arrive later mark it `stale`; measuring it again stores the new
figures and, if any figure changed, announces trip.updated.
"""

from __future__ import annotations

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
# which may move its start: _EARLIER_START): measure it again. Run before
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

# A buffered upload sent newest first shows the ride unlocked before its unlock sample arrives:
# the trip opens at the first sample the gateway saw, later than the ride began. When measured,
# its start moves back to the first of the unlocked samples stored since the vehicle was last
# reported locked (at most an hour before, and never into the trip before it).
_EARLIER_START = """
SELECT min(p.time) FROM positions p
WHERE p.vehicle = %(vehicle)s AND p.locked = false
  AND p.time < %(start)s AND p.time >= %(start)s - interval '3600 seconds'
  AND p.time > coalesce((SELECT max(q.time) FROM positions q
                         WHERE q.vehicle = %(vehicle)s AND q.locked AND q.time < %(start)s
                           AND q.time >= %(start)s - interval '3600 seconds'),
                        '-infinity')
  AND p.time > coalesce((SELECT max(t.ended_at) FROM trips t
                         WHERE t.vehicle = %(vehicle)s AND t.id <> %(id)s
                           AND t.ended_at <= %(start)s), '-infinity')"""

_CLAIM = """
SELECT t.id, t.vehicle, v.vehicle_ref, v.vehicle_type, t.status, t.revision,
       (extract(epoch FROM t.started_at) * 1000)::bigint AS started_ms,
       (extract(epoch FROM t.ended_at) * 1000)::bigint AS ended_ms,
       t.started_at, t.ended_at, {figures}
FROM trips t JOIN vehicles v ON v.id = t.vehicle
WHERE t.status = 'closing' OR t.stale
ORDER BY t.id LIMIT %s
FOR UPDATE OF t SKIP LOCKED""".format(figures=", ".join(f"t.{c}" for c in FIGURE_COLUMNS))

_SAMPLES = """
SELECT (extract(epoch FROM time) * 1000)::bigint, lat, lon, speed_kmh, soc_pct, pack_v, pack_a,
       odometer_m, flags
FROM positions WHERE vehicle = %s AND time >= %s AND time <= %s ORDER BY time"""

_SPEEDING = """
SELECT count(*) FROM events WHERE vehicle = %s AND source = 'geofence'
  AND type = 'speeding_in_zone' AND time >= %s AND time <= %s"""

# The rental's commands that made the ride: the newest succeeded unlock (lock) of the vehicle
# finished up to `slack` before the ride's start (end) and not after it plus a little.
_COMMAND = """
SELECT id FROM commands WHERE vehicle = %s AND type = %s AND state = 'succeeded'
  AND finished_at BETWEEN %s AND %s
ORDER BY finished_at DESC LIMIT 1"""
_COMMAND_SLACK = timedelta(minutes=5)
_COMMAND_AFTER = timedelta(seconds=30)

_UPDATE = (
    "UPDATE trips SET status = 'ended', stale = false, revision = %s, measured_at = now(), "
    "started_at = %s, " + ", ".join(f"{c} = %s" for c in FIGURE_COLUMNS) + " WHERE id = %s"
)

_ANNOUNCE = """
INSERT INTO events (time, vehicle, source, type, detail)
VALUES (%s, %s, 'trip', %s, %s::jsonb)
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
    transaction. measure() returns the FIGURE_COLUMNS it knows (the others are taken as None)."""
    await cur.execute(_CLAIM, (limit,))
    names = [d.name for d in cur.description]
    claimed = [dict(zip(names, r)) for r in await cur.fetchall()]
    done = []
    for row in claimed:
        trip = await _load(cur, row)
        figures = {c: None for c in FIGURE_COLUMNS}
        try:
            figures.update(measure(trip))
        except Exception as exc:  # one trip the measurer fails on must not hold up the others
            done.append(
                MeasuredTrip(row["id"], row["vehicle"], None, f"{type(exc).__name__}: {exc}")
            )
            continue
        figures["unlock_command"] = await _command(cur, row, "unlock", row["started_at"])
        figures["lock_command"] = await _command(cur, row, "lock", row["ended_at"])
        old = {c: row[c] for c in FIGURE_COLUMNS}
        changed = [c for c in FIGURE_COLUMNS if not _same(old[c], figures[c])]
        if row.get("moved_start"):
            changed.insert(0, "started_at")
        first = row["status"] == "closing"
        announced = "ended" if first else ("updated" if changed else None)
        revision = row["revision"] + (1 if announced else 0)
        await cur.execute(
            _UPDATE,
            (revision, row["started_at"], *[figures[c] for c in FIGURE_COLUMNS], row["id"]),
        )
        if announced is not None:
            detail = billing_detail(row, figures, revision)
            if announced == "updated":
                detail["changed"] = changed
            when = row["ended_at"] if first else datetime.now(UTC)
            await cur.execute(
                _ANNOUNCE,
                (when, row["vehicle"], f"trip.{announced}", orjson.dumps(detail).decode()),
            )
        done.append(MeasuredTrip(row["id"], row["vehicle"], announced))
    return done


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


async def _load(cur: AsyncCursor, row: dict[str, Any]) -> TripToMeasure:
    """The trip's samples and speeding episodes; its start moved back first where unlocked
    samples before it arrived late (row is updated in place: started_at, started_ms)."""
    await cur.execute(
        _EARLIER_START, {"vehicle": row["vehicle"], "start": row["started_at"], "id": row["id"]}
    )
    (earlier,) = await cur.fetchone()
    if earlier is not None and earlier < row["started_at"]:
        row["started_at"] = earlier
        row["started_ms"] = round(earlier.timestamp() * 1000)
        row["moved_start"] = True
    await cur.execute(_SAMPLES, (row["vehicle"], row["started_at"], row["ended_at"]))
    rows = await cur.fetchall()
    columns = list(zip(*rows)) if rows else [()] * len(_SAMPLE_NAMES)
    samples = {}
    for name, col in zip(_SAMPLE_NAMES, columns):
        if name == "time_ms":
            samples[name] = np.array(col, dtype=np.int64)
        elif name == "flags":
            samples[name] = np.array([0 if x is None else x for x in col], dtype=np.int16)
        else:
            samples[name] = np.array([np.nan if x is None else x for x in col], dtype=np.float64)
    await cur.execute(_SPEEDING, (row["vehicle"], row["started_at"], row["ended_at"]))
    (speeding,) = await cur.fetchone()
    return TripToMeasure(
        row["id"],
        row["vehicle"],
        row["vehicle_ref"],
        row["vehicle_type"],
        int(row["started_ms"]),
        int(row["ended_ms"]),
        samples,
        int(speeding),
    )


async def _command(cur: AsyncCursor, row: dict[str, Any], kind: str, at: datetime) -> Any:
    await cur.execute(_COMMAND, (row["vehicle"], kind, at - _COMMAND_SLACK, at + _COMMAND_AFTER))
    found = await cur.fetchone()
    return None if found is None else found[0]


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
