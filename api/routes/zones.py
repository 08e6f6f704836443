"""Geofencing zones: GeoJSON + GBFS v3 rules, validated by the geofence core before storing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem, invalid
from geofence import InvalidZone, Zone, ZoneSet

router = APIRouter(tags=["zones"], responses=PROBLEM_RESPONSES)
ZoneId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class ZoneIn(BaseModel):
    """A zone as operators write it; geometry is GeoJSON Polygon / MultiPolygon (lon, lat) or
    {"type": "Circle", "coordinates": [lon, lat], "radius_m": r}."""

    name: str = ""
    kind: str = Field(
        "other", description="operating_area, no_parking, slow, no_ride, station, other"
    )
    geometry: dict[str, Any]
    rules: list[dict[str, Any]] = Field(default_factory=list, description="GBFS v3 rules")
    priority: int = Field(
        0, ge=-(2**31), le=2**31 - 1, description="lower wins where zones overlap"
    )
    start: datetime | None = None
    end: datetime | None = None


class ZoneOut(ZoneIn):
    id: str


class ZoneList(BaseModel):
    version: int
    items: list[ZoneOut]
    global_rules: list[dict[str, Any]]


@router.get(
    "/v1/zones",
    response_model=ZoneList,
    summary="The zone set",
    dependencies=[require("fleet:read")],
)
async def list_zones(request: Request) -> ZoneList:
    zones = await context(request).store.load_zones()
    return ZoneList(
        version=zones.version,
        global_rules=zones.global_rules,
        items=[ZoneOut.model_validate(r) for r in zones.rows],
    )


@router.get(
    "/v1/zones/{zone_id}",
    response_model=ZoneOut,
    summary="One zone",
    dependencies=[require("fleet:read")],
)
async def get_zone(request: Request, zone_id: ZoneId) -> ZoneOut:
    zones = await context(request).store.load_zones()
    for row in zones.rows:
        if row["id"] == zone_id:
            return ZoneOut.model_validate(row)
    raise Problem(404, "unknown-zone", f"no zone {zone_id!r}")


@router.put(
    "/v1/zones/{zone_id}",
    response_model=ZoneOut,
    summary="Create or replace a zone",
    dependencies=[require("zones:write")],
)
async def put_zone(request: Request, zone_id: ZoneId, zone: ZoneIn) -> ZoneOut:
    try:
        checked = Zone.from_row({"id": zone_id, **zone.model_dump()})
    except InvalidZone as exc:
        raise invalid("invalid-zone", str(exc)) from None
    row = checked.to_row()
    await context(request).store.put_zones([row])
    return ZoneOut.model_validate(row)


@router.delete(
    "/v1/zones/{zone_id}",
    status_code=204,
    summary="Delete a zone",
    dependencies=[require("zones:write")],
)
async def delete_zone(request: Request, zone_id: ZoneId) -> Response:
    if not await context(request).store.delete_zone(zone_id):
        raise Problem(404, "unknown-zone", f"no zone {zone_id!r}")
    return Response(status_code=204)


@router.get(
    "/v1/gbfs/geofencing_zones.json",
    summary="The zone set as GBFS v3",
    dependencies=[require("fleet:read")],
)
async def gbfs_zones(request: Request) -> dict[str, Any]:
    zones = await context(request).store.load_zones()
    try:
        zoneset = ZoneSet.from_rows(
            zones.rows, global_rules=zones.global_rules, version=zones.version
        )
    except InvalidZone as exc:  # only a zone edited by hand in SQL can get here
        raise Problem(409, "invalid-zone-set", str(exc)) from None
    return zoneset.to_gbfs()
