"""The telemetry store: a pool of psycopg 3 connections and the queries of the ingest path.

A batch is written in one transaction: binary COPY into session staging tables, insert into
`positions` ignoring what is already there, fold each vehicle's newest values into
`vehicle_state`, insert device events. Connection trouble surfaces as StoreUnavailable.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import orjson
import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool

from telemetry.batch import FLOAT_COLUMNS, STATE_COLUMNS, TelemetryBatch
from telemetry.store import (
    _api_keys,
    _migration_evidence,
    _migration_runs,
    _partitions,
    _policies,
    _trips,
    _zones,
)
from telemetry.store import _binary as wire
from telemetry.store._api_keys import ApiKey
from telemetry.store._errors import DataRefused, RegistrationConflict, StoreUnavailable
from telemetry.store._migration_evidence import MigrationEvidence
from telemetry.store._migration_runs import MigrationRun
from telemetry.store._pool import open_pool, pooled_connection, pooled_transaction
from telemetry.store._zones import ZoneRows
from telemetry.topics import DEVICE_ID_RULE, is_device_id
from telemetry.vehicle_types import COLUMNS as VEHICLE_TYPE_COLUMNS
from telemetry.vehicle_types import VehicleType


class Event(Protocol):
    """What the events table stores: telemetry.batch.DeviceEvent, geofence.GeofenceEvent, ..."""

    vehicle: int
    time_ms: int
    type: str
    detail: dict | None
    source: str


@dataclass(frozen=True)
class Device:
    device_id: str
    vehicle: int  # vehicles.id
    vehicle_ref: str
    vehicle_type: str  # vehicle_types.id: "ebike", "scooter", "car", ...


@dataclass(frozen=True)
class VehicleRegistration:
    vehicle_ref: str
    device_id: str
    vehicle_type: str


@dataclass(frozen=True, slots=True)
class AdvancedState:
    """A vehicle another gateway process has written since the caller last saw it."""

    vehicle: int
    time_ms: int  # its newest stored sample
    geofence: dict | None  # the geofence tracker's state (exact: written on every change)
    battery_state: dict | None  # None unless newer than what the caller has seen
    fix_time_ms: int | None  # its newest plausible fix
    lat: float | None
    lon: float | None


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    """A device message kept verbatim because processing it failed (see quarantine())."""

    transport: str
    kind: str
    device_id: str
    received_ms: int
    payload: bytes
    content_type: str | None
    error: str


@dataclass
class WriteResult:
    inserted: int  # new rows in positions
    duplicates: int  # samples already stored (or repeated within the batch)
    events_inserted: int
    events_by_source: dict[str, int] = field(default_factory=dict)  # events_inserted by source


@dataclass(frozen=True)
class MaintenanceReport:
    storage: str
    created: list[str] = field(default_factory=list)  # partitions created (native)
    dropped: list[str] = field(default_factory=list)  # partitions dropped (native)
    policies_fixed: list[str] = field(default_factory=list)  # policies re-created (TimescaleDB)
    failing_jobs: list[str] = field(default_factory=list)  # TimescaleDB jobs whose last run failed

    def __str__(self) -> str:
        parts = [
            f"created {', '.join(self.created)}" if self.created else "",
            f"dropped {', '.join(self.dropped)}" if self.dropped else "",
            f"re-created {', '.join(self.policies_fixed)}" if self.policies_fixed else "",
            f"failing: {'; '.join(self.failing_jobs)}" if self.failing_jobs else "",
        ]
        done = "; ".join(p for p in parts if p) or "nothing to do"
        return f"maintenance ({self.storage} storage): {done}"


# --- staging tables and their COPY streams ----------------------------------------------------

_Column = tuple[str, str, Callable[[TelemetryBatch], wire.Field]]

# positions: (column, SQL type, the batch column in wire form), in COPY order.
_POSITION_COLUMNS: list[_Column] = [
    ("time", "timestamptz", lambda b: wire.timestamptz(b.time_ms)),
    ("vehicle", "integer", lambda b: wire.int4(b.vehicle)),
    ("lat", "double precision", lambda b: wire.float8(b.lat)),
    ("lon", "double precision", lambda b: wire.float8(b.lon)),
    *[(c, "real", lambda b, c=c: wire.float4(getattr(b, c))) for c in FLOAT_COLUMNS],
    ("odometer_m", "double precision", lambda b: wire.float8(b.odometer_m)),
    *[(c, "boolean", lambda b, c=c: wire.tristate(getattr(b, c))) for c in STATE_COLUMNS],
    ("flags", "smallint", lambda b: wire.int2(b.flags)),
    ("received_at", "timestamptz", lambda b: wire.timestamptz(b.received_ms)),
]

# What a device reported in a sample, in COPY order: the positions columns but the keys (time,
# vehicle) and the gateway's own received_at. Readers that hand samples back take this list.
SAMPLE_COLUMNS = tuple(
    c for c, _, _ in _POSITION_COLUMNS if c not in ("time", "vehicle", "received_at")
)

# vehicle_state: fields that keep their newest reported value, (column, SQL type).
_STATE_FIELDS = [(c, "real") for c in FLOAT_COLUMNS] + [("odometer_m", "double precision")]
_STATE_FIELDS += [(c, "boolean") for c in STATE_COLUMNS]
# One row per vehicle of the batch: its newest sample, its newest unflagged fix, and for each
# field the newest reported value with that value's time (<field>_t, NULL when it is the newest
# sample's time, which is the common case and cheaper to send).
_STATE_STAGING_COLUMNS = [
    ("vehicle", "integer"),
    ("time", "timestamptz"),
    ("received_at", "timestamptz"),
    ("flags", "smallint"),
    ("last_seen", "timestamptz"),
    ("fix_time", "timestamptz"),
    ("lat", "double precision"),
    ("lon", "double precision"),
    *[x for c, t in _STATE_FIELDS for x in ((c, t), (f"{c}_t", "timestamptz"))],
]


def _staging_ddl(table: str, columns: list[tuple[str, str]]) -> str:
    # Temporary, one per session, emptied by every commit: created when the pool opens a
    # connection, so that a write never pays for catalog changes.
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {table} ("
        + ", ".join(f"{c} {t}" for c, t in columns)
        + ") ON COMMIT DELETE ROWS"
    )


_CREATE_STAGING = [
    _staging_ddl("positions_staging", [(c, t) for c, t, _ in _POSITION_COLUMNS]),
    _staging_ddl("vehicle_state_staging", _STATE_STAGING_COLUMNS),
]
_POSITION_LIST = ", ".join(c for c, _, _ in _POSITION_COLUMNS)
_COPY_POSITIONS = f"COPY positions_staging ({_POSITION_LIST}) FROM STDIN (FORMAT BINARY)"
_COPY_STATE = (
    "COPY vehicle_state_staging ("
    + ", ".join(c for c, _ in _STATE_STAGING_COLUMNS)
    + ") FROM STDIN (FORMAT BINARY)"
)

_INSERT_POSITIONS = (
    f"INSERT INTO positions ({_POSITION_LIST}) SELECT {_POSITION_LIST} FROM positions_staging "
    "ON CONFLICT (vehicle, time) DO NOTHING"
)
# The history of a migration goes straight into positions when nothing is stored yet in any of
# its vehicles' time spans (write_history): ON CONFLICT's speculative insertion through staging
# costs about twice a plain COPY, and a bulk import is all new rows but for a delta's edge.
_COPY_POSITIONS_DIRECT = f"COPY positions ({_POSITION_LIST}) FROM STDIN (FORMAT BINARY)"
_ANY_STORED_IN_SPANS = (
    "SELECT EXISTS (SELECT 1 FROM unnest(%s::integer[], %s::timestamptz[], %s::timestamptz[]) "
    "AS r(vehicle, first, last) WHERE EXISTS (SELECT 1 FROM positions p "
    "WHERE p.vehicle = r.vehicle AND p.time BETWEEN r.first AND r.last))"
)

# A field's value from the batch counts only if it was reported after the newest sample already
# stored, or nothing is stored for it: a re-uploaded older sample never overwrites newer state,
# and a field missing from the newest sample keeps its last reported value. The position comes
# from the newest unflagged fix. (The join reads the stored row once for all fields. When two
# gateway processes write one vehicle at the same moment, during a hand-over or on a broker that
# spreads a vehicle's messages, the row can move between that read and the update: then a
# batch whose newest sample is older than the row's keeps the row's values, so the older batch
# never overwrites what the newer one wrote. With one writer this changes nothing.)
# Whether the upsert brings a vehicle back (it was offline; one never heard of before, without
# last_seen, is not "back": its first contact is no event), with what vehicle.online says.
_CAME_ONLINE = (
    "  came_online = CASE WHEN NOT s.online AND s.last_seen IS NOT NULL THEN jsonb_build_object("
    "'cause', 'telemetry', 'after_comms_lost', s.comms_lost_at IS NOT NULL, "
    "'offline_since', s.presence_changed_at) END,\n"
)
_UPSERT_STATE = (
    "INSERT INTO vehicle_state AS s (vehicle, time, received_at, flags, fix_time, lat, lon, "
    + ", ".join(c for c, _ in _STATE_FIELDS)
    + ", online, last_seen, updated_at)\n"
    "SELECT b.vehicle, b.time, b.received_at, b.flags, b.fix_time, b.lat, b.lon, "
    + ", ".join(
        f"CASE WHEN cur.{c} IS NULL OR coalesce(b.{c}_t, b.time) > cur.time THEN b.{c} END"
        for c, _ in _STATE_FIELDS
    )
    + ", true, b.last_seen, now()\n"
    "FROM vehicle_state_staging b LEFT JOIN vehicle_state cur ON cur.vehicle = b.vehicle\n"
    "ON CONFLICT (vehicle) DO UPDATE SET\n"
    "  time = greatest(s.time, EXCLUDED.time),\n"
    + "".join(
        f"  {c} = CASE WHEN s.time IS NULL OR EXCLUDED.time > s.time "
        f"THEN EXCLUDED.{c} ELSE s.{c} END,\n"
        for c in ("received_at", "flags")
    )
    + "".join(
        f"  {c} = CASE WHEN s.fix_time IS NULL OR EXCLUDED.fix_time > s.fix_time "
        f"THEN EXCLUDED.{c} ELSE s.{c} END,\n"
        for c in ("lat", "lon", "fix_time")
    )
    + "".join(
        f"  {c} = CASE WHEN EXCLUDED.time < s.time AND s.{c} IS NOT NULL THEN s.{c} "
        f"ELSE coalesce(EXCLUDED.{c}, s.{c}) END,\n"
        for c, _ in _STATE_FIELDS
    )
    + "  online = true,\n"
    + _CAME_ONLINE
    + "  comms_lost_at = NULL,\n"
    "  last_seen = greatest(s.last_seen, EXCLUDED.last_seen),\n"
    "  updated_at = now()"
)
# The same upsert announcing vehicle.online for the vehicles it brought back (came_online is set
# from the row's previous values, which ON CONFLICT DO UPDATE reads from the newest committed
# version under the row's lock: a presence expiry committing meanwhile is seen, so its
# vehicle.offline always gets its vehicle.online). In the batch's transaction: the event exists
# exactly when the change does.
_UPSERT_STATE_ANNOUNCING = (
    "WITH up AS (\n" + _UPSERT_STATE + "\nRETURNING s.vehicle, s.came_online, s.last_seen)\n"
    "INSERT INTO events (time, vehicle, source, type, detail)\n"
    "SELECT last_seen, vehicle, 'vehicle', 'vehicle.online', came_online FROM up\n"
    "WHERE came_online IS NOT NULL\n"
    "ON CONFLICT (vehicle, time, type, source) DO NOTHING\n"
    "RETURNING source"
)

# Per-vehicle state of the cores (geofence tracker, battery estimator), written with the batch
# that changed it so that a restarted gateway resumes exactly where the database says.
VEHICLE_JSON_COLUMNS = frozenset({"geofence", "battery_state", "theft"})

# battery_health rows (the battery core's downsampled history), in this column order; time in ms.
BATTERY_HEALTH_COLUMNS = (
    "vehicle",
    "time_ms",
    "soc_pct",
    "range_m",
    "soh_pct",
    "capacity_ah",
    "resistance_ohm",
    "efc",
    "energy_wh_per_km",
    "aux_rest_v",
    "aux_drain_ma",
    "aux_hours_to_threshold",
    "charging",
    "pack_seq",
)
_BH_TYPES = ["int4", "int8"] + ["float8"] * 10 + ["bool", "int4"]
_BH_NAMES = ["time" if c == "time_ms" else c for c in BATTERY_HEALTH_COLUMNS]
# The rows go into the history, and each vehicle's newest row refreshes its headline estimates
# on vehicle_state (the live map and operations read those).
_INSERT_BATTERY_HEALTH = (
    "WITH r AS (SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _BH_TYPES)
    + ") AS r("
    + ", ".join(BATTERY_HEALTH_COLUMNS)
    + ")), ins AS (\n"
    "  INSERT INTO battery_health (" + ", ".join(_BH_NAMES) + ")\n"
    "  SELECT "
    + ", ".join(
        "to_timestamp(time_ms / 1000.0)" if c == "time_ms" else c for c in BATTERY_HEALTH_COLUMNS
    )
    + " FROM r ON CONFLICT (vehicle, time) DO NOTHING)\n"
    "UPDATE vehicle_state s SET range_m = n.range_m, soh_pct = n.soh_pct,\n"
    "  aux_hours_to_threshold = n.aux_hours_to_threshold\n"
    "FROM (SELECT DISTINCT ON (vehicle) * FROM r ORDER BY vehicle, time_ms DESC) n\n"
    "WHERE s.vehicle = n.vehicle"
)


@dataclass
class Derived:
    """What the cores derive from a batch, written in the batch's own transaction.

    vehicle_json: vehicle_state JSON column ("geofence", "battery_state", "theft") -> vehicle ->
    value.
    battery_health: history rows in BATTERY_HEALTH_COLUMNS order (NaN/None = unknown).
    trip_starts, trip_ends: ride boundaries (vehicle, time_ms, lat, lon) from the trips core.
    """

    vehicle_json: dict[str, dict[int, Any]] = field(default_factory=dict)
    battery_health: list[tuple] = field(default_factory=list)
    trip_starts: list[_trips.Boundary] = field(default_factory=list)
    trip_ends: list[_trips.Boundary] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.battery_health or self.trip_starts or self.trip_ends) or any(
            self.vehicle_json.values()
        )

    def merge(self, other: Derived) -> None:
        for column, values in other.vehicle_json.items():
            self.vehicle_json.setdefault(column, {}).update(values)
        self.battery_health.extend(other.battery_health)
        self.trip_starts.extend(other.trip_starts)
        self.trip_ends.extend(other.trip_ends)


# A core's state carries the time of the newest sample it includes ("t"). A state never replaces
# a newer one: two gateway processes may hold a vehicle at once during a hand-over, and a process
# saving every state it knows on a graceful stop must not put back what it held an hour ago over
# what the vehicle's present owner wrote since.
# The parameters go in binary (%b): a text array in text form is escaped by psycopg in Python,
# a regular expression substitution per quote of every vehicle's JSON, 2 µs a sample or more at
# 300 vehicles a batch (benchmarks/README.md, *Ingest against the ceiling*); in binary each text
# is copied as it is.
_UPSERT_JSON = (
    "INSERT INTO vehicle_state AS s (vehicle, {col}, updated_at)\n"
    "SELECT x.vehicle, x.value::jsonb, now() FROM unnest(%b::int4[], %b::text[]) "
    "AS x(vehicle, value) JOIN vehicles v ON v.id = x.vehicle\n"
    "ON CONFLICT (vehicle) DO UPDATE SET {col} = EXCLUDED.{col}, updated_at = now()\n"
    "WHERE s.{col} IS NULL OR (s.{col}->>'t')::bigint IS NULL\n"
    "   OR (EXCLUDED.{col}->>'t')::bigint >= (s.{col}->>'t')::bigint"
)

# For the hand-over between gateway processes (gateway/handover.py): the vehicles of a batch whose
# newest stored sample is newer than what this process knows, with the state it needs to continue
# them. The battery state (~2 KB) is sent only where it is newer than the caller's own. About
# 1 µs per vehicle on the server and 0.5 µs in Python (binary parameters): ~0.5 ms for a batch of
# 300 vehicles, ~6 ms for 5,000.
# Stored samples of some vehicles within (since, until] each, oldest first: what a core replays
# to catch up with what was committed without it. Streamed through a server-side cursor.
_SAMPLES_BETWEEN = """
SELECT p.vehicle, (extract(epoch FROM p.time) * 1000)::bigint, p.lat, p.lon, p.speed_kmh,
       p.heading_deg, p.soc_pct, p.pack_v, p.pack_a, p.aux_v, p.odometer_m, p.locked, p.ignition,
       p.immobilised, p.charging, p.flags, (extract(epoch FROM p.received_at) * 1000)::bigint
FROM unnest(%(vehicles)s::int[], %(since)s::timestamptz[], %(until)s::timestamptz[])
     AS s(vehicle, since, until)
JOIN positions p ON p.vehicle = s.vehicle AND p.time > s.since AND p.time <= s.until
ORDER BY p.time, p.vehicle"""

_ADVANCED_STATES = """
SELECT s.vehicle, (extract(epoch FROM s.time) * 1000)::bigint, s.geofence,
       CASE WHEN (s.battery_state->>'t')::bigint > k.known THEN s.battery_state END,
       (extract(epoch FROM s.fix_time) * 1000)::bigint, s.lat, s.lon
FROM unnest(%b::int4[], %b::int8[]) AS k(vehicle, known)
JOIN vehicle_state s ON s.vehicle = k.vehicle
WHERE s.time > timestamptz 'epoch' + k.known * interval '1 millisecond'"""

_INSERT_EVENTS = """
INSERT INTO events (time, vehicle, source, type, detail)
SELECT e.time, e.vehicle, e.source, e.type, e.detail::jsonb
FROM unnest(%s::timestamptz[], %s::int4[], %s::text[], %s::text[], %s::text[])
     AS e(time, vehicle, source, type, detail)
ON CONFLICT (vehicle, time, type, source) DO NOTHING
RETURNING source"""

# A status only changes presence if it is not older than the one that set it; vehicles that
# left the registry are skipped rather than failing the batch on the foreign key. A change of
# `online` (not a repeated status) is announced as vehicle.online / vehicle.offline in the same
# statement: `prev` reads the rows as they were before the upsert (one snapshot for the whole
# statement; set_presence locks the rows first, so a concurrent writer's change is seen).
_SET_PRESENCE = """
WITH p AS (
  SELECT p.* FROM unnest(%s::int4[], %s::bool[], %s::timestamptz[]) AS p(vehicle, online, t)
  JOIN vehicles v ON v.id = p.vehicle
), prev AS (
  SELECT s.vehicle, s.online, s.comms_lost_at, s.last_seen, s.presence_changed_at
  FROM vehicle_state s JOIN p ON p.vehicle = s.vehicle
), up AS (
  INSERT INTO vehicle_state AS s (vehicle, online, presence_changed_at, last_seen, updated_at)
  SELECT p.vehicle, p.online, p.t, CASE WHEN p.online THEN p.t END, now() FROM p
  ON CONFLICT (vehicle) DO UPDATE SET
    online = EXCLUDED.online,
    presence_changed_at = EXCLUDED.presence_changed_at,
    last_seen = CASE WHEN EXCLUDED.online THEN greatest(s.last_seen, EXCLUDED.last_seen)
                     ELSE s.last_seen END,
    comms_lost_at = CASE WHEN EXCLUDED.online THEN NULL ELSE s.comms_lost_at END,
    updated_at = now()
  WHERE s.presence_changed_at IS NULL OR EXCLUDED.presence_changed_at >= s.presence_changed_at
  RETURNING s.vehicle, s.online, s.presence_changed_at
)
INSERT INTO events (time, vehicle, source, type, detail)
SELECT up.presence_changed_at, up.vehicle, 'vehicle',
       CASE WHEN up.online THEN 'vehicle.online' ELSE 'vehicle.offline' END,
       CASE WHEN up.online
            THEN jsonb_build_object('cause', 'status',
                                    'after_comms_lost', prev.comms_lost_at IS NOT NULL,
                                    'offline_since', prev.presence_changed_at)
            ELSE jsonb_build_object('cause', 'status', 'last_seen', prev.last_seen) END
FROM up JOIN prev ON prev.vehicle = up.vehicle
WHERE prev.online <> up.online AND (up.online = false OR prev.last_seen IS NOT NULL)
ON CONFLICT (vehicle, time, type, source) DO NOTHING"""

_LOCK_PRESENCE = (
    "SELECT vehicle FROM vehicle_state WHERE vehicle = ANY(%s) ORDER BY vehicle FOR UPDATE"
)

# Silence past the presence timeout: offline, announced once (the row is offline afterwards).
_EXPIRE_PRESENCE = """
WITH gone AS (
  UPDATE vehicle_state SET online = false, presence_changed_at = %(now)s, updated_at = now()
  WHERE online AND (last_seen IS NULL OR last_seen < %(cutoff)s)
  RETURNING vehicle, last_seen
), announced AS (
  INSERT INTO events (time, vehicle, source, type, detail)
  SELECT %(now)s, vehicle, 'vehicle', 'vehicle.offline',
         jsonb_build_object('cause', 'timeout', 'last_seen', last_seen)
  FROM gone
  ON CONFLICT (vehicle, time, type, source) DO NOTHING
)
SELECT vehicle FROM gone"""

# Silence past the longer comms-lost timeout: vehicle.comms_lost, once until heard again.
_COMMS_LOST = """
WITH lost AS (
  UPDATE vehicle_state SET comms_lost_at = %(now)s, updated_at = now()
  WHERE NOT online AND comms_lost_at IS NULL AND last_seen < %(cutoff)s
  RETURNING vehicle, last_seen
), announced AS (
  INSERT INTO events (time, vehicle, source, type, detail)
  SELECT %(now)s, vehicle, 'vehicle', 'vehicle.comms_lost',
         jsonb_build_object('last_seen', last_seen)
  FROM lost
  ON CONFLICT (vehicle, time, type, source) DO NOTHING
)
SELECT vehicle FROM lost"""

_REGISTER = """
INSERT INTO vehicles (vehicle_ref, device_id, vehicle_type)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
ON CONFLICT (vehicle_ref) DO UPDATE
  SET device_id = EXCLUDED.device_id, vehicle_type = EXCLUDED.vehicle_type
RETURNING device_id, id"""

_SELECT_VEHICLE_TYPES = (
    "SELECT " + ", ".join(VEHICLE_TYPE_COLUMNS) + " FROM vehicle_types ORDER BY id"
)
_UPSERT_VEHICLE_TYPE = (
    "INSERT INTO vehicle_types ("
    + ", ".join(VEHICLE_TYPE_COLUMNS)
    + ") VALUES ("
    + ", ".join(f"%({c})s" for c in VEHICLE_TYPE_COLUMNS)
    + ") ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in VEHICLE_TYPE_COLUMNS if c != "id")
    + ", updated_at = now()"
)


class UnknownVehicleType(ValueError):
    """A registration names a vehicle type the registry does not hold."""

    def __init__(self, unknown: Sequence[str], known: Sequence[str]) -> None:
        self.unknown = sorted(set(unknown))
        self.known = sorted(known)
        super().__init__(
            f"unknown vehicle type {', '.join(map(repr, self.unknown))}: "
            f"known types are {', '.join(self.known)}"
        )


@dataclass(frozen=True)
class _PreparedWrite:
    """Everything a write sends, computed once (outside the transaction and its retries)."""

    rows: int
    positions_copy: bytes
    state_copy: bytes
    days: list[date]  # UTC days of the samples, for creating missing partitions
    event_params: tuple | None
    json_params: list[tuple[str, tuple]]  # (vehicle_state column, its unnest parameters)
    battery_params: tuple | None
    trip_starts: list[_trips.Boundary] = field(default_factory=list)
    trip_ends: list[_trips.Boundary] = field(default_factory=list)

    @classmethod
    def build(
        cls, batch: TelemetryBatch, events: Sequence[Event], derived: Derived
    ) -> _PreparedWrite:
        positions_copy = state_copy = b""
        days: list[date] = []
        if len(batch):
            positions_copy = wire.copy_stream(
                [to_wire(batch) for _, _, to_wire in _POSITION_COLUMNS]
            )
            state_copy = wire.copy_stream(_state_fields(batch))
            days = _partitions.days_of(batch.time_ms)
        event_params = None
        if events:  # a handful per batch: plain Python values are fine here
            event_params = (
                [_utc(e.time_ms) for e in events],
                [e.vehicle for e in events],
                [e.source for e in events],
                [e.type for e in events],
                [None if e.detail is None else orjson.dumps(e.detail).decode() for e in events],
            )
        json_params = []
        for column, by_vehicle in derived.vehicle_json.items():
            if column not in VEHICLE_JSON_COLUMNS:
                raise ValueError(f"vehicle_state has no JSON column {column!r}")
            if by_vehicle:
                vehicles = sorted(by_vehicle)  # one lock order for every writer: no deadlocks
                json_params.append(
                    (
                        column,
                        (
                            vehicles,
                            [
                                orjson.dumps(
                                    by_vehicle[v], option=orjson.OPT_SERIALIZE_NUMPY
                                ).decode()
                                for v in vehicles
                            ],
                        ),
                    )
                )
        battery_params = None
        if derived.battery_health:
            battery_params = tuple(list(col) for col in zip(*derived.battery_health))
        return cls(
            len(batch),
            positions_copy,
            state_copy,
            days,
            event_params,
            json_params,
            battery_params,
            list(derived.trip_starts),
            list(derived.trip_ends),
        )


def _state_fields(batch: TelemetryBatch) -> list[wire.Field]:
    """The vehicle_state_staging rows of a batch, one per vehicle, as COPY columns."""
    order = np.lexsort((batch.time_ms, batch.vehicle))  # by vehicle, then time (stable)
    group_start = np.flatnonzero(np.r_[True, np.diff(batch.vehicle[order]) != 0])
    newest = order[np.r_[group_start[1:], len(order)] - 1]  # the later row of a tie in time
    vehicles = batch.vehicle[newest]  # ascending
    newest_t = batch.time_ms[newest]
    last_seen = np.maximum.reduceat(batch.received_ms[order], group_start)
    # Where each field is reported (column 0: an unflagged fix), all fields at once: the newest
    # row of each vehicle that reports it is the largest position in `order` within the
    # vehicle's group that does (-1: none). One reduction for every field instead of a dozen
    # small numpy calls per field, which cost 0.3 ms a batch whatever its size.
    present = np.empty((len(order), 1 + len(_STATE_FIELDS)), dtype=bool)
    present[:, 0] = ~np.isnan(batch.lat) & ~np.isnan(batch.lon) & (batch.flags == 0)
    for k, (name, sql_type) in enumerate(_STATE_FIELDS, 1):
        column = getattr(batch, name)
        present[:, k] = column >= 0 if sql_type == "boolean" else ~np.isnan(column)
    position = np.where(present[order], np.arange(len(order))[:, None], -1)
    newest_position = np.maximum.reduceat(position, group_start, axis=0)
    source = np.where(newest_position >= 0, order[newest_position], -1)

    def pick(column: np.ndarray, src: np.ndarray, missing) -> np.ndarray:
        values = column[np.maximum(src, 0)]
        values[src < 0] = missing
        return values

    fix = source[:, 0]
    fields = [
        wire.int4(vehicles),
        wire.timestamptz(newest_t),
        wire.timestamptz(batch.received_ms[newest]),
        wire.int2(batch.flags[newest]),
        wire.timestamptz(last_seen),
        wire.timestamptz(pick(batch.time_ms, fix, 0), fix < 0),
        wire.float8(pick(batch.lat, fix, np.nan)),
        wire.float8(pick(batch.lon, fix, np.nan)),
    ]
    for k, (name, sql_type) in enumerate(_STATE_FIELDS, 1):
        column, src = getattr(batch, name), source[:, k]
        if sql_type == "boolean":
            fields.append(wire.tristate(pick(column, src, -1)))
        else:
            to_wire = wire.float4 if sql_type == "real" else wire.float8
            fields.append(to_wire(pick(column, src, np.nan)))
        t = pick(batch.time_ms, src, 0)
        fields.append(wire.timestamptz(t, (src < 0) | (t == newest_t)))
    return fields


async def _copy_in(cur: AsyncCursor, statement: str, stream: bytes) -> None:
    """Send a complete binary COPY stream. As a memoryview: psycopg sends a stream larger than
    128 KiB in slices, and a slice of bytes is a copy (1.3 ms for the 700 KB of a batch of
    5,000 samples, fresh pages each time), a slice of a memoryview is not."""
    async with cur.copy(statement) as copy:
        await copy.write(memoryview(stream))


def _is_missing_partition(exc: psycopg.Error) -> bool:
    return isinstance(exc, psycopg.errors.CheckViolation) and (
        exc.diag.message_primary or ""
    ).startswith("no partition of relation")


async def _configure(conn: AsyncConnection) -> None:
    """Prepare each new pooled connection: its staging tables."""
    for ddl in _CREATE_STAGING:
        await conn.execute(ddl)


def _now_ms() -> int:
    return int(time.time() * 1000)


class TelemetryStore:
    """The ingest path's access to PostgreSQL. Open with `await TelemetryStore.open(dsn)`."""

    def __init__(
        self, pool: AsyncConnectionPool, operation_deadline_s: float | None = None
    ) -> None:
        self._pool = pool
        self._deadline_s = operation_deadline_s

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 4,
        timeout_s: float = 5.0,
        operation_deadline_s: float | None = None,
    ) -> TelemetryStore:
        """Open the pool and check the server answers within timeout_s (else StoreUnavailable).

        timeout_s is also how long an operation waits for a pooled connection during an
        outage before it gives up with StoreUnavailable. operation_deadline_s bounds every
        connection()/transaction() block (telemetry/store/_pool.py, pooled_connection): the
        HTTP API's store has one, so that a request never waits for ever on a database that
        hangs; the ingest path has none (a slow commit is retried, not abandoned).
        """
        pool = await open_pool(
            dsn,
            name="fleetgate-store",
            application_name="fleetgate",
            pool_min=pool_min,
            pool_max=pool_max,
            timeout_s=timeout_s,
            configure=_configure,
            check=AsyncConnectionPool.check_connection,
        )
        return cls(pool, operation_deadline_s)

    async def close(self) -> None:
        await self._pool.close()

    @property
    def pool(self) -> AsyncConnectionPool:
        """The connection pool, for the rooms that keep their own queries (commands)."""
        return self._pool

    async def __aenter__(self) -> TelemetryStore:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- plumbing -------------------------------------------------------------------------------

    def _connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A pooled connection; connection-level failures come out as StoreUnavailable."""
        return pooled_connection(self._pool, self._deadline_s)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncCursor]:
        """A cursor in one transaction: committed when the block ends, rolled back on error."""
        async with pooled_transaction(self._pool, self._deadline_s) as conn:
            yield conn.cursor()

    # Public names of the two above, for the rooms that keep their own queries over the same
    # pool and error translation (the API's reads, the commands store).
    connection = _connection
    transaction = _transaction

    async def check_writable(self) -> str | None:
        """None when the server answers and takes writes; else the reason (readiness)."""
        try:
            async with self._connection() as conn:
                cur = await conn.execute(
                    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')"
                )
                recovery, read_only = await cur.fetchone()
        except StoreUnavailable as exc:
            return str(exc)[:200]
        if recovery:
            return "the database is a standby (in recovery)"
        if read_only == "on":
            return "the database is read-only"
        return None

    # --- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
        """A new key and its plaintext, which is shown once and never stored."""
        try:
            async with self._transaction() as cur:
                return await _api_keys.create(cur, name, scopes)
        except psycopg.errors.UniqueViolation as exc:
            raise ValueError(f"an API key named {name!r} exists already") from exc

    async def verify_api_key(self, key: str) -> ApiKey:
        """The key's record, or InvalidApiKey; notes when it was last used."""
        async with self._transaction() as cur:
            record = await _api_keys.verify(cur, key)
            await _api_keys.touch(cur, record.id)
            return record

    async def list_api_keys(self) -> list[ApiKey]:
        async with self._connection() as conn:
            return await _api_keys.list_all(conn.cursor())

    async def revoke_api_key(self, name_or_id: str) -> bool:
        async with self._transaction() as cur:
            return await _api_keys.revoke(cur, name_or_id)

    # --- registry -------------------------------------------------------------------------------

    async def load_registry(self) -> dict[str, Device]:
        """device_id -> Device for every registered vehicle."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT device_id, id, vehicle_ref, vehicle_type FROM vehicles"
            )
            return {d: Device(d, v, ref, t) for d, v, ref, t in await cur.fetchall()}

    async def load_devices(self, device_ids: Sequence[str]) -> dict[str, Device]:
        """device_id -> Device for those of these ids that are registered (one indexed query:
        the gateway asks for ids it met in a batch and does not know yet)."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT device_id, id, vehicle_ref, vehicle_type FROM vehicles "
                "WHERE device_id = ANY(%s)",
                (list(device_ids),),
            )
            return {d: Device(d, v, ref, t) for d, v, ref, t in await cur.fetchall()}

    async def quarantine(self, messages: Sequence[QuarantinedMessage]) -> None:
        """Keep messages the gateway failed to process, verbatim (table quarantined_messages)."""
        async with self._transaction() as cur:
            await cur.executemany(
                "INSERT INTO quarantined_messages (received_at, transport, kind, device_id, "
                "content_type, payload, error) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        _utc(m.received_ms),
                        m.transport,
                        m.kind,
                        _printable(m.device_id),
                        _printable(m.content_type) if m.content_type is not None else None,
                        m.payload,
                        _printable(m.error),
                    )
                    for m in messages
                ],
            )

    async def vehicle_types(self) -> dict[str, VehicleType]:
        """The vehicle type registry: id -> VehicleType, in id order."""
        async with self._connection() as conn:
            cur = await conn.execute(_SELECT_VEHICLE_TYPES)
            return {r[0]: VehicleType(*r) for r in await cur.fetchall()}

    async def upsert_vehicle_types(self, types: Sequence[VehicleType]) -> None:
        """Add vehicle types or change existing ones by id, all in one transaction (a VehicleType
        is valid by construction; the table's checks say the same)."""
        if not types:
            return
        async with self._transaction() as cur:
            await cur.executemany(_UPSERT_VEHICLE_TYPE, [t.to_dict() for t in types])

    async def register_vehicles(self, regs: list[VehicleRegistration]) -> dict[str, int]:
        """Create or update vehicles by vehicle_ref (idempotent); device_id -> vehicles.id.

        A vehicle_ref registered again with another device_id gets that device (a TCU swap);
        a device_id already fitted to another vehicle is a RegistrationConflict; a vehicle type
        not in the registry is an UnknownVehicleType (nothing is registered).
        """
        by_ref = {r.vehicle_ref: r for r in regs}  # the last registration of a ref wins
        seen: dict[str, str] = {}
        for r in by_ref.values():
            _validate(r)
            if seen.setdefault(r.device_id, r.vehicle_ref) != r.vehicle_ref:
                raise RegistrationConflict(
                    f"device {r.device_id!r} is given to two vehicles: "
                    f"{seen[r.device_id]!r} and {r.vehicle_ref!r}"
                )
        if not by_ref:
            return {}
        rows = list(by_ref.values())
        try:
            async with self._transaction() as cur:
                await _check_vehicle_types(cur, {r.vehicle_type for r in rows})
                await cur.execute(
                    _REGISTER,
                    (
                        [r.vehicle_ref for r in rows],
                        [r.device_id for r in rows],
                        [r.vehicle_type for r in rows],
                    ),
                )
                return dict(await cur.fetchall())
        except psycopg.errors.UniqueViolation as exc:
            raise RegistrationConflict(
                f"a device is already fitted to another vehicle: {exc.diag.message_detail}"
            ) from exc

    # --- the ingest path ------------------------------------------------------------------------

    async def write(
        self, batch: TelemetryBatch, events: Sequence[Event] = (), derived: Derived | None = None
    ) -> WriteResult:
        """Store a batch of samples, events and what the cores derived, in one transaction.

        events: device, geofence or battery events (anything with vehicle, time_ms, type, detail,
        source). Samples already stored (same vehicle and time) are counted as duplicates; so
        are repeats within the batch. A sample for a day without a partition gets one. Data the
        database refuses raises DataRefused (and nothing is stored), an outage StoreUnavailable.
        """
        derived = derived or Derived()
        if not len(batch) and not events and not derived:
            return WriteResult(0, 0, 0)
        prepared = _PreparedWrite.build(batch, events, derived)
        try:
            return await self._write_prepared(prepared)
        except psycopg.Error as exc:  # connection trouble is StoreUnavailable by now
            raise DataRefused(str(exc) or type(exc).__name__) from exc

    async def write_history(self, batch: TelemetryBatch) -> WriteResult:
        """Store a large batch of past samples (a migration's history) with the vehicles' state,
        as write() does, only faster where nothing is stored yet: when no stored sample lies in
        any of the batch's vehicles' time spans, the rows are copied straight into positions
        instead of through the deduplicating staging table. A span that holds stored samples,
        or a concurrent writer that stores one of the rows first, takes write()'s path. Repeats
        within the batch count as duplicates."""
        if not len(batch):
            return WriteResult(0, 0, 0)
        order = np.lexsort((batch.time_ms, batch.vehicle))
        vehicle, time_ms = batch.vehicle[order], batch.time_ms[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (vehicle[1:] != vehicle[:-1]) | (time_ms[1:] != time_ms[:-1])
        unique = batch.take(order[first])
        repeats = len(batch) - len(unique)
        prepared = _PreparedWrite.build(unique, (), Derived())
        starts = np.flatnonzero(np.r_[True, unique.vehicle[1:] != unique.vehicle[:-1]])
        ends = np.r_[starts[1:], len(unique)] - 1
        spans = (
            unique.vehicle[starts].tolist(),
            [_utc(t) for t in unique.time_ms[starts].tolist()],
            [_utc(t) for t in unique.time_ms[ends].tolist()],
        )
        try:
            try:
                result = await self._write_prepared(prepared, direct_if_new=spans)
            except psycopg.errors.UniqueViolation:
                result = await self._write_prepared(prepared)  # a concurrent writer was first
        except psycopg.Error as exc:
            raise DataRefused(str(exc) or type(exc).__name__) from exc
        return WriteResult(result.inserted, result.duplicates + repeats, 0)

    async def _write_prepared(
        self, prepared: _PreparedWrite, direct_if_new: tuple | None = None
    ) -> WriteResult:
        try:
            async with self._transaction() as cur:
                return await self._write_in(cur, prepared, direct_if_new)
        except psycopg.errors.CheckViolation as exc:
            if not _is_missing_partition(exc):
                raise
        # After a long outage of maintenance, or for old data, a day may have no partition:
        # make the ones this batch needs and write it again, rather than refuse the rows.
        await self._create_partitions(prepared.days)
        async with self._transaction() as cur:
            return await self._write_in(cur, prepared, direct_if_new)

    async def _write_in(
        self, cur: AsyncCursor, w: _PreparedWrite, direct_if_new: tuple | None = None
    ) -> WriteResult:
        """The steps of one write's transaction. Later stages that must commit atomically
        with the samples (geofence events, zone membership, battery estimates) add theirs here.
        direct_if_new: (vehicles, first times, last times) of a batch whose rows are unique:
        straight into positions when nothing is stored in those spans (write_history)."""
        inserted = await self._write_positions(cur, w, direct_if_new)
        events_by_source: dict[str, int] = {}
        if w.rows:
            await _copy_in(cur, _COPY_STATE, w.state_copy)
            await cur.execute(_UPSERT_STATE_ANNOUNCING)
            for (source,) in await cur.fetchall():  # vehicles back from silence: a few
                events_by_source[source] = events_by_source.get(source, 0) + 1
        if w.event_params is not None:
            await cur.execute(_INSERT_EVENTS, w.event_params)
            for (source,) in await cur.fetchall():  # a handful per batch
                events_by_source[source] = events_by_source.get(source, 0) + 1
        for column, params in w.json_params:
            await cur.execute(_UPSERT_JSON.format(col=column), params)
        if w.battery_params is not None:
            await cur.execute(_INSERT_BATTERY_HEALTH, w.battery_params)
        if w.trip_starts or w.trip_ends:
            started = await _trips.write_boundaries(cur, w.trip_starts, w.trip_ends)
            if started:
                events_by_source["trip"] = events_by_source.get("trip", 0) + started
        return WriteResult(
            inserted, w.rows - inserted, sum(events_by_source.values()), events_by_source
        )

    @staticmethod
    async def _write_positions(
        cur: AsyncCursor, w: _PreparedWrite, direct_if_new: tuple | None
    ) -> int:
        """The batch's positions, deduplicated on (vehicle, time); how many were new."""
        if not w.rows:
            return 0
        if direct_if_new is not None:
            await cur.execute(_ANY_STORED_IN_SPANS, direct_if_new)
            if not (await cur.fetchone())[0]:
                # Nothing stored in these spans (a migration's history): no trip of the vehicle
                # has samples there to be stale for, so mark_stale's staging step is not needed.
                await _copy_in(cur, _COPY_POSITIONS_DIRECT, w.positions_copy)
                return w.rows
        await _copy_in(cur, _COPY_POSITIONS, w.positions_copy)
        await cur.execute(_INSERT_POSITIONS)
        inserted = cur.rowcount
        await _trips.mark_stale(cur)  # a late upload of a closed trip's samples
        return inserted

    async def save_vehicle_json(self, column: str, by_vehicle: Mapping[int, Any]) -> None:
        """Store a core's per-vehicle state outside a batch (a graceful stop saves it whole)."""
        prepared = _PreparedWrite.build(
            TelemetryBatch.empty(), (), Derived(vehicle_json={column: dict(by_vehicle)})
        )
        async with self._transaction() as cur:
            for col, params in prepared.json_params:
                await cur.execute(_UPSERT_JSON.format(col=col), params)

    async def _create_partitions(self, days: list[date]) -> None:
        async with self._transaction() as cur:
            await _partitions.apply(cur, days, [])

    # --- presence -------------------------------------------------------------------------------

    async def set_presence(self, updates: list[tuple[int, bool, int]]) -> None:
        """Apply (vehicle, online, t_ms) from status messages, unless older than the stored one."""
        latest: dict[int, tuple[bool, int]] = {}
        for vehicle, online, t_ms in updates:  # one row per vehicle: its newest status
            if vehicle not in latest or t_ms >= latest[vehicle][1]:
                latest[vehicle] = (online, t_ms)
        if not latest:
            return
        vehicles = sorted(latest)
        async with self._transaction() as cur:
            # Every gateway process applies every status (status topics are not shared): the
            # rows are locked first, in one order, so that a second process applying the same
            # status waits and then sees the first one's change, instead of announcing it again.
            await cur.execute(_LOCK_PRESENCE, (vehicles,))
            await cur.execute(
                _SET_PRESENCE,
                (
                    vehicles,
                    [latest[v][0] for v in vehicles],
                    [_utc(latest[v][1]) for v in vehicles],
                ),
            )

    async def expire_presence(self, timeout_s: float) -> list[int]:
        """Set offline the vehicles online but not seen for timeout_s, each with its
        vehicle.offline event in the same transaction; returns their ids."""
        return await self._silent_since(_EXPIRE_PRESENCE, timeout_s)

    async def mark_comms_lost(self, timeout_s: float) -> list[int]:
        """Mark the offline vehicles not seen for timeout_s as lost, each with its
        vehicle.comms_lost event in the same transaction (once until they are heard again);
        returns their ids."""
        return await self._silent_since(_COMMS_LOST, timeout_s)

    async def _silent_since(self, query: str, timeout_s: float) -> list[int]:
        now_ms = _now_ms()
        async with self._transaction() as cur:
            await cur.execute(
                query, {"now": _utc(now_ms), "cutoff": _utc(now_ms - timeout_s * 1000)}
            )
            return sorted(v for (v,) in await cur.fetchall())

    async def load_last_fixes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(vehicles, fix time ms, lat, lon) of every vehicle's newest plausible fix."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT vehicle, (extract(epoch FROM fix_time) * 1000)::bigint, lat, lon "
                "FROM vehicle_state WHERE fix_time IS NOT NULL ORDER BY vehicle"
            )
            rows = await cur.fetchall()
        if not rows:
            return (
                np.empty(0, np.int64),
                np.empty(0, np.int64),
                np.empty(0, np.float64),
                np.empty(0, np.float64),
            )
        vehicles, t, lat, lon = zip(*rows)
        return (
            np.array(vehicles, np.int64),
            np.array(t, np.int64),
            np.array(lat, np.float64),
            np.array(lon, np.float64),
        )

    async def load_sample_times(self) -> tuple[np.ndarray, np.ndarray]:
        """(vehicles, newest stored sample time in ms) of every vehicle in vehicle_state."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT vehicle, (extract(epoch FROM time) * 1000)::bigint FROM vehicle_state "
                "WHERE time IS NOT NULL"
            )
            rows = await cur.fetchall()
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        vehicles, t = zip(*rows)
        return np.array(vehicles, np.int64), np.array(t, np.int64)

    async def samples_between(
        self, ranges: Mapping[int, tuple[int, int]], *, page: int = 50_000
    ) -> AsyncIterator[TelemetryBatch]:
        """The stored samples of each vehicle with since < time <= until (ranges: vehicle ->
        (since_ms, until_ms)), as batches of up to `page` rows in time order."""
        if not ranges:
            return
        vehicles = sorted(ranges)
        params = {
            "vehicles": vehicles,
            "since": [_utc(ranges[v][0]) for v in vehicles],
            "until": [_utc(ranges[v][1]) for v in vehicles],
        }
        names = list(TelemetryBatch.DTYPES)
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(name="fleetgate_samples_between", binary=True)
            await cur.execute(_SAMPLES_BETWEEN, params)
            while rows := await cur.fetchmany(page):
                batch = {}
                for name, col in zip(names, zip(*rows)):
                    dtype = TelemetryBatch.DTYPES[name]
                    if name in STATE_COLUMNS:
                        col = [-1 if x is None else int(x) for x in col]
                    batch[name] = np.array(
                        col, dtype=np.float64 if np.issubdtype(dtype, np.floating) else None
                    ).astype(dtype)
                yield TelemetryBatch(**batch)

    async def advanced_states(
        self, vehicles: Sequence[int], known_ms: Sequence[int]
    ) -> list[AdvancedState]:
        """The vehicles whose newest stored sample is newer than known_ms (what the caller has
        seen of each; -1 for nothing), with their stored core states and newest plausible fix.
        battery_state is None unless it includes samples newer than known_ms. One query; no
        rows at all while a single process writes every vehicle."""
        async with self._connection() as conn:
            cur = await conn.execute(
                _ADVANCED_STATES, (list(vehicles), list(known_ms)), prepare=True
            )
            rows = await cur.fetchall()
        return [AdvancedState(*row) for row in rows]

    async def count_online(self) -> tuple[int, int]:
        """(vehicles online, vehicles with a state row), for the fleet gauges."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE online), count(*) FROM vehicle_state"
            )
            online, total = await cur.fetchone()
        return int(online), int(total)

    async def load_vehicle_json(self, column: str) -> tuple[dict[int, Any], dict[int, int]]:
        """A core's stored per-vehicle state (vehicle -> value) and each vehicle's newest sample
        time in ms (what the core has seen up to), for resuming after a restart."""
        if column not in VEHICLE_JSON_COLUMNS:
            raise ValueError(f"vehicle_state has no JSON column {column!r}")
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT vehicle, {column}, (extract(epoch FROM time) * 1000)::bigint "
                f"FROM vehicle_state WHERE {column} IS NOT NULL"
            )
            rows = await cur.fetchall()
        return ({v: value for v, value, _ in rows}, {v: t for v, _, t in rows if t is not None})

    # --- trips ----------------------------------------------------------------------------------

    async def load_lock_states(self) -> dict[int, tuple[int, bool | None]]:
        """vehicle -> (newest stored sample time ms, newest reported `locked`), for the trips
        core to continue from after a restart."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT vehicle, (extract(epoch FROM time) * 1000)::bigint, locked "
                "FROM vehicle_state WHERE time IS NOT NULL"
            )
            return {v: (int(t), locked) for v, t, locked in await cur.fetchall()}

    async def measure_trips(
        self, measure: Callable[[_trips.TripToMeasure], dict[str, Any]], limit: int = 50
    ) -> list[_trips.MeasuredTrip]:
        """Measure closed and stale trips (see telemetry/store/_trips.py): figures, trip.ended or
        trip.updated, in one transaction. Several processes may call it at once."""
        async with self._transaction() as cur:
            return await _trips.measure_pending(cur, measure, limit)

    # --- zones ----------------------------------------------------------------------------------

    async def zone_set_version(self) -> int:
        """Bumped by every change to the zones or the global rules (cheap to poll)."""
        async with self._connection() as conn:
            return await _zones.version(conn.cursor())

    async def load_zones(self) -> ZoneRows:
        async with self._transaction() as cur:
            return await _zones.load(cur)

    async def put_zones(self, rows: list[dict[str, Any]]) -> int:
        """Create or replace zones by id (rows as geofence.Zone.to_row()); the new version."""
        async with self._transaction() as cur:
            await _zones.put(cur, rows)
            return await _zones.version(cur)

    async def replace_zones(
        self, rows: list[dict[str, Any]], global_rules: list[dict[str, Any]]
    ) -> int:
        """Make the zone set exactly these zones and global rules; the new version."""
        async with self._transaction() as cur:
            await _zones.replace(cur, rows, global_rules)
            return await _zones.version(cur)

    async def delete_zone(self, zone_id: str) -> bool:
        async with self._transaction() as cur:
            return await _zones.delete(cur, zone_id)

    # --- fleet migrations (migration/) ----------------------------------------------------------

    async def retention_days(self) -> int | None:
        """How many days of samples the store keeps (storage_settings), None if unlimited."""
        async with self._connection() as conn:
            cur = await conn.execute("SELECT retention_days FROM storage_settings")
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def record_migration_run(
        self,
        *,
        batch: str,
        source: str,
        origin: str,
        delta: bool,
        outcome: str,
        started_at: datetime,
        report: dict[str, Any],
        watermarks: Mapping[int, int] | None = None,
    ) -> int:
        """Record a migration run and move its vehicles' watermarks (vehicle -> newest sample
        time in ms imported from `source`) in one transaction; the run's id."""
        async with self._transaction() as cur:
            run = await _migration_runs.record(
                cur,
                batch=batch,
                source=source,
                origin=origin,
                delta=delta,
                outcome=outcome,
                started_at=started_at,
                report=report,
            )
            await _migration_runs.advance_watermarks(cur, source, dict(watermarks or {}), run)
            return run

    async def migration_runs(
        self, batch: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[MigrationRun]:
        """The newest runs first (with ids below `before`), of one batch or all."""
        async with self._connection() as conn:
            return await _migration_runs.runs(conn.cursor(), batch, limit, before)

    async def migration_watermarks(self, source: str) -> dict[int, int]:
        """vehicle -> newest sample time (ms) imported from `source` so far."""
        async with self._connection() as conn:
            return await _migration_runs.watermarks(conn.cursor(), source)

    async def record_migration_evidence(
        self,
        kind: str,
        *,
        batch: str | None,
        passed: bool,
        detail: dict[str, Any],
        recorded_at: datetime | None = None,
    ) -> int:
        """Record one piece of go-live evidence (kind one of EVIDENCE_KINDS, else ValueError
        before anything is written); recorded_at defaults to the database's now(). Its id."""
        _migration_evidence.check_kind(kind)
        async with self._transaction() as cur:
            return await _migration_evidence.record(
                cur, kind, batch=batch, passed=passed, detail=detail, recorded_at=recorded_at
            )

    async def migration_evidence(
        self, kind: str | None = None, batch: str | None = None, limit: int = 100
    ) -> list[MigrationEvidence]:
        """The newest evidence first (by recorded_at), of one kind and/or batch or all."""
        async with self._connection() as conn:
            return await _migration_evidence.evidence(conn.cursor(), kind, batch, limit)

    # --- housekeeping ---------------------------------------------------------------------------

    async def maintain(self) -> MaintenanceReport:
        """Hourly housekeeping: partitions ahead and past retention (native), policies in place
        (TimescaleDB). Only catalog reads when nothing is due; safe from several processes."""
        async with self._transaction() as cur:
            await cur.execute("SELECT storage, retention_days FROM storage_settings")
            storage, retention_days = await cur.fetchone()
            if storage == "native":
                changes = await _partitions.maintain(cur, retention_days)
                return MaintenanceReport(storage, changes.created, changes.dropped)
            wrong = await _policies.out_of_line(cur, retention_days)
            if wrong:
                await cur.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (_partitions.MAINTENANCE_LOCK,)
                )
                wrong = await _policies.out_of_line(cur, retention_days)
                await _policies.put_in_line(cur, retention_days, wrong)
            return MaintenanceReport(
                storage, policies_fixed=wrong, failing_jobs=await _policies.failing_jobs(cur)
            )


async def _check_vehicle_types(cur: AsyncCursor, wanted: set[str]) -> None:
    # Read in the registering transaction; the foreign key keeps a type from vanishing meanwhile.
    await cur.execute("SELECT id FROM vehicle_types")
    known = [r[0] for r in await cur.fetchall()]
    if wanted - set(known):
        raise UnknownVehicleType(sorted(wanted - set(known)), known)


def _validate(r: VehicleRegistration) -> None:
    if not is_device_id(r.device_id):
        raise ValueError(f"device id {r.device_id!r} does not match {DEVICE_ID_RULE}")
    if not isinstance(r.vehicle_type, str) or not r.vehicle_type:
        raise ValueError("vehicle_type must not be empty")
    if not r.vehicle_ref:
        raise ValueError("vehicle_ref must not be empty")


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _printable(text: str) -> str:
    """Text PostgreSQL takes: U+0000 (which text columns refuse) and lone surrogates (which do not
    encode as UTF-8) shown as escapes."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _utc(ms: float) -> datetime:
    return _UNIX_EPOCH + timedelta(milliseconds=ms)
