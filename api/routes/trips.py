"""Trips: rides from unlock to lock with the figures billing needs, one with its route, and a
CSV export. The figures are stored when the trip is measured, never computed for a query."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import queries
from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem
from api.routes._params import next_page, time_range
from api.schemas import Place, TrackPoint, Trip, TripPage, TripStatus

router = APIRouter(tags=["trips"], responses=PROBLEM_RESPONSES)

_MAX_EXPORT_RANGE = timedelta(days=366)
_ROUTE_PATTERN = "^(none|raw|10s|1m|5m|15m|1h)$"


@router.get(
    "/v1/trips",
    response_model=TripPage,
    response_model_exclude_none=False,
    summary="List trips (newest started last), with filters",
    dependencies=[require("fleet:read")],
)
async def list_trips(
    request: Request,
    vehicle: Annotated[str | None, Query(description="vehicle_ref")] = None,
    start: Annotated[
        datetime | None, Query(alias="from", description="started at or after (RFC 3339)")
    ] = None,
    end: Annotated[datetime | None, Query(alias="to", description="started before")] = None,
    status: TripStatus | None = None,
    after: Annotated[int | None, Query(ge=0, description="cursor: the last trip id seen")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TripPage:
    rows = await _query(request, vehicle, start, end, status, after, limit + 1, timedelta(days=31))
    items = [_trip(r) for r in rows[:limit]]
    next_url = next_page(request, len(rows), items, "id")
    return TripPage(items=items, next=next_url)


@router.get(
    "/v1/trips.csv",
    summary="Export trips as CSV (the same filters as the list)",
    dependencies=[require("fleet:read")],
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "one row per trip"}},
)
async def export_trips(
    request: Request,
    vehicle: Annotated[str | None, Query(description="vehicle_ref")] = None,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    status: TripStatus | None = None,
    after: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Response:
    rows = await _query(request, vehicle, start, end, status, after, limit, _MAX_EXPORT_RANGE)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(queries.TRIP_COLUMNS)
    for r in rows:
        writer.writerow([_csv_value(r[c]) for c in queries.TRIP_COLUMNS])
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="trips.csv"'},
    )


@router.get(
    "/v1/trips/{trip_id}",
    response_model=Trip,
    summary="One trip, with its route at a chosen resolution",
    dependencies=[require("fleet:read")],
)
async def get_trip(
    request: Request,
    trip_id: int,
    route: Annotated[
        str,
        Query(
            pattern=_ROUTE_PATTERN,
            description="none, raw plausible fixes, or one point per bucket",
        ),
    ] = "none",
    max_points: Annotated[int, Query(ge=1, le=10_000)] = 5000,
) -> Trip:
    store = context(request).store
    row = await queries.trip(store, trip_id)
    if row is None:
        raise Problem(404, "unknown-trip", f"no trip {trip_id}")
    trip = _trip(row)
    if route != "none":
        # The trip's own interval, end included (an open trip: up to now).
        until = (row["ended_at"] or datetime.now(row["started_at"].tzinfo)) + timedelta(
            milliseconds=1
        )
        points = await queries.track(
            store, row["vehicle"], row["started_at"], until, route, max_points
        )
        trip.route = [TrackPoint.model_validate(p) for p in points]
    return trip


async def _query(
    request: Request,
    vehicle: str | None,
    start: datetime | None,
    end: datetime | None,
    status: str | None,
    after: int | None,
    limit: int,
    max_range: timedelta,
) -> list[dict[str, Any]]:
    store = context(request).store
    vehicle_id = None
    if vehicle is not None:
        vehicle_id = await queries.vehicle_id(store, vehicle)
        if vehicle_id is None:
            raise Problem(404, "unknown-vehicle", f"no vehicle {vehicle!r}")
    if start is not None or end is not None:
        start, end = time_range(start, end, default=timedelta(days=1), max_range=max_range)
    return await queries.trips(
        store,
        vehicle=vehicle_id,
        start=start,
        end=end,
        status=status,
        after=after,
        limit=limit,
    )


def _trip(row: dict[str, Any]) -> Trip:
    def place(lat: float | None, lon: float | None) -> Place | None:
        return None if lat is None or lon is None else Place(lat=lat, lon=lon)

    fields = {c: row[c] for c in queries.TRIP_COLUMNS if c not in _PLACE_COLUMNS}
    for c in ("unlock_command", "lock_command"):
        fields[c] = None if row[c] is None else str(row[c])
    return Trip(
        **fields,
        start=place(row["start_lat"], row["start_lon"]),
        end=place(row["end_lat"], row["end_lon"]),
    )


_PLACE_COLUMNS = frozenset({"start_lat", "start_lon", "end_lat", "end_lon"})


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
