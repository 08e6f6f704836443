"""Vehicle types (GBFS vehicle_types): the registry vehicles are registered against."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, invalid
from telemetry.vehicle_types import (
    FORM_FACTORS,
    PROPULSION_TYPES,
    VEHICLE_TYPE_ID_RULE,
    InvalidVehicleType,
    VehicleType,
)

router = APIRouter(prefix="/v1/vehicle-types", tags=["vehicle-types"], responses=PROBLEM_RESPONSES)


class VehicleTypeBody(BaseModel):
    """A vehicle type after GBFS vehicle_types, with the numbers fleetgate's cores use."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=VEHICLE_TYPE_ID_RULE, description="vehicles.vehicle_type names it")
    name: str = Field(min_length=1, max_length=200)
    form_factor: Literal[FORM_FACTORS]  # type: ignore[valid-type]
    propulsion_type: Literal[PROPULSION_TYPES]  # type: ignore[valid-type]
    max_speed_kmh: float | None = Field(None, gt=0, description="design top speed")
    max_range_meters: float | None = Field(None, gt=0, description="range on a full charge")
    battery_nominal_ah: float | None = Field(None, gt=0, description="traction pack, Ah")
    battery_nominal_v: float | None = Field(None, gt=0, description="traction pack, V")
    low_soc_pct: float = Field(20.0, ge=0, le=100, description="low battery below this SoC")
    battery_swappable: bool = Field(False, description="packs are exchanged, not charged")


@router.get(
    "",
    response_model=list[VehicleTypeBody],
    summary="List the vehicle types",
    dependencies=[require("fleet:read")],
)
async def list_vehicle_types(request: Request) -> list[VehicleTypeBody]:
    types = await context(request).store.vehicle_types()
    return [VehicleTypeBody(**t.to_dict()) for t in types.values()]


@router.put(
    "/{type_id}",
    response_model=VehicleTypeBody,
    summary="Add a vehicle type or change one (its id in the path and the body)",
    dependencies=[require("devices:write")],
)
async def put_vehicle_type(
    request: Request, type_id: str, body: VehicleTypeBody
) -> VehicleTypeBody:
    if body.id != type_id:
        raise invalid("id-mismatch", f"the body's id {body.id!r} is not the path's {type_id!r}")
    try:
        vehicle_type = VehicleType(**body.model_dump())
    except InvalidVehicleType as exc:
        raise invalid("invalid-vehicle-type", str(exc)) from None
    await context(request).store.upsert_vehicle_types([vehicle_type])
    return body
