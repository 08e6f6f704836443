"""The record of fleet migrations (migration_runs) and the per-source, per-vehicle watermarks
of `--since-last-run` (migration_watermarks). The migration room writes them through
TelemetryStore; the API reads the runs from here (it does not import the migration room)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncCursor


@dataclass(frozen=True)
class MigrationRun:
    id: int
    batch: str
    source: str
    origin: str
    delta: bool
    outcome: str  # imported | already_imported | refused
    started_at: datetime
    finished_at: datetime
    imported: dict[str, int]
    skipped: dict[str, int]
    report: dict[str, Any]


_COLUMNS = (
    "id, batch, source, origin, delta, outcome, started_at, finished_at, imported, skipped, report"
)


async def record(
    cur: AsyncCursor,
    *,
    batch: str,
    source: str,
    origin: str,
    delta: bool,
    outcome: str,
    started_at: datetime,
    report: dict[str, Any],
) -> int:
    await cur.execute(
        "INSERT INTO migration_runs (batch, source, origin, delta, outcome, started_at, "
        "imported, skipped, report) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            batch,
            source,
            origin,
            delta,
            outcome,
            started_at,
            orjson.dumps(report.get("imported", {})).decode(),
            orjson.dumps(report.get("skipped", {})).decode(),
            orjson.dumps(report).decode(),
        ),
    )
    (run,) = await cur.fetchone()
    return run


async def runs(
    cur: AsyncCursor, batch: str | None, limit: int, before: int | None = None
) -> list[MigrationRun]:
    await cur.execute(
        f"SELECT {_COLUMNS} FROM migration_runs "
        "WHERE (%(batch)s::text IS NULL OR batch = %(batch)s) "
        "AND (%(before)s::int IS NULL OR id < %(before)s) ORDER BY id DESC LIMIT %(limit)s",
        {"batch": batch, "before": before, "limit": limit},
    )
    return [MigrationRun(*row) for row in await cur.fetchall()]


async def watermarks(cur: AsyncCursor, source: str) -> dict[int, int]:
    """vehicle -> newest imported sample time (ms) of this source."""
    await cur.execute(
        "SELECT vehicle, (extract(epoch FROM time) * 1000)::bigint FROM migration_watermarks "
        "WHERE source = %s",
        (source,),
    )
    return dict(await cur.fetchall())


async def advance_watermarks(
    cur: AsyncCursor, source: str, newest: dict[int, int], run: int
) -> None:
    """Move each vehicle's watermark to `newest` (ms) where that is later."""
    if not newest:
        return
    vehicles = sorted(newest)
    await cur.execute(
        "INSERT INTO migration_watermarks AS w (source, vehicle, time, run) "
        "SELECT %s, v, timestamptz 'epoch' + t * interval '1 millisecond', %s "
        "FROM unnest(%s::int4[], %s::int8[]) AS x(v, t) "
        "ON CONFLICT (source, vehicle) DO UPDATE SET time = EXCLUDED.time, run = EXCLUDED.run "
        "WHERE EXCLUDED.time > w.time",
        (source, run, vehicles, [newest[v] for v in vehicles]),
    )
