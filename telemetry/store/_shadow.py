"""The parallel run's shadow batches (migrations/0051) and what both platforms observed of them,
read in columns for the parity core: fleetgate's positions and trips, the legacy platform's
observations (migrations/0050), each as numpy arrays from one binary COPY, no object per value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from psycopg import AsyncCursor

    from telemetry.store._store import TelemetryStore


@dataclass(frozen=True, slots=True)
class ShadowBatch:
    id: int
    name: str
    percent: float
    days: float
    seed: int
    started_at: datetime
    ends_at: datetime
    stopped_at: datetime | None
    fleet_size: int
    by_type: dict[str, int]
    vehicles: list[int]

    def running(self, now: datetime) -> bool:
        return self.stopped_at is None and self.ends_at > now

    def until(self, now: datetime) -> datetime:
        """The end of what a comparison looks at: the stop, the planned end, or now."""
        return min(self.stopped_at or self.ends_at, self.ends_at, max(now, self.started_at))


class ShadowConflict(ValueError):
    """A shadow batch that would overlap a running one; the message says which and why."""


class UnknownShadowBatch(LookupError):
    pass


_BATCH = (
    "SELECT b.id, b.name, b.percent, b.days, b.seed, b.started_at, b.ends_at, b.stopped_at,"
    " b.fleet_size, b.by_type, coalesce(array_agg(v.vehicle ORDER BY v.vehicle)"
    " FILTER (WHERE v.vehicle IS NOT NULL), '{}')"
    " FROM shadow_batches b LEFT JOIN shadow_batch_vehicles v ON v.batch = b.id"
)

# A legacy flag or number from the forwarded attributes (Traccar's names first, then
# fleetgate's): anything else than a JSON boolean or number counts as not reported.
_LEGACY_FLAG = (
    "CASE WHEN jsonb_typeof({v}) = 'boolean' THEN ({v})::boolean::int::int2 ELSE -1::int2 END"
)
_LEGACY_NUMBER = "CASE WHEN jsonb_typeof({v}) = 'number' THEN ({v})::float8 ELSE 'NaN' END"


def _attr(*names: str) -> str:
    return "coalesce(" + ", ".join(f"o.attributes -> '{n}'" for n in names) + ")"


_MS = "(extract(epoch FROM {c}) * 1000)::int8"

_FLEETGATE = (
    "SELECT p.vehicle::int8, " + _MS.format(c="p.time") + ", " + _MS.format(c="p.received_at") + ","
    " coalesce(p.lat, 'NaN'), coalesce(p.lon, 'NaN'), coalesce(p.soc_pct::float8, 'NaN'),"
    " coalesce(p.odometer_m, 'NaN'), coalesce(p.locked::int::int2, -1::int2),"
    " coalesce(p.ignition::int::int2, -1::int2), coalesce(p.immobilised::int::int2, -1::int2)"
    " FROM positions p WHERE p.vehicle = ANY({ids}) AND p.time >= {since} AND p.time <= {until}"
)
_LEGACY_COLUMNS = (
    "SELECT v.id::int8, " + _MS.format(c="o.time") + ", " + _MS.format(c="o.received_at") + ","
    # Traccar forwards a position without a fix as the last known one, marked invalid.
    " CASE WHEN o.valid IS FALSE THEN 'NaN' ELSE coalesce(o.lat, 'NaN') END,"
    " CASE WHEN o.valid IS FALSE THEN 'NaN' ELSE coalesce(o.lon, 'NaN') END,"
    f" {_LEGACY_NUMBER.format(v=_attr('batteryLevel', 'soc_pct'))},"
    f" {_LEGACY_NUMBER.format(v=_attr('odometer', 'odometer_m'))},"
    f" {_LEGACY_FLAG.format(v=_attr('lock', 'locked'))},"
    f" {_LEGACY_FLAG.format(v=_attr('ignition'))},"
    f" {_LEGACY_FLAG.format(v=_attr('blocked', 'immobilised'))}"
)
# Matched to a vehicle on arrival (index vehicle, time), or not yet (the device was registered
# later: by device id, index legacy_observations_unmatched_idx of migration 0051).
_LEGACY = (
    _LEGACY_COLUMNS + " FROM legacy_observations o JOIN vehicles v ON v.id = o.vehicle"
    " WHERE o.vehicle = ANY({ids}) AND o.time >= {since} AND o.time <= {until}"
    " UNION ALL "
    + _LEGACY_COLUMNS + " FROM legacy_observations o JOIN vehicles v"
    " ON v.device_id = o.legacy_device WHERE o.vehicle IS NULL AND v.id = ANY({ids})"
    " AND o.time >= {since} AND o.time <= {until}"
)  # fmt: skip
_TRIPS = (
    "SELECT t.vehicle::int8, " + _MS.format(c="t.started_at") + ", " + _MS.format(c="t.ended_at")
    + ", coalesce(t.distance_m, 'NaN') FROM trips t"
    " WHERE t.vehicle = ANY({ids}) AND t.status IN ('ended', 'closing')"
    " AND t.started_at >= {since} AND t.ended_at <= {until}"
)  # fmt: skip
OBSERVATION_COLUMNS = (
    ("vehicle", ">i8"),
    ("time_ms", ">i8"),
    ("received_ms", ">i8"),
    ("lat", ">f8"),
    ("lon", ">f8"),
    ("soc_pct", ">f8"),
    ("odometer_m", ">f8"),
    ("locked", ">i2"),
    ("ignition", ">i2"),
    ("immobilised", ">i2"),
)
RIDE_COLUMNS = (
    ("vehicle", ">i8"),
    ("started_ms", ">i8"),
    ("ended_ms", ">i8"),
    ("distance_m", ">f8"),
)


class ShadowBatches:
    """Start, stop and read shadow batches; read both sides' observations of one."""

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def fleet(self) -> tuple[list[int], list[str]]:
        """Every registered vehicle's id and type, to pick a sample from."""
        async with self._store.connection() as conn:
            cur = await conn.execute("SELECT id, vehicle_type FROM vehicles ORDER BY id")
            rows = await cur.fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    async def start(
        self,
        name: str,
        *,
        percent: float,
        days: float,
        seed: int,
        vehicles: Sequence[int],
        by_type: dict[str, int],
        fleet_size: int,
        started_at: datetime,
        ends_at: datetime,
    ) -> ShadowBatch:
        """Record a running batch; ShadowConflict (nothing written) when a batch of that name
        runs at started_at or one of the vehicles is in a running batch."""
        async with self._store.transaction() as cur:
            # "Running" depends on the clock, so no constraint can say it: one start at a time.
            await cur.execute("LOCK TABLE shadow_batches IN SHARE ROW EXCLUSIVE MODE")
            await cur.execute(
                "SELECT b.name, count(*) FILTER (WHERE v.vehicle = ANY(%(ids)s)),"
                " min(v.vehicle) FILTER (WHERE v.vehicle = ANY(%(ids)s)), bool_or(b.name = %(n)s)"
                " FROM shadow_batches b JOIN shadow_batch_vehicles v ON v.batch = b.id"
                " WHERE b.stopped_at IS NULL AND b.ends_at > %(at)s GROUP BY b.id, b.name"
                " ORDER BY b.id",
                {"ids": list(vehicles), "n": name, "at": started_at},
            )
            for other, overlap, first, same_name in await cur.fetchall():
                if same_name:
                    raise ShadowConflict(
                        f"shadow batch {name!r} is running; stop it first "
                        f"(fleetgate migrate shadow stop --batch {name})"
                    )
                if overlap:
                    raise ShadowConflict(
                        f"{overlap} of the sampled vehicles (vehicle {first} first) are in "
                        f"running shadow batch {other!r}; a vehicle runs in one batch at a time"
                    )
            await cur.execute(
                "INSERT INTO shadow_batches (name, percent, days, seed, started_at, ends_at,"
                " fleet_size, by_type) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (name, percent, days, seed, started_at, ends_at, fleet_size, Jsonb(by_type)),
            )
            (batch_id,) = await cur.fetchone()
            await cur.execute(
                "INSERT INTO shadow_batch_vehicles (batch, vehicle) SELECT %s, unnest(%s::int[])",
                (batch_id, list(vehicles)),
            )
            return await _one(cur, batch_id)

    async def get(self, name: str) -> ShadowBatch:
        """The newest batch of that name; UnknownShadowBatch when there is none."""
        async with self._store.connection() as conn:
            cur = conn.cursor()
            await cur.execute(
                _BATCH + " WHERE b.id = (SELECT max(id) FROM shadow_batches WHERE name = %s)"
                " GROUP BY b.id",
                (name,),
            )
            row = await cur.fetchone()
        if row is None:
            raise UnknownShadowBatch(f"no shadow batch {name!r}")
        return _batch(row)

    async def all(self) -> list[ShadowBatch]:
        async with self._store.connection() as conn:
            cur = conn.cursor()
            await cur.execute(_BATCH + " GROUP BY b.id ORDER BY b.id DESC")
            return [_batch(r) for r in await cur.fetchall()]

    async def stop(self, name: str, at: datetime) -> ShadowBatch:
        """Stop the running batch of that name at `at`; UnknownShadowBatch when none runs."""
        async with self._store.transaction() as cur:
            await cur.execute(
                "UPDATE shadow_batches SET stopped_at = %(at)s WHERE id = (SELECT max(id) FROM"
                " shadow_batches WHERE name = %(n)s) AND stopped_at IS NULL AND ends_at > %(at)s"
                " AND started_at <= %(at)s RETURNING id",
                {"n": name, "at": at},
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownShadowBatch(f"no running shadow batch {name!r}")
            return await _one(cur, row[0])

    async def observations(
        self, batch: ShadowBatch, until: datetime
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(fleetgate's samples, the legacy platform's, fleetgate's rides) of the batch's
        vehicles from its start to until, as columns (OBSERVATION_COLUMNS, RIDE_COLUMNS)."""
        params = {
            "ids": sql.Literal(batch.vehicles) + sql.SQL("::int[]"),
            "since": sql.Literal(batch.started_at),
            "until": sql.Literal(until),
        }
        async with self._store.connection() as conn:
            cur = conn.cursor()
            fleet = await _copy_columns(cur, _FLEETGATE, params, OBSERVATION_COLUMNS)
            legacy = await _copy_columns(cur, _LEGACY, params, OBSERVATION_COLUMNS)
            rides = await _copy_columns(cur, _TRIPS, params, RIDE_COLUMNS)
        return fleet, legacy, rides


async def _one(cur: AsyncCursor, batch_id: int) -> ShadowBatch:
    await cur.execute(_BATCH + " WHERE b.id = %s GROUP BY b.id", (batch_id,))
    return _batch(await cur.fetchone())


def _batch(row) -> ShadowBatch:
    return ShadowBatch(*row[:10], vehicles=list(row[10]))


_HEADER = 19  # signature (11), flags (4), header extension length (4, zero)


async def _copy_columns(
    cur: AsyncCursor, query: str, params: dict, columns: Sequence[tuple[str, str]]
) -> dict[str, np.ndarray]:
    """A query's rows in binary COPY, parsed as one record array: every column NOT NULL and of
    fixed width (the queries coalesce NULLs to NaN or -1), so no row needs parsing on its own."""
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(
        sql.SQL(query).format(**params)
    )
    chunks = []
    async with cur.copy(statement) as copy:
        async for chunk in copy:
            chunks.append(bytes(chunk))
    data = b"".join(chunks)
    fields: list[tuple[str, str]] = [("_n", ">i2")]
    for name, dtype in columns:
        fields += [(f"_{name}_len", ">i4"), (name, dtype)]
    body = data[_HEADER:-2] if len(data) >= _HEADER + 2 else b""
    rows = np.frombuffer(body, dtype=np.dtype(fields))
    return {name: rows[name].astype(dtype.replace(">", "=")) for name, dtype in columns}
