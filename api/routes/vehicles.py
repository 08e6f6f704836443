"""Vehicles: their latest state with an operational status, and their tracks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from api import queries
from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem
from api.routes._params import next_page, parse_bbox, time_range
from api.schemas import Status, Track, TrackPoint, Vehicle, VehiclePage, VehicleType

router = APIRouter(prefix="/v1/vehicles", tags=["vehicles"], responses=PROBLEM_RESPONSES)


@router.get(
    "",
    response_model=VehiclePage,
    summary="List vehicles with filters",
    dependencies=[require("fleet:read")],
)
async def list_vehicles(
    request: Request,
    vehicle_type: Annotated[VehicleType | None, Query(alias="type")] = None,
    status: Status | None = None,
    online: bool | None = None,
    bbox: Annotated[str | None, Query(description="min_lon,min_lat,max_lon,max_lat")] = None,
    zone: Annotated[str | None, Query(description="vehicles in this zone")] = None,
    after: Annotated[str | None, Query(description="cursor: the last vehicle_ref seen")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> VehiclePage:
    rows = await queries.vehicles(
        context(request).store,
        vehicle_type=vehicle_type,
        status=status,
        online=online,
        bbox=parse_bbox(bbox),
        zone=zone,
        after=after,
        limit=limit + 1,
    )
    items = [Vehicle.model_validate(r) for r in rows[:limit]]
    next_url = next_page(request, len(rows), items, "vehicle_ref")
    return VehiclePage(items=items, next=next_url)


@router.get(
    "/{vehicle_ref}",
    response_model=Vehicle,
    summary="A vehicle's latest state",
    dependencies=[require("fleet:read")],
)
async def get_vehicle(request: Request, vehicle_ref: str) -> Vehicle:
    row = await queries.vehicle(context(request).store, vehicle_ref)
    if row is None:
        raise Problem(404, "unknown-vehicle", f"no vehicle {vehicle_ref!r}")
    return Vehicle.model_validate(row)


@router.get(
    "/{vehicle_ref}/track",
    response_model=Track,
    response_model_by_alias=True,
    summary="A vehicle's positions over a time range, downsampled",
    dependencies=[require("fleet:read")],
)
async def get_track(
    request: Request,
    vehicle_ref: str,
    start: Annotated[
        datetime | None, Query(alias="from", description="RFC 3339; default: an hour before 'to'")
    ] = None,
    end: Annotated[datetime | None, Query(alias="to", description="RFC 3339; default: now")] = None,
    bucket: Annotated[
        str,
        Query(
            pattern="^(raw|10s|1m|5m|15m|1h)$",
            description="raw samples, or one point per bucket (the bucket's last plausible fix)",
        ),
    ] = "1m",
    max_points: Annotated[int, Query(ge=1, le=10_000)] = 5000,
    include_implausible: Annotated[
        bool,
        Query(
            description="raw: also the fixes flagged as implausible jumps, marked implausible=1 "
            "(buckets always count them and never place a point on one)"
        ),
    ] = False,
) -> Track:
    start, end = time_range(start, end)
    store = context(request).store
    vehicle = await queries.vehicle_id(store, vehicle_ref)
    if vehicle is None:
        raise Problem(404, "unknown-vehicle", f"no vehicle {vehicle_ref!r}")
    rows = await queries.track(
        store, vehicle, start, end, bucket, max_points + 1, include_implausible=include_implausible
    )
    return Track(
        vehicle_ref=vehicle_ref,
        start=start,
        end=end,
        bucket=bucket,
        points=[TrackPoint.model_validate(r) for r in rows[:max_points]],
        truncated=len(rows) > max_points,
    )
